/* Quantization: parameters and their error bounds, the fixed-point helpers
 * against exact integer references (edges and random), each int8 layer
 * against a float computation of the same quantized values, observers,
 * static PTQ conversion of a small model, save/load and bad files. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compress/prune.h"
#include "compress/quant.h"
#include "nn/safetensors.h"
#include "tests/test.h"

TEST(quant_ranges)
{
    int32_t lo, hi;
    for (int b = 2; b <= 8; b++) {
        CHECK(pare_qrange(b, 0, &lo, &hi) == 0 && lo == -(1 << (b - 1)) && hi == (1 << (b - 1)) - 1);
        CHECK(pare_qrange(b, 1, &lo, &hi) == 0 && lo == -hi && hi == (1 << (b - 1)) - 1);
    }
    CHECK(pare_qrange(1, 0, &lo, &hi) == -1 && strstr(pare_error(), "between 2 and 8"));
    CHECK(pare_qrange(9, 1, &lo, &hi) == -1);
    pare_qparams p;
    CHECK(pare_qparams_choose(1, 0, 8, 0, &p) == -1);
    CHECK(pare_qparams_choose(NAN, 1, 8, 0, &p) == -1);
    CHECK(pare_qparams_choose(0, INFINITY, 8, 1, &p) == -1);
}

/* Every value inside the range comes back within half a step; zero is exact;
 * outside values clamp; symmetric quantization is odd. */
TEST(quant_roundtrip_error_bound)
{
    pare_rng r;
    pare_rng_seed(&r, 1, PARE_STREAM_TEST);
    for (int trial = 0; trial < 200; trial++) {
        int bits = 2 + (int)pare_rng_below(&r, 7), sym = trial & 1;
        float a = pare_rng_range(&r, -5, 1), b = pare_rng_range(&r, -1, 7);
        if (a > b) {
            float t = a;
            a = b;
            b = t;
        }
        pare_qparams p;
        CHECK(pare_qparams_choose(a, b, bits, sym, &p) == 0);
        CHECK(pare_quantize_value(0, &p) == p.zero_point);
        CHECK(pare_dequantize_value(p.zero_point, &p) == 0.0f);
        float lo = pare_dequantize_value(p.qmin, &p), hi = pare_dequantize_value(p.qmax, &p);
        CHECK(lo <= fminf(a, 0) + p.scale * 0.51f && hi >= fmaxf(b, 0) - p.scale * 0.51f);
        for (int k = 0; k < 50; k++) {
            float x = pare_rng_range(&r, fminf(a, 0), fmaxf(b, 0));
            int32_t q = pare_quantize_value(x, &p);
            CHECK(q >= p.qmin && q <= p.qmax);
            if (x >= lo && x <= hi)
                CHECKF(fabsf(pare_dequantize_value(q, &p) - x) <= p.scale * 0.5f * 1.0001f, "x %g q %d scale %g", x, q,
                       p.scale);
            if (sym) CHECK(pare_quantize_value(-x, &p) == -q);
        }
        CHECK(pare_quantize_value(1e30f, &p) == p.qmax && pare_quantize_value(-1e30f, &p) == p.qmin);
        CHECK(pare_quantize_value(NAN, &p) == p.qmin);
    }
}

TEST(quant_weight_per_channel_keeps_zeros)
{
    float w[3 * 5] = {0, 0.5f, -1, 0, 0.25f, /* row 1: all zero */ 0, 0, 0, 0, 0, 0.001f, -0.002f, 0, 4, -4};
    int8_t q[15];
    float s[3];
    CHECK(pare_quantize_weight_per_channel(w, 3, 5, 8, q, s) == 0);
    for (int i = 0; i < 15; i++) {
        if (w[i] == 0) CHECK(q[i] == 0);
        CHECK(q[i] >= -127 && q[i] <= 127);
    }
    CHECK(q[2] == -127 && q[13] == 127 && q[14] == -127);
    CHECK(s[1] == 1.0f);
    CHECK_NEAR(s[0], 1.0 / 127, 1e-7);
    CHECK(pare_quantize_weight_per_channel(w, 3, 5, 4, q, s) == 0 && q[2] == -7 && q[4] == 2 &&
          q[0] == 0); /* 0.25 * 7 = 1.75 */
    w[3] = NAN;
    CHECK(pare_quantize_weight_per_channel(w, 3, 5, 8, q, s) == -1);
}

/* Exact references in 64-bit integers. */
static int64_t floor_div(int64_t a, int64_t d)
{
    return a >= 0 ? a / d : -((-a + d - 1) / d);
}
static int32_t ref_srdhm(int32_t a, int32_t b)
{
    int64_t v = floor_div((int64_t)a * b + ((int64_t)1 << 30), (int64_t)1 << 31); /* ties toward +inf */
    return v > INT32_MAX ? INT32_MAX : (int32_t)v;
}
static int32_t ref_rdbpot(int32_t x, int e)
{
    int64_t m = x < 0 ? -(int64_t)x : x, d = (int64_t)1 << e;
    int64_t q = m / d + (2 * (m % d) >= d); /* ties away from zero */
    return (int32_t)(x < 0 ? -q : q);
}

