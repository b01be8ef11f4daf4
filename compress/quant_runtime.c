/* The integer-only int8 model: planning (shapes, checks, scratch size) and
 * the portable reference kernels. Activations are NHWC, conv weights OHWI.
 * Nothing in a kernel touches float; only the float entry/exit of
 * pare_qmodel_forward_float does, once per value. */
#include <math.h>
#include <string.h>

#include "compress/quant.h"

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__) && !defined(PARE_NO_QFAST)
#define PARE_QFAST 1
#include <immintrin.h>
#endif

/* Limits that keep every int32 accumulation exact: |x - zp| <= 255 and
 * |w| <= 128, so a dot product of at most 2^15 terms stays below 2^30, and a
 * bias below 2^30 keeps the sum inside int32. */
#define QMAX_DOT    (1 << 15)
#define QMAX_BIAS   (1 << 30)
#define QMAX_DIM    (1 << 14)
#define QMAX_VALUES (1 << 26)

static size_t align64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

void pare_qmodel_free(pare_qmodel *qm)
{
    if (!qm) return;
    for (int i = 0; i < qm->n_layers; i++) {
        pare_qlayer *l = &qm->layers[i];
        pare_free(l->weight);
        pare_free(l->bias);
        pare_free(l->mult);
        pare_free(l->shift);
        pare_free(l->w_scale);
    }
    pare_free(qm);
}

static int in_int8(int32_t v)
{
    return v >= -128 && v <= 127;
}

static int check_dims(const pare_qlayer *l, const char *what, int h, int w, int c)
{
    if (h < 1 || w < 1 || c < 1 || h > QMAX_DIM || w > QMAX_DIM || c > QMAX_DIM || (long long)h * w * c > QMAX_VALUES)
        return pare_set_error("int8 layer %s: %s shape %dx%dx%d is out of range", l->name, what, h, w, c);
    return 0;
}

/* Per-channel arrays of conv/linear: present, weights, multipliers, shifts and biases in range. */
static int check_channels(const pare_qlayer *l, long long dot)
{
    if (!l->weight || !l->bias || !l->mult || !l->shift)
        return pare_set_error("int8 layer %s: weights, bias or multipliers missing", l->name);
    if (dot > QMAX_DOT)
        return pare_set_error("int8 layer %s: %lld terms per output exceed the int32 accumulator's %d", l->name, dot,
                              QMAX_DOT);
    for (int c = 0; c < l->out_c; c++) {
        if (l->bias[c] > QMAX_BIAS || l->bias[c] < -QMAX_BIAS)
            return pare_set_error("int8 layer %s: bias %d of channel %d is out of range", l->name, (int)l->bias[c], c);
        if (l->mult[c] < 0 || l->shift[c] < -31 || l->shift[c] > 30)
            return pare_set_error("int8 layer %s: multiplier %d shift %d of channel %d is out of range", l->name,
                                  (int)l->mult[c], (int)l->shift[c], c);
    }
    return 0;
}

static int plan_layer(pare_qlayer *l)
{
    if (check_dims(l, "input", l->in_h, l->in_w, l->in_c)) return -1;
    if (!in_int8(l->in_zp) || !in_int8(l->out_zp) || !in_int8(l->act_min) || !in_int8(l->act_max) ||
        l->act_min > l->act_max)
        return pare_set_error("int8 layer %s: zero points or clamp outside int8", l->name);
    switch (l->kind) {
    case PARE_Q_CONV:
    case PARE_Q_MAXPOOL: {
        if (l->kernel < 1 || l->stride < 1 || l->pad < 0 || l->kernel > 64 || l->stride > 64 || l->pad >= l->kernel)
            return pare_set_error("int8 layer %s: kernel %d, stride %d, padding %d are not valid", l->name, l->kernel,
                                  l->stride, l->pad);
        if (l->kind == PARE_Q_MAXPOOL && (l->pad || l->in_zp != l->out_zp || l->in_scale != l->out_scale))
            return pare_set_error("int8 layer %s: max pooling keeps its input's quantization", l->name);
        long long oh = ((long long)l->in_h + 2 * l->pad - l->kernel) / l->stride + 1;
        long long ow = ((long long)l->in_w + 2 * l->pad - l->kernel) / l->stride + 1;
        if (l->in_h + 2 * l->pad < l->kernel || l->in_w + 2 * l->pad < l->kernel)
            return pare_set_error("int8 layer %s: the window does not fit the %dx%d input", l->name, l->in_h, l->in_w);
        l->out_h = (int)oh;
        l->out_w = (int)ow;
        if (l->kind == PARE_Q_MAXPOOL) l->out_c = l->in_c;
        if (check_dims(l, "output", l->out_h, l->out_w, l->out_c)) return -1;
        if (l->kind == PARE_Q_CONV && check_channels(l, (long long)l->kernel * l->kernel * l->in_c)) return -1;
        return 0;
    }
    case PARE_Q_LINEAR:
        if (l->in_h != 1 || l->in_w != 1)
            return pare_set_error("int8 layer %s: a linear layer needs a flat input, got %dx%dx%d", l->name, l->in_h,
                                  l->in_w, l->in_c);
        l->out_h = l->out_w = 1;
        if (check_dims(l, "output", 1, 1, l->out_c)) return -1;
        return check_channels(l, l->in_c);
    case PARE_Q_FLATTEN:
        if (l->in_zp != l->out_zp || l->in_scale != l->out_scale)
            return pare_set_error("int8 layer %s: flatten keeps its input's quantization", l->name);
        l->out_h = l->out_w = 1;
        l->out_c = l->in_h * l->in_w * l->in_c;
        return 0;
    }
    return pare_set_error("int8 layer %d: unknown kind", (int)l->kind);
}

