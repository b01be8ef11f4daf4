/* Sequential models: building (shape inference), forward, parameters,
 * summary and the layer-edit API that compression passes use. */
#include <stdarg.h>
#include <string.h>

#include "nn/nn.h"

pare_model *pare_model_new(const char *arch)
{
    pare_model *m = pare_calloc(sizeof *m);
    snprintf(m->arch, sizeof m->arch, "%s", arch ? arch : "custom");
    m->training = 1;
    return m;
}

pare_model *pare_sequential(const char *arch, ...)
{
    pare_model *m = pare_model_new(arch);
    va_list ap;
    va_start(ap, arch);
    for (pare_layer *l = va_arg(ap, pare_layer *); l; l = va_arg(ap, pare_layer *)) pare_model_append(m, l);
    va_end(ap);
    return m;
}

void pare_model_free(pare_model *m)
{
    if (!m) return;
    for (int i = 0; i < m->n_layers; i++) pare_layer_free(m->layers[i]);
    pare_hook_chain_clear(&m->input_hooks);
    pare_free(m->layers);
    pare_free(m);
}

int pare_model_insert(pare_model *m, int index, pare_layer *l)
{
    if (index < 0 || index > m->n_layers)
        return pare_set_error("insert at %d: the model has %d layers", index, m->n_layers);
    if (m->n_layers == m->cap) {
        int cap = m->cap ? m->cap * 2 : 16;
        pare_layer **grown = pare_calloc((size_t)cap * sizeof *grown);
        if (m->n_layers) memcpy(grown, m->layers, (size_t)m->n_layers * sizeof *grown);
        pare_free(m->layers);
        m->layers = grown;
        m->cap = cap;
    }
    memmove(&m->layers[index + 1], &m->layers[index], (size_t)(m->n_layers - index) * sizeof *m->layers);
    m->layers[index] = l;
    m->n_layers++;
    m->built = 0;
    return 0;
}

int pare_model_append(pare_model *m, pare_layer *l)
{
    return pare_model_insert(m, m->n_layers, l);
}

int pare_model_remove(pare_model *m, int index)
{
    if (index < 0 || index >= m->n_layers)
        return pare_set_error("remove layer %d: the model has %d layers", index, m->n_layers);
    pare_layer_free(m->layers[index]);
    memmove(&m->layers[index], &m->layers[index + 1], (size_t)(m->n_layers - index - 1) * sizeof *m->layers);
    m->n_layers--;
    m->built = 0;
    return 0;
}

int pare_model_replace(pare_model *m, int index, pare_layer *l)
{
    if (index < 0 || index >= m->n_layers)
        return pare_set_error("replace layer %d: the model has %d layers", index, m->n_layers);
    pare_layer_free(m->layers[index]);
    m->layers[index] = l;
    m->built = 0;
    return 0;
}

int pare_model_index(const pare_model *m, const char *name)
{
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i]->name[0] && strcmp(m->layers[i]->name, name) == 0) return i;
    return -1;
}

pare_layer *pare_model_find(pare_model *m, const char *name)
{
    int i = pare_model_index(m, name);
    return i < 0 ? NULL : m->layers[i];
}

/* ---- build ------------------------------------------------------------------- */
static int has_params(const pare_layer *l)
{
    return l->kind & (PARE_LINEAR | PARE_CONV2D | PARE_BATCHNORM2D);
}

static int check_config(const pare_model *m, int i)
{
    const pare_layer *l = m->layers[i];
    const char *t = l->type->type_name;
    if (has_params(l)) {
        if (!l->name[0]) return pare_set_error("layer %d (%s) has no name; weight layers need one", i, t);
        for (int j = 0; j < i; j++)
            if (strcmp(m->layers[j]->name, l->name) == 0)
                return pare_set_error("two layers are named '%s' (layers %d and %d)", l->name, j, i);
        if (l->in_features <= 0 || l->out_features <= 0)
            return pare_set_error("layer %s (%s): sizes must be positive (got %d -> %d)", l->name, t, l->in_features,
                                  l->out_features);
    }
    if ((l->kind & (PARE_CONV2D | PARE_MAXPOOL2D | PARE_AVGPOOL2D)) && (l->kernel <= 0 || l->stride <= 0 || l->pad < 0))
        return pare_set_error("layer %d (%s): kernel %d, stride %d, padding %d are not valid", i, t, l->kernel,
                              l->stride, l->pad);
    if ((l->kind & (PARE_MAXPOOL2D | PARE_AVGPOOL2D)) && l->kernel > 16)
        return pare_set_error("layer %d (%s): pooling windows up to 16x16 are supported (got %d)", i, t, l->kernel);
    if (l->kind == PARE_DROPOUT && !(l->p >= 0.0f && l->p < 1.0f))
        return pare_set_error("layer %d (Dropout): probability %g is outside [0, 1)", i, (double)l->p);
    return 0;
}

