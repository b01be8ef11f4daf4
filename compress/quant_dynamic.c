/* Dynamic quantization: Linear and Conv2d layers replaced in place by layer
 * types whose forward quantizes the batch input from its own range, runs an
 * integer kernel with int32 accumulation and dequantizes the output to float.
 *
 * Why layer types and not a separate model: the rest of the network (ReLU,
 * pooling, softmax) stays in float anyway, so the converted model keeps
 * running through pare_forward, pare_evaluate and the float tooling. The
 * types are PARE_CUSTOM, as the sparse layers are (compress/sparse_layer.c):
 * nn never fuses them as a dense conv. Their state (int8 weights, scales)
 * lives in the layer's impl slot and is freed with the layer.
 * Conv2d is converted as well as Linear: PyTorch's quantize_dynamic leaves
 * it in float (REFERENCE.md), which is the failure this file exists to fix.
 *
 * The float weight stays on the layer (its shape is the layer's shape rule
 * and parameter count) but is overwritten by the dequantized int8 values, so
 * it describes exactly what the kernel computes. The kernels are portable C
 * of their own (quant_runtime.c's are NHWC and requantize to int8, which
 * does not fit a float NCHW model). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "compress/quant.h"
#include "nn/json.h"
#include "nn/safetensors.h"

typedef struct dq_state {
    int8_t *w;    /* [out][K], K = in (Linear) or in * k * k (Conv2d) */
    int16_t *w16; /* the same widened once: the kernels' dot products are int16 x int16 (pmaddwd) */
    float *scale; /* out */
    int rows, cols, bits;
    const pare_layer_type *dense; /* the replaced type: its shape rule, and the architecture JSON */
    pare_layer_kind dense_kind;
} dq_state;

static void dq_destroy(void *impl)
{
    dq_state *s = impl;
    pare_free(s->w);
    pare_free(s->w16);
    pare_free(s->scale);
    pare_free(s);
}

static dq_state *state_of(const pare_layer *l)
{
    return l->impl;
}

static int dq_infer(pare_layer *l, int in_ndim, const int *in_shape, int *out_ndim, int *out_shape)
{
    return state_of(l)->dense->infer(l, in_ndim, in_shape, out_ndim, out_shape);
}

static double dq_flops(const pare_layer *l)
{
    return state_of(l)->dense->flops(l);
}

static void no_init(pare_layer *l, pare_rng *rng)
{
    (void)l, (void)rng;
}

/* The batch's parameters (asymmetric per tensor, the static path's rule),
 * and the batch quantized and centred: xq - zero_point as int16. Centring
 * first makes a padded zero exactly 0 and removes the zero-point correction
 * from the kernels; with bits <= 8 it lies in [-255, 255], so each product
 * with a weight fits int16 and sums exactly in int32. */
