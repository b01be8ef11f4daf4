/* The histogram and percentile observers: counts kept through re-binning
 * and independent of batching, outliers clipped (with a smaller
 * quantization error than min/max), uniform data left almost whole, a
 * percentile where it should be, bad configurations refused, and the
 * observers working through pare_quant_prepare / convert. */
#include <stdlib.h>
#include <string.h>

#include "compress/quant.h"
#include "tests/test.h"

static pare_quant_config hist_config(pare_observer_kind kind)
{
    pare_quant_config cfg = pare_quant_defaults();
    cfg.observer = kind;
    return cfg;
}

static long long hist_sum(const pare_observer *o)
{
    long long s = 0;
    for (int i = 0; i < o->bins; i++) s += o->hist[i];
    return s;
}

/* Mean squared error of quantizing x to `bits` (asymmetric) with the range [lo, hi]. */
static double quant_mse(const float *x, size_t n, float lo, float hi, int bits)
{
    pare_qparams p;
    CHECK(pare_qparams_choose(lo, hi, bits, 0, &p) == 0);
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)pare_dequantize_value(pare_quantize_value(x[i], &p), &p) - x[i];
        s += d * d;
    }
    return s / (double)n;
}

/* Feeds x to o in batches of `batch`. */
static void feed(pare_observer *o, const float *x, size_t n, size_t batch)
{
    for (size_t i = 0; i < n; i += batch) pare_observer_update(o, x + i, n - i < batch ? n - i : batch);
}

TEST(observer_hist_counts_survive_rebinning)
{
    pare_rng r;
    pare_rng_seed(&r, 1, PARE_STREAM_TEST);
    enum { N = 30000 };
    float *x = malloc(N * sizeof *x);
    for (int i = 0; i < N; i++) x[i] = pare_rng_range(&r, 0, 1);
    /* later values reach far outside the first batch's range, on both sides */
    for (int i = 1000; i < N; i += 97) x[i] = pare_rng_range(&r, -40, 0);
    for (int i = 5000; i < N; i += 301) x[i] = pare_rng_range(&r, 1, 300);
    x[N - 1] = 1e6f;
    pare_quant_config cfg = hist_config(PARE_OBSERVE_HISTOGRAM);
    pare_observer a, b;
    CHECK(pare_observer_init(&a, &cfg) == 0 && pare_observer_init(&b, &cfg) == 0);
    /* the same first batch (it fixes the grid), then the rest in batches of different sizes */
    feed(&a, x, 1000, 1000);
    feed(&b, x, 1000, 1000);
    int grew = 0;
    for (int i = 1000; i < N; i += 700) {
        int level = a.level;
        feed(&a, x + i, (size_t)(N - i < 700 ? N - i : 700), 700);
        grew += a.level > level;
    }
    feed(&b, x + 1000, N - 1000, 13);
    CHECK(grew >= 2);
    CHECK(a.count == N && a.binned == N && hist_sum(&a) == N);
    CHECK(b.count == N && hist_sum(&b) == N);
    CHECK(a.level == b.level && a.first == b.first);
    CHECK(memcmp(a.hist, b.hist, (size_t)a.bins * sizeof *a.hist) == 0);
    CHECK(a.min == b.min && a.max == b.max && a.max == 1e6f);
    /* the window holds everything: first and last bins that hold values are inside it */
    CHECK(a.hist[0] > 0);
    float lo, hi;
    CHECK(pare_observer_range(&a, &lo, &hi) == 0 && lo >= a.min && hi <= a.max && lo < hi);
    pare_observer_release(&a);
    pare_observer_release(&b);
    CHECK(a.hist == NULL);
    free(x);
}

TEST(observer_hist_skips_non_finite)
{
    pare_quant_config cfg = hist_config(PARE_OBSERVE_HISTOGRAM);
    pare_observer o;
    CHECK(pare_observer_init(&o, &cfg) == 0);
    float x[6] = {NAN, INFINITY, -INFINITY, 1, -2, 0};
    pare_observer_update(&o, x, 3);
    float lo, hi;
    CHECK(o.count == 3 && o.binned == 0);
    CHECK(pare_observer_range(&o, &lo, &hi) == -1 && strstr(pare_error(), "no finite"));
    pare_observer_update(&o, x + 3, 3);
    CHECK(o.count == 6 && o.binned == 3 && hist_sum(&o) == 3 && o.zeros == 1);
    CHECK(o.min == -2 && o.max == 1);
    pare_observer_release(&o);
    /* one value seen: its own range */
    CHECK(pare_observer_init(&o, &cfg) == 0);
    pare_observer_update(&o, x + 3, 1);
    CHECK(pare_observer_range(&o, &lo, &hi) == 0 && lo == 1 && hi == 1);
    pare_observer_release(&o);
}