/* Parameters that already exist (after surgery, or loaded) are kept. */
static void ensure_params(pare_layer *l, pare_rng *rng)
{
    if (has_params(l) && !l->weight) l->type->init_params(l, rng);
}

/* After a failed Linear rule behind a Flatten, say what the flattened shape was. */
static int explain_flatten(const pare_model *m, int i)
{
    if (i < 2 || m->layers[i]->kind != PARE_LINEAR || m->layers[i - 1]->kind != PARE_FLATTEN) return -1;
    const pare_layer *f = m->layers[i - 1];
    if (f->in_ndim != 3) return -1;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s; %d = %dx%dx%d is the Flatten of the [%d, %d, %d] output of the layers before",
             pare_error(), f->out_shape[0], f->in_shape[0], f->in_shape[1], f->in_shape[2], f->in_shape[0],
             f->in_shape[1], f->in_shape[2]);
    return pare_set_error("%s", msg);
}

int pare_build(pare_model *m, int c, int h, int w)
{
    if (m->n_layers == 0) return pare_set_error("model '%s' has no layers", m->arch);
    if (c <= 0 || h < 0 || w < 0 || (h == 0) != (w == 0))
        return pare_set_error("input shape [%d, %d, %d] is not valid", c, h, w);
    int ndim = h ? 3 : 1, shape[3] = {c, h, w};
    m->in_ndim = ndim;
    memcpy(m->in_shape, shape, sizeof shape);
    pare_rng rng;
    pare_rng_seed(&rng, m->seed, PARE_STREAM_INIT);
    for (int i = 0; i < m->n_layers; i++) {
        pare_layer *l = m->layers[i];
        if (check_config(m, i)) return -1;
        l->in_ndim = ndim;
        memcpy(l->in_shape, shape, sizeof shape);
        if (l->type->infer(l, ndim, shape, &l->out_ndim, l->out_shape)) {
            explain_flatten(m, i);
            return -1;
        }
        ensure_params(l, &rng);
        ndim = l->out_ndim;
        memcpy(shape, l->out_shape, sizeof shape);
    }
    m->built = 1;
    return 0;
}

void pare_model_train(pare_model *m, int training)
{
    m->training = training;
}

pare_tensor *pare_forward(pare_ctx *ctx, pare_model *m, pare_tensor *x)
{
    return pare_forward_layers(ctx, m, x, 0, m->n_layers);
}

/* Conv2d -> ReLU -> MaxPool2d (window = stride) runs as one fused op when no
 * hook watches the outputs in between: the same numbers, bit for bit, without
 * writing two activations. Returns how many following layers it absorbs. */
static int fused_block(const pare_model *m, int i, int last, int *relu, int *pool)
{
    const pare_layer *l = m->layers[i];
    *relu = *pool = 0;
    if (l->kind != PARE_CONV2D || l->output_hooks.n || i + 1 >= last) return 0;
    int extra = 0;
    const pare_layer *next = m->layers[i + 1];
    if (next->kind == PARE_RELU) {
        *relu = 1;
        extra = 1;
        if (next->output_hooks.n || i + 2 >= last) return extra;
        next = m->layers[i + 2];
    }
    if (next->kind == PARE_MAXPOOL2D && next->kernel == next->stride && next->kernel <= 16) {
        *pool = next->kernel;
        extra++;
    }
    return extra;
}

/* Without a tape nothing but the newest activation is needed: move it down
 * to where this forward pass began, so inference needs the memory of one
 * layer at a time, not of all of them. The destination never lies above the
 * source, so memmove is safe even when they overlap. */
static pare_tensor *relocate(pare_ctx *ctx, pare_tensor *t, pare_arena_pos to)
{
    pare_tensor header = *t;
    size_t bytes = header.size * sizeof(float);
    pare_arena_rewind(&ctx->arena, to);
    pare_arena_unpoison(header.data, bytes);
    pare_tensor *moved = pare_tensor_new(&ctx->arena, header.ndim, header.shape);
    PARE_CHECK(moved->data <= header.data || moved->data >= header.data + header.size,
               "relocate: destination above source");
    memmove(moved->data, header.data, bytes);
    /* The part of the source that the moved tensor does not cover is free again. */
    float *moved_end = moved->data + header.size, *src_end = header.data + header.size;
    float *free_from = moved_end > header.data ? moved_end : header.data;
    if (src_end > free_from) pare_arena_poison(free_from, (size_t)(src_end - free_from) * sizeof(float));
    return moved;
}

