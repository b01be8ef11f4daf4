/* Sparse layers for inference: a pruned Linear or Conv2d replaced by a layer
 * whose forward pass multiplies by the CSR of its weight, so a 90%-sparse
 * layer does a tenth of the multiply-adds.
 *
 * The layer types are defined here, not in nn (DESIGN.md: a compression
 * method is a file in compress/): kind PARE_CUSTOM, so nn neither fuses them
 * as a dense conv nor writes them as architecture JSON. The CSR lives in the
 * layer's impl slot, freed with the layer; the dense weight and bias stay
 * on the layer, so parameter counts and the shape rules are the dense
 * layer's. There is no backward: with gradients enabled the forward aborts,
 * because fine-tuning belongs to the masked dense model. */
#include <string.h>

#include "compress/prune.h"

typedef struct sparse_state {
    pare_csr *a;
    const pare_layer_type *dense; /* the replaced layer's type: its shape rule */
} sparse_state;

static void csr_destroy(void *impl)
{
    sparse_state *s = impl;
    pare_csr_free(s->a);
    pare_free(s);
}

static sparse_state *state_of(const pare_layer *l)
{
    return l->impl;
}

static int sparse_infer(pare_layer *l, int in_ndim, const int *in_shape, int *out_ndim, int *out_shape)
{
    return state_of(l)->dense->infer(l, in_ndim, in_shape, out_ndim, out_shape);
}

static double sparse_flops(const pare_layer *l)
{
    double per_weight = l->out_ndim == 3 ? (double)l->out_shape[1] * l->out_shape[2] : 1.0;
    return 2.0 * state_of(l)->a->nnz * per_weight;
}

static void no_init(pare_layer *l, pare_rng *rng)
{
    (void)l, (void)rng;
}

static void check_inference(const pare_ctx *ctx, const pare_layer *l)
{
    PARE_CHECK(!ctx->grad_enabled,
               "layer %s (%s): sparse layers are for inference (run them under no-grad); train the masked dense "
               "model instead",
               l->name, l->type->type_name);
}

static pare_tensor *sparse_linear_forward(pare_ctx *ctx, pare_model *m, pare_layer *l, pare_tensor *x)
{
    (void)m;
    check_inference(ctx, l);
    const pare_csr *a = state_of(l)->a;
    int n = x->shape[0];
    PARE_CHECK(x->size == (size_t)n * (size_t)a->cols, "layer %s: input of %zu features, expected %d", l->name,
               x->size / (size_t)n, a->cols);
    pare_tensor *y = pare_tensor_2d(&ctx->arena, n, a->rows);
    pare_arena_pos scratch = pare_arena_pos_get(&ctx->arena);
    float *buf = pare_arena_alloc(&ctx->arena, (pare_csr_linear_scratch(a, n) + 1) * sizeof(float));
    PARE_CHECK(buf, "arena full");
    pare_csr_linear_into(a, x->data, n, l->bias ? l->bias->data : NULL, y->data, buf);
    pare_arena_rewind(&ctx->arena, scratch);
    return y;
}

/* Images per im2col chunk: each image has its own columns (so images run in
 * parallel), and a chunk bounds the scratch at large batches. */
#define CONV_CHUNK 16

static pare_tensor *sparse_conv_forward(pare_ctx *ctx, pare_model *m, pare_layer *l, pare_tensor *x)
{
    (void)m;
    check_inference(ctx, l);
    const sparse_state *s = state_of(l);
    PARE_CHECK(x->ndim == 4 && x->shape[1] == l->in_features, "layer %s: input is not [N, %d, H, W]", l->name,
               l->in_features);
    pare_conv_geom g = {x->shape[1], x->shape[2], x->shape[3], l->kernel, l->kernel, l->stride, l->pad, 0, 0};
    g.oh = pare_conv_out(g.h, g.kh, g.stride, g.pad);
    g.ow = pare_conv_out(g.w, g.kw, g.stride, g.pad);
    int N = x->shape[0], O = s->a->rows, K = s->a->cols;
    PARE_CHECK(g.oh > 0 && g.ow > 0 && K == g.c * g.kh * g.kw, "layer %s: input does not fit the kernel", l->name);
    size_t P = (size_t)g.oh * g.ow, img = (size_t)g.c * g.h * g.w, plane = (size_t)O * P;
    pare_tensor *y = pare_tensor_4d(&ctx->arena, N, O, g.oh, g.ow);
    pare_arena_pos scratch = pare_arena_pos_get(&ctx->arena);
    int chunk = N < CONV_CHUNK ? N : CONV_CHUNK;
    float *col = pare_arena_alloc(&ctx->arena, (size_t)chunk * K * P * sizeof(float));
    PARE_CHECK(col, "arena full");
    const float *bias = l->bias ? l->bias->data : NULL;
    for (int n0 = 0; n0 < N; n0 += chunk) {
        int nb = N - n0 < chunk ? N - n0 : chunk;
        /* The product of one image already comes out as its [O, OH*OW] plane: NCHW, no epilogue. */
#pragma omp parallel for schedule(static) if (nb > 1 && (size_t)nb * K * P > PARE_PARALLEL_MIN)
        for (int i = 0; i < nb; i++) {
            float *ci = col + (size_t)i * K * P;
            pare_im2col(&g, x->data + (size_t)(n0 + i) * img, ci, P);
            pare_csr_spmm(s->a, ci, P, (int)P, bias, y->data + (size_t)(n0 + i) * plane, P);
        }
    }
    pare_arena_rewind(&ctx->arena, scratch);
    return y;
}

