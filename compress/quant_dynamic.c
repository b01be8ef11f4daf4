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
 * it describes exactly what the kernel computes. The kernels are their own
 * (quant_runtime.c's are NHWC and requantize to int8, which does not fit a
 * float NCHW model): portable C on int16, or AVX-512 VNNI on bytes where
 * the build targets it, both exact in int32, so the outputs are the same
 * bits either way (tests/test_quant_dynamic.c checks both builds against a
 * naive loop). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "compress/quant.h"
#include "nn/json.h"
#include "nn/safetensors.h"

/* VNNI: when the build targets it (-march=native on a VNNI machine); the
 * portable int16 kernel otherwise. Both give the same int32 sums exactly,
 * so the same outputs bit for bit. */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512F__) && !defined(PARE_NO_QFAST)
#define DQ_VNNI 1
#include <immintrin.h>
#endif

typedef struct dq_state {
    int8_t *w;    /* [out][K], K = in (Linear) or in * k * k (Conv2d) */
    int16_t *w16; /* the same widened once (portable kernel only): its dot products are int16 x int16 (pmaddwd) */
    float *scale; /* out */
    int rows, cols, bits;
    /* The VNNI kernel's weights (NULL without it): [rows / 16 blocks][kq][16][4],
     * K padded to kq * 4 with zeros and the rows to whole blocks; a conv's K
     * in (ky, kx, c) order, the order of its NHWC windows. wsum[o]: the sum
     * of row o, for the unsigned-activation correction. */
    int8_t *wp;
    int8_t *wr; /* a conv's rows instead: [rows][kq * 4], (ky, kx, c) order, the broadcast operand */
    int32_t *wsum;
    int kq, nblk;
    const pare_layer_type *dense; /* the replaced type: its shape rule, and the architecture JSON */
    pare_layer_kind dense_kind;
} dq_state;

static void dq_destroy(void *impl)
{
    dq_state *s = impl;
    pare_free(s->w);
    pare_free(s->w16);
    pare_free(s->wp);
    pare_free(s->wr);
    pare_free(s->wsum);
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

/* The batch's parameters: asymmetric per tensor, the static path's rule. */
static pare_qparams batch_qparams(const float *x, size_t n, int bits)
{
    /* 16 running minima and maxima, branch-free, so that the loop vectorizes
     * (a single one is a serial reduction gcc leaves scalar); min and max do
     * not depend on the order, and neither can become -0. */
    float lo16[16] = {0}, hi16[16] = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) {
            float v = x[i + (size_t)j];
            v = v - v == 0 ? v : 0; /* an infinity or NaN does not widen the range (it clamps below) */
            lo16[j] = v < lo16[j] ? v : lo16[j];
            hi16[j] = v > hi16[j] ? v : hi16[j];
        }
    for (; i < n; i++) {
        float v = x[i];
        v = v - v == 0 ? v : 0;
        lo16[0] = v < lo16[0] ? v : lo16[0];
        hi16[0] = v > hi16[0] ? v : hi16[0];
    }
    float lo = 0, hi = 0;
    for (int j = 0; j < 16; j++) {
        lo = lo16[j] < lo ? lo16[j] : lo;
        hi = hi16[j] > hi ? hi16[j] : hi;
    }
    pare_qparams p;
    pare_qparams_choose(lo, hi, bits, 0, &p); /* cannot fail: finite range, bits checked at conversion */
    return p;
}

#ifndef DQ_VNNI
/* The batch quantized and centred: xq - zero_point as int16. Centring
 * first makes a padded zero exactly 0 and removes the zero-point correction
 * from the kernels; with bits <= 8 it lies in [-255, 255], so each product
 * with a weight fits int16 and sums exactly in int32. */
static float quantize_batch(const float *x, size_t n, int bits, int16_t *xq)
{
    pare_qparams p = batch_qparams(x, n, bits);
    for (size_t i = 0; i < n; i++) xq[i] = (int16_t)(pare_quantize_value(x[i], &p) - p.zero_point);
    return p.scale;
}
#endif

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

#ifndef DQ_VNNI /* the portable kernel */
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
#endif

