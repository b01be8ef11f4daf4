/* The vector int8 kernels (AVX2 and AVX-512 VNNI, where built and
 * supported) against the portable reference kernel: the same integers, bit
 * for bit, on random shapes with ragged edges and on the extremes of every
 * range; and whole models run in groups of samples on several threads (with
 * conv + max pooling fused) against the reference run one sample and one
 * layer at a time. */
#include <stdlib.h>
#include <string.h>

#include "compress/quant.h"
#include "tests/test.h"

static int rnd(pare_rng *r, int lo, int hi)
{
    return lo + (int)pare_rng_below(r, (uint64_t)(hi - lo + 1));
}

/* Printed once: without a vector kernel both entry points run the
 * reference, and the comparisons below only check that the public path is
 * the reference. */
static void note_kernel(void)
{
    static int said;
    if (!said && !pare_qkernel_fast())
        printf("note: no vector int8 kernel here; the int8 kernel tests compare the reference with itself\n");
    said = 1;
}

/* Every kernel this machine runs, each forced in turn: KERNEL_LOOP(i) { ... }
 * runs the body once per available kernel, then goes back to the default. */
static const char *const kernel_names[] = {"avx512-vnni", "avx2", "reference"};
static int select_kernel(int i)
{
    if (i >= 3) {
        pare_qkernel_select(NULL);
        return 0;
    }
    return 1;
}
#define KERNEL_LOOP(i)                                                                                                 \
    for (int i = 0; select_kernel(i); i++)                                                                             \
        if (pare_qkernel_select(kernel_names[i]) == 0)

/* How a layer's values are drawn: random, or pinned at an extreme. */
typedef enum { FILL_RANDOM, FILL_MIN, FILL_MAX } fill_mode;

static int8_t draw(pare_rng *r, fill_mode f, int lo, int hi)
{
    return (int8_t)(f == FILL_MIN ? lo : f == FILL_MAX ? hi : rnd(r, lo, hi));
}

/* Weights, biases and per-channel multipliers for k_terms terms per output.
 * Multipliers span 2^-28 to 2^3 (shifts on both sides of 0). */
static void fill_params(pare_qlayer *l, int k_terms, pare_rng *r, fill_mode wf, int big_bias)
{
    int oc = l->out_c;
    l->weight = pare_alloc((size_t)oc * k_terms);
    l->bias = pare_alloc((size_t)oc * 4);
    l->mult = pare_alloc((size_t)oc * 4);
    l->shift = pare_alloc((size_t)oc * 4);
    for (size_t i = 0; i < (size_t)oc * k_terms; i++) l->weight[i] = draw(r, wf, -127, 127);
    if (wf == FILL_RANDOM && oc * k_terms > 2) l->weight[1] = -128; /* the plan allows |w| <= 128 */
    for (int c = 0; c < oc; c++) {
        l->bias[c] = big_bias ? (c % 2 ? (1 << 30) : -(1 << 30)) : rnd(r, -100000, 100000);
        int sh;
        double real = ldexp(pare_rng_range(r, 1.0f, 2.0f), rnd(r, -28, 2));
        CHECK(pare_quantize_multiplier(real, &l->mult[c], &sh) == 0);
        l->shift[c] = sh;
    }
}

static void free_params(pare_qlayer *l)
{
    pare_free(l->weight);
    pare_free(l->bias);
    pare_free(l->mult);
    pare_free(l->shift);
    l->weight = NULL;
    l->bias = l->mult = l->shift = NULL;
}

/* Plans a one-layer model around *l (copied in and back). */
static int plan_one(pare_qlayer *l)
{
    pare_qmodel *qm = calloc(1, sizeof *qm);
    qm->n_layers = 1;
    qm->layers[0] = *l;
    qm->in_c = l->in_c;
    qm->in_h = l->in_h;
    qm->in_w = l->in_w;
    qm->in_zp = l->in_zp;
    qm->in_scale = l->in_scale;
    int rc = pare_qmodel_plan(qm);
    *l = qm->layers[0];
    free(qm);
    return rc;
}

/* Runs l through the reference and through every available kernel on x
 * and compares; 1 if all identical. */