int pare_qmodel_plan(pare_qmodel *qm)
{
    if (qm->n_layers < 1 || qm->n_layers > PARE_QMAX_LAYERS)
        return pare_set_error("int8 model: %d layers (1 to %d)", qm->n_layers, PARE_QMAX_LAYERS);
    if (!in_int8(qm->in_zp) || !(qm->in_scale > 0) || !isfinite(qm->in_scale))
        return pare_set_error("int8 model: input scale %g or zero point %d is not valid", (double)qm->in_scale,
                              (int)qm->in_zp);
    int h = qm->in_h, w = qm->in_w, c = qm->in_c, ndim_flat = (h == 0 && w == 0);
    if (ndim_flat) h = w = 1;
    size_t biggest = (size_t)h * w * c, work = 0;
    float scale = qm->in_scale;
    int32_t zp = qm->in_zp;
    for (int i = 0; i < qm->n_layers; i++) {
        pare_qlayer *l = &qm->layers[i];
        l->name[PARE_NAME_MAX - 1] = 0;
        if (l->in_h != h || l->in_w != w || l->in_c != c || l->in_zp != zp || l->in_scale != scale)
            return pare_set_error("int8 layer %d (%s): its input %dx%dx%d (zero point %d) does not follow the "
                                  "previous output %dx%dx%d (zero point %d)",
                                  i, l->name, l->in_h, l->in_w, l->in_c, (int)l->in_zp, h, w, c, (int)zp);
        if (!(l->out_scale > 0) || !isfinite(l->out_scale))
            return pare_set_error("int8 layer %s: output scale %g is not valid", l->name, (double)l->out_scale);
        if (plan_layer(l)) return -1;
        h = l->out_h;
        w = l->out_w;
        c = l->out_c;
        zp = l->out_zp;
        scale = l->out_scale;
        size_t n = (size_t)h * w * c;
        if (n > biggest) biggest = n;
        l->work_offset = work; /* each layer its own area: conv weights are transposed once per call */
        work += align64(pare_qlayer_work_bytes(l));
    }
    qm->n_out = h * w * c;
    qm->out_scale = scale;
    qm->out_zp = zp;
    /* two ping-pong activations of one sample, rounded up to keep what
     * follows aligned, then every layer's work area */
    qm->act_bytes = (biggest + 63) & ~(size_t)63;
    qm->scratch_bytes = 2 * qm->act_bytes + work;
    return 0;
}

static int8_t requantize(int32_t acc, const pare_qlayer *l, int c)
{
    int32_t v = pare_mul_by_quantized_multiplier(acc, l->mult[c], l->shift[c]);
    /* v is at most INT32_MAX in magnitude; add the zero point in 64 bits */
    int64_t q = (int64_t)v + l->out_zp;
    if (q < l->act_min) q = l->act_min;
    if (q > l->act_max) q = l->act_max;
    return (int8_t)q;
}

/* ---- the fast kernel: AVX-512 VNNI ------------------------------------------
 * Built when the compiler targets VNNI (the Makefile's -march=native on a
 * VNNI machine); PORTABLE=1 or an older CPU keeps only the reference above.
 * vpdpbusd multiplies unsigned by signed bytes, four at a time into int32
 * lanes. Activations are shifted to uint8 (x ^ 0x80 == x + 128) and the
 * shift is taken back with the weight sums: sum (x+128) w - (128 + zp) sum w
 * = sum (x - zp) w, the reference's sum. Exactness: vpdpbusd (not the
 * saturating vpdpbusds) and vpaddd wrap modulo 2^32, so the int32 result is
 * the true sum modulo 2^32; the true sum is the reference's bias + dot,
 * which the plan keeps inside int32 (|bias| <= 2^30, |dot| < 2^30), so the
 * wrapped result is exact even if a partial sum left int32 on the way. */
#ifdef PARE_QFAST
/* Output pixels per micro-tile: 6 rows x 4 blocks of 16 channels = 24
 * accumulators + 4 weight vectors + 1 broadcast fit the 32 zmm registers. */
#define QROWS 6
#define QBLK  4

typedef struct qconv_geom {
    size_t kp, kg, ob, pix, pix_pad; /* K rounded to 4, K / 4 groups, 16-channel blocks, pixels */
    size_t w_bytes, cb_bytes, panel_bytes, q_bytes;
} qconv_geom;

static qconv_geom conv_geom(const pare_qlayer *l)
{
    qconv_geom g;
    size_t k = (size_t)l->kernel * l->kernel * l->in_c;
    g.kp = (k + 3) & ~(size_t)3;
    g.kg = g.kp / 4;
    g.ob = ((size_t)l->out_c + 15) / 16;
    g.pix = (size_t)l->out_h * l->out_w;
    g.pix_pad = (g.pix + QROWS - 1) / QROWS * QROWS;
    g.w_bytes = align64(g.ob * g.kg * 64);
    g.cb_bytes = align64(g.ob * 16 * sizeof(int32_t));
    g.panel_bytes = align64(g.pix_pad * g.kp);
    g.q_bytes = g.ob * 2 * 6 * 64; /* requantization constants: 2 qreq8 of 6 vectors a block */
    return g;
}