/* A bell and a few far outliers. At 4 bits min/max spends the 15 steps on
 * the outliers; histogram and percentile clip them, for a smaller mean
 * squared error over all the values, outliers included. At 8 bits the
 * steps are fine enough that clipping outliers 25 away costs more than it
 * saves: the histogram keeps them (its error is never above min/max's),
 * while the percentile clips them anyway. */
TEST(observer_hist_clips_outliers)
{
    pare_rng r;
    pare_rng_seed(&r, 2, PARE_STREAM_TEST);
    enum { N = 40000 };
    float *x = malloc(N * sizeof *x);
    for (int i = 0; i < N; i++) x[i] = pare_rng_normal(&r);
    x[123] = 30, x[9000] = 28, x[20000] = -30, x[33333] = -29;
    for (int bits = 4; bits <= 8; bits += 4) {
        double mse[3];
        float range[3][2];
        for (int k = 0; k < 3; k++) {
            pare_quant_config cfg = hist_config(k == 0   ? PARE_OBSERVE_MINMAX
                                                : k == 1 ? PARE_OBSERVE_HISTOGRAM
                                                         : PARE_OBSERVE_PERCENTILE);
            cfg.act_bits = bits;
            pare_observer o;
            CHECK(pare_observer_init(&o, &cfg) == 0);
            feed(&o, x, N, 256);
            CHECK(pare_observer_range(&o, &range[k][0], &range[k][1]) == 0);
            mse[k] = quant_mse(x, N, range[k][0], range[k][1], bits);
            pare_observer_release(&o);
        }
        CHECK(range[0][0] == -30 && range[0][1] == 30);
        CHECKF(mse[1] <= mse[0], "bits %d: histogram mse %g vs min/max %g", bits, mse[1], mse[0]);
        CHECKF(range[2][0] > -6 && range[2][1] < 6, "bits %d: percentile [%g, %g]", bits, (double)range[2][0],
               (double)range[2][1]);
        if (bits == 4)
            for (int k = 1; k < 3; k++) {
                CHECKF(range[k][0] > -8 && range[k][1] < 8, "kind %d: [%g, %g]", k, (double)range[k][0],
                       (double)range[k][1]);
                CHECKF(mse[k] < 0.25 * mse[0], "kind %d: mse %g vs min/max %g", k, mse[k], mse[0]);
            }
        else
            CHECKF(mse[2] > mse[0], "percentile mse %g vs min/max %g", mse[2], mse[0]);
    }
    free(x);
}

/* The error model against the real thing: on skewed data at 4 bits, the
 * histogram's range quantizes with a mean squared error within 5% of the
 * best of a 48 x 48 grid of ranges, each measured by quantizing the data. */
TEST(observer_hist_near_best_range)
{
    pare_rng r;
    pare_rng_seed(&r, 7, PARE_STREAM_TEST);
    enum { N = 6000, G = 48 };
    float *x = malloc(N * sizeof *x);
    for (int i = 0; i < N; i++) {
        float z = pare_rng_normal(&r);
        x[i] = z > 0 ? z * z : 0.3f * z; /* a long right tail, a short left one */
    }
    pare_quant_config cfg = hist_config(PARE_OBSERVE_HISTOGRAM);
    cfg.act_bits = 4;
    pare_observer o;
    CHECK(pare_observer_init(&o, &cfg) == 0);
    feed(&o, x, N, 500);
    float lo, hi;
    CHECK(pare_observer_range(&o, &lo, &hi) == 0);
    double mine = quant_mse(x, N, lo, hi, 4), best = INFINITY;
    for (int i = 0; i < G; i++)
        for (int j = 0; j < G; j++) {
            float a = o.min * (float)(G - i) / G, b = o.max * (float)(j + 1) / G;
            double e = quant_mse(x, N, a, b, 4);
            if (e < best) best = e;
        }
    CHECKF(mine <= 1.05 * best, "histogram [%g, %g]: mse %g, best on the grid %g", (double)lo, (double)hi, mine, best);
    pare_observer_release(&o);
    free(x);
}