/* Images per conv chunk: it bounds the scratch (and keeps it in cache) at large batches. */
#define CONV_CHUNK 16

#ifdef DQ_VNNI
/* ---- the VNNI kernel ------------------------------------------------------------
 * vpdpbusd multiplies unsigned by signed bytes, four at a time into int32.
 * The activations go in unsigned, u = q - qmin in [0, 2^bits - 1], and the
 * centred value is u - off with off = zero_point - qmin, so
 * sum (q - zp) w = sum u w - off * wsum[o]. Exactness: |u w| <= (2^bits - 1)
 * (2^(bits-1) - 1), so for K <= max_inputs both sums lie in int32, and
 * vpdpbusd (not the saturating vpdpbusds) wraps modulo 2^32 in between:
 * the int32 result is the portable kernel's exactly. A conv's padding is u
 * = off (centred 0) and K's padding to a multiple of 4 has zero weights. */
#define DQ_ROWS 6 /* rows x blocks of accumulators: 24 of the 32 zmm registers */
#define DQ_BLK  4

/* acc += u . s by 4-byte groups. Inline assembly: gcc wraps
 * _mm512_dpbusd_epi32 in register copies (see quant_runtime.c). */
#define DQ_DP(acc, u, s) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s))

/* s->w (and its layer's geometry) into the packed weights and row sums. */
static void dq_pack(dq_state *s, const pare_layer *l)
{
    int O = s->rows, K = s->cols, conv = l->kind == PARE_CONV2D;
    int kk = conv ? l->kernel * l->kernel : 1, C = K / kk;
    s->kq = (K + 3) / 4;
    s->nblk = (O + 15) / 16;
    if (conv)
        s->wr = pare_calloc((size_t)O * (size_t)s->kq * 4);
    else
        s->wp = pare_calloc((size_t)s->nblk * (size_t)s->kq * 64);
    s->wsum = pare_alloc((size_t)O * sizeof *s->wsum);
    for (int o = 0; o < O; o++) {
        int32_t sum = 0;
        for (int k = 0; k < K; k++) {
            int src = conv ? (k % C) * kk + k / C : k; /* packed (ky, kx, c) from the layer's (c, ky, kx) */
            int8_t v = s->w[(size_t)o * K + src];
            sum += v;
            if (conv)
                s->wr[(size_t)o * s->kq * 4 + (size_t)k] = v;
            else
                s->wp[(((size_t)(o / 16) * s->kq + (size_t)(k / 4)) * 16 + (size_t)(o % 16)) * 4 + (size_t)(k % 4)] = v;
        }
        s->wsum[o] = sum;
    }
}

typedef struct dq_consts {
    float *sc, *b;
    int32_t *corr;
} dq_consts;

/* Where a conv tile dequantizes to: the plane y[o][p] of P positions. */
typedef struct dq_out {
    dq_consts k;
    float *y;
    size_t P;
} dq_out;

/* Dequantizes a tile's sums t[r][16 b + j] (channels o0 + r, positions p0
 * + 16 b + j) into d's plane: (float)(sum - corr) * sc + b, the scalar
 * code's arithmetic (no fused multiply-add), positions past P masked off. */
__attribute__((noinline)) static void dq_tile_out(const int32_t *t, int nr, int nb, const dq_out *d, int o0, size_t p0)
{
    for (int r = 0; r < nr; r++) {
        int o = o0 + r;
        __m512i corr = _mm512_set1_epi32(d->k.corr[o]);
        __m512 sc = _mm512_set1_ps(d->k.sc[o]), bias = _mm512_set1_ps(d->k.b[o]);
        float *yo = d->y + (size_t)o * d->P;
        for (int b = 0; b < nb; b++) {
            size_t p = p0 + (size_t)b * 16;
            if (p >= d->P) break;
            __m512i a = _mm512_loadu_si512(t + (r * DQ_BLK + b) * 16);
            __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(a, corr)), sc), bias);
            if (d->P - p >= 16)
                _mm512_storeu_ps(yo + p, v);
            else
                _mm512_mask_storeu_ps(yo + p, (__mmask16)((1u << (d->P - p)) - 1), v);
        }
    }
}