static int same_outputs(const pare_qlayer *l, const int8_t *x)
{
    size_t n_out = (size_t)l->out_h * l->out_w * l->out_c, wb = pare_qlayer_work_bytes(l);
    int8_t *y_fast = pare_alloc(n_out), *y_ref = pare_alloc(n_out);
    int8_t *work = wb ? pare_alloc(wb) : NULL;
    memset(y_ref, 0x2a, n_out);
    pare_qlayer_run_reference(l, x, y_ref, work);
    int same = 1;
    KERNEL_LOOP(k)
    {
        memset(y_fast, 0x55, n_out);
        pare_qlayer_run(l, x, y_fast, work);
        if (memcmp(y_fast, y_ref, n_out) != 0) {
            printf("  kernel %s differs from the reference\n", pare_qkernel_name());
            same = 0;
        }
    }
    pare_free(y_fast);
    pare_free(y_ref);
    pare_free(work);
    return same;
}

static void base_layer(pare_qlayer *l, pare_qkind kind, pare_rng *r)
{
    memset(l, 0, sizeof *l);
    l->kind = kind;
    l->in_zp = rnd(r, -128, 127);
    l->out_zp = rnd(r, -128, 127);
    l->in_scale = 0.02f;
    l->out_scale = 0.1f;
    l->act_min = rnd(r, 0, 3) == 0 ? l->out_zp : -128; /* a fused ReLU sometimes */
    l->act_max = 127;
}

static int8_t *input(size_t n, pare_rng *r, fill_mode f)
{
    int8_t *x = pare_alloc(n);
    for (size_t i = 0; i < n; i++) x[i] = draw(r, f, -128, 127);
    return x;
}

TEST(quant_fast_conv_matches_reference_random_shapes)
{
    note_kernel();
    pare_rng r;
    pare_rng_seed(&r, 31, PARE_STREAM_TEST);
    for (int trial = 0; trial < 60; trial++) {
        pare_qlayer l;
        base_layer(&l, PARE_Q_CONV, &r);
        l.kernel = rnd(&r, 1, 5);
        l.stride = rnd(&r, 1, 2);
        l.pad = trial % 3 == 0 ? 1 % l.kernel : rnd(&r, 0, l.kernel - 1);
        l.in_h = l.kernel + rnd(&r, 0, 9);
        l.in_w = l.kernel + rnd(&r, 0, 9);
        l.in_c = trial < 4 ? trial + 1 : rnd(&r, 1, 40); /* K = k*k*in_c: rarely a multiple of 4, 16 or 64 */
        l.out_c = trial < 8 ? 16 * (trial % 5) + 1 + trial : rnd(&r, 1, 80);
        fill_params(&l, l.kernel * l.kernel * l.in_c, &r, FILL_RANDOM, trial % 5 == 4);
        CHECKF(plan_one(&l) == 0, "%s", pare_error());
        int8_t *x = input((size_t)l.in_h * l.in_w * l.in_c, &r, FILL_RANDOM);
        CHECKF(same_outputs(&l, x), "conv trial %d: k %d s %d p %d in %dx%dx%d out_c %d differs", trial, l.kernel,
               l.stride, l.pad, l.in_h, l.in_w, l.in_c, l.out_c);
        pare_free(x);
        free_params(&l);
    }
}

TEST(quant_fast_linear_matches_reference_random_shapes)
{
    note_kernel();
    pare_rng r;
    pare_rng_seed(&r, 32, PARE_STREAM_TEST);
    for (int trial = 0; trial < 60; trial++) {
        pare_qlayer l;
        base_layer(&l, PARE_Q_LINEAR, &r);
        l.in_h = l.in_w = 1;
        l.in_c = trial < 6 ? (int[]){1, 3, 63, 64, 65, 129}[trial] : rnd(&r, 1, 700);
        l.out_c = rnd(&r, 1, 21);
        fill_params(&l, l.in_c, &r, FILL_RANDOM, trial % 5 == 4);
        CHECKF(plan_one(&l) == 0, "%s", pare_error());
        int8_t *x = input((size_t)l.in_c, &r, FILL_RANDOM);
        CHECKF(same_outputs(&l, x), "linear trial %d: %d -> %d differs", trial, l.in_c, l.out_c);
        pare_free(x);
        free_params(&l);
    }
}

/* Inputs all -128 or all 127, weights all -127 or all 127, zero points at
 * both ends, biases of +-2^30, and the longest dot product the plan allows
 * (2^15 terms, conv): the accumulator's largest magnitudes. */