static size_t fast_work_bytes(const pare_qlayer *l)
{
    qconv_geom g = conv_geom(l);
    return g.w_bytes + g.cb_bytes + g.panel_bytes + g.q_bytes;
}

/* Weights OHWI -> [block of 16 channels][K / 4][16][4], the order vpdpbusd
 * reads them (lane j, bytes k..k+3 of channel 16 b + j), zero past out_c and
 * past K so that the padding of the panel adds nothing; and per channel the
 * starting accumulator bias - (128 + in_zp) * sum w, which fits int32
 * (|bias| <= 2^30, |(128 + zp) sum w| <= 255 * 128 * 2^15 < 2^30). Once per
 * call, like the reference's transposition. */
static void conv_pack(const pare_qlayer *l, int8_t *work)
{
    qconv_geom g = conv_geom(l);
    size_t k = (size_t)l->kernel * l->kernel * l->in_c, oc = (size_t)l->out_c;
    int8_t *wp = work;
    int32_t *cb = (int32_t *)(void *)(work + g.w_bytes);
    memset(wp, 0, g.ob * g.kg * 64);
    memset(cb, 0, g.ob * 16 * sizeof(int32_t));
    for (size_t o = 0; o < oc; o++) {
        const int8_t *src = l->weight + o * k;
        int8_t *dst = wp + (o / 16 * g.kg * 16 + o % 16) * 4;
        int32_t s = 0; /* |s| <= 128 * 2^15 */
        for (size_t t = 0; t < k; t++) s += src[t];
        size_t whole = k / 4;
        for (size_t q = 0; q < whole; q++) memcpy(dst + q * 64, src + q * 4, 4); /* 4-byte moves */
        for (size_t t = whole * 4; t < k; t++) dst[whole * 64 + t % 4] = src[t];
        cb[o] = (int32_t)(l->bias[o] - (128 + (int64_t)l->in_zp) * s);
    }
}

/* dst[0..n) = src + 128 as uint8, and dst[0..n) = v: 64 bytes at a time
 * with a masked tail. Inline vector code, not memcpy/memset calls: conv1's
 * runs are 3 bytes long, where a call costs more than the copy. */
static inline void shift_copy(uint8_t *dst, const int8_t *src, size_t n)
{
    const __m512i c80 = _mm512_set1_epi8((char)0x80);
    for (; n >= 64; n -= 64, dst += 64, src += 64)
        _mm512_storeu_si512(dst, _mm512_xor_si512(_mm512_loadu_si512(src), c80));
    if (n) {
        __mmask64 m = ((__mmask64)1 << n) - 1;
        _mm512_mask_storeu_epi8(dst, m, _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, src), c80));
    }
}

static inline void fill_bytes(uint8_t *dst, uint8_t v, size_t n)
{
    const __m512i x = _mm512_set1_epi8((char)v);
    for (; n >= 64; n -= 64, dst += 64) _mm512_storeu_si512(dst, x);
    if (n) _mm512_mask_storeu_epi8(dst, ((__mmask64)1 << n) - 1, x);
}

/* im2col: one row of kp uint8 per output pixel, in OHWI's (ky, kx, c) order.
 * A padding pixel holds in_zp + 128, the shifted zero point: like the
 * reference's in_zp it contributes (zp - zp) w = 0 once corrected. */
static void conv_panel(const pare_qlayer *l, const int8_t *in, uint8_t *panel, const qconv_geom *g)
{
    int k = l->kernel, ic = l->in_c, s = l->stride, p = l->pad;
    size_t kk = (size_t)k * k * ic, row = (size_t)k * ic;
    uint8_t zp = (uint8_t)((uint8_t)(int8_t)l->in_zp ^ 0x80u);
    for (int oy = 0; oy < l->out_h; oy++)
        for (int ox = 0; ox < l->out_w; ox++) {
            uint8_t *dst = panel + ((size_t)oy * l->out_w + ox) * g->kp;
            int x0 = ox * s - p;
            for (int ky = 0; ky < k; ky++) {
                int iy = oy * s - p + ky;
                uint8_t *d = dst + (size_t)ky * row;
                if (iy < 0 || iy >= l->in_h) {
                    fill_bytes(d, zp, row);
                } else if (x0 >= 0 && x0 + k <= l->in_w) {
                    shift_copy(d, in + ((size_t)iy * l->in_w + x0) * ic, row);
                } else {
                    for (int kx = 0; kx < k; kx++) {
                        int ix = x0 + kx;
                        if (ix < 0 || ix >= l->in_w)
                            fill_bytes(d + (size_t)kx * ic, zp, (size_t)ic);
                        else
                            shift_copy(d + (size_t)kx * ic, in + ((size_t)iy * l->in_w + ix) * ic, (size_t)ic);
                    }
                }
            }
            fill_bytes(dst + kk, 0, g->kp - kk); /* the weights there are 0 too */
        }
    /* the rows that round the pixels up to a whole tile: computed, never stored */
    memset(panel + g->pix * g->kp, 0, (g->pix_pad - g->pix) * g->kp);
}