static const int32_t edges[] = {0,
                                1,
                                -1,
                                2,
                                -2,
                                3,
                                -3,
                                1 << 30,
                                -(1 << 30),
                                (1 << 30) + 1,
                                -(1 << 30) - 1,
                                INT32_MAX,
                                INT32_MIN,
                                INT32_MAX - 1,
                                INT32_MIN + 1,
                                46341,
                                -46341,
                                65536,
                                -65536};
#define N_EDGES ((int)(sizeof edges / sizeof edges[0]))

TEST(quant_srdhm_exact)
{
    CHECK(pare_srdhm(INT32_MIN, INT32_MIN) == INT32_MAX);
    CHECK(pare_srdhm(INT32_MIN, INT32_MAX) == -INT32_MAX);
    CHECK(pare_srdhm(1 << 30, 1) == 1);    /* 0.5 -> 1 */
    CHECK(pare_srdhm(-(1 << 30), 1) == 0); /* -0.5 -> 0: ties toward +inf, as gemmlowp */
    CHECK(pare_srdhm(-(1 << 30) - 1, 1) == -1);
    int bad = 0;
    for (int i = 0; i < N_EDGES; i++)
        for (int j = 0; j < N_EDGES; j++) bad += pare_srdhm(edges[i], edges[j]) != ref_srdhm(edges[i], edges[j]);
    pare_rng r;
    pare_rng_seed(&r, 2, PARE_STREAM_TEST);
    for (int k = 0; k < 200000; k++) {
        int32_t a = (int32_t)(uint32_t)pare_rng_u64(&r), b = (int32_t)(uint32_t)pare_rng_u64(&r);
        if (k & 1) b >>= (int)pare_rng_below(&r, 31); /* small and large magnitudes */
        bad += pare_srdhm(a, b) != ref_srdhm(a, b);
    }
    CHECKF(bad == 0, "%d mismatches", bad);
}

TEST(quant_rdbpot_exact)
{
    CHECK(pare_rdbpot(-3, 1) == -2 && pare_rdbpot(3, 1) == 2 && pare_rdbpot(-5, 2) == -1 && pare_rdbpot(-6, 2) == -2);
    CHECK(pare_rdbpot(INT32_MIN, 31) == -1 && pare_rdbpot(INT32_MAX, 31) == 1 && pare_rdbpot(5, 0) == 5);
    int bad = 0;
    pare_rng r;
    pare_rng_seed(&r, 3, PARE_STREAM_TEST);
    for (int e = 0; e <= 31; e++) {
        for (int i = 0; i < N_EDGES; i++) bad += pare_rdbpot(edges[i], e) != ref_rdbpot(edges[i], e);
        for (int k = -4096; k <= 4096; k++) bad += pare_rdbpot(k, e) != ref_rdbpot(k, e); /* every tie near 0 */
        for (int k = 0; k < 5000; k++) {
            int32_t x = (int32_t)(uint32_t)pare_rng_u64(&r);
            bad += pare_rdbpot(x, e) != ref_rdbpot(x, e);
        }
    }
    CHECKF(bad == 0, "%d mismatches", bad);
}

TEST(quant_multiplier)
{
    int32_t m;
    int sh;
    CHECK(pare_quantize_multiplier(0, &m, &sh) == 0 && m == 0 && sh == 0);
    CHECK(pare_quantize_multiplier(1e-12, &m, &sh) == 0 && m == 0);
    CHECK(pare_quantize_multiplier(-0.5, &m, &sh) == -1);
    CHECK(pare_quantize_multiplier(NAN, &m, &sh) == -1);
    CHECK(pare_quantize_multiplier(1.0, &m, &sh) == 0 && m == (1 << 30) && sh == 1);
    /* just below 1: the Q0.31 mantissa rounds up to 2^31 and must renormalize */
    CHECK(pare_quantize_multiplier(1.0 - 1e-12, &m, &sh) == 0 && m == (1 << 30) && sh == 1);
    pare_rng r;
    pare_rng_seed(&r, 4, PARE_STREAM_TEST);
    int bad = 0;
    for (int k = 0; k < 20000; k++) {
        double real = exp(pare_rng_range(&r, -18, 4)); /* 1.5e-8 .. 55 */
        if (pare_quantize_multiplier(real, &m, &sh)) {
            bad++;
            continue;
        }
        double back = ldexp((double)m, sh - 31);
        bad += m < (1 << 30) || fabs(back - real) > real * ldexp(1, -30);
        int32_t x = (int32_t)pare_rng_range(&r, -1e6f, 1e6f);
        double exact = x * real;
        if (fabs(exact) < 2e9) bad += fabs(pare_mul_by_quantized_multiplier(x, m, sh) - exact) > 1.0;
        /* bit for bit gemmlowp's MultiplyByQuantizedMultiplier where its left shift does not overflow */
        int left = sh > 0 ? sh : 0;
        if (llabs((long long)x * (1LL << left)) <= INT32_MAX)
            bad += pare_mul_by_quantized_multiplier(x, m, sh) !=
                   pare_rdbpot(pare_srdhm((int32_t)((long long)x * (1LL << left)), m), sh > 0 ? 0 : -sh);
    }
    CHECKF(bad == 0, "%d bad multipliers", bad);
    CHECK(pare_quantize_multiplier(4.0, &m, &sh) == 0);
    CHECK(pare_mul_by_quantized_multiplier(INT32_MAX, m, sh) == INT32_MAX); /* a product past int32 saturates */
    CHECK(pare_mul_by_quantized_multiplier(INT32_MIN, m, sh) == INT32_MIN);
    CHECK(pare_mul_by_quantized_multiplier(1 << 20, m, sh) == 1 << 22);
    CHECK(pare_mul_by_quantized_multiplier(-3, m, sh) == -12);
}