TEST(quant_fast_matches_reference_at_extremes)
{
    note_kernel();
    pare_rng r;
    pare_rng_seed(&r, 33, PARE_STREAM_TEST);
    const fill_mode modes[2] = {FILL_MIN, FILL_MAX};
    const int32_t zps[2] = {-128, 127};
    for (int xi = 0; xi < 2; xi++)
        for (int wi = 0; wi < 2; wi++)
            for (int zi = 0; zi < 2; zi++)
                for (int big = 0; big < 2; big++) {
                    /* a conv with 3x3 padding-1 windows (padding meets the zero point) */
                    pare_qlayer c;
                    base_layer(&c, PARE_Q_CONV, &r);
                    c.in_zp = zps[zi];
                    c.out_zp = zps[1 - zi];
                    c.kernel = 3;
                    c.stride = 1 + big;
                    c.pad = 1;
                    c.in_h = 5;
                    c.in_w = 6;
                    c.in_c = big ? 3640 : 7; /* K = 32760 or 63 */
                    c.out_c = big ? 17 : 33;
                    fill_params(&c, 9 * c.in_c, &r, modes[wi], big);
                    CHECKF(plan_one(&c) == 0, "%s", pare_error());
                    int8_t *x = input((size_t)c.in_h * c.in_w * c.in_c, &r, modes[xi]);
                    CHECKF(same_outputs(&c, x), "extreme conv x %d w %d zp %d big %d differs", xi, wi, zi, big);
                    pare_free(x);
                    free_params(&c);
                    /* a linear layer of 2^14 or 1000 terms */
                    pare_qlayer f;
                    base_layer(&f, PARE_Q_LINEAR, &r);
                    f.in_zp = zps[zi];
                    f.out_zp = zps[zi];
                    f.in_h = f.in_w = 1;
                    f.in_c = big ? 1 << 14 : 1000; /* the largest dimension the plan takes */
                    f.out_c = 7;
                    fill_params(&f, f.in_c, &r, modes[wi], big);
                    CHECKF(plan_one(&f) == 0, "%s", pare_error());
                    x = input((size_t)f.in_c, &r, modes[xi]);
                    CHECKF(same_outputs(&f, x), "extreme linear x %d w %d zp %d big %d differs", xi, wi, zi, big);
                    pare_free(x);
                    free_params(&f);
                }
}

/* Requantization alone: accumulators of every magnitude through a 1x1 conv
 * with one input channel, weights 1, and multipliers/shifts drawn over
 * their whole range, shift > 0 included. */
TEST(quant_fast_requantization_matches_reference)
{
    note_kernel();
    pare_rng r;
    pare_rng_seed(&r, 34, PARE_STREAM_TEST);
    for (int trial = 0; trial < 40; trial++) {
        pare_qlayer l;
        base_layer(&l, PARE_Q_CONV, &r);
        l.kernel = l.stride = 1;
        l.in_h = 3;
        l.in_w = 5;
        l.in_c = 1;
        l.out_c = 37;
        fill_params(&l, 1, &r, FILL_RANDOM, 0);
        for (int c = 0; c < l.out_c; c++) {
            l.mult[c] = (int32_t)((1u << 30) + pare_rng_below(&r, 1u << 30));
            l.shift[c] = trial % 2 ? rnd(&r, -31, 0) : rnd(&r, -31, 30);
            /* accumulators of about 2^(9 - shift): outputs land near the
             * int8 range, where every rounding decision shows */
            int64_t range = l.shift[c] > 8 ? 1 : l.shift[c] < -20 ? (int64_t)1 << 30 : (int64_t)1 << (9 - l.shift[c]);
            l.weight[c] = (int8_t)rnd(&r, -1, 1);
            l.bias[c] = (int32_t)((int64_t)pare_rng_below(&r, (uint64_t)(2 * range + 1)) - range);
        }
        CHECKF(plan_one(&l) == 0, "%s", pare_error());
        int8_t *x = input(15, &r, FILL_RANDOM);
        CHECKF(same_outputs(&l, x), "requantization trial %d differs", trial);
        pare_free(x);
        free_params(&l);
    }
}

/* The whole-model path (weights packed once per call, batch 1 and 7)
 * against the reference run layer by layer; and max pooling against its
 * definition. conv (stride 2, pad 1) -> maxpool -> flatten -> linear. */