pare_tensor *pare_forward_layers(pare_ctx *ctx, pare_model *m, pare_tensor *x, int first, int last)
{
    PARE_CHECK(m->built, "pare_forward: model '%s' is not built (call pare_build)", m->arch);
    size_t per_sample = pare_shape_size(m->in_ndim, m->in_shape);
    PARE_CHECK(first != 0 || x->size == (size_t)x->shape[0] * per_sample,
               "pare_forward: input of %zu values per sample, model '%s' takes %zu", x->size / (size_t)x->shape[0],
               m->arch, per_sample);
    int saved = ctx->training;
    ctx->training = m->training;
    pare_arena_pos entry = pare_arena_pos_get(&ctx->arena);
    if (first == 0 && m->input_hooks.n) x = pare_hook_run(ctx, &m->input_hooks, NULL, x);
    for (int i = first; i < last; i++) {
        pare_layer *l = m->layers[i];
        int relu, pool, extra = fused_block(m, i, last, &relu, &pool);
        if (extra) {
            x = pare_f_conv2d_fused(ctx, x, pare_layer_weight(ctx, l), l->bias, l->stride, l->pad, relu, pool);
            i += extra;
            l = m->layers[i];
        } else {
            x = l->type->forward(ctx, m, l, x);
        }
        if (l->output_hooks.n) x = pare_hook_run(ctx, &l->output_hooks, l, x);
        if (!ctx->grad_enabled) x = relocate(ctx, x, entry);
    }
    ctx->training = saved;
    return x;
}

pare_tensor *pare_classifier_loss(pare_ctx *ctx, pare_model *m, pare_tensor *x, const int *labels, pare_tensor **scores)
{
    pare_layer_kind last = m->layers[m->n_layers - 1]->kind;
    pare_tensor *y = pare_forward_layers(ctx, m, x, 0, m->n_layers - (last == PARE_SOFTMAX));
    if (scores) *scores = y;
    return last == PARE_LOG_SOFTMAX ? pare_nll_loss(ctx, y, labels) : pare_cross_entropy(ctx, y, labels);
}

/* ---- parameters ---------------------------------------------------------------- */
static int put(pare_param *out, int max, int n, pare_layer *l, const char *key, pare_tensor *t, int is_weight)
{
    if (!t) return n;
    if (n < max) {
        snprintf(out[n].name, sizeof out[n].name, "%.47s.%.63s", l->name, key);
        out[n].t = t;
        out[n].layer = l;
        out[n].is_weight = is_weight;
    }
    return n + 1;
}

int pare_model_params(pare_model *m, pare_param *out, int max)
{
    int n = 0;
    for (int i = 0; i < m->n_layers; i++) {
        pare_layer *l = m->layers[i];
        n = put(out, max, n, l, "weight", l->weight, l->kind != PARE_BATCHNORM2D);
        n = put(out, max, n, l, "bias", l->bias, 0);
    }
    return n;
}

int pare_model_tensors(pare_model *m, pare_param *out, int max)
{
    int n = 0;
    for (int i = 0; i < m->n_layers; i++) {
        pare_layer *l = m->layers[i];
        n = put(out, max, n, l, "weight", l->weight, l->kind != PARE_BATCHNORM2D);
        n = put(out, max, n, l, "bias", l->bias, 0);
        n = put(out, max, n, l, "running_mean", l->running_mean, 0);
        n = put(out, max, n, l, "running_var", l->running_var, 0);
        pare_hook_chain *chains[2] = {&l->weight_hooks, &l->output_hooks};
        for (int c = 0; c < 2; c++)
            for (int h = 0; h < chains[c]->n; h++) {
                pare_hook *hk = chains[c]->hooks[h];
                for (int s = 0; s < hk->n_state; s++) {
                    char key[64];
                    snprintf(key, sizeof key, "%.31s.%.31s", hk->name, hk->state_names[s]);
                    n = put(out, max, n, l, key, hk->state[s], 0);
                }
            }
    }
    return n;
}

size_t pare_model_param_count(pare_model *m)
{
    size_t total = 0;
    for (int i = 0; i < m->n_layers; i++) {
        pare_layer *l = m->layers[i];
        if (l->weight) total += l->weight->size;
        if (l->bias) total += l->bias->size;
    }
    return total;
}

double pare_model_flops(const pare_model *m)
{
    double f = 0;
    for (int i = 0; i < m->n_layers; i++) f += m->layers[i]->type->flops(m->layers[i]);
    return f;
}

void pare_summary(const pare_model *m, FILE *out)
{
    char s[64];
    fprintf(out, "%-4s %-14s %-12s %-16s %10s %12s\n", "#", "layer", "type", "output", "params", "FLOPs");
    size_t total = 0;
    for (int i = 0; i < m->n_layers; i++) {
        const pare_layer *l = m->layers[i];
        size_t p = (l->weight ? l->weight->size : 0) + (l->bias ? l->bias->size : 0);
        total += p;
        fprintf(out, "%-4d %-14s %-12s %-16s %10zu %12.0f\n", i, l->name[0] ? l->name : "-", l->type->type_name,
                pare_shape_str(l->out_ndim, l->out_shape, s, sizeof s), p, l->type->flops(l));
    }
    fprintf(out, "model %s: input %s, %zu parameters, %.2f MFLOP forward per sample\n", m->arch,
            pare_shape_str(m->in_ndim, m->in_shape, s, sizeof s), total, pare_model_flops(m) / 1e6);
}