/* ---- int8 layers against float computations of the same integers ---------- */
static int8_t rand_i8(pare_rng *r, int lo, int hi)
{
    return (int8_t)(lo + (int)pare_rng_below(r, (uint64_t)(hi - lo + 1)));
}

/* Fills weights, biases and multipliers of a conv/linear layer with K terms per output. */
static void fill_layer(pare_qlayer *l, int k_terms, pare_rng *r)
{
    int oc = l->out_c;
    l->weight = pare_alloc((size_t)oc * k_terms);
    l->bias = pare_alloc((size_t)oc * 4);
    l->mult = pare_alloc((size_t)oc * 4);
    l->shift = pare_alloc((size_t)oc * 4);
    l->w_scale = pare_alloc((size_t)oc * 4);
    for (int i = 0; i < oc * k_terms; i++) l->weight[i] = rand_i8(r, -127, 127);
    for (int c = 0; c < oc; c++) {
        l->w_scale[c] = pare_rng_range(r, 1e-3f, 2e-2f);
        l->bias[c] = (int32_t)pare_rng_range(r, -20000, 20000);
        int sh;
        CHECK(pare_quantize_multiplier((double)l->in_scale * l->w_scale[c] / l->out_scale, &l->mult[c], &sh) == 0);
        l->shift[c] = sh;
    }
}

/* The real-valued result of one output, rounded and clamped as the spec says. */
static int ref_output(const pare_qlayer *l, int64_t acc, int c)
{
    double y = (double)acc * ((double)l->in_scale * l->w_scale[c] / l->out_scale);
    double q = round(y) + l->out_zp;
    return (int)fmin(fmax(q, l->act_min), l->act_max);
}

static void free_layer(pare_qlayer *l)
{
    pare_free(l->weight);
    pare_free(l->bias);
    pare_free(l->mult);
    pare_free(l->shift);
    pare_free(l->w_scale);
}