/* acc += u (uint8) . s (int8) by 4-byte groups. Inline assembly: gcc 12
 * wraps _mm512_dpbusd_epi32 in register copies that cost up to 30% here. */
#define QDP(acc, u, s) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s))

/* QROWS pixels x nb blocks of 16 channels over all of K; nb is a constant
 * at every call, so the arrays live in registers. */
static inline __attribute__((always_inline)) void conv_tile(const uint8_t *a, size_t kp, const int8_t *w, size_t kg_n,
                                                            const int32_t *cb, int32_t *out, int nb)
{
    __m512i acc[QROWS][QBLK];
    for (int b = 0; b < nb; b++) {
        __m512i init = _mm512_loadu_si512(cb + 16 * b);
        for (int r = 0; r < QROWS; r++) acc[r][b] = init;
    }
    size_t wstride = kg_n * 64;
    for (size_t q = 0; q < kg_n; q++) {
        __m512i wv[QBLK];
        for (int b = 0; b < nb; b++) wv[b] = _mm512_loadu_si512(w + b * wstride + q * 64);
        for (int r = 0; r < QROWS; r++) {
            int32_t v;
            memcpy(&v, a + r * kp + q * 4, 4);
            __m512i x = _mm512_set1_epi32(v);
            for (int b = 0; b < nb; b++) QDP(acc[r][b], x, wv[b]);
        }
    }
    for (int r = 0; r < QROWS; r++)
        for (int b = 0; b < nb; b++) _mm512_storeu_si512(out + r * QBLK * 16 + b * 16, acc[r][b]);
}

/* Eight outputs of pare_mul_by_quantized_multiplier in 64-bit lanes (|x m|
 * < 2^62: nothing overflows) with per-channel constants from
 * requant_consts, saturated to int32 like the scalar code.
 * shift <= 0: pare_srdhm is floor((x m + 2^30) / 2^31) for m >= 0 (its
 * nudge folds into one arithmetic shift: r1 = 2^30, s1 = 31); then
 * pare_rdbpot by e = -shift, to nearest with ties away from zero:
 * floor((v + 2^(e-1) - [v < 0]) / 2^e) for e > 0, v itself for e = 0.
 * shift > 0: one rounding, floor((x m + 2^(s1-1)) / 2^s1) with s1 = 31 -
 * shift, and e = 0 makes the second step the identity. */
typedef struct qreq8 {
    __m512i m, r1, s1, e, half, negadj; /* negadj: -1 where e > 0, else 0 */
} qreq8;

static inline __m256i requant8(__m512i x, const qreq8 *c)
{
    __m512i v = _mm512_srav_epi64(_mm512_add_epi64(_mm512_mul_epi32(x, c->m), c->r1), c->s1);
    __m512i adj = _mm512_and_si512(_mm512_srai_epi64(v, 63), c->negadj); /* -1 for v < 0 when rounding */
    __m512i r = _mm512_srav_epi64(_mm512_add_epi64(_mm512_add_epi64(v, c->half), adj), c->e);
    return _mm512_cvtsepi64_epi32(r);
}

/* The constants of 8 channels from their 8 multipliers and shifts. */
static inline qreq8 requant_consts(__m256i m32, __m256i sh32)
{
    qreq8 c;
    const __m512i one = _mm512_set1_epi64(1), zero = _mm512_setzero_si512();
    __m512i sh = _mm512_cvtepi32_epi64(sh32);
    __mmask8 pos = _mm512_cmpgt_epi64_mask(sh, zero);
    c.m = _mm512_cvtepi32_epi64(m32);
    c.s1 = _mm512_mask_sub_epi64(_mm512_set1_epi64(31), pos, _mm512_set1_epi64(31), sh);
    c.r1 = _mm512_sllv_epi64(one, _mm512_sub_epi64(c.s1, one));
    c.e = _mm512_mask_mov_epi64(_mm512_sub_epi64(zero, sh), pos, zero);
    __mmask8 round = _mm512_cmpgt_epi64_mask(c.e, zero);
    c.half = _mm512_maskz_sllv_epi64(round, one, _mm512_sub_epi64(c.e, one));
    c.negadj = _mm512_maskz_mov_epi64(round, _mm512_set1_epi64(-1));
    return c;
}

/* Each 16-channel block's requantization constants, once per layer and
 * sample rather than once per tile (conv1 has 3 terms per output: there
 * requantization is half the work). Kept in the work area, copied with
 * memcpy: it is only 4-byte aligned. */
static void requant_prepare(const pare_qlayer *l, size_t ob, uint8_t *qc)
{
    size_t oc = (size_t)l->out_c;
    for (size_t b = 0; b < ob; b++) {
        size_t n = oc - b * 16 < 16 ? oc - b * 16 : 16;
        __mmask16 k = (__mmask16)((1u << n) - 1);
        __m512i m32 = _mm512_maskz_loadu_epi32(k, l->mult + b * 16);
        __m512i s32 = _mm512_maskz_loadu_epi32(k, l->shift + b * 16);
        qreq8 q[2] = {requant_consts(_mm512_castsi512_si256(m32), _mm512_castsi512_si256(s32)),
                      requant_consts(_mm512_extracti64x4_epi64(m32, 1), _mm512_extracti64x4_epi64(s32, 1))};
        memcpy(qc + b * sizeof q, q, sizeof q);
    }
}