/* nr rows of a (lda bytes apart; each 4-byte group broadcast) x nb blocks
 * of w (kq groups of 16 x 4 bytes each) into c (rows ldc apart). The
 * unsigned operand is a (swap 0: activation rows x packed weights) or w
 * (swap 1: weight rows x packed activations). nr, nb and swap are
 * constants at every call, so the arrays live in registers. */
static inline __attribute__((always_inline)) void dq_tile(const uint8_t *a, size_t lda, const uint8_t *w, size_t kq,
                                                          int nr, int nb, int swap, int32_t *c, size_t ldc,
                                                          const dq_out *d, int o0, size_t p0)
{
    __m512i acc[DQ_ROWS][DQ_BLK];
    for (int r = 0; r < nr; r++)
        for (int b = 0; b < nb; b++) acc[r][b] = _mm512_setzero_si512();
    for (size_t q = 0; q < kq; q++) {
        __m512i wv[DQ_BLK];
        for (int b = 0; b < nb; b++) wv[b] = _mm512_loadu_si512(w + ((size_t)b * kq + q) * 64);
        for (int r = 0; r < nr; r++) {
            int32_t v;
            memcpy(&v, a + (size_t)r * lda + q * 4, 4);
            __m512i x = _mm512_set1_epi32(v);
            for (int b = 0; b < nb; b++) {
                if (swap)
                    DQ_DP(acc[r][b], wv[b], x);
                else
                    DQ_DP(acc[r][b], x, wv[b]);
            }
        }
    }
    if (!d) {
        for (int r = 0; r < nr; r++)
            for (int b = 0; b < nb; b++) _mm512_storeu_si512(c + (size_t)r * ldc + (size_t)b * 16, acc[r][b]);
        return;
    }
    /* d: the sums through a small buffer still in L1 (dequantized in the
     * tile itself, gcc spills the accumulators) into the plane */
    int32_t t[DQ_ROWS * DQ_BLK * 16];
    for (int r = 0; r < nr; r++)
        for (int b = 0; b < nb; b++) _mm512_storeu_si512(t + (r * DQ_BLK + b) * 16, acc[r][b]);
    dq_tile_out(t, nr, nb, d, o0, p0);
}

#define DQ_TILE_NB(nr)                                                                                                 \
    switch (nb) {                                                                                                      \
    case 1:                                                                                                            \
        dq_tile(ai, lda, wb, kq, nr, 1, swap, ci, ldc, d, i, (size_t)b0 * 16);                                         \
        break;                                                                                                         \
    case 2:                                                                                                            \
        dq_tile(ai, lda, wb, kq, nr, 2, swap, ci, ldc, d, i, (size_t)b0 * 16);                                         \
        break;                                                                                                         \
    case 3:                                                                                                            \
        dq_tile(ai, lda, wb, kq, nr, 3, swap, ci, ldc, d, i, (size_t)b0 * 16);                                         \
        break;                                                                                                         \
    default:                                                                                                           \
        dq_tile(ai, lda, wb, kq, nr, 4, swap, ci, ldc, d, i, (size_t)b0 * 16);                                         \
        break;                                                                                                         \
    }

/* c[i][16 b + j] = sum over K of a[i] . w[b][j] for M rows of a (lda bytes
 * apart, K padded to kq * 4) and nblk blocks of w: rows of c ldc apart,
 * whole blocks wide. */
static inline __attribute__((always_inline)) void dq_gemm(const uint8_t *a, int M, size_t lda, const uint8_t *w,
                                                          int nblk, size_t kq, int swap, int32_t *c, size_t ldc,
                                                          const dq_out *d)
{
    for (int i = 0; i < M; i += DQ_ROWS) {
        int nr = M - i < DQ_ROWS ? M - i : DQ_ROWS;
        for (int b0 = 0; b0 < nblk; b0 += DQ_BLK) {
            int nb = nblk - b0 < DQ_BLK ? nblk - b0 : DQ_BLK;
            const uint8_t *ai = a + (size_t)i * lda, *wb = w + (size_t)b0 * kq * 64;
            int32_t *ci = c ? c + (size_t)i * ldc + (size_t)b0 * 16 : NULL;
            switch (nr) {
            case 1:
                DQ_TILE_NB(1);
                break;
            case 2:
                DQ_TILE_NB(2);
                break;
            case 3:
                DQ_TILE_NB(3);
                break;
            case 4:
                DQ_TILE_NB(4);
                break;
            case 5:
                DQ_TILE_NB(5);
                break;
            default:
                DQ_TILE_NB(6);
                break;
            }
        }
    }
}