static const pare_layer_type sparse_linear_type = {PARE_CUSTOM,           "SparseLinear", sparse_infer,
                                                   sparse_linear_forward, sparse_flops,   no_init};
static const pare_layer_type sparse_conv_type = {PARE_CUSTOM,         "SparseConv2d", sparse_infer,
                                                 sparse_conv_forward, sparse_flops,   no_init};

int pare_prune_is_sparse(const pare_layer *l)
{
    return l->type == &sparse_linear_type || l->type == &sparse_conv_type;
}

/* The sparse twin of layer l, which gives up its weight, bias and output
 * hooks to it; l is then freed by pare_model_replace. */
static pare_layer *sparse_twin(pare_layer *l, pare_csr *a)
{
    pare_layer *t = pare_calloc(sizeof *t);
    *t = *l;
    sparse_state *s = pare_calloc(sizeof *s);
    s->a = a;
    s->dense = l->type;
    t->type = l->kind == PARE_CONV2D ? &sparse_conv_type : &sparse_linear_type;
    t->kind = PARE_CUSTOM;
    memset(&t->weight_hooks, 0, sizeof t->weight_hooks);
    t->impl = s;
    t->impl_free = csr_destroy;
    l->weight = l->bias = NULL;
    l->output_hooks.n = 0;
    return t;
}

/* Whether layer l is one pare_prune_sparsify may convert: a Linear or Conv2d
 * whose only weight hook, if any, is the pruning mask (a fake-quant or
 * codebook hook would be skipped by the sparse product). */
static int convertible(pare_layer *l)
{
    if (!(l->kind & (PARE_LINEAR | PARE_CONV2D)) || !l->weight) return 0;
    for (int h = 0; h < l->weight_hooks.n; h++)
        if (strcmp(l->weight_hooks.hooks[h]->name, PARE_PRUNE_HOOK) != 0) return 0;
    return 1;
}

static int wanted(const char *layers, const char *name)
{
    if (!layers) return 1;
    size_t len = strlen(name);
    for (const char *s = layers; *s;) {
        size_t n = strcspn(s, ",");
        if (n == len && !strncmp(s, name, len)) return 1;
        s += n + (s[n] == ',');
    }
    return 0;
}

/* Every name in the list must be a layer that can be converted. */
static int check_names(pare_model *m, const char *layers)
{
    char name[PARE_NAME_MAX];
    for (const char *s = layers; *s;) {
        size_t len = strcspn(s, ",");
        if (len == 0 || len >= sizeof name) return pare_set_error("sparsify: bad layer list '%.200s'", layers);
        memcpy(name, s, len);
        name[len] = '\0';
        pare_layer *l = pare_model_find(m, name);
        if (!l) return pare_set_error("sparsify: the model has no layer named '%s'", name);
        if (!convertible(l) && !pare_prune_is_sparse(l))
            return pare_set_error("sparsify: layer %s is a %s%s; only Linear and Conv2d layers without other "
                                  "weight hooks become sparse",
                                  name, l->type->type_name, l->weight_hooks.n ? " with weight hooks" : "");
        s += len + (s[len] == ',');
    }
    return 0;
}

int pare_prune_sparsify(pare_model *m, const char *layers, float min_sparsity)
{
    if (!m->built) return pare_set_error("sparsify: model '%s' is not built", m->arch);
    if (!(min_sparsity >= 0.0f && min_sparsity <= 1.0f))
        return pare_set_error("sparsify: minimum sparsity %g is outside [0, 1]", (double)min_sparsity);
    if (layers && check_names(m, layers)) return -1;
    pare_prune_apply(m, NULL); /* masks as exact zeros, which the CSR drops */
    int converted = 0;
    for (int i = 0; i < m->n_layers; i++) {
        pare_layer *l = m->layers[i];
        if (!convertible(l) || !wanted(layers, l->name)) continue;
        int rows = l->weight->shape[0], cols = (int)(l->weight->size / (size_t)rows);
        if (!layers && cols < PARE_SPARSE_MIN_COLS) continue; /* the automatic choice: see prune.h */
        pare_csr *a = pare_csr_from_dense(l->weight->data, rows, cols);
        if (!a) return -1;
        if (1.0 - (double)a->nnz / (double)l->weight->size < (double)min_sparsity) {
            pare_csr_free(a);
            continue;
        }
        if (pare_prune_mask(l)) pare_hook_remove(&l->weight_hooks, PARE_PRUNE_HOOK);
        pare_model_replace(m, i, sparse_twin(l, a));
        converted++;
    }
    if (converted &&
        pare_build(m, m->in_shape[0], m->in_ndim == 3 ? m->in_shape[1] : 0, m->in_ndim == 3 ? m->in_shape[2] : 0))
        return -1;
    return converted;
}