/* Uniform data: nothing is worth clipping beyond a few bins. */
TEST(observer_hist_uniform_keeps_range)
{
    pare_rng r;
    pare_rng_seed(&r, 3, PARE_STREAM_TEST);
    enum { N = 50000 };
    float *x = malloc(N * sizeof *x);
    for (int i = 0; i < N; i++) x[i] = pare_rng_range(&r, -1, 3);
    pare_quant_config cfg = hist_config(PARE_OBSERVE_HISTOGRAM);
    pare_observer o;
    CHECK(pare_observer_init(&o, &cfg) == 0);
    feed(&o, x, N, 1000);
    float lo, hi;
    CHECK(pare_observer_range(&o, &lo, &hi) == 0);
    CHECKF(lo - o.min < 0.01f * 4 && o.max - hi < 0.01f * 4 && lo >= o.min && hi <= o.max, "[%g, %g] of [%g, %g]",
           (double)lo, (double)hi, (double)o.min, (double)o.max);
    double mse_h = quant_mse(x, N, lo, hi, 8), mse_m = quant_mse(x, N, o.min, o.max, 8);
    CHECKF(mse_h <= mse_m * 1.01, "mse %g vs min/max %g", mse_h, mse_m);
    pare_observer_release(&o);
    free(x);
}

/* Evenly spaced values in [0, 1] in a shuffled order: the pth percentile
 * is p / 100, found within a bin. */
TEST(observer_percentile_quantiles)
{
    enum { N = 100001 };
    float *x = malloc(N * sizeof *x);
    int *idx = malloc(N * sizeof *idx);
    for (int i = 0; i < N; i++) idx[i] = i;
    pare_rng r;
    pare_rng_seed(&r, 4, PARE_STREAM_TEST);
    pare_rng_shuffle(&r, idx, N);
    for (int i = 0; i < N; i++) x[i] = (float)idx[i] / (N - 1);
    float ps[3] = {99.0f, 90.0f, 100.0f};
    for (int t = 0; t < 3; t++) {
        pare_quant_config cfg = hist_config(PARE_OBSERVE_PERCENTILE);
        cfg.percentile = ps[t];
        pare_observer o;
        CHECK(pare_observer_init(&o, &cfg) == 0);
        feed(&o, x, N, 4096);
        float lo, hi, bin = (float)(o.width0 * ldexp(1.0, o.level));
        CHECK(pare_observer_range(&o, &lo, &hi) == 0);
        double q = ps[t] / 100.0;
        CHECKF(fabs(hi - q) <= bin && fabs(lo - (1 - q)) <= bin, "p %g: [%g, %g], bin %g", (double)ps[t], (double)lo,
               (double)hi, (double)bin);
        if (t == 2) CHECK(lo == 0 && hi == 1);
        pare_observer_release(&o);
    }
    free(idx);
    free(x);
}

/* With the first batch holding the extremes, the range never grows: one
 * batch or many give the same counts and the same range. */
TEST(observer_hist_batching_invariant)
{
    pare_rng r;
    pare_rng_seed(&r, 5, PARE_STREAM_TEST);
    enum { N = 20000 };
    float *x = malloc(N * sizeof *x);
    for (int i = 0; i < N; i++) x[i] = pare_rng_normal(&r) * 2 + 0.5f;
    /* move the extremes into the first batch of 64 */
    int lo_i = 0, hi_i = 0;
    for (int i = 0; i < N; i++) {
        if (x[i] < x[lo_i]) lo_i = i;
        if (x[i] > x[hi_i]) hi_i = i;
    }
    float t = x[0];
    x[0] = x[lo_i], x[lo_i] = t;
    if (hi_i == 0) hi_i = lo_i;
    t = x[1], x[1] = x[hi_i], x[hi_i] = t;
    for (int kind = 0; kind < 2; kind++) {
        pare_quant_config cfg = hist_config(kind ? PARE_OBSERVE_PERCENTILE : PARE_OBSERVE_HISTOGRAM);
        cfg.act_bits = 4;
        pare_observer one, many;
        CHECK(pare_observer_init(&one, &cfg) == 0 && pare_observer_init(&many, &cfg) == 0);
        feed(&one, x, N, N);
        pare_observer_update(&many, x, N);
        pare_observer_release(&many); /* re-init: released observers are reusable after init */
        CHECK(pare_observer_init(&many, &cfg) == 0);
        feed(&many, x, N, 64);
        CHECK(many.level == 0 && one.level == 0);
        CHECK(memcmp(one.hist, many.hist, (size_t)one.bins * sizeof *one.hist) == 0);
        float a0, a1, b0, b1;
        CHECK(pare_observer_range(&one, &a0, &a1) == 0 && pare_observer_range(&many, &b0, &b1) == 0);
        CHECK(a0 == b0 && a1 == b1);
        pare_observer_release(&one);
        pare_observer_release(&many);
    }
    free(x);
}