/* Activation rows x packed weights: c[i][o] (Linear). */
static void dq_gemm_act_rows(const uint8_t *a, int M, const dq_state *s, int32_t *c, size_t ldc)
{
    size_t kq = (size_t)s->kq;
    dq_gemm(a, M, kq * 4, (const uint8_t *)s->wp, s->nblk, kq, 0, c, ldc, NULL);
}

/* Weight rows x packed activations (nblk blocks of 16 positions),
 * dequantized into d's plane y[o][p] (Conv2d). */
static void dq_gemm_weight_rows(const dq_state *s, const uint8_t *packed, int nblk, const dq_out *d)
{
    size_t kq = (size_t)s->kq;
    dq_gemm((const uint8_t *)s->wr, s->rows, kq * 4, packed, nblk, kq, 1, NULL, 0, d);
}

/* The per-channel constants of one forward: the dequantization factor
 * s_in * scale[o] (the portable path's product), the bias (or 0) and the
 * correction off * wsum[o]. NULL when the arena is full. */

static int dq_consts_make(pare_arena *arena, const pare_layer *l, const dq_state *s, const pare_qparams *p,
                          dq_consts *k)
{
    int O = s->rows;
    k->sc = pare_arena_alloc(arena, (size_t)O * sizeof *k->sc);
    k->b = pare_arena_alloc(arena, (size_t)O * sizeof *k->b);
    k->corr = pare_arena_alloc(arena, (size_t)O * sizeof *k->corr);
    if (!k->sc || !k->b || !k->corr) return -1;
    int32_t off = p->zero_point - p->qmin;
    for (int o = 0; o < O; o++) {
        k->sc[o] = p->scale * s->scale[o];
        k->b[o] = l->bias ? l->bias->data[o] : 0.0f;
        k->corr[o] = off * s->wsum[o]; /* |off * wsum| <= max_inputs * (2^bits - 1) (2^(bits-1) - 1) */
    }
    return 0;
}

static pare_tensor *dq_linear_vnni(pare_ctx *ctx, const dq_state *s, const pare_layer *l, const pare_tensor *x)
{
    int n = x->shape[0], K = s->cols, O = s->rows;
    size_t lda = (size_t)s->kq * 4, ldc = (size_t)s->nblk * 16;
    int tiles = (n + DQ_ROWS - 1) / DQ_ROWS;
    pare_tensor *y = pare_tensor_2d(&ctx->arena, n, O);
    pare_arena_pos mark = pare_arena_pos_get(&ctx->arena);
    uint8_t *a = pare_arena_alloc(&ctx->arena, (size_t)n * lda + 1);
    int32_t *acc = pare_arena_alloc(&ctx->arena, (size_t)n * ldc * sizeof *acc + 1);
    pare_qparams p = batch_qparams(x->data, x->size, s->bits);
    dq_consts k;
    PARE_CHECK(a && acc && !dq_consts_make(&ctx->arena, l, s, &p, &k), "arena full");
    /* Tiles of rows, so that threads (if any) split the batch; the result does not depend on it. */
#pragma omp parallel for schedule(static) if ((size_t)n * O * K > PARE_PARALLEL_MIN)
    for (int t = 0; t < tiles; t++) {
        int i0 = t * DQ_ROWS, rows = n - i0 < DQ_ROWS ? n - i0 : DQ_ROWS;
        uint8_t *at = a + (size_t)i0 * lda;
        for (int i = 0; i < rows; i++) {
            const float *xi = x->data + (size_t)(i0 + i) * K;
            uint8_t *ai = at + (size_t)i * lda;
            for (int j = 0; j < K; j++) ai[j] = (uint8_t)(pare_quantize_value(xi[j], &p) - p.qmin);
            memset(ai + K, 0, lda - (size_t)K);
        }
        int32_t *ct = acc + (size_t)i0 * ldc;
        dq_gemm_act_rows(at, rows, s, ct, ldc);
        for (int i = 0; i < rows; i++) {
            float *yi = y->data + (size_t)(i0 + i) * O;
            const int32_t *ci = ct + (size_t)i * ldc;
            for (int o = 0; o < O; o++) yi[o] = (float)(ci[o] - k.corr[o]) * k.sc[o] + k.b[o];
        }
    }
    pare_arena_rewind(&ctx->arena, mark);
    return y;
}