/* Requantizes rows x nc accumulators (row stride QBLK * 16) of channels
 * c0.. (a multiple of 16) to NHWC int8. noinline: inlined, its constants
 * stay live in zmm registers across conv_tile and push an accumulator out
 * to the stack. */
__attribute__((noinline)) static void requant_rows(const pare_qlayer *l, const uint8_t *qc, const int32_t *acc,
                                                   int rows, size_t c0, size_t nc, int8_t *dst)
{
    size_t oc = (size_t)l->out_c;
    /* clamp (saturated) v to [act_min - zp, act_max - zp], then add zp:
     * the scalar's clamp of v + zp, without leaving int32 */
    __m512i zp = _mm512_set1_epi32(l->out_zp), lo = _mm512_set1_epi32(l->act_min - l->out_zp),
            hi = _mm512_set1_epi32(l->act_max - l->out_zp);
    for (size_t b = 0; b * 16 < nc; b++) {
        size_t n = nc - b * 16 < 16 ? nc - b * 16 : 16;
        __mmask16 k = (__mmask16)((1u << n) - 1);
        qreq8 q[2];
        memcpy(q, qc + (c0 / 16 + b) * sizeof q, sizeof q);
        for (int r = 0; r < rows; r++) {
            __m512i a = _mm512_loadu_si512(acc + r * QBLK * 16 + b * 16);
            __m256i y0 = requant8(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(a)), &q[0]);
            __m256i y1 = requant8(_mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(a, 1)), &q[1]);
            __m512i y = _mm512_inserti64x4(_mm512_castsi256_si512(y0), y1, 1);
            y = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(y, lo), hi), zp);
            __m128i bytes = _mm512_cvtepi32_epi8(y); /* exact: y is in [-128, 127] */
            if (n == 16)
                _mm_storeu_si128((__m128i *)(void *)(dst + r * oc + b * 16), bytes);
            else
                _mm_mask_storeu_epi8(dst + r * oc + b * 16, k, bytes);
        }
    }
}

/* Needs conv_pack done on work. */
static void conv_fast(const pare_qlayer *l, const int8_t *in, int8_t *out, int8_t *work)
{
    qconv_geom g = conv_geom(l);
    const int8_t *wp = work;
    const int32_t *cb = (const int32_t *)(const void *)(work + g.w_bytes);
    uint8_t *panel = (uint8_t *)(work + g.w_bytes + g.cb_bytes);
    uint8_t *qc = panel + g.panel_bytes;
    int32_t tile[QROWS * QBLK * 16];
    size_t oc = (size_t)l->out_c;
    _Static_assert(sizeof(qreq8) == 6 * 64, "qreq8 is 6 vectors (conv_geom's q_bytes)");
    requant_prepare(l, g.ob, qc);
    conv_panel(l, in, panel, &g);
    for (size_t p = 0; p < g.pix; p += QROWS) {
        const uint8_t *a = panel + p * g.kp;
        int rows = g.pix - p < QROWS ? (int)(g.pix - p) : QROWS;
        for (size_t b = 0; b < g.ob; b += QBLK) {
            int nb = g.ob - b < QBLK ? (int)(g.ob - b) : QBLK;
            const int8_t *w = wp + b * g.kg * 64;
            switch (nb) {
            case 4:
                conv_tile(a, g.kp, w, g.kg, cb + b * 16, tile, 4);
                break;
            case 3:
                conv_tile(a, g.kp, w, g.kg, cb + b * 16, tile, 3);
                break;
            case 2:
                conv_tile(a, g.kp, w, g.kg, cb + b * 16, tile, 2);
                break;
            default:
                conv_tile(a, g.kp, w, g.kg, cb + b * 16, tile, 1);
                break;
            }
            size_t c0 = b * 16, nc = oc - c0 < (size_t)nb * 16 ? oc - c0 : (size_t)nb * 16;
            requant_rows(l, qc, tile, rows, c0, nc, out + p * oc + c0);
        }
    }
}

/* Four outputs at a time, each a dot product of a weight row with the
 * input: the rows are already K-contiguous, so nothing is repacked (fc1's
 * weights are the model's largest). The weight sum rides along as a second
 * vpdpbusd against 128s: sum 128 w. Partial sums stay below 2^30. */
static void linear_fast(const pare_qlayer *l, const int8_t *in, int8_t *out)
{
    int n = l->in_c, oc = l->out_c;
    const __m512i c80 = _mm512_set1_epi8((char)0x80);
    int32_t acc[4], cor[4];
    for (int o = 0; o < oc; o += 4) {
        int rows = oc - o < 4 ? oc - o : 4;
        __m512i a[4], c[4];
        for (int j = 0; j < 4; j++) a[j] = c[j] = _mm512_setzero_si512();
        for (int k = 0; k < n; k += 64) {
            __mmask64 m = n - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (n - k)) - 1);
            /* lanes past n: x becomes 128, w is 0, nothing is added */
            __m512i x = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, in + k), c80);
            for (int j = 0; j < rows; j++) {
                __m512i w = _mm512_maskz_loadu_epi8(m, l->weight + (size_t)(o + j) * n + k);
                QDP(a[j], x, w);
                QDP(c[j], c80, w);
            }
        }
        for (int j = 0; j < rows; j++) {
            acc[j] = _mm512_reduce_add_epi32(a[j]);
            cor[j] = _mm512_reduce_add_epi32(c[j]);
            /* sum x w = acc - cor, sum w = cor / 128 (exact) */
            int64_t dot = (int64_t)acc[j] - cor[j] - (int64_t)l->in_zp * (cor[j] / 128);
            out[o + j] = requantize((int32_t)(l->bias[o + j] + dot), l, o + j);
        }
    }
}
#endif /* PARE_QFAST */