TEST(quant_conv_layer_matches_float)
{
    pare_rng r;
    pare_rng_seed(&r, 5, PARE_STREAM_TEST);
    for (int trial = 0; trial < 12; trial++) {
        pare_qmodel qm;
        memset(&qm, 0, sizeof qm);
        pare_qlayer *l = &qm.layers[0];
        l->kind = PARE_Q_CONV;
        l->kernel = 1 + (int)pare_rng_below(&r, 4);
        l->stride = 1 + (int)pare_rng_below(&r, 2);
        l->pad = (int)pare_rng_below(&r, (uint64_t)l->kernel);
        l->in_h = l->kernel + (int)pare_rng_below(&r, 6);
        l->in_w = l->kernel + (int)pare_rng_below(&r, 6);
        l->in_c = 1 + (int)pare_rng_below(&r, 9);
        l->out_c = 1 + (int)pare_rng_below(&r, 7);
        l->in_zp = rand_i8(&r, -128, 127);
        l->out_zp = rand_i8(&r, -128, 127);
        l->in_scale = 0.05f;
        l->out_scale = pare_rng_range(&r, 0.05f, 0.5f);
        l->act_min = trial % 3 == 0 ? l->out_zp : -128; /* a fused ReLU every third */
        l->act_max = 127;
        fill_layer(l, l->kernel * l->kernel * l->in_c, &r);
        qm.n_layers = 1;
        qm.in_c = l->in_c;
        qm.in_h = l->in_h;
        qm.in_w = l->in_w;
        qm.in_zp = l->in_zp;
        qm.in_scale = l->in_scale;
        CHECKF(pare_qmodel_plan(&qm) == 0, "%s", pare_error());
        size_t n_in = (size_t)l->in_h * l->in_w * l->in_c, n_out = (size_t)l->out_h * l->out_w * l->out_c;
        int8_t *x = pare_alloc(n_in), *y = pare_alloc(n_out);
        for (size_t i = 0; i < n_in; i++) x[i] = trial == 1 ? (int8_t)(i & 1 ? 127 : -128) : rand_i8(&r, -128, 127);
        int8_t *work = pare_alloc(pare_qlayer_work_bytes(l) + 1);
        pare_qlayer_run(l, x, y, work);
        pare_free(work);
        int worst = 0, k = l->kernel, ic = l->in_c;
        for (int oy = 0; oy < l->out_h; oy++)
            for (int ox = 0; ox < l->out_w; ox++)
                for (int oc = 0; oc < l->out_c; oc++) {
                    int64_t acc = l->bias[oc];
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++)
                            for (int c = 0; c < ic; c++) {
                                int iy = oy * l->stride - l->pad + ky, ix = ox * l->stride - l->pad + kx;
                                /* padding holds the zero point, i.e. real 0 */
                                int v = iy < 0 || ix < 0 || iy >= l->in_h || ix >= l->in_w
                                            ? l->in_zp
                                            : x[((size_t)iy * l->in_w + ix) * ic + c];
                                acc += (int64_t)(v - l->in_zp) * l->weight[(((size_t)oc * k + ky) * k + kx) * ic + c];
                            }
                    int d = abs(ref_output(l, acc, oc) - y[((size_t)oy * l->out_w + ox) * l->out_c + oc]);
                    if (d > worst) worst = d;
                    if (l->act_min == l->out_zp) CHECK(y[((size_t)oy * l->out_w + ox) * l->out_c + oc] >= l->out_zp);
                }
        CHECKF(worst <= 1, "trial %d: off by %d", trial, worst);
        pare_free(x);
        pare_free(y);
        free_layer(l);
    }
}

TEST(quant_linear_pool_flatten_match_float)
{
    pare_rng r;
    pare_rng_seed(&r, 6, PARE_STREAM_TEST);
    pare_qlayer l;
    memset(&l, 0, sizeof l);
    l.kind = PARE_Q_LINEAR;
    l.in_h = l.in_w = 1;
    l.in_c = 300;
    l.out_c = 37;
    l.in_zp = -7;
    l.out_zp = 11;
    l.in_scale = 0.03f;
    l.out_scale = 0.2f;
    l.act_min = -128;
    l.act_max = 127;
    fill_layer(&l, l.in_c, &r);
    int8_t x[300], y[37];
    int worst = 0, saturated = 0;
    for (int trial = 0; trial < 20; trial++) {
        for (int i = 0; i < 300; i++) x[i] = trial == 0 ? 127 : trial == 1 ? -128 : rand_i8(&r, -128, 127);
        pare_qlayer_run(&l, x, y, NULL);
        for (int o = 0; o < 37; o++) {
            int64_t acc = l.bias[o];
            for (int i = 0; i < 300; i++) acc += (int64_t)(x[i] - l.in_zp) * l.weight[o * 300 + i];
            int ref = ref_output(&l, acc, o), d = abs(ref - y[o]);
            saturated += ref == 127 || ref == -128;
            if (d > worst) worst = d;
        }
    }
    CHECKF(worst <= 1, "linear off by %d", worst);
    CHECK(saturated > 0); /* the extremes were reached and clamped */
    free_layer(&l);

    pare_qlayer p;
    memset(&p, 0, sizeof p);
    p.kind = PARE_Q_MAXPOOL;
    p.kernel = p.stride = 2;
    p.in_h = 5;
    p.in_w = 4;
    p.in_c = 3;
    p.in_scale = p.out_scale = 0.1f;
    p.act_min = -128;
    p.act_max = 127;
    pare_qmodel qm;
    memset(&qm, 0, sizeof qm);
    qm.layers[0] = p;
    qm.n_layers = 1;
    qm.in_c = 3;
    qm.in_h = 5;
    qm.in_w = 4;
    qm.in_scale = 0.1f;
    CHECK(pare_qmodel_plan(&qm) == 0 && qm.layers[0].out_h == 2 && qm.layers[0].out_w == 2 && qm.n_out == 12);
    int8_t in[60], out[12];
    for (int i = 0; i < 60; i++) in[i] = rand_i8(&r, -128, 127);
    pare_qlayer_run(&qm.layers[0], in, out, NULL);
    int ok = 1;
    for (int oy = 0; oy < 2; oy++)
        for (int ox = 0; ox < 2; ox++)
            for (int c = 0; c < 3; c++) {
                int m = -129;
                for (int dy = 0; dy < 2; dy++)
                    for (int dx = 0; dx < 2; dx++) {
                        int v = in[((oy * 2 + dy) * 4 + ox * 2 + dx) * 3 + c];
                        if (v > m) m = v;
                    }
                ok &= out[(oy * 2 + ox) * 3 + c] == m;
            }
    CHECK(ok);
}

