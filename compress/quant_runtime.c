/* The integer-only int8 model: planning (shapes, checks, scratch size) and
 * the portable reference kernels. Activations are NHWC, conv weights OHWI.
 * Nothing in a kernel touches float; only the float entry/exit of
 * pare_qmodel_forward_float does, once per value. */
#include <math.h>
#include <string.h>

#include "compress/quant.h"

/* Limits that keep every int32 accumulation exact: |x - zp| <= 255 and
 * |w| <= 128, so a dot product of at most 2^15 terms stays below 2^30, and a
 * bias below 2^30 keeps the sum inside int32. */
#define QMAX_DOT    (1 << 15)
#define QMAX_BIAS   (1 << 30)
#define QMAX_DIM    (1 << 14)
#define QMAX_VALUES (1 << 26)

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

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

static int in_int8(int32_t v) { return v >= -128 && v <= 127; }

static int check_dims(const pare_qlayer *l, const char *what, int h, int w, int c)
{
    if (h < 1 || w < 1 || c < 1 || h > QMAX_DIM || w > QMAX_DIM || c > QMAX_DIM ||
        (long long)h * w * c > QMAX_VALUES)
        return pare_set_error("int8 layer %s: %s shape %dx%dx%d is out of range", l->name, what, h, w, c);
    return 0;
}

/* Per-channel arrays of conv/linear: present, weights, multipliers, shifts and biases in range. */
static int check_channels(const pare_qlayer *l, long long dot)
{
    if (!l->weight || !l->bias || !l->mult || !l->shift)
        return pare_set_error("int8 layer %s: weights, bias or multipliers missing", l->name);
    if (dot > QMAX_DOT)
        return pare_set_error("int8 layer %s: %lld terms per output exceed the int32 accumulator's %d", l->name,
                              dot, QMAX_DOT);
    for (int c = 0; c < l->out_c; c++) {
        if (l->bias[c] > QMAX_BIAS || l->bias[c] < -QMAX_BIAS)
            return pare_set_error("int8 layer %s: bias %d of channel %d is out of range", l->name,
                                  (int)l->bias[c], c);
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
        if (l->kernel < 1 || l->stride < 1 || l->pad < 0 || l->kernel > 64 || l->stride > 64 ||
            l->pad >= l->kernel)
            return pare_set_error("int8 layer %s: kernel %d, stride %d, padding %d are not valid", l->name,
                                  l->kernel, l->stride, l->pad);
        if (l->kind == PARE_Q_MAXPOOL && (l->pad || l->in_zp != l->out_zp || l->in_scale != l->out_scale))
            return pare_set_error("int8 layer %s: max pooling keeps its input's quantization", l->name);
        long long oh = ((long long)l->in_h + 2 * l->pad - l->kernel) / l->stride + 1;
        long long ow = ((long long)l->in_w + 2 * l->pad - l->kernel) / l->stride + 1;
        if (l->in_h + 2 * l->pad < l->kernel || l->in_w + 2 * l->pad < l->kernel)
            return pare_set_error("int8 layer %s: the window does not fit the %dx%d input", l->name, l->in_h,
                                  l->in_w);
        l->out_h = (int)oh;
        l->out_w = (int)ow;
        if (l->kind == PARE_Q_MAXPOOL) l->out_c = l->in_c;
        if (check_dims(l, "output", l->out_h, l->out_w, l->out_c)) return -1;
        if (l->kind == PARE_Q_CONV && check_channels(l, (long long)l->kernel * l->kernel * l->in_c)) return -1;
        return 0;
    }
    case PARE_Q_LINEAR:
        if (l->in_h != 1 || l->in_w != 1)
            return pare_set_error("int8 layer %s: a linear layer needs a flat input, got %dx%dx%d", l->name,
                                  l->in_h, l->in_w, l->in_c);
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
size_t pare_qlayer_work_bytes(const pare_qlayer *l)
{
    if (l->kind != PARE_Q_CONV) return 0;
    return align64(padded_bytes(l)) + align64((size_t)l->kernel * l->kernel * l->in_c * l->out_c) +
           (size_t)l->out_c * sizeof(int32_t);
}

static int8_t *conv_wt(const pare_qlayer *l, int8_t *work) { return work + align64(padded_bytes(l)); }

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
    int k = l->kernel, c = l->in_c;
    for (int oy = 0; oy < l->out_h; oy++)
        for (int ox = 0; ox < l->out_w; ox++)
            for (int ch = 0; ch < c; ch++) {
                int best = -128;
                for (int ky = 0; ky < k; ky++)
                    for (int kx = 0; kx < k; kx++) {
                        int v = (int)in[(((size_t)(oy * l->stride + ky) * l->in_w) + ox * l->stride + kx) * c + ch]; // NOLINT(bugprone-signed-char-misuse): int8 values
                        if (v > best) best = v;
                    }
                if (best < l->act_min) best = l->act_min;
                if (best > l->act_max) best = l->act_max;
                out[((size_t)oy * l->out_w + ox) * c + ch] = (int8_t)best;
            }
}

void pare_qlayer_run(const pare_qlayer *l, const int8_t *in, int8_t *out, int8_t *work)
{
    switch (l->kind) {
    case PARE_Q_CONV:
        transpose_weights(l, work);
        conv_core(l, in, out, work);
        break;
    case PARE_Q_LINEAR: linear_run(l, in, out); break;
    case PARE_Q_MAXPOOL: maxpool_run(l, in, out); break;
    case PARE_Q_FLATTEN: memmove(out, in, (size_t)l->out_c); break; /* NHWC order is already flat */
    }
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
        if (qm->layers[i].kind == PARE_Q_CONV) transpose_weights(&qm->layers[i], layer_work(qm, i, scratch));
}

/* One sample through every layer, ping-ponging between the two activation buffers. */
static const int8_t *run_sample(const pare_qmodel *qm, const int8_t *in, int8_t *scratch)
{
    const int8_t *cur = in;
    for (int i = 0; i < qm->n_layers; i++) {
        const pare_qlayer *l = &qm->layers[i];
        int8_t *dst = scratch + (i % 2) * qm->act_bytes;
        if (l->kind == PARE_Q_CONV)
            conv_core(l, cur, dst, layer_work(qm, i, scratch));
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
        for (int ch = 0; ch < c; ch++)
            for (int i = 0; i < h * w; i++) x[(size_t)i * c + ch] = (int8_t)pare_quantize_value(src[ch * h * w + i], &p);
        const int8_t *r = run_sample(qm, x, scratch);
        for (int o = 0; o < qm->n_out; o++) out[(size_t)s * qm->n_out + o] = qm->out_scale * (float)(r[o] - qm->out_zp);
    }
    return 0;
}

double pare_qmodel_evaluate(const pare_qmodel *qm, const pare_dataset *ds, int n, void *scratch,
                            size_t scratch_bytes)
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
    float *x = pare_alloc((size_t)BATCH * per * sizeof(float)), *y = pare_alloc((size_t)BATCH * qm->n_out * sizeof(float));
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