TEST(quant_fast_model_batches_match_reference)
{
    note_kernel();
    pare_rng r;
    pare_rng_seed(&r, 35, PARE_STREAM_TEST);
    pare_qmodel *qm = calloc(1, sizeof *qm);
    pare_qlayer *c = &qm->layers[0], *p = &qm->layers[1], *fl = &qm->layers[2], *f = &qm->layers[3];
    base_layer(c, PARE_Q_CONV, &r);
    c->kernel = 3;
    c->stride = 2;
    c->pad = 1;
    c->in_h = 13;
    c->in_w = 11;
    c->in_c = 5;
    c->out_c = 19;
    c->act_min = c->out_zp;
    fill_params(c, 9 * c->in_c, &r, FILL_RANDOM, 0);
    base_layer(p, PARE_Q_MAXPOOL, &r);
    p->kernel = p->stride = 2;
    p->in_h = 7;
    p->in_w = 6;
    p->in_c = 19;
    p->in_zp = p->out_zp = c->out_zp;
    p->in_scale = p->out_scale = c->out_scale;
    p->act_min = -128;
    base_layer(fl, PARE_Q_FLATTEN, &r);
    fl->in_h = 3;
    fl->in_w = 3;
    fl->in_c = 19;
    fl->in_zp = fl->out_zp = p->out_zp;
    fl->in_scale = fl->out_scale = p->out_scale;
    fl->act_min = -128;
    base_layer(f, PARE_Q_LINEAR, &r);
    f->in_h = f->in_w = 1;
    f->in_c = 171;
    f->out_c = 10;
    f->in_zp = fl->out_zp;
    f->in_scale = fl->out_scale;
    fill_params(f, f->in_c, &r, FILL_RANDOM, 0);
    qm->n_layers = 4;
    qm->in_c = 5;
    qm->in_h = 13;
    qm->in_w = 11;
    qm->in_zp = c->in_zp;
    qm->in_scale = c->in_scale;
    CHECKF(pare_qmodel_plan(qm) == 0, "%s", pare_error());
    size_t in_n = 13 * 11 * 5, mid = 7 * 6 * 19, pooled = 3 * 3 * 19;
    int8_t *x = input(7 * in_n, &r, FILL_RANDOM), *y = pare_alloc(7 * 10), *want = pare_alloc(7 * 10);
    int8_t *a = pare_alloc(mid), *b = pare_alloc(pooled), *work = pare_alloc(pare_qlayer_work_bytes(c));
    void *scratch = pare_alloc(qm->scratch_bytes);
    for (int s = 0; s < 7; s++) {
        pare_qlayer_run_reference(c, x + s * in_n, a, work);
        pare_qlayer_run_reference(p, a, b, NULL);
        /* max pooling by its definition, clamp included */
        for (int oy = 0; oy < 3; oy++)
            for (int ox = 0; ox < 3; ox++)
                for (int ch = 0; ch < 19; ch++) {
                    int best = -128;
                    for (int ky = 0; ky < 2; ky++)
                        for (int kx = 0; kx < 2; kx++) {
                            int v = a[((oy * 2 + ky) * 6 + ox * 2 + kx) * 19 + ch];
                            best = v > best ? v : best;
                        }
                    CHECK(b[(oy * 3 + ox) * 19 + ch] == best);
                }
        pare_qlayer_run_reference(f, b, want + s * 10, NULL);
    }
    KERNEL_LOOP(k)
    {
        CHECK(pare_qmodel_forward(qm, x, 1, y, scratch, qm->scratch_bytes) == 0);
        CHECKF(memcmp(y, want, 10) == 0, "kernel %s, batch 1", pare_qkernel_name());
        CHECK(pare_qmodel_forward(qm, x, 7, y, scratch, qm->scratch_bytes) == 0);
        CHECKF(memcmp(y, want, 70) == 0, "kernel %s, batch 7", pare_qkernel_name());
    }
    pare_free(x);
    pare_free(y);
    pare_free(want);
    pare_free(a);
    pare_free(b);
    pare_free(work);
    pare_free(scratch);
    free_params(c);
    free_params(f);
    free(qm);
}

/* Inputs whose quotient by scale rounds differently in float (the rule)
 * and in double: a vector path that divided in double would disagree on
 * them. Up to max of them go to out; returns how many were found. */
