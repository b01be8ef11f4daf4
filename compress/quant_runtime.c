/* The integer-only int8 model: planning (shapes, checks, scratch size), the
 * portable reference kernels, the AVX2 and AVX-512 VNNI kernels, and the
 * forward pass in groups of samples split between threads. Activations are
 * NHWC, conv weights OHWI. Nothing in a kernel touches float; only the
 * float entry/exit of pare_qmodel_forward_float does, once per value. */
#include <math.h>
#include <string.h>

#include "compress/quant.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* VNNI: when the build targets it (-march=native on a VNNI machine). */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__) && !defined(PARE_NO_QFAST)
#define PARE_QFAST 1
#endif
/* AVX2: on any x86-64 build by gcc or clang, through a target attribute,
 * used where the CPU has it (checked at run time). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(PARE_NO_QFAST)
#define PARE_QAVX2 1
#endif
#if defined(PARE_QFAST) || defined(PARE_QAVX2)
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
        pare_free(l->lut);
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
    case PARE_Q_AVGPOOL:
        if (l->kernel < 1 || l->stride < 1 || l->kernel > 64 || l->stride > 64 || l->pad)
            return pare_set_error("int8 layer %s: kernel %d, stride %d, padding %d are not valid", l->name, l->kernel,
                                  l->stride, l->pad);
        if (l->in_h < l->kernel || l->in_w < l->kernel)
            return pare_set_error("int8 layer %s: the window does not fit the %dx%d input", l->name, l->in_h, l->in_w);
        if (!l->mult || !l->shift || l->mult[0] < 0 || l->shift[0] < -31 || l->shift[0] > 30)
            return pare_set_error("int8 layer %s: average pooling needs a valid multiplier and shift", l->name);
        l->out_h = (l->in_h - l->kernel) / l->stride + 1;
        l->out_w = (l->in_w - l->kernel) / l->stride + 1;
        l->out_c = l->in_c;
        return check_dims(l, "output", l->out_h, l->out_w, l->out_c);
    case PARE_Q_LUT:
        if (!l->lut) return pare_set_error("int8 layer %s: the lookup table is missing", l->name);
        l->out_h = l->in_h;
        l->out_w = l->in_w;
        l->out_c = l->in_c;
        return 0;
    }
    return pare_set_error("int8 layer %d: unknown kind", (int)l->kind);
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

/* Terms per output (K) and output pixels per sample of a conv or linear
 * layer; a linear layer is a 1x1 conv on a 1x1 image. */
static size_t layer_terms(const pare_qlayer *l)
{
    return l->kind == PARE_Q_LINEAR ? (size_t)l->in_c : (size_t)l->kernel * l->kernel * l->in_c;
}

static size_t layer_pixels(const pare_qlayer *l)
{
    return l->kind == PARE_Q_LINEAR ? 1 : (size_t)l->out_h * l->out_w;
}

static size_t round_up(size_t n, size_t m)
{
    return (n + m - 1) / m * m;
}

/* A pointer rounded up to 64 bytes: areas that hold vector constants read
 * as structs reserve 64 bytes of slack for it (the scratch itself is only
 * 4-byte aligned). */
static uint8_t *align_ptr(void *p)
{
    return (uint8_t *)p + ((64 - (uintptr_t)p % 64) % 64);
}

/* ---- conv + 2x2 max pooling, fused ---------------------------------------------
 * Requantization (m >= 0) and the clamps are monotone non-decreasing in the
 * accumulator, and max commutes with a monotone map: pooling the int32
 * accumulators and requantizing the maxima gives the same int8 values as
 * requantizing every pixel and pooling after. The vector kernels do that
 * when a conv is followed by a 2x2, stride-2 max pooling: a quarter of the
 * requantizations, no int8 pooling pass, and the pixels no window covers
 * (the last row and column of an odd size) are never computed. */
#define QCHUNK 12 /* rows a fused conv computes before pooling: whole tiles of 6 or 4, whole windows of 4 */

static int fuses_pool(const pare_qlayer *l, const pare_qlayer *next)
{
    return l->kind == PARE_Q_CONV && next && next->kind == PARE_Q_MAXPOOL && next->kernel == 2 && next->stride == 2 &&
           next->pad == 0;
}

/* Conv output pixels computed per sample: all, or 4 per pooled pixel. */
static size_t rows_per_sample(const pare_qlayer *l, const pare_qlayer *pool)
{
    if (pool) return 4 * (size_t)pool->out_h * pool->out_w;
    return l->kind == PARE_Q_LINEAR ? 1 : (size_t)l->out_h * l->out_w;
}

/* The conv output pixels of a sample in the order of its rows: row-major,
 * or window by window (the 4 pixels of each pooled pixel, row-major
 * within). Stepped without divisions: this runs once per panel row. */
typedef struct qpix {
    int oy, ox, wy, wx, d;
} qpix;

static inline void pix_next(const pare_qlayer *l, const pare_qlayer *pool, qpix *q)
{
    if (!pool) {
        if (++q->ox == l->out_w) q->ox = 0, q->oy++;
        return;
    }
    if (++q->d == 4) {
        q->d = 0;
        if (++q->wx == pool->out_w) q->wx = 0, q->wy++;
    }
    q->oy = 2 * q->wy + (q->d >> 1);
    q->ox = 2 * q->wx + (q->d & 1);
}

/* The output clamp [lo, hi] of the conv, then of the pooling (same zero
 * point and scale): one clamp to the intersection, or to the constant the
 * two give when the ranges are disjoint. */
static void fused_clamp(const pare_qlayer *l, const pare_qlayer *pool, int32_t *lo, int32_t *hi)
{
    *lo = l->act_min;
    *hi = l->act_max;
    if (!pool) return;
    int32_t a = *lo > pool->act_min ? *lo : pool->act_min, b = *hi < pool->act_max ? *hi : pool->act_max;
    if (a > b) a = b = l->act_max < pool->act_min ? pool->act_min : pool->act_max;
    *lo = a;
    *hi = b;
}

/* Rows 4 w .. 4 w + 3 of acc (stride apart) maxed into row w, for w <
 * windows: in place, since row w belongs to a window already read. */
static void pool_rows(int32_t *acc, size_t stride, size_t windows, size_t nc)
{
    for (size_t w = 0; w < windows; w++) {
        const int32_t *a = acc + 4 * w * stride;
        int32_t *d = acc + w * stride;
        for (size_t c = 0; c < nc; c++) {
            int32_t m = a[c] > a[stride + c] ? a[c] : a[stride + c];
            int32_t m2 = a[2 * stride + c] > a[3 * stride + c] ? a[2 * stride + c] : a[3 * stride + c];
            d[c] = m > m2 ? m : m2;
        }
    }
}

/* ---- the reference kernels ---------------------------------------------------
 * Portable C, one sample at a time; what every other kernel must equal. */

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

/* Shared by all threads: the conv weights transposed to [k][k][in_c][out_c]. */
static size_t ref_pack_bytes(const pare_qlayer *l)
{
    return l->kind == PARE_Q_CONV ? (size_t)l->kernel * l->kernel * l->in_c * l->out_c : 0;
}

/* Per thread, whatever the group: the padded input and out_c int32 accumulators. */
static size_t ref_tmp_bytes(const pare_qlayer *l)
{
    return l->kind == PARE_Q_CONV ? align64(padded_bytes(l)) + (size_t)l->out_c * sizeof(int32_t) : 0;
}

/* OHWI -> HWIO, so that one input value meets all output channels' weights
 * in one contiguous run. */
