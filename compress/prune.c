/* Pruning masks as weight hooks, the selection criteria, the sparsity
 * report, and saving / loading pruned models. */
#include <stdlib.h>
#include <string.h>

#include "compress/prune.h"
#include "nn/safetensors.h"

/* ---- the mask hook -------------------------------------------------------------- */
/* state[0]: the element mask (1 keep, 0 pruned), same shape as the weight.
 * user: for structured pruning, a per-output-unit mask [out] (or NULL). */
static pare_tensor *mask_apply(pare_ctx *ctx, pare_hook *self, pare_layer *l, pare_tensor *w)
{
    (void)l;
    return pare_f_mul(ctx, w, self->state[0]);
}

/* The kept slices of dimension dim (units of `block` indices), as a new tensor. */
static pare_tensor *take(const pare_tensor *t, int dim, const int *keep, int n_keep, int block)
{
    int shape[PARE_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    size_t outer = 1, inner = 1;
    for (int i = 0; i < dim; i++) outer *= (size_t)t->shape[i];
    for (int i = dim + 1; i < t->ndim; i++) inner *= (size_t)t->shape[i];
    shape[dim] = n_keep * block;
    pare_tensor *r = pare_tensor_persistent(t->ndim, shape, 0);
    size_t old_dim = (size_t)t->shape[dim], chunk = (size_t)block * inner;
    for (size_t o = 0; o < outer; o++)
        for (int k = 0; k < n_keep; k++)
            memcpy(r->data + (o * (size_t)shape[dim] + (size_t)k * block) * inner,
                   t->data + (o * old_dim + (size_t)keep[k] * block) * inner, chunk * sizeof(float));
    return r;
}

static void mask_resize(pare_hook *self, pare_layer *l, int dim, const int *keep, int n_keep, int block)
{
    (void)l;
    pare_tensor *m = take(self->state[0], dim, keep, n_keep, block);
    pare_tensor_free(self->state[0]);
    self->state[0] = m;
    pare_tensor *units = self->user;
    if (units && dim == 0) {
        self->user = take(units, 0, keep, n_keep, 1);
        pare_tensor_free(units);
    }
}

static void mask_destroy(pare_hook *self)
{
    pare_tensor_free(self->state[0]);
    pare_tensor_free(self->user);
    pare_free(self);
}

static pare_hook *mask_hook(pare_layer *l)
{
    return pare_hook_find(&l->weight_hooks, PARE_PRUNE_HOOK);
}

pare_tensor *pare_prune_mask(pare_layer *l)
{
    pare_hook *h = mask_hook(l);
    return h ? h->state[0] : NULL;
}

static int prunable(const pare_layer *l)
{
    return (l->kind & (PARE_LINEAR | PARE_CONV2D)) && l->weight;
}

static int add_mask(pare_layer *l)
{
    if (mask_hook(l)) return 0;
    pare_hook *h = pare_calloc(sizeof *h);
    snprintf(h->name, sizeof h->name, "%s", PARE_PRUNE_HOOK);
    h->apply = mask_apply;
    h->resize = mask_resize;
    h->destroy = mask_destroy;
    h->n_state = 1;
    h->state_names[0] = "values";
    h->state[0] = pare_tensor_persistent(l->weight->ndim, l->weight->shape, 0);
    pare_vec_fill(h->state[0]->data, h->state[0]->size, 1.0f);
    if (pare_hook_add(&l->weight_hooks, h)) {
        mask_destroy(h);
        return -1;
    }
    return 0;
}

int pare_prune_attach(pare_model *m, const char *const *names)
{
    if (!m->built) return pare_set_error("prune: model '%s' is not built", m->arch);
    if (names)
        for (const char *const *n = names; *n; n++) {
            pare_layer *l = pare_model_find(m, *n);
            if (!l) return pare_set_error("prune: the model has no layer named '%s'", *n);
            if (!prunable(l))
                return pare_set_error("prune: layer %s is a %s; only Linear and Conv2d weights are pruned", *n,
                                      l->type->type_name);
        }
    if (names) {
        for (const char *const *n = names; *n; n++)
            if (add_mask(pare_model_find(m, *n))) return -1;
    } else {
        for (int i = 0; i < m->n_layers; i++)
            if (prunable(m->layers[i]) && add_mask(m->layers[i])) return -1;
    }
    return 0;
}

void pare_prune_detach(pare_model *m)
{
    for (int i = 0; i < m->n_layers; i++) {
        pare_layer *l = m->layers[i];
        pare_tensor *mask = pare_prune_mask(l);
        if (!mask) continue;
        for (size_t j = 0; j < mask->size; j++) l->weight->data[j] *= mask->data[j];
        pare_hook_remove(&l->weight_hooks, PARE_PRUNE_HOOK);
    }
}

/* ---- keeping pruned entries zero ------------------------------------------------- */
static const char *const STATE_NAMES[] = {"momentum_buffer", "exp_avg", "exp_avg_sq"};

/* Zeroes entries j of t, and of its optimizer state, where keep[j] == 0. */
static void zero_where(pare_tensor *t, pare_optim *o, const float *keep)
{
    if (!t) return;
    float *state[3] = {NULL, NULL, NULL};
    if (o)
        for (int i = 0; i < pare_optim_n_params(o); i++)
            if (pare_optim_param(o, i)->t == t)
                for (int s = 0; s < 3; s++) state[s] = pare_optim_state(o, i, STATE_NAMES[s]);
    for (size_t j = 0; j < t->size; j++) {
        if (keep[j] != 0.0f) continue;
        t->data[j] = 0.0f;
        for (int s = 0; s < 3; s++)
            if (state[s]) state[s][j] = 0.0f;
    }
}

/* The BatchNorm2d that normalizes layer i's outputs, if one follows before
 * the next weight layer. */
static pare_layer *following_bn(pare_model *m, int i)
{
    for (int j = i + 1; j < m->n_layers; j++) {
        pare_layer *n = m->layers[j];
        if (n->kind == PARE_BATCHNORM2D) return n;
        if (n->kind & (PARE_LINEAR | PARE_CONV2D)) return NULL;
    }
    return NULL;
}

void pare_prune_apply(pare_model *m, pare_optim *o)
{
    for (int i = 0; i < m->n_layers; i++) {
        pare_layer *l = m->layers[i];
        pare_hook *h = mask_hook(l);
        if (!h) continue;
        zero_where(l->weight, o, h->state[0]->data);
        pare_tensor *units = h->user;
        if (!units) continue;
        zero_where(l->bias, o, units->data);
        pare_layer *bn = following_bn(m, i);
        if (bn && bn->weight && (int)bn->weight->size == l->out_features) {
            zero_where(bn->weight, o, units->data);
            zero_where(bn->bias, o, units->data);
        }
    }
}

/* ---- selection ------------------------------------------------------------------ */
typedef struct scored {
    float score;
    uint32_t index;
} scored;

static int by_score(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Scores of every weight of layer l into s[0..size): pruned weights score -1
 * so they are always among the smallest, and masks only grow. */
static void score_layer(pare_layer *l, pare_prune_criterion crit, pare_rng *rng, scored *s, uint32_t base)
{
    const float *mask = pare_prune_mask(l)->data, *w = l->weight->data;
    for (size_t j = 0; j < l->weight->size; j++) {
        float v = crit == PARE_PRUNE_RANDOM ? pare_rng_uniform(rng) : (w[j] < 0 ? -w[j] : w[j]);
        s[j].score = mask[j] == 0.0f ? -1.0f : v;
        s[j].index = base + (uint32_t)j;
    }
}

/* Masks the k lowest-scored entries of s (indices into the flat concatenation
 * of the layers' masks) and keeps the rest. */
static void mask_lowest(pare_layer **layers, int n_layers, scored *s, size_t n, size_t k)
{
    qsort(s, n, sizeof *s, by_score);
    for (int li = 0; li < n_layers; li++)
        pare_vec_fill(pare_prune_mask(layers[li])->data, layers[li]->weight->size, 1.0f);
    for (size_t r = 0; r < k; r++) {
        size_t idx = s[r].index;
        for (int li = 0; li < n_layers; li++) {
            size_t sz = layers[li]->weight->size;
            if (idx < sz) {
                pare_prune_mask(layers[li])->data[idx] = 0.0f;
                break;
            }
            idx -= sz;
        }
    }
}

static int masked_layers(pare_model *m, pare_layer **out)
{
    int n = 0;
    for (int i = 0; i < m->n_layers; i++)
        if (pare_prune_mask(m->layers[i])) out[n++] = m->layers[i];
    return n;
}

int pare_prune_select(pare_model *m, float sparsity, pare_prune_scope scope, pare_prune_criterion crit, uint64_t seed)
{
    if (!(sparsity >= 0.0f && sparsity < 1.0f))
        return pare_set_error("prune: sparsity %g is outside [0, 1)", (double)sparsity);
    pare_layer **layers = pare_alloc((size_t)(m->n_layers ? m->n_layers : 1) * sizeof *layers);
    int n_layers = masked_layers(m, layers);
    if (!n_layers) {
        pare_free(layers);
        return pare_set_error("prune: no layer of model '%s' has a mask (pare_prune_attach first)", m->arch);
    }
    size_t total = 0;
    for (int i = 0; i < n_layers; i++) total += layers[i]->weight->size;
    if (total > UINT32_MAX) {
        pare_free(layers);
        return pare_set_error("prune: %zu weights are more than this selection handles", total);
    }
    scored *s = pare_alloc(total * sizeof *s);
    pare_rng rng;
    pare_rng_seed(&rng, seed, 0x70726e);
    if (scope == PARE_PRUNE_GLOBAL) {
        for (int i = 0, base = 0; i < n_layers; base += (int)layers[i]->weight->size, i++)
            score_layer(layers[i], crit, &rng, s + base, (uint32_t)base);
        mask_lowest(layers, n_layers, s, total, (size_t)((double)sparsity * (double)total + 0.5));
    } else {
        for (int i = 0; i < n_layers; i++) {
            size_t sz = layers[i]->weight->size;
            score_layer(layers[i], crit, &rng, s, 0);
            mask_lowest(&layers[i], 1, s, sz, (size_t)((double)sparsity * (double)sz + 0.5));
        }
    }
    pare_free(s);
    pare_free(layers);
    pare_prune_apply(m, NULL);
    return 0;
}

/* ---- statistics -------------------------------------------------------------------- */
pare_prune_stats pare_prune_layer_stats(pare_layer *l)
{
    pare_prune_stats st = {0, 0};
    if (!prunable(l)) return st;
    const pare_tensor *mask = pare_prune_mask(l);
    const float *v = mask ? mask->data : l->weight->data;
    st.total = l->weight->size;
    for (size_t j = 0; j < st.total; j++) st.zeros += v[j] == 0.0f;
    return st;
}

pare_prune_stats pare_prune_model_stats(pare_model *m)
{
    pare_prune_stats all = {0, 0};
    for (int i = 0; i < m->n_layers; i++) {
        pare_prune_stats st = pare_prune_layer_stats(m->layers[i]);
        all.total += st.total;
        all.zeros += st.zeros;
    }
    return all;
}

void pare_prune_report(pare_model *m, FILE *out)
{
    fprintf(out, "%-10s %-8s %12s %12s %9s\n", "layer", "type", "kept", "total", "sparsity");
    pare_prune_stats all = pare_prune_model_stats(m);
    for (int i = 0; i < m->n_layers; i++) {
        pare_layer *l = m->layers[i];
        if (!prunable(l)) continue;
        pare_prune_stats st = pare_prune_layer_stats(l);
        fprintf(out, "%-10s %-8s %12zu %12zu %8.2f%%\n", l->name, l->type->type_name, st.total - st.zeros, st.total,
                st.total ? 100.0 * (double)st.zeros / (double)st.total : 0.0);
    }
    fprintf(out, "%-10s %-8s %12zu %12zu %8.2f%%\n", "all", "", all.total - all.zeros, all.total,
            all.total ? 100.0 * (double)all.zeros / (double)all.total : 0.0);
}

/* ---- save / load ---------------------------------------------------------------------- */
/* The masked layers as "a,b,c" into buf (empty if none). */
static void masked_names(pare_model *m, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < m->n_layers; i++)
        if (pare_prune_mask(m->layers[i]) && used < len) {
            int w = snprintf(buf + used, len - used, "%s%s", used ? "," : "", m->layers[i]->name);
            used += w > 0 ? (size_t)w : 0;
        }
}

int pare_prune_save(pare_model *m, const char *path, const char *const *metadata)
{
    char names[4096];
    masked_names(m, names, sizeof names);
    pare_prune_apply(m, NULL); /* the masks as exact zeros in the weights */
    int n_extra = 0;
    while (metadata && metadata[2 * n_extra]) n_extra++;
    const char **meta = pare_alloc((size_t)(2 * n_extra + 3) * sizeof *meta);
    meta[0] = "pare.pruned";
    meta[1] = names;
    if (n_extra) memcpy(meta + 2, metadata, (size_t)(2 * n_extra) * sizeof *meta);
    meta[2 + 2 * n_extra] = NULL;
    /* The masks are not saved: take the hooks off the chains for the write. */
    pare_hook **held = pare_alloc((size_t)(m->n_layers ? m->n_layers : 1) * sizeof *held);
    int *pos = pare_alloc((size_t)(m->n_layers ? m->n_layers : 1) * sizeof *pos);
    for (int i = 0; i < m->n_layers; i++) {
        pare_hook_chain *c = &m->layers[i]->weight_hooks;
        held[i] = NULL;
        for (int h = 0; h < c->n; h++)
            if (!strcmp(c->hooks[h]->name, PARE_PRUNE_HOOK)) {
                held[i] = c->hooks[h];
                pos[i] = h;
                memmove(&c->hooks[h], &c->hooks[h + 1], (size_t)(c->n - h - 1) * sizeof *c->hooks);
                c->n--;
                break;
            }
    }
    int rc = pare_save(m, path, names[0] ? meta : metadata);
    for (int i = 0; i < m->n_layers; i++) {
        if (!held[i]) continue;
        pare_hook_chain *c = &m->layers[i]->weight_hooks;
        memmove(&c->hooks[pos[i] + 1], &c->hooks[pos[i]], (size_t)(c->n - pos[i]) * sizeof *c->hooks);
        c->hooks[pos[i]] = held[i];
        c->n++;
    }
    pare_free(pos);
    pare_free(held);
    pare_free(meta);
    return rc;
}

int pare_prune_restore(pare_model *m, const char *layers)
{
    if (!layers) {
        if (pare_prune_attach(m, NULL)) return -1;
    } else {
        /* Check every name first, so an error leaves the model as it was. */
        char name[PARE_NAME_MAX];
        for (int pass = 0; pass < 2; pass++)
            for (const char *s = layers; *s;) {
                size_t len = strcspn(s, ",");
                if (len == 0 || len >= sizeof name) return pare_set_error("prune: bad layer list '%.200s'", layers);
                memcpy(name, s, len);
                name[len] = '\0';
                pare_layer *l = pare_model_find(m, name);
                if (!l || !prunable(l))
                    return pare_set_error("prune: no Linear or Conv2d layer named '%s' (from '%.200s')", name, layers);
                if (pass == 1 && add_mask(l)) return -1;
                s += len + (s[len] == ',');
            }
    }
    for (int i = 0; i < m->n_layers; i++) {
        pare_layer *l = m->layers[i];
        pare_tensor *mask = pare_prune_mask(l);
        if (!mask) continue;
        for (size_t j = 0; j < mask->size; j++) mask->data[j] = l->weight->data[j] != 0.0f ? 1.0f : 0.0f;
    }
    return 0;
}

pare_model *pare_prune_load(const char *path, const char *arch_name)
{
    pare_st_file *f = pare_st_open(path);
    if (!f) return NULL;
    const char *format = pare_st_meta(f, "pare.format");
    if (format && !strcmp(format, "sparse")) { /* the compressed format: its own reader */
        pare_st_close(f);
        return pare_prune_load_sparse(path);
    }
    pare_model *m = pare_load_st(f, arch_name);
    const char *pruned = pare_st_meta(f, "pare.pruned");
    if (m && pruned && pruned[0] && pare_prune_restore(m, pruned)) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", pare_error());
        pare_set_error("%s: pare.pruned: %s", path, msg);
        pare_model_free(m);
        m = NULL;
    }
    pare_st_close(f);
    return m;
}