static int rule_edges(float scale, float *out, int max)
{
    int found = 0;
    for (int k = -1000; k < 1000 && found < max; k++)
        for (int d = -8; d <= 8 && found < max; d++) {
            float x = nextafterf((float)((k + 0.5) * scale), d < 0 ? -INFINITY : INFINITY);
            for (int j = 0; j < abs(d); j++) x = nextafterf(x, d < 0 ? -INFINITY : INFINITY);
            double in_double = round((double)x / scale);
            float qf = x / scale, in_float = truncf(qf) + (fabsf(qf - truncf(qf)) >= 0.5f ? copysignf(1, qf) : 0);
            if (in_double != (double)in_float) out[found++] = x;
        }
    return found;
}

/* The float entry of pare_qmodel_forward_float (vectorized in the fast
 * build) quantizes exactly as pare_quantize_value: ties, NaN, infinities,
 * values past the range, quotients that round differently in double. Seen
 * through a one-layer flatten model, whose output is scale * (q - zp). */
TEST(quant_fast_float_entry_matches_quantize_value)
{
    note_kernel();
    pare_rng r;
    pare_rng_seed(&r, 36, PARE_STREAM_TEST);
    /* a power of two (ties of 0.125 k are exact) and a scale that is not */
    const float scales[2] = {0.25f, 0.3f};
    float edges[64];
    int n_edges = rule_edges(0.3f, edges, 64);
    CHECKF(n_edges >= 8, "only %d inputs where float and double quotients round apart", n_edges);
    /* 3 channels (strided stores) and 1 (contiguous, as MNIST) */
    for (int run = 0; run < 4; run++) {
        int c = run % 2 ? 1 : 3;
        float sc = scales[run / 2];
        pare_qmodel *qm = calloc(1, sizeof *qm);
        pare_qlayer *f = &qm->layers[0];
        f->kind = PARE_Q_FLATTEN;
        f->in_h = 5;
        f->in_w = 7;
        f->in_c = c;
        f->in_zp = f->out_zp = -3;
        f->in_scale = f->out_scale = sc;
        f->act_min = -128;
        f->act_max = 127;
        qm->n_layers = 1;
        qm->in_c = c;
        qm->in_h = 5;
        qm->in_w = 7;
        qm->in_zp = -3;
        qm->in_scale = sc;
        CHECKF(pare_qmodel_plan(qm) == 0, "%s", pare_error());
        enum { N = 4 };
        int per = 35 * c;
        float *x = pare_alloc(N * per * sizeof(float)), *y = pare_alloc(N * per * sizeof(float));
        const float special[] = {NAN,      INFINITY, -INFINITY, 1e30f,       -1e30f,      0.125f,
                                 -0.125f,  0.375f,   -0.375f,   31.875f,     -31.875f,    32.125f,
                                 -31.125f, 0.0f,     -0.0f,     0.12499999f, -0.12500001f};
        int n_special = (int)(sizeof special / sizeof *special);
        for (int i = 0; i < N * per; i++)
            x[i] = i < n_special             ? special[i]
                   : i < n_special + n_edges ? edges[i - n_special]
                   : i % 3                   ? 0.125f * (float)rnd(&r, -300, 300) /* ties of scale 0.25 */
                                             : pare_rng_range(&r, -40, 40);
        void *scratch = pare_alloc(qm->scratch_bytes);
        CHECK(pare_qmodel_forward_float(qm, x, N, y, scratch, qm->scratch_bytes) == 0);
        pare_qparams p = {sc, -3, -128, 127};
        int bad = 0;
        for (int s = 0; s < N; s++)
            for (int ch = 0; ch < c; ch++)
                for (int i = 0; i < 35; i++) {
                    /* input NCHW, output NHWC-flat */
                    float want = sc * (float)(pare_quantize_value(x[s * per + ch * 35 + i], &p) + 3);
                    bad += y[s * per + i * c + ch] != want;
                }
        CHECKF(bad == 0, "%d channels, scale %g: %d values quantized differently", c, (double)sc, bad);
        pare_free(x);
        pare_free(y);
        pare_free(scratch);
        free(qm);
    }
}

/* A layer of the given kind after the model's last one (its input the
 * previous output, quantization chained); the caller sets its shape
 * parameters, then finish() adds it and plans the model. */