/* sum (x[i] - zp) * w[i], computed as sum x w - zp sum w: two plain int8
 * dot products, a pattern compilers turn into pmaddwd/vpdpwssd (subtracting
 * inside the loop defeats it, 2x slower). Every partial sum stays below
 * 2^30 in magnitude for n <= 2^15 (QMAX_DOT), so int32 is exact. */
static int32_t dot_zp(const int8_t *restrict x, const int8_t *restrict w, int n, int32_t zp)
{
    int32_t dot = 0, wsum = 0;
    for (int i = 0; i < n; i++) {
        dot += x[i] * w[i];
        wsum += w[i];
    }
    return dot - zp * wsum;
}

static size_t padded_bytes(const pare_qlayer *l)
{
    return l->pad ? (size_t)(l->in_h + 2 * l->pad) * (size_t)(l->in_w + 2 * l->pad) * (size_t)l->in_c : 0;
}

/* A conv layer's work: its padded input, its weights transposed to
 * [k][k][in_c][out_c], and out_c int32 accumulators. */
static size_t ref_work_bytes(const pare_qlayer *l)
{
    return align64(padded_bytes(l)) + align64((size_t)l->kernel * l->kernel * l->in_c * l->out_c) +
           (size_t)l->out_c * sizeof(int32_t);
}

/* The reference's or the fast kernel's, whichever is larger: the same area
 * serves both (the tests run both on one layer). */
size_t pare_qlayer_work_bytes(const pare_qlayer *l)
{
    if (l->kind != PARE_Q_CONV) return 0;
    size_t n = ref_work_bytes(l);
#ifdef PARE_QFAST
    size_t f = fast_work_bytes(l);
    if (f > n) n = f;
#endif
    return n;
}

static int8_t *conv_wt(const pare_qlayer *l, int8_t *work)
{
    return work + align64(padded_bytes(l));
}

/* OHWI -> HWIO, so that one input value meets all output channels' weights
 * in one contiguous run. */
static void transpose_weights(const pare_qlayer *l, int8_t *work)
{
    int8_t *wt = conv_wt(l, work);
    size_t terms = (size_t)l->kernel * l->kernel * l->in_c, oc = (size_t)l->out_c;
    for (size_t o = 0; o < oc; o++)
        for (size_t t = 0; t < terms; t++) wt[t * oc + o] = l->weight[o * terms + t];
}

/* The input with its border of `pad` pixels holding the zero point (real 0). */
static const int8_t *pad_input(const pare_qlayer *l, const int8_t *in, int8_t *work)
{
    int p = l->pad, w = l->in_w + 2 * p, c = l->in_c;
    memset(work, (int)(int8_t)l->in_zp, padded_bytes(l));
    for (int y = 0; y < l->in_h; y++)
        memcpy(work + ((size_t)(y + p) * w + p) * c, in + (size_t)y * l->in_w * c, (size_t)l->in_w * c);
    return work;
}

/* acc[0..n) += xv * w[0..n): the inner loop, contiguous in both. */
static void axpy_i8(int32_t *restrict acc, const int8_t *restrict w, int32_t xv, int n)
{
    for (int i = 0; i < n; i++) acc[i] += xv * w[i];
}

/* Per output pixel, every input value of the receptive field (in NHWC, one
 * kernel row of k * in_c values is contiguous) is multiplied into all
 * out_c accumulators at once. Needs transpose_weights done on work. Partial
 * sums stay below 2^31: |bias| <= 2^30 and the terms below 2^30 (plan). */
static void conv_core(const pare_qlayer *l, const int8_t *in, int8_t *out, int8_t *work)
{
    const int8_t *src = l->pad ? pad_input(l, in, work) : in;
    const int8_t *wt = conv_wt(l, work);
    int32_t *acc = (int32_t *)(void *)(wt + align64((size_t)l->kernel * l->kernel * l->in_c * l->out_c));
    int k = l->kernel, ic = l->in_c, oc = l->out_c, sw = l->in_w + 2 * l->pad, row = k * ic;
    for (int oy = 0; oy < l->out_h; oy++)
        for (int ox = 0; ox < l->out_w; ox++) {
            const int8_t *corner = src + ((size_t)oy * l->stride * sw + (size_t)ox * l->stride) * ic;
            memcpy(acc, l->bias, (size_t)oc * sizeof(int32_t));
            for (int ky = 0; ky < k; ky++) {
                const int8_t *xr = corner + (size_t)ky * sw * ic, *wr = wt + (size_t)ky * row * oc;
                for (int j = 0; j < row; j++) axpy_i8(acc, wr + (size_t)j * oc, xr[j] - l->in_zp, oc);
            }
            int8_t *dst = out + ((size_t)oy * l->out_w + ox) * oc;
            for (int c = 0; c < oc; c++) dst[c] = requantize(acc[c], l, c);
        }
}