TEST(observer_bad_config_rejected)
{
    pare_observer o;
    pare_quant_config cfg = hist_config(PARE_OBSERVE_HISTOGRAM);
    cfg.hist_bins = 8;
    CHECK(pare_observer_init(&o, &cfg) == -1 && strstr(pare_error(), "bins"));
    cfg.hist_bins = 100000;
    CHECK(pare_observer_init(&o, &cfg) == -1 && strstr(pare_error(), "bins"));
    cfg = hist_config(PARE_OBSERVE_HISTOGRAM);
    cfg.act_bits = 9;
    CHECK(pare_observer_init(&o, &cfg) == -1 && strstr(pare_error(), "bit width"));
    float bad_p[4] = {50.0f, 100.5f, NAN, -3.0f};
    for (int i = 0; i < 4; i++) {
        cfg = hist_config(PARE_OBSERVE_PERCENTILE);
        cfg.percentile = bad_p[i];
        CHECK(pare_observer_init(&o, &cfg) == -1 && strstr(pare_error(), "percentile"));
    }
    cfg = hist_config((pare_observer_kind)42);
    CHECK(pare_observer_init(&o, &cfg) == -1 && strstr(pare_error(), "not known"));
    /* the percentile does not matter to the histogram kind, nor bins to min/max */
    cfg = hist_config(PARE_OBSERVE_HISTOGRAM);
    cfg.percentile = 0;
    CHECK(pare_observer_init(&o, &cfg) == 0);
    pare_observer_release(&o);
    cfg = hist_config(PARE_OBSERVE_MINMAX);
    cfg.hist_bins = 0;
    CHECK(pare_observer_init(&o, &cfg) == 0 && o.hist == NULL);
    pare_observer_release(&o);
    /* pare_quant_prepare refuses a bad configuration before installing anything */
    pare_model *m = pare_sequential("obs", pare_linear("a", 2, 1), NULL);
    CHECK(pare_build(m, 2, 0, 0) == 0);
    cfg = hist_config(PARE_OBSERVE_PERCENTILE);
    cfg.percentile = 20;
    CHECK(pare_quant_prepare(m, &cfg) == -1 && pare_quant_observer(m, -1) == NULL);
    pare_model_free(m);
}

/* Through pare_quant_prepare and convert: a small model quantizes with
 * either histogram kind, and its observers own and free their bins. */
TEST(observer_hist_through_ptq)
{
    pare_model *m = pare_sequential("obs", pare_linear("a", 6, 5), pare_relu(), pare_linear("b", 5, 3), NULL);
    CHECK(pare_build(m, 6, 0, 0) == 0);
    pare_rng r;
    pare_rng_seed(&r, 6, PARE_STREAM_TEST);
    for (int kind = 0; kind < 2; kind++) {
        pare_quant_config cfg = hist_config(kind ? PARE_OBSERVE_PERCENTILE : PARE_OBSERVE_HISTOGRAM);
        CHECK(pare_quant_prepare(m, &cfg) == 0);
        pare_ctx *ctx = pare_ctx_new(0);
        pare_set_grad_enabled(ctx, 0);
        for (int b = 0; b < 3; b++) {
            pare_tensor *x = pare_ctx_tensor(ctx, 2, (int[]){32, 6});
            for (size_t i = 0; i < x->size; i++) x->data[i] = pare_rng_normal(&r);
            CHECK(pare_forward(ctx, m, x) != NULL);
        }
        const pare_observer *o = pare_quant_observer(m, 1);
        CHECK(o && o->kind == cfg.observer && o->count == 3 * 32 * 5 && o->hist && o->min == 0);
        float lo = -1, hi = -1;
        CHECK(o && pare_observer_range(o, &lo, &hi) == 0 && lo == 0 && hi > 0);
        pare_qmodel *qm = pare_quant_convert(m, &cfg);
        CHECKF(qm != NULL, "%s", pare_error());
        pare_qmodel_free(qm);
        pare_quant_unprepare(m);
        pare_ctx_free(ctx);
    }
    pare_model_free(m);
}