static pare_qlayer *append(pare_qmodel *qm, pare_qkind kind, pare_rng *r)
{
    pare_qlayer *l = &qm->layers[qm->n_layers];
    base_layer(l, kind, r);
    if (qm->n_layers == 0) {
        l->in_h = qm->in_h, l->in_w = qm->in_w, l->in_c = qm->in_c;
        l->in_zp = qm->in_zp, l->in_scale = qm->in_scale;
    } else {
        const pare_qlayer *p = l - 1;
        l->in_h = p->out_h, l->in_w = p->out_w, l->in_c = p->out_c;
        l->in_zp = p->out_zp, l->in_scale = p->out_scale;
    }
    if (kind == PARE_Q_MAXPOOL || kind == PARE_Q_FLATTEN) {
        l->out_zp = l->in_zp;
        l->out_scale = l->in_scale;
        l->act_min = -128, l->act_max = 127;
    }
    if (kind == PARE_Q_MAXPOOL) {
        /* a pooling clamp of its own: the same, narrower, or disjoint
         * from the conv's (above or below it: the output is a constant) */
        pare_qlayer *p = l - 1;
        int mode = rnd(r, 0, 3);
        if (mode == 1) l->act_min = rnd(r, -128, 0), l->act_max = rnd(r, 0, 127);
        if (mode == 2 && p->act_min <= 100) {
            p->act_max = rnd(r, p->act_min, p->act_min + 20);
            l->act_min = rnd(r, p->act_max + 1, 127);
        }
        if (mode == 3 && p->act_max >= -100) {
            p->act_min = rnd(r, p->act_max - 20, p->act_max);
            l->act_max = rnd(r, -128, p->act_min - 1);
        }
    }
    return l;
}

/* Random weights for a conv or linear layer, the layer added, the model planned. */
static int finish(pare_qmodel *qm, pare_qlayer *l, pare_rng *r)
{
    if (l->kind == PARE_Q_CONV) fill_params(l, l->kernel * l->kernel * l->in_c, r, FILL_RANDOM, 0);
    if (l->kind == PARE_Q_LINEAR) fill_params(l, l->in_c, r, FILL_RANDOM, 0);
    qm->n_layers++;
    return pare_qmodel_plan(qm);
}

/* conv [-> maxpool] -> conv [-> maxpool] -> flatten -> linear -> linear,
 * random sizes; the max poolings 2x2 stride 2 (fused by the vector
 * kernels) or 3x3 / stride 1 (not fused), on odd and even sizes. */
static pare_qmodel *random_model(pare_rng *r, int trial)
{
    pare_qmodel *qm = calloc(1, sizeof *qm);
    qm->in_h = rnd(r, 6, 14);
    qm->in_w = rnd(r, 6, 14);
    qm->in_c = rnd(r, 1, 5);
    qm->in_zp = rnd(r, -128, 127);
    qm->in_scale = 0.02f;
    for (int c = 0; c < 2; c++) {
        pare_qlayer *l = append(qm, PARE_Q_CONV, r);
        int fit = l->in_h < l->in_w ? l->in_h : l->in_w;
        l->kernel = rnd(r, 1, fit < 3 ? fit : 3);
        l->stride = c == 0 && trial % 4 == 3 ? 2 : 1;
        l->pad = rnd(r, 0, l->kernel - 1);
        l->out_c = trial % 5 == 0 ? 16 * (c + 1) : rnd(r, 1, 40);
        if (finish(qm, l, r)) goto fail;
        if (rnd(r, 0, 3) && l->out_h >= 3 && l->out_w >= 3) {
            pare_qlayer *p = append(qm, PARE_Q_MAXPOOL, r);
            p->kernel = rnd(r, 0, 5) ? 2 : 3;
            p->stride = p->kernel == 2 ? 2 : 1;
            if (finish(qm, p, r)) goto fail;
        }
    }
    if (finish(qm, append(qm, PARE_Q_FLATTEN, r), r)) goto fail;
    pare_qlayer *f = append(qm, PARE_Q_LINEAR, r);
    f->out_c = rnd(r, 1, 70);
    if (finish(qm, f, r)) goto fail;
    f = append(qm, PARE_Q_LINEAR, r);
    f->out_c = rnd(r, 1, 12);
    if (finish(qm, f, r)) goto fail;
    return qm;
fail:
    printf("  random model %d: %s\n", trial, pare_error());
    return qm;
}