static void linear_run(const pare_qlayer *l, const int8_t *in, int8_t *out)
{
    for (int o = 0; o < l->out_c; o++) {
        const int8_t *wt = l->weight + (size_t)o * l->in_c;
        out[o] = requantize(l->bias[o] + dot_zp(in, wt, l->in_c, l->in_zp), l, o);
    }
}

/* Max commutes with the monotone map q -> scale * (q - zp): pooling int8
 * values directly is exact. */
static void maxpool_run(const pare_qlayer *l, const int8_t *in, int8_t *out)
{
    /* channels innermost (NHWC): each window pixel is one contiguous run of
     * c values, maxed into the output row at once (vectorizes; the order
     * of the maxima does not change them) */
    int k = l->kernel;
    size_t c = (size_t)l->in_c;
    int8_t lo = (int8_t)l->act_min, hi = (int8_t)l->act_max;
    for (int oy = 0; oy < l->out_h; oy++)
        for (int ox = 0; ox < l->out_w; ox++) {
            int8_t *restrict dst = out + ((size_t)oy * l->out_w + ox) * c;
            for (size_t ch = 0; ch < c; ch++) dst[ch] = lo; /* the clamp from below, and max's start */
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++) {
                    const int8_t *restrict src =
                        in + (((size_t)(oy * l->stride + ky) * l->in_w) + (size_t)ox * l->stride + kx) * c;
                    for (size_t ch = 0; ch < c; ch++) dst[ch] = src[ch] > dst[ch] ? src[ch] : dst[ch];
                }
            for (size_t ch = 0; ch < c; ch++) dst[ch] = dst[ch] < hi ? dst[ch] : hi;
        }
}

void pare_qlayer_run_reference(const pare_qlayer *l, const int8_t *in, int8_t *out, int8_t *work)
{
    switch (l->kind) {
    case PARE_Q_CONV:
        transpose_weights(l, work);
        conv_core(l, in, out, work);
        break;
    case PARE_Q_LINEAR:
        linear_run(l, in, out);
        break;
    case PARE_Q_MAXPOOL:
        maxpool_run(l, in, out);
        break;
    case PARE_Q_FLATTEN:
        memmove(out, in, (size_t)l->out_c);
        break; /* NHWC order is already flat */
    }
}

int pare_qkernel_fast(void)
{
#ifdef PARE_QFAST
    return 1;
#else
    return 0;
#endif
}

void pare_qlayer_run(const pare_qlayer *l, const int8_t *in, int8_t *out, int8_t *work)
{
#ifdef PARE_QFAST
    if (l->kind == PARE_Q_CONV) {
        conv_pack(l, work);
        conv_fast(l, in, out, work);
        return;
    }
    if (l->kind == PARE_Q_LINEAR) {
        linear_fast(l, in, out);
        return;
    }
#endif
    pare_qlayer_run_reference(l, in, out, work);
}

/* Each layer's work area, after the two activation buffers. */
static int8_t *layer_work(const pare_qmodel *qm, int i, int8_t *scratch)
{
    return scratch + 2 * qm->act_bytes + qm->layers[i].work_offset;
}

/* Once per call, not per sample: the transposed conv weights. */
static void prepare_call(const pare_qmodel *qm, int8_t *scratch)
{
    for (int i = 0; i < qm->n_layers; i++)
        if (qm->layers[i].kind == PARE_Q_CONV) {
#ifdef PARE_QFAST
            conv_pack(&qm->layers[i], layer_work(qm, i, scratch));
#else
            transpose_weights(&qm->layers[i], layer_work(qm, i, scratch));
#endif
        }
}

/* One sample through every layer, ping-ponging between the two activation buffers. */
static const int8_t *run_sample(const pare_qmodel *qm, const int8_t *in, int8_t *scratch)
{
    const int8_t *cur = in;
    for (int i = 0; i < qm->n_layers; i++) {
        const pare_qlayer *l = &qm->layers[i];
        int8_t *dst = scratch + (i % 2) * qm->act_bytes;
        if (l->kind == PARE_Q_CONV)
#ifdef PARE_QFAST
            conv_fast(l, cur, dst, layer_work(qm, i, scratch));
#else
            conv_core(l, cur, dst, layer_work(qm, i, scratch));
#endif
        else
            pare_qlayer_run(l, cur, dst, NULL);
        cur = dst;
    }
    return cur;
}

static int check_scratch(const pare_qmodel *qm, const void *scratch, size_t bytes)
{
    if (!scratch || bytes < qm->scratch_bytes)
        return pare_set_error("int8 forward: scratch of %zu bytes, the model needs %zu", scratch ? bytes : 0,
                              qm->scratch_bytes);
    if ((uintptr_t)scratch % sizeof(int32_t))
        return pare_set_error("int8 forward: the scratch must be 4-byte aligned (it holds int32 accumulators)");
    return 0;
}

int pare_qmodel_forward(const pare_qmodel *qm, const int8_t *in, int n, int8_t *out, void *scratch,
                        size_t scratch_bytes)
{
    if (check_scratch(qm, scratch, scratch_bytes)) return -1;
    size_t in_size = (size_t)qm->layers[0].in_h * qm->layers[0].in_w * qm->layers[0].in_c;
    prepare_call(qm, scratch);
    for (int s = 0; s < n; s++) {
        const int8_t *r = run_sample(qm, in + (size_t)s * in_size, scratch);
        memcpy(out + (size_t)s * qm->n_out, r, (size_t)qm->n_out);
    }
    return 0;
}