static float quantize_batch(const float *x, size_t n, int bits, int16_t *xq)
{
    float lo = 0, hi = 0;
    for (size_t i = 0; i < n; i++) { /* branch-free, so it vectorizes */
        float v = x[i];
        v = v - v == 0 ? v : 0; /* an infinity or NaN does not widen the range (it clamps below) */
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    pare_qparams p;
    pare_qparams_choose(lo, hi, bits, 0, &p); /* cannot fail: finite range, bits checked at conversion */
    /* pare_quantize_value's rule (pare_quantize_unclamped, autograd.h), then the clamp */
    for (size_t i = 0; i < n; i++) {
        int32_t q = pare_quantize_unclamped(x[i], p.scale, p.zero_point, p.qmin, p.qmax);
        q = q >= p.qmin ? q : p.qmin;
        q = q <= p.qmax ? q : p.qmax;
        xq[i] = (int16_t)(q - p.zero_point);
    }
    return p.scale;
}

/* The most inputs per output (K) whose dot product cannot overflow the
 * int32 accumulator at `bits`: |centred input| <= 2^bits - 1, |weight| <=
 * 2^(bits-1) - 1 (66,311 at 8 bits). */
static long long max_inputs(int bits)
{
    long long a = (1LL << bits) - 1, w = (1LL << (bits - 1)) - 1;
    return INT32_MAX / (a * w);
}

static void check_inference(const pare_ctx *ctx, const pare_layer *l)
{
    PARE_CHECK(!ctx->grad_enabled,
               "layer %s (%s): dynamically quantized layers are for inference (run them under no-grad)", l->name,
               l->type->type_name);
}

/* c[i][o] = a[i] . w[o] over K, exactly in int32 (|a| <= 255, |w| <= 127:
 * conversion and loading refuse a K that could overflow, see max_inputs). Blocked 4 (or 2) rows of a by 4 of w so that
 * each loaded vector serves several products; the inner loops are plain
 * reductions that gcc and clang vectorize (pmaddwd on x86). */
static void dot_gemm(const int16_t *a, int M, const int16_t *w, int O, int K, int32_t *c, int ldc)
{
    int i = 0;
    for (; i + 4 <= M; i += 4) { /* 4 x 4: 16 accumulators and 8 loads fit the 32 vector registers of AVX-512 */
        const int16_t *a0 = a + (size_t)i * K, *a1 = a0 + K, *a2 = a1 + K, *a3 = a2 + K;
        int o = 0;
        for (; o + 4 <= O; o += 4) {
            const int16_t *w0 = w + (size_t)o * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
            int32_t s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
            int32_t s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
            for (int k = 0; k < K; k++) {
                int32_t x0 = a0[k], x1 = a1[k], x2 = a2[k], x3 = a3[k];
                int32_t v0 = w0[k], v1 = w1[k], v2 = w2[k], v3 = w3[k];
                s00 += x0 * v0, s01 += x0 * v1, s02 += x0 * v2, s03 += x0 * v3;
                s10 += x1 * v0, s11 += x1 * v1, s12 += x1 * v2, s13 += x1 * v3;
                s20 += x2 * v0, s21 += x2 * v1, s22 += x2 * v2, s23 += x2 * v3;
                s30 += x3 * v0, s31 += x3 * v1, s32 += x3 * v2, s33 += x3 * v3;
            }
            int32_t *c0 = c + (size_t)i * ldc + o, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
            c0[0] = s00, c0[1] = s01, c0[2] = s02, c0[3] = s03;
            c1[0] = s10, c1[1] = s11, c1[2] = s12, c1[3] = s13;
            c2[0] = s20, c2[1] = s21, c2[2] = s22, c2[3] = s23;
            c3[0] = s30, c3[1] = s31, c3[2] = s32, c3[3] = s33;
        }
        for (; o < O; o++) {
            const int16_t *w0 = w + (size_t)o * K;
            int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            for (int k = 0; k < K; k++) {
                int32_t v = w0[k];
                s0 += a0[k] * v, s1 += a1[k] * v, s2 += a2[k] * v, s3 += a3[k] * v;
            }
            c[(size_t)i * ldc + o] = s0;
            c[(size_t)(i + 1) * ldc + o] = s1;
            c[(size_t)(i + 2) * ldc + o] = s2;
            c[(size_t)(i + 3) * ldc + o] = s3;
        }
    }
    for (; i + 2 <= M; i += 2) {
        const int16_t *a0 = a + (size_t)i * K, *a1 = a0 + K;
        int o = 0;
        for (; o + 4 <= O; o += 4) {
            const int16_t *w0 = w + (size_t)o * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
            int32_t s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
            for (int k = 0; k < K; k++) {
                int32_t x0 = a0[k], x1 = a1[k];
                s00 += x0 * w0[k], s01 += x0 * w1[k], s02 += x0 * w2[k], s03 += x0 * w3[k];
                s10 += x1 * w0[k], s11 += x1 * w1[k], s12 += x1 * w2[k], s13 += x1 * w3[k];
            }
            int32_t *c0 = c + (size_t)i * ldc + o, *c1 = c0 + ldc;
            c0[0] = s00, c0[1] = s01, c0[2] = s02, c0[3] = s03;
            c1[0] = s10, c1[1] = s11, c1[2] = s12, c1[3] = s13;
        }
        for (; o < O; o++) {
            const int16_t *w0 = w + (size_t)o * K;
            int32_t s0 = 0, s1 = 0;
            for (int k = 0; k < K; k++) s0 += (int32_t)a0[k] * w0[k], s1 += (int32_t)a1[k] * w0[k];
            c[(size_t)i * ldc + o] = s0;
            c[(size_t)(i + 1) * ldc + o] = s1;
        }
    }
    for (; i < M; i++) {
        const int16_t *a0 = a + (size_t)i * K;
        int o = 0;
        for (; o + 4 <= O; o += 4) {
            const int16_t *w0 = w + (size_t)o * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
            int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            for (int k = 0; k < K; k++) {
                int32_t x0 = a0[k];
                s0 += x0 * w0[k], s1 += x0 * w1[k], s2 += x0 * w2[k], s3 += x0 * w3[k];
            }
            int32_t *c0 = c + (size_t)i * ldc + o;
            c0[0] = s0, c0[1] = s1, c0[2] = s2, c0[3] = s3;
        }
        for (; o < O; o++) {
            const int16_t *w0 = w + (size_t)o * K;
            int32_t s0 = 0;
            for (int k = 0; k < K; k++) s0 += (int32_t)a0[k] * w0[k];
            c[(size_t)i * ldc + o] = s0;
        }
    }
}

static pare_tensor *dq_linear_forward(pare_ctx *ctx, pare_model *m, pare_layer *l, pare_tensor *x)
{
    (void)m;
    check_inference(ctx, l);
    const dq_state *s = state_of(l);
    int n = x->shape[0], K = s->cols, O = s->rows;
    PARE_CHECK(x->size == (size_t)n * (size_t)K, "layer %s: input of %zu features, expected %d", l->name,
               x->size / (size_t)n, K);
    pare_tensor *y = pare_tensor_2d(&ctx->arena, n, O);
    pare_arena_pos mark = pare_arena_pos_get(&ctx->arena);
    int16_t *xq = pare_arena_alloc(&ctx->arena, x->size * sizeof *xq + 1);
    PARE_CHECK(xq, "arena full");
    float s_in = quantize_batch(x->data, x->size, s->bits, xq);
    const float *bias = l->bias ? l->bias->data : NULL;
    int32_t *acc = pare_arena_alloc(&ctx->arena, (size_t)n * O * sizeof *acc + 1);
    PARE_CHECK(acc, "arena full");
    /* Rows in blocks of 8 so that threads (if any) split the batch; the result does not depend on it. */
#pragma omp parallel for schedule(static) if ((size_t)n * O * K > PARE_PARALLEL_MIN)
    for (int i0 = 0; i0 < n; i0 += 8) {
        int rows = n - i0 < 8 ? n - i0 : 8;
        dot_gemm(xq + (size_t)i0 * K, rows, s->w16, O, K, acc + (size_t)i0 * O, O);
        for (int i = i0; i < i0 + rows; i++)
            for (int o = 0; o < O; o++)
                y->data[(size_t)i * O + o] =
                    (float)acc[(size_t)i * O + o] * (s_in * s->scale[o]) + (bias ? bias[o] : 0.0f);
    }
    pare_arena_rewind(&ctx->arena, mark);
    return y;
}

/* One image's centred input [c][h][w] into int16 rows [P][K], one row per
 * output position (so each output is a contiguous dot product). The image is
 * first copied into a zero-bordered one (pad = centred 0, exact), so the
 * gather needs no bounds checks. */
static void im2row_q(const pare_conv_geom *g, const int16_t *x, int16_t *padded, int16_t *rows)
{
    int K = g->c * g->kh * g->kw, ph = g->h + 2 * g->pad, pw = g->w + 2 * g->pad;
    memset(padded, 0, (size_t)g->c * ph * pw * sizeof *padded);
    for (int c = 0; c < g->c; c++)
        for (int y = 0; y < g->h; y++)
            memcpy(padded + ((size_t)c * ph + y + g->pad) * pw + g->pad, x + ((size_t)c * g->h + y) * g->w,
                   (size_t)g->w * sizeof *x);
    for (int oy = 0; oy < g->oh; oy++)
        for (int ox = 0; ox < g->ow; ox++) {
            int16_t *r = rows + ((size_t)oy * g->ow + ox) * K;
            for (int c = 0; c < g->c; c++)
                for (int ky = 0; ky < g->kh; ky++) {
                    const int16_t *src = padded + ((size_t)c * ph + oy * g->stride + ky) * pw + ox * g->stride;
                    for (int kx = 0; kx < g->kw; kx++) *r++ = src[kx];
                }
        }
}

#define CONV_CHUNK 16

static pare_tensor *dq_conv_forward(pare_ctx *ctx, pare_model *m, pare_layer *l, pare_tensor *x)
{
    (void)m;
    check_inference(ctx, l);
    const dq_state *s = state_of(l);
    PARE_CHECK(x->ndim == 4 && x->shape[1] == l->in_features, "layer %s: input is not [N, %d, H, W]", l->name,
               l->in_features);
    pare_conv_geom g = {x->shape[1], x->shape[2], x->shape[3], l->kernel, l->kernel, l->stride, l->pad, 0, 0};
    g.oh = pare_conv_out(g.h, g.kh, g.stride, g.pad);
    g.ow = pare_conv_out(g.w, g.kw, g.stride, g.pad);
    int N = x->shape[0], O = s->rows, K = s->cols;
    PARE_CHECK(g.oh > 0 && g.ow > 0 && K == g.c * g.kh * g.kw, "layer %s: input does not fit the kernel", l->name);
    size_t P = (size_t)g.oh * g.ow, img = (size_t)g.c * g.h * g.w, plane = (size_t)O * P;
    pare_tensor *y = pare_tensor_4d(&ctx->arena, N, O, g.oh, g.ow);
    pare_arena_pos mark = pare_arena_pos_get(&ctx->arena);
    int16_t *xq = pare_arena_alloc(&ctx->arena, x->size * sizeof *xq + 1);
    /* Per image: its rows and its int32 accumulators, so images run in
     * parallel; a chunk of images bounds the scratch (and keeps it in cache)
     * at large batches. */
    size_t padded = (size_t)g.c * (g.h + 2 * g.pad) * (g.w + 2 * g.pad);
    size_t per = (size_t)K * P * sizeof(int16_t) + P * O * sizeof(int32_t) + padded * sizeof(int16_t) + 8;
    per = (per + 7) / 8 * 8;
    int chunk = N < CONV_CHUNK ? N : CONV_CHUNK;
    char *work = pare_arena_alloc(&ctx->arena, (size_t)chunk * per);
    PARE_CHECK(xq && work, "arena full");
    float s_in = quantize_batch(x->data, x->size, s->bits, xq);
    const float *bias = l->bias ? l->bias->data : NULL;
    for (int n0 = 0; n0 < N; n0 += chunk) {
        int nb = N - n0 < chunk ? N - n0 : chunk;
#pragma omp parallel for schedule(static) if (nb > 1 && (size_t)nb * O * K * P > PARE_PARALLEL_MIN)
        for (int j = 0; j < nb; j++) {
            int i = n0 + j;
            int32_t *acc = (int32_t *)(void *)(work + (size_t)j * per);
            int16_t *rows = (int16_t *)(void *)(acc + P * O);
            im2row_q(&g, xq + (size_t)i * img, rows + (size_t)K * P, rows);
            /* weights as the left operand: acc[o][p], so the output plane is written contiguously */
            dot_gemm(s->w16, O, rows, (int)P, K, acc, (int)P);
            float *yi = y->data + (size_t)i * plane;
            for (int o = 0; o < O; o++) {
                float sc = s_in * s->scale[o], b = bias ? bias[o] : 0.0f;
                for (size_t p = 0; p < P; p++) yi[(size_t)o * P + p] = (float)acc[(size_t)o * P + p] * sc + b;
            }
        }
    }
    pare_arena_rewind(&ctx->arena, mark);
    return y;
}

static const pare_layer_type dq_linear_type = {PARE_CUSTOM,       "DynQuantLinear", dq_infer,
                                               dq_linear_forward, dq_flops,         no_init};
static const pare_layer_type dq_conv_type = {PARE_CUSTOM,     "DynQuantConv2d", dq_infer,
                                             dq_conv_forward, dq_flops,         no_init};

int pare_quant_is_dynamic(const pare_layer *l)
{
    return l->type == &dq_linear_type || l->type == &dq_conv_type;
}

const int8_t *pare_quant_dynamic_weight(const pare_layer *l, const float **scales, int *bits)
{
    if (!pare_quant_is_dynamic(l)) return NULL;
    const dq_state *s = state_of(l);
    if (scales) *scales = s->scale;
    if (bits) *bits = s->bits;
    return s->w;
}

/* The converted twin of layer l (which gives up its weight, bias and output
 * hooks to it; pare_model_replace then frees l). Takes q and scales. The
 * float weight becomes the dequantized int8 weight. */
static pare_layer *dq_twin(pare_layer *l, int8_t *q, float *scales, int bits)
{
    pare_layer *t = pare_calloc(sizeof *t);
    *t = *l;
    dq_state *s = pare_calloc(sizeof *s);
    s->w = q;
    s->scale = scales;
    s->rows = l->weight->shape[0];
    s->cols = (int)(l->weight->size / (size_t)s->rows);
    s->bits = bits;
    s->w16 = pare_alloc(l->weight->size * sizeof *s->w16);
    for (size_t i = 0; i < l->weight->size; i++)
        s->w16[i] = (int16_t)q[i]; // NOLINT(bugprone-signed-char-misuse): int8 weights
    s->dense = l->type;
    s->dense_kind = l->kind;
    for (size_t i = 0; i < l->weight->size; i++) l->weight->data[i] = scales[i / (size_t)s->cols] * (float)q[i];
    t->type = l->kind == PARE_CONV2D ? &dq_conv_type : &dq_linear_type;
    t->kind = PARE_CUSTOM;
    memset(&t->weight_hooks, 0, sizeof t->weight_hooks);
    t->impl = s;
    t->impl_free = dq_destroy;
    l->weight = l->bias = NULL;
    l->output_hooks.n = 0;
    return t;
}

static void note_float(pare_dq_report *r, const pare_layer *l, const char *why)
{
    if (!r || r->n_float == PARE_DQ_MAX_LIST) return;
    snprintf(r->float_layers[r->n_float], PARE_NAME_MAX, "%s", l->name);
    snprintf(r->reason[r->n_float], sizeof r->reason[0], "%s: %s", l->type->type_name, why);
    r->n_float++;
}

static int rebuild(pare_model *m)
{
    return pare_build(m, m->in_shape[0], m->in_ndim == 3 ? m->in_shape[1] : 0, m->in_ndim == 3 ? m->in_shape[2] : 0);
}

int pare_quant_dynamic(pare_model *m, int kinds, int bits, pare_dq_report *report)
{
    if (report) memset(report, 0, sizeof *report);
    if (!m || !m->built) return pare_set_error("dynamic quantization: the model is not built");
    if (!kinds || (kinds & ~(PARE_CONV2D | PARE_LINEAR)))
        return pare_set_error("dynamic quantization: kinds 0x%x: only PARE_CONV2D and PARE_LINEAR (or both) can be "
                              "converted",
                              (unsigned)kinds);
    if (bits < 2 || bits > 8) return pare_set_error("dynamic quantization: %d bits: it must be between 2 and 8", bits);
    for (int i = 0; i < m->n_layers; i++) { /* check every weight before changing anything */
        const pare_layer *l = m->layers[i];
        if ((l->kind & kinds) && l->weight)
            for (size_t k = 0; k < l->weight->size; k++)
                if (!isfinite(l->weight->data[k]))
                    return pare_set_error("dynamic quantization: layer %s holds a non-finite weight", l->name);
    }
    int converted = 0;
    for (int i = 0; i < m->n_layers; i++) {
        pare_layer *l = m->layers[i];
        if (pare_quant_is_dynamic(l)) {
            note_float(report, l, "already converted"); /* converted twice would quantize twice */
            continue;
        }
        if (!(l->kind & (PARE_CONV2D | PARE_LINEAR))) {
            if (l->weight || l->bias) note_float(report, l, "not a Linear or Conv2d: runs in float");
            continue;
        }
        if (!(l->kind & kinds)) {
            note_float(report, l, "kind not requested");
            continue;
        }
        if (!l->weight) {
            note_float(report, l, "no weight");
            continue;
        }
        int rows = l->weight->shape[0], cols = (int)(l->weight->size / (size_t)rows);
        if (cols > max_inputs(bits)) {
            note_float(report, l, "too many inputs per output: the int32 accumulator could overflow");
            continue;
        }
        if (l->weight_hooks.n) {
            /* a mask, fake-quant or codebook hook would be bypassed by the int8 weight */
            note_float(report, l, "has weight hooks (apply or remove them first)");
            continue;
        }
        int8_t *q = pare_alloc(l->weight->size);
        float *sc = pare_alloc((size_t)rows * sizeof *sc);
        if (pare_quantize_weight_per_channel(l->weight->data, rows, cols, bits, q, sc)) { /* checked above */
            pare_free(q);
            pare_free(sc);
            return -1;
        }
        pare_model_replace(m, i, dq_twin(l, q, sc, bits));
        if (report && report->n_converted < PARE_DQ_MAX_LIST)
            snprintf(report->converted[report->n_converted++], PARE_NAME_MAX, "%s", m->layers[i]->name);
        converted++;
    }
    /* pare_model_replace marks the model unbuilt: re-infer the shapes (the parameters are kept) */
    if (converted && rebuild(m)) return -1;
    return converted;
}

/* ---- save / load ------------------------------------------------------------- */

/* The architecture JSON of the float model: converted layers shown as the
 * layer they replaced (the writer knows no custom types). */
static char *arch_json(pare_model *m)
{
    int n = m->n_layers;
    const pare_layer_type **saved = pare_alloc((size_t)(n ? n : 1) * sizeof *saved);
    pare_layer_kind *kinds = pare_alloc((size_t)(n ? n : 1) * sizeof *kinds);
    for (int i = 0; i < n; i++) {
        pare_layer *l = m->layers[i];
        saved[i] = l->type;
        kinds[i] = l->kind;
        if (pare_quant_is_dynamic(l)) {
            l->type = state_of(l)->dense;
            l->kind = state_of(l)->dense_kind;
        }
    }
    int len = pare_arch_to_json(m, NULL, 0);
    char *buf = NULL;
    if (len >= 0) {
        buf = pare_alloc((size_t)len + 1);
        pare_arch_to_json(m, buf, (size_t)len + 1);
    }
    for (int i = 0; i < n; i++) {
        m->layers[i]->type = saved[i];
        m->layers[i]->kind = kinds[i];
    }
    pare_free(saved);
    pare_free(kinds);
    return buf;
}

int pare_quant_dynamic_save(pare_model *m, const char *path)
{
    if (!m->built) return pare_set_error("cannot save '%s': the model is not built", path);
    char *arch = arch_json(m);
    if (!arch) return pare_set_error("cannot save '%s': no architecture JSON for model '%s'", path, m->arch);
    int cap = 4 * m->n_layers + 1, n = 0;
    pare_st_tensor *t = pare_alloc((size_t)cap * sizeof *t);
    char(*names)[PARE_NAME_MAX + 24] = pare_alloc((size_t)cap * sizeof *names);
    for (int i = 0; i < m->n_layers; i++) {
        pare_layer *l = m->layers[i];
        const dq_state *s = pare_quant_is_dynamic(l) ? state_of(l) : NULL;
        pare_tensor *ts[4] = {l->weight, l->bias, l->running_mean, l->running_var};
        const char *suffix[4] = {"weight", "bias", "running_mean", "running_var"};
        for (int k = 0; k < 4; k++) {
            if (!ts[k]) continue;
            snprintf(names[n], sizeof names[n], "%s.%s", l->name, suffix[k]);
            t[n] = pare_st_f32(names[n], ts[k]);
            if (s && k == 0) { /* the int8 weight replaces the float one */
                t[n].dtype = PARE_ST_I8;
                t[n].data = s->w;
                n++;
                snprintf(names[n], sizeof names[n], "%s.weight_scale", l->name);
                t[n] = (pare_st_tensor){names[n], PARE_ST_F32, 1, {s->rows}, s->scale, 0};
            }
            n++;
        }
    }
    char bits[8];
    int b = 8;
    for (int i = 0; i < m->n_layers; i++)
        if (pare_quant_is_dynamic(m->layers[i])) b = state_of(m->layers[i])->bits;
    snprintf(bits, sizeof bits, "%d", b);
    const char *meta[] = {"pare.format", "int8-dynamic", "pare.version", PARE_VERSION, "pare.arch",
                          arch,          "pare.bits",    bits,           NULL};
    int rc = pare_st_write(path, t, n, meta);
    pare_free(names);
    pare_free(t);
    pare_free(arch);
    return rc;
}

static pare_model *load_from(const pare_st_file *f)
{
    const char *format = pare_st_meta(f, "pare.format"), *arch = pare_st_meta(f, "pare.arch"),
               *bits_s = pare_st_meta(f, "pare.bits");
    const char *src = pare_st_source(f);
    if (!format || strcmp(format, "int8-dynamic") != 0) {
        pare_set_error("%s: pare.format is '%.40s', expected 'int8-dynamic'", src, format ? format : "(none)");
        return NULL;
    }
    if (!arch || !bits_s || strlen(bits_s) != 1 || bits_s[0] < '2' || bits_s[0] > '8') {
        pare_set_error("%s: pare.arch or pare.bits (2..8) missing or bad", src);
        return NULL;
    }
    int bits = bits_s[0] - '0';
    /* Bound what the architecture may allocate by the file: every weight is at least a byte in it. */
    size_t total = 0;
    for (int i = 0; i < pare_st_count(f); i++) total += pare_st_at(f, i)->nbytes;
    pare_model *m = pare_arch_parse(arch, strlen(arch), total);
    if (!m) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", pare_error());
        pare_set_error("%s: pare.arch: %s", src, msg);
        return NULL;
    }
    int used = 0;
    char name[PARE_NAME_MAX + 24];
    for (int i = 0; i < m->n_layers; i++) {
        pare_layer *l = m->layers[i];
        pare_tensor *ts[4] = {l->weight, l->bias, l->running_mean, l->running_var};
        const char *suffix[4] = {"weight", "bias", "running_mean", "running_var"};
        for (int k = 0; k < 4; k++) {
            if (!ts[k]) continue;
            snprintf(name, sizeof name, "%s.%s", l->name, suffix[k]);
            const pare_st_tensor *e = pare_st_find(f, name);
            int quantized = k == 0 && e && e->dtype == PARE_ST_I8 && (l->kind & (PARE_CONV2D | PARE_LINEAR));
            if (!quantized) {
                if (pare_st_read(f, name, PARE_ST_F32, ts[k]->ndim, ts[k]->shape, ts[k]->data)) goto fail;
                used++;
                continue;
            }
            if (!pare_st_expect(f, name, PARE_ST_I8, ts[k]->ndim, ts[k]->shape)) goto fail;
            int rows = ts[k]->shape[0];
            size_t cols = ts[k]->size / (size_t)rows;
            if (cols > (size_t)max_inputs(bits)) {
                pare_set_error("%s: %s has %zu inputs per output; at %d bits more than %lld could overflow the int32 "
                               "accumulator",
                               src, name, cols, bits, max_inputs(bits));
                goto fail;
            }
            char sname[PARE_NAME_MAX + 24];
            snprintf(sname, sizeof sname, "%s.weight_scale", l->name);
            int8_t *q = pare_alloc(ts[k]->size);
            float *sc = pare_alloc((size_t)rows * sizeof *sc);
            int bad = pare_st_read(f, name, PARE_ST_I8, ts[k]->ndim, ts[k]->shape, q) ||
                      pare_st_read(f, sname, PARE_ST_F32, 1, &rows, sc);
            int32_t qmax = (1 << (bits - 1)) - 1;
            for (size_t j = 0; !bad && j < ts[k]->size; j++)
                if (q[j] < -qmax || q[j] > qmax)
                    bad = pare_set_error("%s: %s holds %d, outside %d bits", src, name, q[j], bits);
            for (int j = 0; !bad && j < rows; j++)
                if (!(isfinite(sc[j]) && sc[j] > 0))
                    bad =
                        pare_set_error("%s: %s[%d] = %g is not a positive finite scale", src, sname, j, (double)sc[j]);
            if (bad) {
                pare_free(q);
                pare_free(sc);
                goto fail;
            }
            used += 2;
            /* bias first: the twin takes it over */
            if (l->bias) {
                snprintf(name, sizeof name, "%s.bias", l->name);
                if (pare_st_read(f, name, PARE_ST_F32, l->bias->ndim, l->bias->shape, l->bias->data)) {
                    pare_free(q);
                    pare_free(sc);
                    goto fail;
                }
                used++;
            }
            pare_model_replace(m, i, dq_twin(l, q, sc, bits));
            break; /* weight and bias done; Linear and Conv2d have no buffers */
        }
    }
    if (used != pare_st_count(f)) {
        pare_set_error("%s: %d tensors in the file, %d belong to the model", src, pare_st_count(f), used);
        goto fail;
    }
    if (rebuild(m)) goto fail;
    return m;
fail:
    pare_model_free(m);
    return NULL;
}

pare_model *pare_quant_dynamic_parse(const void *buf, size_t len, const char *what)
{
    pare_st_file *f = pare_st_parse(buf, len, what);
    if (!f) return NULL;
    pare_model *m = load_from(f);
    pare_st_close(f);
    return m;
}

pare_model *pare_quant_dynamic_load(const char *path)
{
    pare_st_file *f = pare_st_open(path); /* reads the file; the same checks as parse after that */
    if (!f) return NULL;
    pare_model *m = load_from(f);
    pare_st_close(f);
    return m;
}