TEST(quant_plan_rejects_inconsistent)
{
    pare_qmodel qm;
    memset(&qm, 0, sizeof qm);
    qm.n_layers = 1;
    qm.in_c = 4;
    qm.in_scale = 0.1f;
    pare_qlayer *l = &qm.layers[0];
    l->kind = PARE_Q_LINEAR;
    l->in_h = l->in_w = 1;
    l->in_c = 5; /* the input has 4 */
    l->out_c = 2;
    l->in_scale = l->out_scale = 0.1f;
    l->act_min = -128;
    l->act_max = 127;
    CHECK(pare_qmodel_plan(&qm) == -1 && strstr(pare_error(), "does not follow"));
    l->in_c = 4;
    CHECK(pare_qmodel_plan(&qm) == -1 && strstr(pare_error(), "missing"));
    qm.n_layers = 0;
    CHECK(pare_qmodel_plan(&qm) == -1);
}

/* ---- a small model through prepare, calibrate, convert ------------------------ */
static pare_dataset *synthetic(int n, int side, uint64_t seed)
{
    pare_dataset *ds = pare_calloc(sizeof *ds);
    ds->n = n;
    ds->rows = ds->cols = side;
    ds->n_classes = 10;
    ds->images = pare_alloc((size_t)n * side * side);
    ds->labels = pare_alloc((size_t)n);
    pare_rng r;
    pare_rng_seed(&r, seed, PARE_STREAM_TEST);
    for (size_t i = 0; i < (size_t)n * side * side; i++) ds->images[i] = (uint8_t)pare_rng_below(&r, 256);
    for (int i = 0; i < n; i++) ds->labels[i] = (uint8_t)pare_rng_below(&r, 10);
    return ds;
}

static pare_model *small_cnn(void)
{
    pare_model *m =
        pare_sequential("tiny", pare_conv2d_ex("c1", 1, 6, 3, 1, 1, 1), pare_relu(), pare_maxpool2d(2),
                        pare_conv2d("c2", 6, 5, 3), pare_relu(), pare_flatten(), pare_linear("f1", 5 * 2 * 2, 16),
                        pare_relu(), pare_dropout(0.5f), pare_linear("f2", 16, 10), pare_log_softmax(), NULL);
    m->seed = 7;
    CHECKF(pare_build(m, 1, 8, 8) == 0, "%s", pare_error());
    return m;
}

/* The float model's logits (before the LogSoftmax) of the first n images. */
static void float_logits(pare_ctx *ctx, pare_model *m, const pare_dataset *ds, int n, float *out, float *in)
{
    for (int i = 0; i < n * 64; i++) in[i] = ((float)ds->images[i] / 255 - PARE_MNIST_MEAN) / PARE_MNIST_STD;
    pare_mark mk = pare_arena_mark(ctx);
    int shape[4] = {n, 1, 8, 8};
    pare_tensor *x = pare_ctx_tensor(ctx, 4, shape);
    memcpy(x->data, in, (size_t)n * 64 * sizeof(float));
    pare_tensor *y = pare_forward_layers(ctx, m, x, 0, m->n_layers - 1);
    memcpy(out, y->data, (size_t)n * 10 * sizeof(float));
    pare_arena_release(ctx, mk);
}