/* dst[i * stride] = pare_quantize_value(src[i]) for i < n. The vector
 * path does what pare_quantize_value does in double, 8 lanes at a time: the
 * same IEEE division, then round half away from zero done exactly (t =
 * trunc(q), q - t is exact, |q - t| >= 0.5 steps away from zero), NaN to
 * qmin (vmaxpd returns its second operand for a NaN), clamp. */
static void quantize_plane(const float *src, size_t n, const pare_qparams *p, int8_t *dst, size_t stride)
{
    size_t i = 0;
#ifdef PARE_QFAST
    const __m512d scale = _mm512_set1_pd((double)p->scale), zp = _mm512_set1_pd((double)p->zero_point);
    const __m512d lo = _mm512_set1_pd((double)p->qmin), hi = _mm512_set1_pd((double)p->qmax);
    const __m512d half = _mm512_set1_pd(0.5), one = _mm512_set1_pd(1.0);
    for (; i + 8 <= n; i += 8) {
        __m512d q = _mm512_div_pd(_mm512_cvtps_pd(_mm256_loadu_ps(src + i)), scale);
        __m512d t = _mm512_roundscale_pd(q, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        __m512d frac = _mm512_sub_pd(q, t);
        __mmask8 up = _mm512_cmp_pd_mask(frac, half, _CMP_GE_OQ);
        __mmask8 down = _mm512_cmp_pd_mask(frac, _mm512_sub_pd(_mm512_setzero_pd(), half), _CMP_LE_OQ);
        t = _mm512_mask_sub_pd(_mm512_mask_add_pd(t, up, t, one), down, t, one);
        t = _mm512_min_pd(_mm512_max_pd(_mm512_add_pd(t, zp), lo), hi);
        int32_t v[8];
        _mm256_storeu_si256((__m256i *)(void *)v, _mm512_cvtpd_epi32(t));
        for (int j = 0; j < 8; j++) dst[(i + (size_t)j) * stride] = (int8_t)v[j];
    }
#endif
    for (; i < n; i++) dst[i * stride] = (int8_t)pare_quantize_value(src[i], p);
}

int pare_qmodel_forward_float(const pare_qmodel *qm, const float *in, int n, float *out, void *scratch,
                              size_t scratch_bytes)
{
    if (check_scratch(qm, scratch, scratch_bytes)) return -1;
    const pare_qlayer *first = &qm->layers[0];
    int h = first->in_h, w = first->in_w, c = first->in_c;
    size_t in_size = (size_t)h * w * c;
    int8_t *x = (int8_t *)scratch + qm->act_bytes; /* layer 0 writes the first half */
    pare_qparams p = {qm->in_scale, qm->in_zp, -128, 127};
    prepare_call(qm, scratch);
    for (int s = 0; s < n; s++) {
        const float *src = in + (size_t)s * in_size;
        /* NCHW float -> NHWC int8, the one place the input meets float */
        for (int ch = 0; ch < c; ch++) quantize_plane(src + (size_t)ch * h * w, (size_t)h * w, &p, x + ch, (size_t)c);
        const int8_t *r = run_sample(qm, x, scratch);
        for (int o = 0; o < qm->n_out; o++) out[(size_t)s * qm->n_out + o] = qm->out_scale * (float)(r[o] - qm->out_zp);
    }
    return 0;
}

double pare_qmodel_evaluate(const pare_qmodel *qm, const pare_dataset *ds, int n, void *scratch, size_t scratch_bytes)
{
    int per = ds->rows * ds->cols;
    const pare_qlayer *first = &qm->layers[0];
    if (per != first->in_h * first->in_w * first->in_c || qm->n_out < 1)
        return pare_set_error("int8 model: it takes %d values per sample, the images have %d",
                              first->in_h * first->in_w * first->in_c, per);
    if (check_scratch(qm, scratch, scratch_bytes)) return -1;
    if (n <= 0 || n > ds->n) n = ds->n;
    if (n == 0) return pare_set_error("int8 evaluation: the dataset is empty");
    enum { BATCH = 256 };
    float *x = pare_alloc((size_t)BATCH * per * sizeof(float)),
          *y = pare_alloc((size_t)BATCH * qm->n_out * sizeof(float));
    long right = 0;
    for (int s = 0; s < n; s += BATCH) {
        int b = n - s < BATCH ? n - s : BATCH;
        const uint8_t *px = ds->images + (size_t)s * per;
        for (size_t i = 0; i < (size_t)b * per; i++) x[i] = ((float)px[i] / 255 - PARE_MNIST_MEAN) / PARE_MNIST_STD;
        pare_qmodel_forward_float(qm, x, b, y, scratch, scratch_bytes);
        for (int k = 0; k < b; k++) {
            const float *row = y + (size_t)k * qm->n_out;
            int best = 0;
            for (int c = 1; c < qm->n_out; c++)
                if (row[c] > row[best]) best = c;
            right += best == ds->labels[s + k];
        }
    }
    pare_free(x);
    pare_free(y);
    return (double)right / n;
}