static void ref_pack(const pare_qlayer *l, int8_t *wt)
{
    if (l->kind != PARE_Q_CONV) return;
    size_t terms = layer_terms(l), oc = (size_t)l->out_c;
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
 * out_c accumulators at once. wt: ref_pack's weights. Partial sums stay
 * below 2^31: |bias| <= 2^30 and the terms below 2^30 (plan). */
static void conv_core(const pare_qlayer *l, const int8_t *in, int8_t *out, const int8_t *wt, int8_t *tmp)
{
    const int8_t *src = l->pad ? pad_input(l, in, tmp) : in;
    int32_t *acc = (int32_t *)(void *)(tmp + align64(padded_bytes(l)));
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

/* n samples, one after the other. */
static void ref_run(const pare_qlayer *l, const int8_t *in, int n, int8_t *out, const int8_t *packed, int8_t *tmp)
{
    size_t in_size = (size_t)l->in_h * l->in_w * l->in_c, out_size = layer_pixels(l) * (size_t)l->out_c;
    for (int s = 0; s < n; s++) {
        if (l->kind == PARE_Q_CONV)
            conv_core(l, in + s * in_size, out + s * out_size, packed, tmp);
        else
            linear_run(l, in + s * in_size, out + s * out_size);
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

/* The window's sum of (q - in_zp), at most 255 * 64 * 64 in magnitude, times
 * the real multiplier s_in / (s_out * window) in fixed point: the mean, in
 * the output's parameters. */
static void avgpool_run(const pare_qlayer *l, const int8_t *in, int8_t *out)
{
    int k = l->kernel, c = l->in_c;
    for (int oy = 0; oy < l->out_h; oy++)
        for (int ox = 0; ox < l->out_w; ox++)
            for (int ch = 0; ch < c; ch++) {
                int32_t sum = 0;
                for (int ky = 0; ky < k; ky++)
                    for (int kx = 0; kx < k; kx++)
                        sum += in[(((size_t)(oy * l->stride + ky) * l->in_w) + (size_t)ox * l->stride + kx) * c + ch] -
                               l->in_zp;
                int32_t v = pare_mul_by_quantized_multiplier(sum, l->mult[0], l->shift[0]) + l->out_zp;
                v = v < l->act_min ? l->act_min : v > l->act_max ? l->act_max : v;
                out[((size_t)oy * l->out_w + ox) * c + ch] = (int8_t)v;
            }
}

/* n values through the table, then the clamp (a ReLU after it). */
static void lut_run(const pare_qlayer *l, const int8_t *in, size_t n, int8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        /* (uint8_t)x ^ 0x80 is x + 128 */
        int32_t v = l->lut[(uint8_t)in[i] ^ 0x80u]; // NOLINT(bugprone-signed-char-misuse): int8 values
        out[i] = (int8_t)(v < l->act_min ? l->act_min : v > l->act_max ? l->act_max : v);
    }
}

/* ---- the fast kernel: AVX-512 VNNI ------------------------------------------
 * Built when the compiler targets VNNI (the Makefile's -march=native on a
 * VNNI machine); PORTABLE=1 or an older CPU has the AVX2 kernel below (x86)
 * and the reference above. Several samples go through one call, as rows of
 * one matrix; a conv followed by 2x2 max pooling is fused (see above).
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
    size_t k, kp, kg, ob, pix; /* K, K rounded to 4, K / 4 groups, 16-channel blocks, pixels a sample */
    size_t row, row4;          /* a kernel row's k * in_c terms; rounded to 4 where read in place (direct) */
    int direct;
    size_t w_bytes, cb_bytes, q_bytes;
} qconv_geom;

static qconv_geom conv_geom(const pare_qlayer *l)
{
    qconv_geom g;
    g.k = layer_terms(l);
    g.kp = (g.k + 3) & ~(size_t)3;
    g.row = g.row4 = g.k;
    g.direct = 0;
    if (l->kind == PARE_Q_CONV) {
        /* Windows read in place (vnni_direct) when rounding each kernel row
         * to whole 4-byte groups costs no more than rounding K: conv1's 3 x
         * 3 x 1 is 3 rows of 4 (12 = 9 rounded), conv2's 3 x 96 exact. */
        g.row = (size_t)l->kernel * l->in_c;
        g.row4 = (g.row + 3) & ~(size_t)3;
        g.direct = (size_t)l->kernel * g.row4 <= g.kp;
        if (g.direct)
            g.kp = (size_t)l->kernel * g.row4;
        else
            g.row4 = g.row; /* the panel's rows are K contiguous terms */
    }
    g.kg = g.kp / 4;
    g.ob = ((size_t)l->out_c + 15) / 16;
    g.pix = layer_pixels(l);
    g.w_bytes = align64(g.ob * g.kg * 64);
    g.cb_bytes = align64(g.ob * 16 * sizeof(int32_t));
    g.q_bytes = 64 + g.ob * 2 * 6 * 64; /* requantization constants: 2 qreq8 of 6 vectors a block, aligned */
    return g;
}

/* Shared: packed weights, starting accumulators, requantization constants. */
static size_t vnni_pack_bytes(const pare_qlayer *l)
{
    qconv_geom g = conv_geom(l);
    return g.w_bytes + g.cb_bytes + g.q_bytes;
}

/* Per thread: the im2col panel of g samples, rows rounded up to a tile. */
static size_t vnni_panel_bytes(const qconv_geom *g, int g_samples)
{
    return align64(round_up((size_t)g_samples * g->pix, QROWS) * g->kp);
}

/* Per thread: the im2col panel of g samples, rows rounded up to a tile (or
 * their shifted inputs, vnni_direct), and the accumulators of a chunk of rows. */
static size_t vnni_a_bytes(const pare_qlayer *l, const qconv_geom *g, int n);
static size_t vnni_tmp_bytes(const pare_qlayer *l, int g_samples)
{
    qconv_geom g = conv_geom(l);
    return vnni_a_bytes(l, &g, g_samples) + QCHUNK * g.ob * 16 * sizeof(int32_t);
}

/* Below this many samples a linear layer runs on its weights as they are
 * (linear_fast): packing fc1's 200 KB would cost more than it saves. */
#define QLIN_PACK_MIN QROWS

/* Weights OHWI -> [block of 16 channels][K / 4][16][4], the order vpdpbusd
 * reads them (lane j, bytes k..k+3 of channel 16 b + j), zero past out_c and
 * past K so that the padding of the panel adds nothing; and per channel the
 * starting accumulator bias - (128 + in_zp) * sum w, which fits int32
 * (|bias| <= 2^30, |(128 + zp) sum w| <= 255 * 128 * 2^15 < 2^30). Once per
 * call, like the reference's transposition. */
static void conv_pack(const pare_qlayer *l, int8_t *work)
{
    qconv_geom g = conv_geom(l);
    size_t k = g.k, oc = (size_t)l->out_c;
    int8_t *wp = work;
    int32_t *cb = (int32_t *)(void *)(work + g.w_bytes);
    memset(wp, 0, g.ob * g.kg * 64);
    memset(cb, 0, g.ob * 16 * sizeof(int32_t));
    for (size_t o = 0; o < oc; o++) {
        const int8_t *src = l->weight + o * k;
        int8_t *dst = wp + (o / 16 * g.kg * 16 + o % 16) * 4;
        int32_t s = 0; /* |s| <= 128 * 2^15 */
        for (size_t t = 0; t < k; t++) s += src[t];
        /* term j of kernel row ky goes to position ky * row4 + j: with
         * direct reading, each kernel row starts a 4-byte group; else K is
         * one run. 4-byte moves, then the run's last bytes. */
        size_t run = g.direct ? g.row : k, run4 = g.direct ? g.row4 : k;
        for (size_t t0 = 0, t4 = 0; t0 < k; t0 += run, t4 += run4) {
            size_t j = 0;
            for (; j + 4 <= run; j += 4) memcpy(dst + (t4 + j) / 4 * 64, src + t0 + j, 4);
            for (; j < run; j++) dst[(t4 + j) / 4 * 64 + (t4 + j) % 4] = src[t0 + j];
        }
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
static void conv_panel(const pare_qlayer *l, const pare_qlayer *pool, const int8_t *in, uint8_t *panel,
                       const qconv_geom *g)
{
    int k = l->kernel, ic = l->in_c, s = l->stride, p = l->pad;
    size_t kk = (size_t)k * k * ic, row = (size_t)k * ic, rows = rows_per_sample(l, pool), whole = row / 64;
    uint8_t zp = (uint8_t)((uint8_t)(int8_t)l->in_zp ^ 0x80u);
    /* the masks of a kernel row's last bytes and of the padding to kp, once */
    const __mmask64 tail = row % 64 ? ((__mmask64)1 << row % 64) - 1 : 0, padm = ((__mmask64)1 << (g->kp - kk)) - 1;
    const __m512i c80 = _mm512_set1_epi8((char)0x80);
    qpix q = {0, 0, 0, 0, 0};
    for (size_t r = 0; r < rows; r++, pix_next(l, pool, &q)) {
        int oy = q.oy, ox = q.ox;
        uint8_t *dst = panel + r * g->kp;
        int x0 = ox * s - p, y0 = oy * s - p;
        if (x0 >= 0 && x0 + k <= l->in_w && y0 >= 0 && y0 + k <= l->in_h) {
            /* the window inside the image: k runs of k * in_c bytes */
            for (int ky = 0; ky < k; ky++) {
                const int8_t *src = in + ((size_t)(y0 + ky) * l->in_w + x0) * ic;
                uint8_t *d = dst + (size_t)ky * row;
                for (size_t j = 0; j < whole; j++)
                    _mm512_storeu_si512(d + 64 * j, _mm512_xor_si512(_mm512_loadu_si512(src + 64 * j), c80));
                if (tail)
                    _mm512_mask_storeu_epi8(d + 64 * whole, tail,
                                            _mm512_xor_si512(_mm512_maskz_loadu_epi8(tail, src + 64 * whole), c80));
            }
            _mm512_mask_storeu_epi8(dst + kk, padm, _mm512_setzero_si512()); /* the weights there are 0 too */
            continue;
        }
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
}

/* acc += u (uint8) . s (int8) by 4-byte groups. Inline assembly: gcc 12
 * wraps _mm512_dpbusd_epi32 in register copies that cost up to 30% here. */
#define QDP(acc, u, s) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s))

/* Where a tile's QROWS rows of K uint8 are: row r is nseg runs of
 * seg_groups 4-byte groups, at rp[r], rp[r] + seg_stride, ... A panel row
 * is one run; a conv window read in place from the (shifted) input is k
 * runs, one per kernel row. */
typedef struct qrows {
    const uint8_t *rp[QROWS];
    size_t nseg, seg_groups, seg_stride;
} qrows;

/* QROWS pixels x nb blocks of 16 channels over all of K; nb is a constant
 * at every call, so the arrays live in registers. */
static inline __attribute__((always_inline)) void conv_tile(const qrows *a, const int8_t *w, size_t kg_n,
                                                            const int32_t *cb, int32_t *out, size_t ostride, int nb)
{
    __m512i acc[QROWS][QBLK];
    for (int b = 0; b < nb; b++) {
        __m512i init = _mm512_loadu_si512(cb + 16 * b);
        for (int r = 0; r < QROWS; r++) acc[r][b] = init;
    }
    const uint8_t *rp[QROWS];
    for (int r = 0; r < QROWS; r++) rp[r] = a->rp[r];
    size_t wstride = kg_n * 64;
    const int8_t *wq = w;
    for (size_t sg = 0; sg < a->nseg; sg++) {
        for (size_t q = 0; q < a->seg_groups; q++, wq += 64) {
            __m512i wv[QBLK];
            for (int b = 0; b < nb; b++) wv[b] = _mm512_loadu_si512(wq + b * wstride);
            for (int r = 0; r < QROWS; r++) {
                int32_t v;
                memcpy(&v, rp[r] + q * 4, 4);
                __m512i x = _mm512_set1_epi32(v);
                for (int b = 0; b < nb; b++) QDP(acc[r][b], x, wv[b]);
            }
        }
        for (int r = 0; r < QROWS; r++) rp[r] += a->seg_stride;
    }
    for (int r = 0; r < QROWS; r++)
        for (int b = 0; b < nb; b++) _mm512_storeu_si512(out + r * ostride + b * 16, acc[r][b]);
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
 * call rather than once per tile (conv1 has 9 terms per output: there
 * requantization is much of the work). qc is 64-byte aligned. */
static void requant_prepare(const pare_qlayer *l, size_t ob, qreq8 *qc)
{
    size_t oc = (size_t)l->out_c;
    for (size_t b = 0; b < ob; b++) {
        size_t n = oc - b * 16 < 16 ? oc - b * 16 : 16;
        __mmask16 k = (__mmask16)((1u << n) - 1);
        __m512i m32 = _mm512_maskz_loadu_epi32(k, l->mult + b * 16);
        __m512i s32 = _mm512_maskz_loadu_epi32(k, l->shift + b * 16);
        qc[2 * b] = requant_consts(_mm512_castsi512_si256(m32), _mm512_castsi512_si256(s32));
        qc[2 * b + 1] = requant_consts(_mm512_extracti64x4_epi64(m32, 1), _mm512_extracti64x4_epi64(s32, 1));
    }
}

/* Requantizes rows x nc accumulators (rows astride apart) of channels c0..
 * (a multiple of 16) to NHWC int8 (rows oc apart), clamped to [lo, hi].
 * noinline: inlined, its constants stay live in zmm registers across
 * conv_tile and push an accumulator out to the stack. */
__attribute__((noinline)) static void requant_rows(const pare_qlayer *l, const qreq8 *qc, const int32_t *acc,
                                                   size_t astride, int rows, size_t c0, size_t nc, int8_t *dst,
                                                   int32_t clamp_lo, int32_t clamp_hi)
{
    size_t oc = (size_t)l->out_c;
    /* clamp (saturated) v to [lo - zp, hi - zp], then add zp: the
     * scalar's clamp of v + zp, without leaving int32 */
    __m512i zp = _mm512_set1_epi32(l->out_zp), lo = _mm512_set1_epi32(clamp_lo - l->out_zp),
            hi = _mm512_set1_epi32(clamp_hi - l->out_zp);
    for (size_t b = 0; b * 16 < nc; b++) {
        size_t n = nc - b * 16 < 16 ? nc - b * 16 : 16;
        __mmask16 k = (__mmask16)((1u << n) - 1);
        const qreq8 *q = qc + 2 * (c0 / 16 + b);
        for (int r = 0; r < rows; r++) {
            __m512i a = _mm512_loadu_si512(acc + r * astride + b * 16);
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

static qreq8 *vnni_consts(const int8_t *packed, const qconv_geom *g)
{
    return (qreq8 *)(void *)align_ptr((void *)(uintptr_t)(packed + g->w_bytes + g->cb_bytes));
}

/* Once per call, shared by the threads. A linear layer run on fewer than
 * QLIN_PACK_MIN samples needs nothing packed. */
static void vnni_pack(const pare_qlayer *l, int n, int8_t *packed)
{
    if (l->kind == PARE_Q_LINEAR && n < QLIN_PACK_MIN) return;
    qconv_geom g = conv_geom(l);
    _Static_assert(sizeof(qreq8) == 6 * 64, "qreq8 is 6 vectors (conv_geom's q_bytes)");
    conv_pack(l, packed);
    requant_prepare(l, g.ob, vnni_consts(packed, &g));
}

/* The rows of n samples, one after the other (a linear layer's input is
 * its row), then zero rows up to a whole tile: computed, never stored. */
static void vnni_panel(const pare_qlayer *l, const pare_qlayer *pool, const int8_t *in, int n, uint8_t *panel,
                       const qconv_geom *g)
{
    size_t in_size = (size_t)l->in_h * l->in_w * l->in_c, per = rows_per_sample(l, pool), rows = (size_t)n * per;
    for (int s = 0; s < n; s++) {
        uint8_t *dst = panel + (size_t)s * per * g->kp;
        if (l->kind == PARE_Q_LINEAR) {
            shift_copy(dst, in + s * in_size, g->k);
            fill_bytes(dst + g->k, 0, g->kp - g->k);
        } else {
            conv_panel(l, pool, in + s * in_size, dst, g);
        }
    }
    memset(panel + rows * g->kp, 0, (round_up(rows, QROWS) - rows) * g->kp);
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

/* One tile-row of pixels p.. against every block of channels, into acc
 * (rows astride apart). */
static void vnni_tiles(const qrows *a, const int8_t *packed, const qconv_geom *g, int32_t *acc, size_t astride)
{
    const int32_t *cb = (const int32_t *)(const void *)(packed + g->w_bytes);
    for (size_t b = 0; b < g->ob; b += QBLK) {
        int nb = g->ob - b < QBLK ? (int)(g->ob - b) : QBLK;
        const int8_t *w = packed + b * g->kg * 64;
        int32_t *o = acc + b * 16;
        switch (nb) {
        case 4:
            conv_tile(a, w, g->kg, cb + b * 16, o, astride, 4);
            break;
        case 3:
            conv_tile(a, w, g->kg, cb + b * 16, o, astride, 3);
            break;
        case 2:
            conv_tile(a, w, g->kg, cb + b * 16, o, astride, 2);
            break;
        default:
            conv_tile(a, w, g->kg, cb + b * 16, o, astride, 1);
            break;
        }
    }
}

/* A direct conv (conv_geom) reads its windows in place from the input,
 * shifted to uint8 and padded once per sample, instead of from an im2col
 * panel: building conv1's panel (676 rows of 3 runs of 3 bytes a sample)
 * cost more than its multiply-adds. Each kernel row is read as row4 bytes,
 * the ones past the row meeting zero weights. */
static size_t padded_sample(const pare_qlayer *l)
{
    return (size_t)(l->in_h + 2 * l->pad) * (size_t)(l->in_w + 2 * l->pad) * (size_t)l->in_c;
}

/* The per-thread bytes before the accumulators: the panel of n samples, or
 * their shifted, padded inputs. */
static size_t vnni_a_bytes(const pare_qlayer *l, const qconv_geom *g, int n)
{
    /* 4 bytes of slack: a window's last kernel row is read up to 3 bytes past its end */
    return g->direct ? align64((size_t)n * padded_sample(l) + 4) : vnni_panel_bytes(g, n);
}

/* x + 128 of every input value, in a border of the shifted zero point. */
static void vnni_shift_input(const pare_qlayer *l, const int8_t *in, int n, uint8_t *xs)
{
    size_t in_size = (size_t)l->in_h * l->in_w * l->in_c, ps = padded_sample(l), ic = (size_t)l->in_c;
    size_t wp = (size_t)l->in_w + 2 * (size_t)l->pad, line = (size_t)l->in_w * ic;
    uint8_t zp = (uint8_t)((uint8_t)(int8_t)l->in_zp ^ 0x80u);
    for (int s = 0; s < n; s++) {
        uint8_t *d = xs + (size_t)s * ps;
        if (!l->pad) {
            shift_copy(d, in + (size_t)s * in_size, in_size);
            continue;
        }
        fill_bytes(d, zp, ps);
        for (int y = 0; y < l->in_h; y++)
            shift_copy(d + ((size_t)(y + l->pad) * wp + (size_t)l->pad) * ic, in + (size_t)s * in_size + y * line,
                       line);
    }
    fill_bytes(xs + (size_t)n * ps, 0, 4); /* the slack the last window's over-read meets: defined */
}

/* The rows of a tile: from the panel, or windows of the shifted input for
 * the next QROWS pixels of the iteration (it: pixel order within a sample;
 * rows past the end repeat the first: computed, never stored). */
typedef struct qsrc {
    const uint8_t *base; /* panel, or shifted inputs */
    int direct;
    size_t per, in_sample, ps, wp; /* direct: rows per sample, row within it, padded sample, padded width */
    size_t sample;                 /* the sample of the iteration's pixel */
    qpix it;
} qsrc;

static void tile_rows(const pare_qlayer *l, const pare_qlayer *pool, const qconv_geom *g, qsrc *src, size_t p,
                      size_t rows, qrows *a)
{
    if (!src->direct) {
        for (int r = 0; r < QROWS; r++) a->rp[r] = src->base + (p + (size_t)r) * g->kp;
        a->nseg = 1, a->seg_groups = g->kg, a->seg_stride = 0;
        return;
    }
    size_t ic = (size_t)l->in_c;
    a->nseg = (size_t)l->kernel, a->seg_groups = g->row4 / 4, a->seg_stride = src->wp * ic;
    for (int r = 0; r < QROWS; r++) {
        if (p + (size_t)r >= rows) {
            a->rp[r] = a->rp[0];
            continue;
        }
        a->rp[r] = src->base + src->sample * src->ps +
                   ((size_t)src->it.oy * l->stride * src->wp + (size_t)src->it.ox * l->stride) * ic;
        if (++src->in_sample == src->per) {
            src->in_sample = 0;
            src->sample++;
            memset(&src->it, 0, sizeof src->it);
        } else {
            pix_next(l, pool, &src->it);
        }
    }
}

/* n samples as one matrix of n * pixels rows: tiles run across sample
 * boundaries. With pool (fuses_pool), the output is the pooled one.
 * Needs vnni_pack done on packed. */
static void vnni_run(const pare_qlayer *l, const pare_qlayer *pool, const int8_t *in, int n, int8_t *out,
                     const int8_t *packed, int8_t *tmp)
{
    if (l->kind == PARE_Q_LINEAR && n < QLIN_PACK_MIN) {
        for (int s = 0; s < n; s++) linear_fast(l, in + (size_t)s * l->in_c, out + (size_t)s * l->out_c);
        return;
    }
    qconv_geom g = conv_geom(l);
    const qreq8 *qc = vnni_consts(packed, &g);
    size_t oc = (size_t)l->out_c, per = rows_per_sample(l, pool), rows = (size_t)n * per, ocp = g.ob * 16;
    int32_t *acc = (int32_t *)(void *)(tmp + vnni_a_bytes(l, &g, n));
    int32_t lo, hi;
    fused_clamp(l, pool, &lo, &hi);
    qsrc src = {(const uint8_t *)tmp, g.direct, per, 0, 0, 0, 0, {0, 0, 0, 0, 0}};
    if (src.direct) {
        src.ps = padded_sample(l);
        src.wp = (size_t)l->in_w + 2 * (size_t)l->pad;
        vnni_shift_input(l, in, n, (uint8_t *)tmp);
    } else {
        vnni_panel(l, pool, in, n, (uint8_t *)tmp, &g);
    }
    qrows a;
    if (!pool) {
        for (size_t p = 0; p < rows; p += QROWS) {
            tile_rows(l, pool, &g, &src, p, rows, &a);
            vnni_tiles(&a, packed, &g, acc, ocp);
            requant_rows(l, qc, acc, ocp, rows - p < QROWS ? (int)(rows - p) : QROWS, 0, oc, out + p * oc, lo, hi);
        }
        return;
    }
    for (size_t c0 = 0; c0 < rows; c0 += QCHUNK) {
        size_t cr = rows - c0 < QCHUNK ? rows - c0 : QCHUNK; /* a multiple of 4 */
        for (size_t p = c0; p < c0 + cr; p += QROWS) {
            tile_rows(l, pool, &g, &src, p, rows, &a);
            vnni_tiles(&a, packed, &g, acc + (p - c0) * ocp, ocp);
        }
        pool_rows(acc, ocp, cr / 4, oc);
        requant_rows(l, qc, acc, ocp, (int)(cr / 4), 0, oc, out + c0 / 4 * oc, lo, hi);
    }
}
#endif /* PARE_QFAST */

/* ---- the AVX2 kernel ---------------------------------------------------------
 * For x86 without AVX-512 VNNI; compiled with a target attribute whatever
 * the build's -march, and chosen at run time (__builtin_cpu_supports), so a
 * VNNI machine can run and test it too. vpmaddubsw would saturate at int16
 * (255 * 127 * 2 > 32767), so activations are widened to int16 as x - zp
 * (in [-255, 255]; padding is exactly 0) and weights to int16: vpmaddwd
 * adds two products of at most 255 * 128 each, exact in int32, and the sum
 * is the reference's without any correction. Same exactness argument as
 * above for the int32 accumulation. Requantization is vectorized in 64-bit
 * lanes like the VNNI kernel's; AVX2 lacks 64-bit arithmetic shifts and
 * min/max, built here from logical shifts, compares and blends. */
#ifdef PARE_QAVX2
#define A2 __attribute__((target("avx2")))
/* 4 rows x 3 blocks of 8 channels = 12 accumulators + 3 weights + 1
 * broadcast: the 16 ymm registers. */
#define A2R 4
#define A2B 3

typedef struct a2_geom {
    size_t k, kq, kp, ob, pix; /* K, K / 2 pairs, int16 per panel row (2 kq), 8-channel blocks, pixels */
    size_t w_bytes, cb_bytes, q_bytes;
} a2_geom;

/* Per 8-channel block, the requantization constants of its even and odd
 * channels ([parity][lane]: lane i is channel 2 i + parity), in 64 bits. */
typedef struct a2req {
    int64_t m[2][4], r1[2][4], s1[2][4], e[2][4], half[2][4], negadj[2][4];
} a2req;

static a2_geom a2_geometry(const pare_qlayer *l)
{
    a2_geom g;
    g.k = layer_terms(l);
    g.kq = (g.k + 1) / 2;
    g.kp = 2 * g.kq;
    g.ob = ((size_t)l->out_c + 7) / 8;
    g.pix = layer_pixels(l);
    g.w_bytes = align64(g.ob * g.kq * 8 * 2 * sizeof(int16_t));
    g.cb_bytes = align64(g.ob * 8 * sizeof(int32_t));
    g.q_bytes = 64 + g.ob * sizeof(a2req); /* 64: room to align it */
    return g;
}

static size_t a2_pack_bytes(const pare_qlayer *l)
{
    a2_geom g = a2_geometry(l);
    return g.w_bytes + g.cb_bytes + g.q_bytes;
}

static size_t a2_panel_bytes(const a2_geom *g, int g_samples)
{
    return align64(round_up((size_t)g_samples * g->pix, A2R) * g->kp * sizeof(int16_t));
}

/* Per thread: the panel of g samples and the accumulators of a chunk. */
static size_t a2_tmp_bytes(const pare_qlayer *l, int g_samples)
{
    a2_geom g = a2_geometry(l);
    return a2_panel_bytes(&g, g_samples) + QCHUNK * g.ob * 8 * sizeof(int32_t);
}

static a2req *a2_consts_at(const int8_t *packed, const a2_geom *g)
{
    return (a2req *)(void *)align_ptr((void *)(uintptr_t)(packed + g->w_bytes + g->cb_bytes));
}

/* The constants of requant8 (VNNI kernel) for one channel: see there. */
static void a2_consts(const pare_qlayer *l, size_t c, a2req *q, int par, int lane)
{
    int32_t sh = c < (size_t)l->out_c ? l->shift[c] : 0;
    int64_t s1 = sh > 0 ? 31 - sh : 31, e = sh > 0 ? 0 : -sh;
    q->m[par][lane] = c < (size_t)l->out_c ? l->mult[c] : 0;
    q->s1[par][lane] = s1;
    q->r1[par][lane] = (int64_t)1 << (s1 - 1);
    q->e[par][lane] = e;
    q->half[par][lane] = e > 0 ? (int64_t)1 << (e - 1) : 0;
    q->negadj[par][lane] = e > 0 ? -1 : 0;
}

/* Weights OHWI -> [block of 8 channels][K / 2][8][2] int16, the order
 * vpmaddwd reads them, zero past out_c and K; bias as the starting
 * accumulator; requantization constants. Plain C: runs once per call. */
static void a2_pack(const pare_qlayer *l, int n, int8_t *packed)
{
    if (l->kind == PARE_Q_LINEAR && n < A2R) return; /* the reference runs it */
    a2_geom g = a2_geometry(l);
    int16_t *w = (int16_t *)(void *)packed;
    int32_t *cb = (int32_t *)(void *)(packed + g.w_bytes);
    a2req *q = a2_consts_at(packed, &g);
    memset(w, 0, g.w_bytes);
    memset(cb, 0, g.cb_bytes);
    for (size_t o = 0; o < (size_t)l->out_c; o++) {
        const int8_t *src = l->weight + o * g.k;
        int16_t *dst = w + (o / 8 * g.kq * 8 + o % 8) * 2;
        for (size_t t = 0; t < g.k; t++)
            dst[t / 2 * 16 + t % 2] = (int16_t)src[t]; // NOLINT(bugprone-signed-char-misuse): int8 weights
        cb[o] = l->bias[o];
    }
    for (size_t b = 0; b < g.ob; b++)
        for (int j = 0; j < 8; j++) a2_consts(l, b * 8 + (size_t)j, &q[b], j % 2, j / 2);
}

/* dst[0..n) = src - zp in int16; the compiler vectorizes it for AVX2. */
A2 static void a2_widen(int16_t *restrict dst, const int8_t *restrict src, size_t n, int32_t zp)
{
    for (size_t i = 0; i < n; i++) dst[i] = (int16_t)(src[i] - zp);
}

/* im2col of one sample as in conv_panel, in int16 x - zp: padding is 0. */
A2 static void a2_conv_panel(const pare_qlayer *l, const pare_qlayer *pool, const int8_t *in, int16_t *panel,
                             const a2_geom *g)
{
    int k = l->kernel, ic = l->in_c, s = l->stride, p = l->pad;
    size_t row = (size_t)k * ic, rows = rows_per_sample(l, pool);
    qpix q = {0, 0, 0, 0, 0};
    for (size_t r = 0; r < rows; r++, pix_next(l, pool, &q)) {
        int oy = q.oy, ox = q.ox;
        int16_t *dst = panel + r * g->kp;
        int x0 = ox * s - p;
        for (int ky = 0; ky < k; ky++) {
            int iy = oy * s - p + ky;
            int16_t *d = dst + (size_t)ky * row;
            if (iy < 0 || iy >= l->in_h) {
                memset(d, 0, row * sizeof(int16_t));
            } else if (x0 >= 0 && x0 + k <= l->in_w) {
                a2_widen(d, in + ((size_t)iy * l->in_w + x0) * ic, row, l->in_zp);
            } else {
                for (int kx = 0; kx < k; kx++) {
                    int ix = x0 + kx;
                    if (ix < 0 || ix >= l->in_w)
                        memset(d + (size_t)kx * ic, 0, (size_t)ic * sizeof(int16_t));
                    else
                        a2_widen(d + (size_t)kx * ic, in + ((size_t)iy * l->in_w + ix) * ic, (size_t)ic, l->in_zp);
                }
            }
        }
        if (g->kp > g->k) dst[g->k] = 0; /* K odd: the last pair's second term */
    }
}

A2 static void a2_panel(const pare_qlayer *l, const pare_qlayer *pool, const int8_t *in, int n, int16_t *panel,
                        const a2_geom *g)
{
    size_t in_size = (size_t)l->in_h * l->in_w * l->in_c, per = rows_per_sample(l, pool), rows = (size_t)n * per;
    for (int s = 0; s < n; s++) {
        int16_t *dst = panel + (size_t)s * per * g->kp;
        if (l->kind == PARE_Q_LINEAR) {
            a2_widen(dst, in + s * in_size, g->k, l->in_zp);
            if (g->kp > g->k) dst[g->k] = 0;
        } else {
            a2_conv_panel(l, pool, in + s * in_size, dst, g);
        }
    }
    memset(panel + rows * g->kp, 0, (round_up(rows, A2R) - rows) * g->kp * sizeof(int16_t));
}

/* A2R rows x nb blocks of 8 channels over all of K. */
A2 static inline __attribute__((always_inline)) void a2_tile(const int16_t *a, size_t kp, const int16_t *w, size_t kq,
                                                             const int32_t *cb, int32_t *out, size_t ostride, int nb)
{
    __m256i acc[A2R][A2B];
    for (int b = 0; b < nb; b++) {
        __m256i init = _mm256_loadu_si256((const __m256i *)(const void *)(cb + 8 * b));
        for (int r = 0; r < A2R; r++) acc[r][b] = init;
    }
    size_t wstride = kq * 16;
    for (size_t q = 0; q < kq; q++) {
        __m256i wv[A2B];
        for (int b = 0; b < nb; b++)
            wv[b] = _mm256_loadu_si256((const __m256i *)(const void *)(w + b * wstride + q * 16));
        for (int r = 0; r < A2R; r++) {
            int32_t v;
            memcpy(&v, a + r * kp + q * 2, 4);
            __m256i x = _mm256_set1_epi32(v);
            for (int b = 0; b < nb; b++) acc[r][b] = _mm256_add_epi32(acc[r][b], _mm256_madd_epi16(x, wv[b]));
        }
    }
    for (int r = 0; r < A2R; r++)
        for (int b = 0; b < nb; b++) _mm256_storeu_si256((__m256i *)(void *)(out + r * ostride + b * 8), acc[r][b]);
}

/* Arithmetic right shift of 64-bit lanes by per-lane counts in [0, 63]. */
A2 static inline __m256i a2_sra64(__m256i v, __m256i s)
{
    __m256i sign = _mm256_cmpgt_epi64(_mm256_setzero_si256(), v);
    return _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(v, sign), s), sign);
}

#define A2LD(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))

/* Four channels of one parity: x holds int32 accumulators in the low half
 * of its 64-bit lanes. Returns the requantized value minus the zero point,
 * clamped to [lo, hi] = [act_min - zp, act_max - zp]: clamping the 64-bit
 * value equals the scalar code's saturation to int32 then clamp. */
A2 static inline __m256i a2_req4(__m256i x, const a2req *q, int par, __m256i lo, __m256i hi)
{
    __m256i v = a2_sra64(_mm256_add_epi64(_mm256_mul_epi32(x, A2LD(q->m[par])), A2LD(q->r1[par])), A2LD(q->s1[par]));
    __m256i adj = _mm256_and_si256(_mm256_cmpgt_epi64(_mm256_setzero_si256(), v), A2LD(q->negadj[par]));
    __m256i r = a2_sra64(_mm256_add_epi64(_mm256_add_epi64(v, A2LD(q->half[par])), adj), A2LD(q->e[par]));
    r = _mm256_blendv_epi8(r, lo, _mm256_cmpgt_epi64(lo, r));
    return _mm256_blendv_epi8(r, hi, _mm256_cmpgt_epi64(r, hi));
}

/* Requantizes rows x nc accumulators (rows astride apart) of channels c0..
 * (a multiple of 8) to int8 (rows oc apart), clamped to [clamp_lo, clamp_hi]. */
A2 static void a2_requant_rows(const pare_qlayer *l, const a2req *qc, const int32_t *acc, size_t astride, int rows,
                               size_t c0, size_t nc, int8_t *dst, int32_t clamp_lo, int32_t clamp_hi)
{
    size_t oc = (size_t)l->out_c;
    const __m256i lo = _mm256_set1_epi64x(clamp_lo - l->out_zp), hi = _mm256_set1_epi64x(clamp_hi - l->out_zp);
    const __m256i zp = _mm256_set1_epi32(l->out_zp);
    /* the low byte of every int32, gathered into the low 8 bytes */
    const __m256i low_bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12,
                                               -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i pick = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
    for (size_t b = 0; b * 8 < nc; b++) {
        size_t n = nc - b * 8 < 8 ? nc - b * 8 : 8;
        const a2req *q = qc + c0 / 8 + b;
        for (int r = 0; r < rows; r++) {
            __m256i a = A2LD(acc + r * astride + b * 8);
            __m256i even = a2_req4(a, q, 0, lo, hi), odd = a2_req4(_mm256_srli_epi64(a, 32), q, 1, lo, hi);
            __m256i y = _mm256_add_epi32(_mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA), zp);
            __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(y, low_bytes), pick);
            int8_t *d = dst + r * oc + b * 8;
            if (n == 8) {
                _mm_storel_epi64((__m128i *)(void *)d, _mm256_castsi256_si128(bytes));
            } else {
                int8_t tmp[16];
                _mm_storeu_si128((__m128i *)(void *)tmp, _mm256_castsi256_si128(bytes));
                memcpy(d, tmp, n);
            }
        }
    }
}

/* One tile-row of pixels against every block of channels, into acc. */
A2 static void a2_tiles(const int16_t *a, const int8_t *packed, const a2_geom *g, int32_t *acc, size_t astride)
{
    const int16_t *w = (const int16_t *)(const void *)packed;
    const int32_t *cb = (const int32_t *)(const void *)(packed + g->w_bytes);
    for (size_t b = 0; b < g->ob; b += A2B) {
        int nb = g->ob - b < A2B ? (int)(g->ob - b) : A2B;
        const int16_t *wb = w + b * g->kq * 16;
        if (nb == 3)
            a2_tile(a, g->kp, wb, g->kq, cb + b * 8, acc + b * 8, astride, 3);
        else if (nb == 2)
            a2_tile(a, g->kp, wb, g->kq, cb + b * 8, acc + b * 8, astride, 2);
        else
            a2_tile(a, g->kp, wb, g->kq, cb + b * 8, acc + b * 8, astride, 1);
    }
}

/* As vnni_run. */
A2 static void a2_run(const pare_qlayer *l, const pare_qlayer *pool, const int8_t *in, int n, int8_t *out,
                      const int8_t *packed, int8_t *tmp)
{
    if (l->kind == PARE_Q_LINEAR && n < A2R) {
        for (int s = 0; s < n; s++) linear_run(l, in + (size_t)s * l->in_c, out + (size_t)s * l->out_c);
        return;
    }
    a2_geom g = a2_geometry(l);
    const a2req *qc = a2_consts_at(packed, &g);
    int16_t *panel = (int16_t *)(void *)tmp;
    int32_t *acc = (int32_t *)(void *)(tmp + a2_panel_bytes(&g, n));
    size_t oc = (size_t)l->out_c, rows = (size_t)n * rows_per_sample(l, pool), ocp = g.ob * 8;
    int32_t lo, hi;
    fused_clamp(l, pool, &lo, &hi);
    a2_panel(l, pool, in, n, panel, &g);
    if (!pool) {
        for (size_t p = 0; p < rows; p += A2R) {
            a2_tiles(panel + p * g.kp, packed, &g, acc, ocp);
            a2_requant_rows(l, qc, acc, ocp, rows - p < A2R ? (int)(rows - p) : A2R, 0, oc, out + p * oc, lo, hi);
        }
        return;
    }
    for (size_t c0 = 0; c0 < rows; c0 += QCHUNK) {
        size_t cr = rows - c0 < QCHUNK ? rows - c0 : QCHUNK; /* a multiple of 4 */
        for (size_t p = c0; p < c0 + cr; p += A2R) a2_tiles(panel + p * g.kp, packed, &g, acc + (p - c0) * ocp, ocp);
        pool_rows(acc, ocp, cr / 4, oc);
        a2_requant_rows(l, qc, acc, ocp, (int)(cr / 4), 0, oc, out + c0 / 4 * oc, lo, hi);
    }
}
#endif /* PARE_QAVX2 */

/* ---- kernel choice -------------------------------------------------------------
 * The best kernel the machine runs, unless pare_qkernel_select forced one.
 * All give the same integers; the scratch is planned for the largest. */
enum { QK_REFERENCE, QK_AVX2, QK_VNNI, QK_COUNT };
static const char *const qk_names[QK_COUNT] = {"reference", "avx2", "avx512-vnni"};
static int qk_forced = -1;

static int qk_available(int k)
{
    switch (k) {
    case QK_REFERENCE:
        return 1;
#ifdef PARE_QAVX2
    case QK_AVX2:
        __builtin_cpu_init(); /* needed if this runs before the constructors; cheap */
        return __builtin_cpu_supports("avx2") ? 1 : 0;
#endif
#ifdef PARE_QFAST
    case QK_VNNI:
        return 1;
#endif
    default:
        return 0;
    }
}

static int qk_active(void)
{
    if (qk_forced >= 0) return qk_forced;
    int k = QK_COUNT - 1;
    while (k > QK_REFERENCE && !qk_available(k)) k--;
    return k;
}

int pare_qkernel_select(const char *name)
{
    if (!name || !strcmp(name, "auto")) {
        qk_forced = -1;
        return 0;
    }
    for (int k = 0; k < QK_COUNT; k++)
        if (!strcmp(name, qk_names[k])) {
            if (!qk_available(k)) return pare_set_error("int8 kernel %s: not built or not supported here", name);
            qk_forced = k;
            return 0;
        }
    return pare_set_error("int8 kernel %s: unknown (reference, avx2, avx512-vnni or auto)", name);
}

const char *pare_qkernel_name(void)
{
    return qk_names[qk_active()];
}

int pare_qkernel_fast(void)
{
    return qk_active() != QK_REFERENCE;
}

/* What kernel k needs for a conv or linear layer: bytes shared by the
 * threads (packed once per call), and per thread for a group of g samples. */
static size_t k_pack_bytes(int k, const pare_qlayer *l)
{
    if (l->kind != PARE_Q_CONV && l->kind != PARE_Q_LINEAR) return 0;
#ifdef PARE_QFAST
    if (k == QK_VNNI) return vnni_pack_bytes(l);
#endif
#ifdef PARE_QAVX2
    if (k == QK_AVX2) return a2_pack_bytes(l);
#endif
    (void)k;
    return ref_pack_bytes(l);
}

static size_t k_tmp_bytes(int k, const pare_qlayer *l, int g)
{
    if (l->kind != PARE_Q_CONV && l->kind != PARE_Q_LINEAR) return 0;
#ifdef PARE_QFAST
    if (k == QK_VNNI) return vnni_tmp_bytes(l, g);
#endif
#ifdef PARE_QAVX2
    if (k == QK_AVX2) return a2_tmp_bytes(l, g);
#endif
    (void)k, (void)g;
    return ref_tmp_bytes(l);
}

/* n: the call's batch, for kernels that pack only when it pays. */
static void k_pack(int k, const pare_qlayer *l, int n, int8_t *packed)
{
    if (l->kind != PARE_Q_CONV && l->kind != PARE_Q_LINEAR) return;
#ifdef PARE_QFAST
    if (k == QK_VNNI) {
        vnni_pack(l, n, packed);
        return;
    }
#endif
#ifdef PARE_QAVX2
    if (k == QK_AVX2) {
        a2_pack(l, n, packed);
        return;
    }
#endif
    (void)k, (void)n;
    ref_pack(l, packed);
}

/* n samples of a conv or linear layer, NHWC one after the other; with
 * pool (fuses_pool, vector kernels only), pooled as well. */
static void k_run(int k, const pare_qlayer *l, const pare_qlayer *pool, const int8_t *in, int n, int8_t *out,
                  const int8_t *packed, int8_t *tmp)
{
#ifdef PARE_QFAST
    if (k == QK_VNNI) {
        vnni_run(l, pool, in, n, out, packed, tmp);
        return;
    }
#endif
#ifdef PARE_QAVX2
    if (k == QK_AVX2) {
        a2_run(l, pool, in, n, out, packed, tmp);
        return;
    }
#endif
    (void)k, (void)pool;
    ref_run(l, in, n, out, packed, tmp);
}

static size_t max_pack_bytes(const pare_qlayer *l)
{
    size_t n = 0;
    for (int k = 0; k < QK_COUNT; k++)
        if (qk_available(k) && align64(k_pack_bytes(k, l)) > n) n = align64(k_pack_bytes(k, l));
    return n;
}

static size_t max_tmp_bytes(const pare_qlayer *l, int g)
{
    size_t n = 0;
    for (int k = 0; k < QK_COUNT; k++)
        if (qk_available(k) && align64(k_tmp_bytes(k, l, g)) > n) n = align64(k_tmp_bytes(k, l, g));
    return n;
}

/* ---- planning ----------------------------------------------------------------- */

/* Threads the scratch makes room for: the cores, up to PARE_QMAX_THREADS. */
static int plan_threads(void)
{
#ifdef _OPENMP
    int n = pare_cores_available();
    return n < 1 ? 1 : n > PARE_QMAX_THREADS ? PARE_QMAX_THREADS : n;
#else
    return 1;
#endif
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
    size_t biggest = (size_t)h * w * c, shared = 0, tmp = 0;
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
        l->work_offset = shared; /* each layer its own packed weights, shared by the threads */
        shared += max_pack_bytes(l);
        if (max_tmp_bytes(l, PARE_QGROUP) > tmp) tmp = max_tmp_bytes(l, PARE_QGROUP);
    }
    qm->n_out = h * w * c;
    qm->out_scale = scale;
    qm->out_zp = zp;
    /* per thread: two ping-pong activations of a group of samples, then
     * the largest panel of a group */
    qm->act_bytes = align64(PARE_QGROUP * biggest);
    qm->threads = plan_threads();
    qm->shared_bytes = shared;
    qm->thread_bytes = 2 * qm->act_bytes + tmp;
    qm->scratch_bytes = shared + (size_t)qm->threads * qm->thread_bytes;
    return 0;
}

/* ---- one layer, one sample (tests) ---------------------------------------------- */

/* The largest of every kernel's packed weights plus its panel of one
 * sample: the same area serves all (the tests run them on one layer).
 * A linear layer runs on one sample unpacked: 0. */
size_t pare_qlayer_work_bytes(const pare_qlayer *l)
{
    if (l->kind != PARE_Q_CONV) return 0;
    size_t n = 0;
    for (int k = 0; k < QK_COUNT; k++)
        if (qk_available(k) && align64(k_pack_bytes(k, l)) + k_tmp_bytes(k, l, 1) > n)
            n = align64(k_pack_bytes(k, l)) + k_tmp_bytes(k, l, 1);
    return n;
}

static void run_one(int k, const pare_qlayer *l, const int8_t *in, int8_t *out, int8_t *work)
{
    switch (l->kind) {
    case PARE_Q_CONV:
    case PARE_Q_LINEAR:
        k_pack(k, l, 1, work);
        k_run(k, l, NULL, in, 1, out, work, work ? work + align64(k_pack_bytes(k, l)) : NULL);
        break;
    case PARE_Q_MAXPOOL:
        maxpool_run(l, in, out);
        break;
    case PARE_Q_FLATTEN:
        memmove(out, in, (size_t)l->out_c);
        break; /* NHWC order is already flat */
    case PARE_Q_AVGPOOL:
        avgpool_run(l, in, out);
        break;
    case PARE_Q_LUT:
        lut_run(l, in, (size_t)l->in_h * l->in_w * l->in_c, out);
        break;
    }
}

void pare_qlayer_run_reference(const pare_qlayer *l, const int8_t *in, int8_t *out, int8_t *work)
{
    run_one(QK_REFERENCE, l, in, out, work);
}

void pare_qlayer_run(const pare_qlayer *l, const int8_t *in, int8_t *out, int8_t *work)
{
    run_one(qk_active(), l, in, out, work);
}

/* ---- the model ------------------------------------------------------------------ */

static int check_scratch(const pare_qmodel *qm, const void *scratch, size_t bytes)
{
    if (!scratch || bytes < qm->scratch_bytes)
        return pare_set_error("int8 forward: scratch of %zu bytes, the model needs %zu", scratch ? bytes : 0,
                              qm->scratch_bytes);
    if ((uintptr_t)scratch % sizeof(int32_t))
        return pare_set_error("int8 forward: the scratch must be 4-byte aligned (it holds int32 accumulators)");
    return 0;
}

/* Once per call, before the threads start: every layer's packed weights. */
static void prepare_call(const pare_qmodel *qm, int k, int n, int8_t *scratch)
{
    for (int i = 0; i < qm->n_layers; i++) k_pack(k, &qm->layers[i], n, scratch + qm->layers[i].work_offset);
}

/* n <= PARE_QGROUP samples through every layer, ping-ponging between the
 * thread's two activation buffers (in must not be the first). Returns
 * where the output is. */
static const int8_t *run_group(const pare_qmodel *qm, int k, const int8_t *in, int n, int8_t *scratch, int8_t *area)
{
    const int8_t *cur = in;
    int8_t *tmp = area + 2 * qm->act_bytes;
    int which = 0;
    for (int i = 0; i < qm->n_layers; i++) {
        const pare_qlayer *l = &qm->layers[i];
        int8_t *dst = area + which * qm->act_bytes;
        size_t in_size = (size_t)l->in_h * l->in_w * l->in_c, out_size = (size_t)l->out_h * l->out_w * l->out_c;
        const pare_qlayer *pool = i + 1 < qm->n_layers && k != QK_REFERENCE && fuses_pool(l, l + 1) ? l + 1 : NULL;
        if (l->kind == PARE_Q_FLATTEN) continue; /* NHWC order is already flat */
        if (l->kind == PARE_Q_MAXPOOL)
            for (int s = 0; s < n; s++) maxpool_run(l, cur + s * in_size, dst + s * out_size);
        else if (l->kind == PARE_Q_AVGPOOL)
            for (int s = 0; s < n; s++) avgpool_run(l, cur + s * in_size, dst + s * out_size);
        else if (l->kind == PARE_Q_LUT)
            lut_run(l, cur, (size_t)n * in_size, dst);
        else
            k_run(k, l, pool, cur, n, dst, scratch + l->work_offset, tmp);
        i += pool != NULL; /* the pooling is done */
        cur = dst;
        which ^= 1;
    }
    return cur;
}

/* One call's work, split between threads by samples: every sample runs
 * the same integer code whatever the thread and group, so the results do
 * not depend on either. Exactly one of in8/inf and of out8/outf is set. */
typedef struct qjob {
    const pare_qmodel *qm;
    int kernel, n;
    int8_t *scratch;
    const int8_t *in8;
    const float *inf;
    int8_t *out8;
    float *outf;
} qjob;

/* dst[i * stride] = pare_quantize_value(src[i]) for i < n (the contiguous
 * loop of one channel, MNIST's, vectorizes). */
static void quantize_plane(const float *src, size_t n, const pare_qparams *p, int8_t *dst, size_t stride)
{
    for (size_t i = 0; i < n; i++) dst[i * stride] = (int8_t)pare_quantize_value(src[i], p);
}

/* Samples [s0, s1) of the job in groups of PARE_QGROUP, in thread t's area. */
static void job_range(const qjob *j, int t, int s0, int s1)
{
    const pare_qmodel *qm = j->qm;
    const pare_qlayer *first = &qm->layers[0];
    int h = first->in_h, w = first->in_w, c = first->in_c;
    size_t in_size = (size_t)h * w * c, n_out = (size_t)qm->n_out;
    int8_t *area = j->scratch + qm->shared_bytes + (size_t)t * qm->thread_bytes;
    int8_t *x = area + qm->act_bytes; /* the float path's int8 input: layer 0 writes the first buffer */
    pare_qparams p = {qm->in_scale, qm->in_zp, -128, 127};
    for (int s = s0; s < s1; s += PARE_QGROUP) {
        int g = s1 - s < PARE_QGROUP ? s1 - s : PARE_QGROUP;
        const int8_t *src = j->in8 ? j->in8 + (size_t)s * in_size : x;
        if (!j->in8)
            for (int i = 0; i < g; i++) {
                /* NCHW float -> NHWC int8, the one place the input meets float */
                const float *f = j->inf + (size_t)(s + i) * in_size;
                for (int ch = 0; ch < c; ch++)
                    quantize_plane(f + (size_t)ch * h * w, (size_t)h * w, &p, x + i * in_size + ch, (size_t)c);
            }
        const int8_t *r = run_group(qm, j->kernel, src, g, j->scratch, area);
        if (j->out8)
            memcpy(j->out8 + (size_t)s * n_out, r, (size_t)g * n_out);
        else
            for (size_t o = 0; o < (size_t)g * n_out; o++)
                j->outf[(size_t)s * n_out + o] = qm->out_scale * (float)(r[o] - qm->out_zp);
    }
}

/* Multiply-adds of one sample: what decides whether threads pay. */
static double sample_macs(const pare_qmodel *qm)
{
    double n = 0;
    for (int i = 0; i < qm->n_layers; i++) {
        const pare_qlayer *l = &qm->layers[i];
        if (l->kind == PARE_Q_CONV || l->kind == PARE_Q_LINEAR)
            n += (double)layer_pixels(l) * l->out_c * (double)layer_terms(l);
    }
    return n;
}

static void run_job(qjob *j)
{
    const pare_qmodel *qm = j->qm;
    int nt = pare_threads();
    if (nt > qm->threads) nt = qm->threads;
    if (nt > j->n) nt = j->n;
    if ((double)j->n * sample_macs(qm) < PARE_PARALLEL_MIN) nt = 1;
    j->kernel = qk_active();
    prepare_call(qm, j->kernel, j->n, j->scratch);
#ifdef _OPENMP
    /* Groups handed out one at a time: on a shared machine a thread whose
     * core is busy elsewhere takes fewer, instead of the call waiting for
     * its fixed half. A group is the same samples whoever runs it. */
    int groups = (j->n + PARE_QGROUP - 1) / PARE_QGROUP;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
        for (int g = 0; g < groups; g++) {
            int s0 = g * PARE_QGROUP;
            job_range(j, t, s0, j->n - s0 < PARE_QGROUP ? j->n : s0 + PARE_QGROUP);
        }
    }
#else
    (void)nt;
    job_range(j, 0, 0, j->n);
#endif
}

int pare_qmodel_forward(const pare_qmodel *qm, const int8_t *in, int n, int8_t *out, void *scratch,
                        size_t scratch_bytes)
{
    if (check_scratch(qm, scratch, scratch_bytes)) return -1;
    if (n < 1) return 0;
    qjob j = {qm, 0, n, scratch, in, NULL, out, NULL};
    run_job(&j);
    return 0;
}

int pare_qmodel_forward_float(const pare_qmodel *qm, const float *in, int n, float *out, void *scratch,
                              size_t scratch_bytes)
{
    if (check_scratch(qm, scratch, scratch_bytes)) return -1;
    if (n < 1) return 0;
    qjob j = {qm, 0, n, scratch, NULL, in, NULL, out};
    run_job(&j);
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