TEST(quant_static_ptq_small_model)
{
    pare_model *m = small_cnn();
    /* pruned weights: must stay exactly 0 */
    for (int i = 0; i < 54; i += 3) m->layers[0]->weight->data[i] = 0;
    for (int i = 0; i < 160; i += 4) m->layers[9]->weight->data[i] = 0;
    pare_dataset *ds = synthetic(300, 8, 8);
    pare_ctx *ctx = pare_ctx_new(0);
    CHECK(pare_quant_convert(m, NULL) == NULL && strstr(pare_error(), "never observed"));
    CHECK(pare_quant_prepare(m, NULL) == 0);
    CHECK(pare_quant_calibrate(ctx, m, ds, 256) == 0);
    const pare_observer *oin = pare_quant_observer(m, -1), *orelu = pare_quant_observer(m, 1);
    CHECK(oin && oin->count == 256 * 64);
    CHECK_NEAR(oin->min, -PARE_MNIST_MEAN / PARE_MNIST_STD, 1e-5);
    CHECK_NEAR(oin->max, (1 - PARE_MNIST_MEAN) / PARE_MNIST_STD, 1e-5);
    CHECK(orelu && orelu->min == 0 && orelu->max > 0);
    pare_quant_config cfg = pare_quant_defaults();
    cfg.weight_bits = 9;
    CHECK(pare_quant_convert(m, &cfg) == NULL);
    pare_qmodel *qm = pare_quant_convert(m, NULL);
    CHECKF(qm != NULL, "%s", pare_error());
    if (!qm) return;
    CHECK(qm->n_layers == 6 && qm->n_out == 10 && qm->layers[0].relu && qm->layers[3].kind == PARE_Q_FLATTEN);
    CHECK(qm->layers[4].relu && !qm->layers[5].relu && qm->layers[5].act_min == -128);
    int dropped = 0;
    for (int i = 0; i < qm->n_notes; i++) dropped += strstr(qm->notes[i], "dropped") != NULL;
    CHECK(dropped == 2);                                                 /* Dropout and LogSoftmax */
    for (int i = 0; i < 54; i += 3) CHECK(qm->layers[0].weight[i] == 0); /* OHWI = OIHW for one input channel */
    for (int i = 0; i < 160; i += 4) CHECK(qm->layers[5].weight[i] == 0);
    for (int i = 0; i < qm->layers[4].out_c * qm->layers[4].in_c; i++)
        CHECK(qm->layers[4].weight[i] >= -127 && qm->layers[4].weight[i] <= 127);
    pare_quant_unprepare(m);
    CHECK(pare_quant_observer(m, 0) == NULL);
    pare_model_train(m, 0);

    int n = 200;
    float *ref = pare_alloc((size_t)n * 10 * sizeof(float)), *got = pare_alloc((size_t)n * 10 * sizeof(float));
    float *in = pare_alloc((size_t)n * 64 * sizeof(float));
    float_logits(ctx, m, ds, n, ref, in);
    void *scratch = pare_alloc(qm->scratch_bytes);
    CHECK(pare_qmodel_forward_float(qm, in, n, got, scratch, qm->scratch_bytes - 1) == -1);
    CHECK(pare_qmodel_forward_float(qm, in, n, got, (char *)scratch + 1, qm->scratch_bytes) == -1);
    uint64_t allocs = pare_alloc_count();
    CHECK(pare_qmodel_forward_float(qm, in, n, got, scratch, qm->scratch_bytes) == 0);
    CHECK(pare_alloc_count() == allocs); /* no allocation at inference */
    double worst = 0, span = 0;
    int agree = 0;
    for (int s = 0; s < n; s++) {
        int a = 0, b = 0;
        for (int k = 0; k < 10; k++) {
            worst = fmax(worst, fabs(ref[s * 10 + k] - got[s * 10 + k]));
            span = fmax(span, fabs(ref[s * 10 + k]));
            if (ref[s * 10 + k] > ref[s * 10 + a]) a = k;
            if (got[s * 10 + k] > got[s * 10 + b]) b = k;
        }
        agree += a == b;
    }
    /* The error of 8-bit weights and activations through four layers: a few
     * output steps; a wrong layout (e.g. Flatten's permutation) is far off. */
    CHECKF(worst <= 4 * qm->out_scale, "worst logit error %g, output step %g, span %g", worst, qm->out_scale, span);
    CHECKF(agree >= n * 9 / 10, "argmax agrees on %d of %d", agree, n);
    int right = 0;
    for (int s = 0; s < n; s++) {
        int b = 0;
        for (int k = 1; k < 10; k++)
            if (got[s * 10 + k] > got[s * 10 + b]) b = k;
        right += b == ds->labels[s];
    }
    CHECK(pare_qmodel_evaluate(qm, ds, n, scratch, qm->scratch_bytes) == (double)right / n);
    CHECK(pare_qmodel_evaluate(qm, ds, n, scratch, 10) == -1);

    /* save, load: the same integers */
    char path[] = "/tmp/pare_test_quant_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    CHECKF(pare_qmodel_save(qm, path) == 0, "%s", pare_error());
    pare_qmodel *back = pare_qmodel_load(path);
    CHECKF(back != NULL, "%s", pare_error());
    if (back) {
        CHECK(back->n_layers == qm->n_layers && back->scratch_bytes == qm->scratch_bytes &&
              strcmp(back->arch, "tiny") == 0);
        CHECK(strcmp(back->layers[0].name, "c1") == 0);
        float *again = pare_alloc((size_t)n * 10 * sizeof(float));
        CHECK(pare_qmodel_forward_float(back, in, n, again, scratch, qm->scratch_bytes) == 0);
        CHECK(memcmp(again, got, (size_t)n * 10 * sizeof(float)) == 0);
        pare_free(again);
        pare_qmodel_free(back);
    }
    /* a float model file is not an int8 one */
    CHECK(pare_save(m, path, NULL) == 0);
    CHECK(pare_qmodel_load(path) == NULL && strstr(pare_error(), "not an int8 model"));
    unlink(path);
    pare_free(scratch);
    pare_free(in);
    pare_free(ref);
    pare_free(got);
    pare_qmodel_free(qm);
    pare_ctx_free(ctx);
    pare_dataset_free(ds);
    pare_model_free(m);
}

/* Two batches through the input observer: min/max keeps the extremes, the
 * moving average starts at the first batch and moves by c toward the next. */