static void free_model(pare_qmodel *qm)
{
    for (int i = 0; i < qm->n_layers; i++) free_params(&qm->layers[i]);
    free(qm);
}

/* One sample through the model with the reference kernels, layer by layer. */
static void reference_forward(const pare_qmodel *qm, const int8_t *x, int8_t *y)
{
    size_t big = (size_t)qm->in_h * qm->in_w * qm->in_c, wb = 0;
    for (int i = 0; i < qm->n_layers; i++) {
        const pare_qlayer *l = &qm->layers[i];
        size_t n = (size_t)l->out_h * l->out_w * l->out_c;
        big = n > big ? n : big;
        wb = pare_qlayer_work_bytes(l) > wb ? pare_qlayer_work_bytes(l) : wb;
    }
    int8_t *a = pare_alloc(big), *b = pare_alloc(big), *work = pare_alloc(wb + 1);
    memcpy(a, x, (size_t)qm->in_h * qm->in_w * qm->in_c);
    for (int i = 0; i < qm->n_layers; i++) {
        pare_qlayer_run_reference(&qm->layers[i], a, b, work);
        int8_t *t = a;
        a = b;
        b = t;
    }
    memcpy(y, a, (size_t)qm->n_out);
    pare_free(a);
    pare_free(b);
    pare_free(work);
}

/* Batches of every size around the group (PARE_QGROUP) and tile sizes, on
 * 1, 2 and 3 threads, with every kernel: the same bytes as the reference
 * run sample by sample. */
TEST(quant_batched_threaded_forward_matches_reference)
{
    note_kernel();
    pare_rng r;
    pare_rng_seed(&r, 37, PARE_STREAM_TEST);
    int saved = pare_threads();
    const int batches[] = {1, 2, 5, PARE_QGROUP, PARE_QGROUP + 1, 17, 40};
    enum { NB = sizeof batches / sizeof batches[0], MAXN = 40 };
    for (int trial = 0; trial < 16; trial++) {
        pare_qmodel *qm = random_model(&r, trial);
        CHECKF(qm->n_layers >= 5 && pare_qmodel_plan(qm) == 0, "trial %d: %s", trial, pare_error());
        if (pare_qmodel_plan(qm)) {
            free_model(qm);
            continue;
        }
        size_t in_n = (size_t)qm->in_h * qm->in_w * qm->in_c, out_n = (size_t)qm->n_out;
        int8_t *x = input(MAXN * in_n, &r, FILL_RANDOM), *want = pare_alloc(MAXN * out_n),
               *y = pare_alloc(MAXN * out_n);
        for (int s = 0; s < MAXN; s++) reference_forward(qm, x + s * in_n, want + s * out_n);
        void *scratch = pare_alloc(qm->scratch_bytes);
        int bad = 0;
        KERNEL_LOOP(k)
        for (int th = 1; th <= 3; th++) {
            pare_set_threads(th);
            for (int b = 0; b < NB; b++) {
                int n = batches[b];
                memset(y, 0x5a, (size_t)n * out_n);
                CHECK(pare_qmodel_forward(qm, x, n, y, scratch, qm->scratch_bytes) == 0);
                if (memcmp(y, want, (size_t)n * out_n) != 0 && bad++ < 3)
                    printf("  trial %d: kernel %s, %d threads, batch %d differs\n", trial, pare_qkernel_name(), th, n);
            }
        }
        CHECKF(bad == 0, "trial %d: %d batched forwards differ from the reference", trial, bad);
        pare_set_threads(saved);
        pare_free(x);
        pare_free(want);
        pare_free(y);
        pare_free(scratch);
        free_model(qm);
    }
}

/* Kernel names: unknown ones are refused, the default comes back. */
TEST(quant_kernel_select_by_name)
{
    const char *def = pare_qkernel_name();
    CHECK(pare_qkernel_select("no-such-kernel") == -1);
    CHECK(pare_qkernel_select("reference") == 0 && !strcmp(pare_qkernel_name(), "reference") && !pare_qkernel_fast());
    CHECK(pare_qkernel_select("auto") == 0 && !strcmp(pare_qkernel_name(), def));
    CHECK(pare_qkernel_select(NULL) == 0 && !strcmp(pare_qkernel_name(), def));
}