static size_t align64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

/* Per image: quantized (u8, NCHW), copied into a bordered NHWC image (the
 * border u = off, a centred 0), gathered into packed columns [P / 16][kq][16
 * positions][4] in (ky, kx, c) order (a window is kh runs of kw * c
 * bytes), the kernel with the weight rows broadcast, so that the int32
 * sums come out [o][p], and dequantized into the NCHW plane contiguously. */
static pare_tensor *dq_conv_vnni(pare_ctx *ctx, const dq_state *s, const pare_layer *l, const pare_tensor *x,
                                 const pare_conv_geom *g)
{
    int N = x->shape[0], O = s->rows, K = s->cols, C = g->c;
    int ph = g->h + 2 * g->pad, pw = g->w + 2 * g->pad;
    size_t P = (size_t)g->oh * g->ow, img = (size_t)C * g->h * g->w, plane = (size_t)O * P;
    size_t kq = (size_t)s->kq;
    int pblk = (int)((P + 15) / 16);
    size_t ldc = (size_t)pblk * 16;
    size_t qbytes = align64(img), pbytes = align64((size_t)ph * pw * C), cbytes = align64((size_t)pblk * kq * 64);
    size_t per = qbytes + pbytes + cbytes;
    pare_tensor *y = pare_tensor_4d(&ctx->arena, N, O, g->oh, g->ow);
    pare_arena_pos mark = pare_arena_pos_get(&ctx->arena);
    int chunk = N < CONV_CHUNK ? N : CONV_CHUNK;
    char *work = pare_arena_alloc(&ctx->arena, (size_t)chunk * per + 64);
    pare_qparams p = batch_qparams(x->data, x->size, s->bits);
    dq_consts k;
    /* koff[k]: where packed k = (ky, kx, c) lies in the NHWC image from the
     * window's corner; K's padding reads the corner (its weights are 0). */
    size_t *koff = pare_arena_alloc(&ctx->arena, kq * 4 * sizeof *koff);
    PARE_CHECK(work && koff && !dq_consts_make(&ctx->arena, l, s, &p, &k), "arena full");
    for (size_t t = 0; t < kq * 4; t++) {
        size_t c = t % (size_t)C, kx = t / (size_t)C % (size_t)g->kw, ky = t / (size_t)C / (size_t)g->kw;
        koff[t] = t < (size_t)K ? (ky * (size_t)pw + kx) * (size_t)C + c : 0;
    }
    work += (64 - (uintptr_t)work % 64) % 64;
    uint8_t off = (uint8_t)(p.zero_point - p.qmin);
    /* the gather's byte offsets are int32: an image past 2^31 bytes goes the scalar way */
    int gather = C % 4 == 0 && (size_t)ph * pw * C < (size_t)INT32_MAX;
    for (int n0 = 0; n0 < N; n0 += chunk) {
        int nb = N - n0 < chunk ? N - n0 : chunk;
#pragma omp parallel for schedule(static) if (nb > 1 && (size_t)nb * O * K * P > PARE_PARALLEL_MIN)
        for (int j = 0; j < nb; j++) {
            int i = n0 + j;
            uint8_t *qi = (uint8_t *)work + (size_t)j * per, *pad = qi + qbytes, *cols = pad + pbytes;
            const float *xi = x->data + (size_t)i * img;
            for (size_t t = 0; t < img; t++) qi[t] = (uint8_t)(pare_quantize_value(xi[t], &p) - p.qmin);
            memset(pad, off, (size_t)ph * pw * C);
            for (int c = 0; c < C; c++)
                for (int yy = 0; yy < g->h; yy++) {
                    uint8_t *d = pad + ((size_t)(yy + g->pad) * pw + g->pad) * C + c;
                    const uint8_t *sq = qi + ((size_t)c * g->h + yy) * g->w;
                    for (int xx = 0; xx < g->w; xx++) d[(size_t)xx * C] = sq[xx];
                }
            if (gather) { /* 4 channels per group: 16 positions' groups in one gather */
                for (int pb = 0; pb < pblk; pb++) {
                    int32_t org[16];
                    for (int e = 0; e < 16; e++) {
                        size_t q = (size_t)pb * 16 + (size_t)e, oy = q / (size_t)g->ow, ox = q % (size_t)g->ow;
                        /* the last block's unused positions read the corner (their sums are not stored) */
                        org[e] =
                            q < P
                                ? (int32_t)((oy * (size_t)g->stride * (size_t)pw + ox * (size_t)g->stride) * (size_t)C)
                                : 0;
                    }
                    __m512i base = _mm512_loadu_si512(org);
                    uint8_t *dst = cols + (size_t)pb * kq * 64;
                    for (size_t t = 0; t < kq; t++) {
                        __m512i idx = _mm512_add_epi32(base, _mm512_set1_epi32((int32_t)koff[t * 4]));
                        _mm512_storeu_si512(dst + t * 64, _mm512_i32gather_epi32(idx, pad, 1));
                    }
                }
            } else { /* byte by byte (C not a multiple of 4, or a huge image) */
                for (size_t q = 0; q < ldc; q++) {
                    uint8_t *dst = cols + ((q / 16) * kq * 16 + q % 16) * 4;
                    if (q >= P) { /* the last block's unused positions */
                        for (size_t t = 0; t < kq; t++) memset(dst + t * 64, 0, 4);
                        continue;
                    }
                    size_t oy = q / (size_t)g->ow, ox = q % (size_t)g->ow;
                    const uint8_t *org =
                        pad + (oy * (size_t)g->stride * (size_t)pw + ox * (size_t)g->stride) * (size_t)C;
                    for (size_t t = 0; t < kq; t++)
                        for (size_t e = 0; e < 4; e++) dst[t * 64 + e] = org[koff[t * 4 + e]];
                }
            }
            dq_out d = {k, y->data + (size_t)i * plane, P};
            dq_gemm_weight_rows(s, cols, pblk, &d);
        }
    }
    pare_arena_rewind(&ctx->arena, mark);
    return y;
}
#endif /* DQ_VNNI */