TEST(quant_observers)
{
    float batches[2][4] = {{-1, 2, 0.5f, 0}, {-3, 1, 0, 0.25f}};
    float want[2][2] = {{-3, 2}, {-2, 1.5f}}; /* min/max; moving average with c = 0.5 */
    for (int kind = 0; kind < 2; kind++) {
        pare_model *m = pare_sequential("obs", pare_linear("a", 2, 1), NULL);
        CHECK(pare_build(m, 2, 0, 0) == 0);
        pare_quant_config cfg = pare_quant_defaults();
        cfg.observer = kind ? PARE_OBSERVE_MOVING_AVG : PARE_OBSERVE_MINMAX;
        cfg.averaging = 0.5f;
        CHECK(pare_quant_prepare(m, &cfg) == 0);
        pare_ctx *ctx = pare_ctx_new(0);
        int shape[2] = {2, 2};
        for (int b = 0; b < 2; b++) {
            pare_tensor *x = pare_ctx_tensor(ctx, 2, shape);
            memcpy(x->data, batches[b], sizeof batches[b]);
            CHECK(pare_forward(ctx, m, x) != NULL);
        }
        const pare_observer *o = pare_quant_observer(m, -1);
        CHECK(o && o->count == 8);
        if (o) CHECKF(o->min == want[kind][0] && o->max == want[kind][1], "kind %d: [%g, %g]", kind, o->min, o->max);
        pare_quant_unprepare(m);
        CHECK(pare_quant_observer(m, -1) == NULL);
        cfg.averaging = 0;
        CHECK(pare_quant_prepare(m, &cfg) == (kind ? -1 : 0));
        pare_ctx_free(ctx);
        pare_model_free(m);
    }
}

TEST(quant_convert_rejects_unsupported)
{
    /* a Softmax that is not the last layer has no int8 kernel */
    pare_model *m = pare_sequential("sm", pare_linear("a", 4, 3), pare_softmax(), pare_linear("b", 3, 2), NULL);
    CHECK(pare_build(m, 4, 0, 0) == 0);
    CHECK(pare_quant_prepare(m, NULL) == 0);
    pare_ctx *ctx = pare_ctx_new(0);
    int shape[2] = {3, 4};
    pare_tensor *x = pare_ctx_tensor(ctx, 2, shape);
    for (int i = 0; i < 12; i++) x->data[i] = (float)i - 5;
    CHECK(pare_forward(ctx, m, x) != NULL);
    CHECK(pare_quant_convert(m, NULL) == NULL && strstr(pare_error(), "Softmax"));
    pare_ctx_free(ctx);
    pare_model_free(m);
}

/* Every truncation and many single-byte corruptions of a valid file: an
 * error or a model that runs, never a crash (ASan/UBSan watch this). */
TEST(quant_bad_files_rejected)
{
    pare_model *m = small_cnn();
    pare_dataset *ds = synthetic(64, 8, 9);
    pare_ctx *ctx = pare_ctx_new(0);
    CHECK(pare_quant_prepare(m, NULL) == 0 && pare_quant_calibrate(ctx, m, ds, 64) == 0);
    pare_qmodel *qm = pare_quant_convert(m, NULL);
    CHECK(qm != NULL);
    if (!qm) return;
    char path[] = "/tmp/pare_test_quant_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    CHECK(pare_qmodel_save(qm, path) == 0);
    FILE *f = fopen(path, "rb");
    unsigned char *buf = pare_alloc(1 << 16), *copy = pare_alloc(1 << 16);
    size_t len = fread(buf, 1, 1 << 16, f);
    fclose(f);
    unlink(path);
    CHECK(len > 1000 && len < (1 << 16));
    int loaded = 0, rejected = 0;
    for (size_t cut = 0; cut < len; cut += 7) {
        pare_qmodel *q = pare_qmodel_parse(buf, cut, "cut");
        loaded += q != NULL;
        pare_qmodel_free(q);
    }
    CHECK(loaded == 0);
    pare_rng r;
    pare_rng_seed(&r, 10, PARE_STREAM_TEST);
    int8_t *x = pare_alloc(64), *y = pare_alloc(64);
    memset(x, 3, 64);
    for (int k = 0; k < 3000; k++) {
        memcpy(copy, buf, len);
        size_t at = (size_t)pare_rng_below(&r, len);
        copy[at] = (unsigned char)pare_rng_below(&r, 256);
        pare_qmodel *q = pare_qmodel_parse(copy, len, "mutated");
        if (!q) {
            rejected++;
            continue;
        }
        /* what loads must run inside its planned scratch */
        void *s = pare_alloc(q->scratch_bytes);
        if (q->layers[0].in_h * q->layers[0].in_w * q->layers[0].in_c <= 64 && q->n_out <= 64)
            CHECK(pare_qmodel_forward(q, x, 1, y, s, q->scratch_bytes) == 0);
        pare_free(s);
        pare_qmodel_free(q);
    }
    CHECK(rejected > 0);
    pare_free(x);
    pare_free(y);
    pare_free(buf);
    pare_free(copy);
    pare_qmodel_free(qm);
    pare_ctx_free(ctx);
    pare_dataset_free(ds);
    pare_model_free(m);
}

/* 4-bit weights: in [-7, 7], two a byte in the file (an odd count too),
 * and the same integers after a reload. */
TEST(quant_4bit_weights_packed)
{
    pare_model *m = pare_sequential("mlp4", pare_linear("a", 3, 5), pare_relu(), pare_linear("b", 5, 3), NULL);
    m->seed = 3;
    CHECK(pare_build(m, 3, 0, 0) == 0);
    pare_dataset *ds = synthetic(40, 1, 11); /* rows 1 x cols 1: resize to 3 features below */
    pare_free(ds->images);
    ds->cols = 3;
    ds->images = pare_alloc(40 * 3);
    for (int i = 0; i < 120; i++) ds->images[i] = (uint8_t)(i * 53);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_quant_config cfg = pare_quant_defaults();
    cfg.weight_bits = 4;
    CHECK(pare_quant_prepare(m, &cfg) == 0);
    CHECKF(pare_quant_calibrate(ctx, m, ds, 40) == 0, "%s", pare_error());
    pare_qmodel *qm = pare_quant_convert(m, &cfg);
    CHECKF(qm != NULL, "%s", pare_error());
    if (!qm) return;
    int hit7 = 0;
    for (int i = 0; i < 15; i++) {
        CHECK(qm->layers[0].weight[i] >= -7 && qm->layers[0].weight[i] <= 7);
        hit7 += abs(qm->layers[0].weight[i]) == 7;
    }
    CHECK(hit7 >= 5); /* every row's largest weight maps to +-7 */
    char path[] = "/tmp/pare_test_quant_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    CHECKF(pare_qmodel_save(qm, path) == 0, "%s", pare_error());
    pare_st_file *f = pare_st_open(path);
    const pare_st_tensor *w = f ? pare_st_find(f, "layer0.weight") : NULL;
    CHECK(w && w->dtype == PARE_ST_U8 && w->nbytes == 8); /* 15 weights in 8 bytes */
    pare_st_close(f);
    pare_qmodel *back = pare_qmodel_load(path);
    CHECKF(back != NULL, "%s", pare_error());
    if (back) {
        CHECK(memcmp(back->layers[0].weight, qm->layers[0].weight, 15) == 0);
        CHECK(memcmp(back->layers[1].weight, qm->layers[1].weight, 15) == 0);
        pare_qmodel_free(back);
    }
    qm->layers[0].weight[4] = 9; /* does not fit 4 bits: refused, not mangled */
    CHECK(pare_qmodel_save(qm, path) == -1 && strstr(pare_error(), "does not fit"));
    unlink(path);
    pare_qmodel_free(qm);
    pare_ctx_free(ctx);
    pare_dataset_free(ds);
    pare_model_free(m);
}

/* A pruning mask that has not been multiplied into the weights yet: the
 * converted weights follow what the forward pass uses, so they are 0. */
TEST(quant_convert_uses_masked_weights)
{
    pare_model *m = pare_sequential("masked", pare_linear("a", 6, 4), pare_relu(), pare_linear("b", 4, 3), NULL);
    m->seed = 5;
    CHECK(pare_build(m, 6, 0, 0) == 0);
    const char *names[] = {"a", NULL};
    CHECK(pare_prune_attach(m, names) == 0);
    pare_tensor *mask = pare_prune_mask(m->layers[0]);
    CHECK(mask != NULL);
    if (!mask) return;
    for (int i = 0; i < 24; i += 3) mask->data[i] = 0;
    CHECK(m->layers[0]->weight->data[0] != 0); /* the raw weight is still there */
    CHECK(pare_quant_prepare(m, NULL) == 0);
    pare_ctx *ctx = pare_ctx_new(0);
    int shape[2] = {4, 6};
    pare_tensor *x = pare_ctx_tensor(ctx, 2, shape);
    for (int i = 0; i < 24; i++) x->data[i] = (float)(i % 7) - 3;
    CHECK(pare_forward(ctx, m, x) != NULL);
    pare_qmodel *qm = pare_quant_convert(m, NULL);
    CHECKF(qm != NULL, "%s", pare_error());
    if (qm) {
        int zeros = 0, nonzero_elsewhere = 0;
        for (int i = 0; i < 24; i++) {
            if (i % 3 == 0)
                zeros += qm->layers[0].weight[i] == 0;
            else
                nonzero_elsewhere += qm->layers[0].weight[i] != 0;
        }
        CHECK(zeros == 8 && nonzero_elsewhere > 8);
        pare_qmodel_free(qm);
    }
    pare_ctx_free(ctx);
    pare_model_free(m);
}