static pare_tensor *dq_linear_forward(pare_ctx *ctx, pare_model *m, pare_layer *l, pare_tensor *x)
{
    (void)m;
    check_inference(ctx, l);
    const dq_state *s = state_of(l);
    int n = x->shape[0], K = s->cols;
    PARE_CHECK(x->size == (size_t)n * (size_t)K, "layer %s: input of %zu features, expected %d", l->name,
               x->size / (size_t)n, K);
#ifdef DQ_VNNI
    return dq_linear_vnni(ctx, s, l, x);
#else
    int O = s->rows;
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
#endif
}

#ifndef DQ_VNNI
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
#endif

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
    int K = s->cols;
    PARE_CHECK(g.oh > 0 && g.ow > 0 && K == g.c * g.kh * g.kw, "layer %s: input does not fit the kernel", l->name);
#ifdef DQ_VNNI
    return dq_conv_vnni(ctx, s, l, x, &g);
#else
    int N = x->shape[0], O = s->rows;
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
#endif
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
    s->dense = l->type;
    s->dense_kind = l->kind;
    for (size_t i = 0; i < l->weight->size; i++) l->weight->data[i] = scales[i / (size_t)s->cols] * (float)q[i];
#ifdef DQ_VNNI
    dq_pack(s, l);
#else
    s->w16 = pare_alloc(l->weight->size * sizeof *s->w16);
    for (size_t i = 0; i < l->weight->size; i++)
        s->w16[i] = (int16_t)q[i]; // NOLINT(bugprone-signed-char-misuse): int8 weights
#endif
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
