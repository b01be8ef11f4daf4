/* Fake quantization (forward values, the straight-through gradient) and
 * quantization-aware training: BatchNorm folding, prepare_qat's hooks,
 * frozen ranges in eval mode, and QAT -> convert agreement between the
 * fake-quant model and the int8 model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compress/quant.h"
#include "optim/fit.h"
#include "tests/test.h"

static pare_tensor *random_tensor(int ndim, const int *shape, float lo, float hi, uint64_t seed, int grad)
{
    pare_tensor *t = pare_tensor_persistent(ndim, shape, grad);
    pare_rng r;
    pare_rng_seed(&r, seed, PARE_STREAM_TEST);
    for (size_t i = 0; i < t->size; i++) t->data[i] = lo + (hi - lo) * pare_rng_uniform(&r);
    return t;
}

/* ---- the op ------------------------------------------------------------------ */
TEST(fake_quant_forward_is_quantize_dequantize)
{
    int shape[2] = {3, 50};
    pare_tensor *x = random_tensor(2, shape, -3, 3, 1, 0);
    float scale[3] = {0.02f, 0.05f, 0.011f};
    int32_t zp[3] = {0, 3, -7};
    pare_ctx *ctx = pare_ctx_new(0);
    /* per channel: channel c uses scale[c], zp[c] */
    pare_tensor *y = pare_f_fake_quant(ctx, x, 3, scale, zp, -128, 127);
    int bad = 0;
    for (int c = 0; c < 3; c++) {
        pare_qparams p = {scale[c], zp[c], -128, 127};
        for (int i = 0; i < 50; i++) {
            float v = x->data[c * 50 + i];
            bad += y->data[c * 50 + i] != pare_dequantize_value(pare_quantize_value(v, &p), &p);
        }
    }
    CHECKF(bad == 0, "%d values differ from quantize-then-dequantize", bad);
    /* per tensor, and values already on the grid come back unchanged */
    for (int i = 0; i < 150; i++) x->data[i] = 0.25f * (float)(i % 41 - 20);
    float s = 0.25f;
    int32_t z = 0;
    y = pare_f_fake_quant(ctx, x, 1, &s, &z, -127, 127);
    CHECK(memcmp(x->data, y->data, 150 * sizeof(float)) == 0);
    /* ties go away from zero (as round()), NaN to qmin, the clamp at both ends */
    const float edge[6] = {0.25f, -0.25f, 0.75f, NAN, 100.0f, -100.0f};
    memcpy(x->data, edge, sizeof edge);
    s = 0.5f;
    y = pare_f_fake_quant(ctx, x, 1, &s, &z, -127, 127);
    const float want[6] = {0.5f, -0.5f, 1.0f, -63.5f, 63.5f, -63.5f};
    CHECK(memcmp(y->data, want, sizeof want) == 0);
    pare_ctx_free(ctx);
    pare_tensor_free(x);
}

/* The straight-through rule, checked the way gradcheck checks an op: the
 * analytic gradient of fake_quant must equal the numeric gradient of its
 * surrogate, the clamp of x to the clipping range (slope 1 inside, 0
 * outside), at points kept away from the range's edges. Each element is used
 * twice so that accumulation into an existing gradient is covered too. */
TEST(fake_quant_straight_through_gradient)
{
    const int n = 400;
    float s = 0.03f;
    int32_t zp = 5, qmin = -128, qmax = 127;
    float lo = s * (float)(qmin - zp), hi = s * (float)(qmax - zp); /* -3.99 .. 3.66 */
    pare_tensor *x = random_tensor(1, &n, -6, 6, 2, 1);
    const double eps = 1e-3;
    for (int i = 0; i < n; i++) /* away from the clipping edges by more than the round-off of the range */
        if (fabsf(x->data[i] - lo) < 0.05f || fabsf(x->data[i] - hi) < 0.05f) x->data[i] = 0;
    pare_tensor *w = random_tensor(1, &n, -1, 1, 3, 0);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_tensor *y = pare_f_fake_quant(ctx, x, 1, &s, &zp, qmin, qmax);
    pare_tensor *y2 = pare_f_fake_quant(ctx, x, 1, &s, &zp, qmin, qmax);
    pare_tensor *loss = pare_f_sum(ctx, pare_f_add(ctx, pare_f_mul(ctx, y, w), pare_f_mul(ctx, y2, w)));
    CHECK(pare_backward(ctx, loss) == 0);
    int bad = 0, inside = 0, outside = 0;
    for (int i = 0; i < n; i++) {
        double v = x->data[i];
        double up = fmin(fmax(v + eps, lo), hi), down = fmin(fmax(v - eps, lo), hi);
        double numeric = 2 * w->data[i] * (up - down) / (2 * eps);
        if (fabs(x->grad[i] - numeric) > 1e-3 * (1 + fabs(numeric))) bad++;
        inside += v > lo && v < hi;
        outside += v < lo || v > hi;
    }
    CHECKF(bad == 0, "%d of %d gradients differ from the clamp surrogate's", bad, n);
    CHECKF(inside > 100 && outside > 50, "test points: %d inside, %d outside", inside, outside);
    pare_ctx_free(ctx);
    pare_tensor_free(x);
    pare_tensor_free(w);
}

TEST(fake_quant_per_channel_clips_each_channel)
{
    int shape[2] = {2, 4};
    pare_tensor *x = pare_tensor_persistent(2, shape, 1);
    const float v[8] = {0.5f, 2.0f, -2.0f, 0.1f, 0.5f, 2.0f, -2.0f, 0.1f};
    memcpy(x->data, v, sizeof v);
    float scale[2] = {1.0f / 127, 4.0f / 127}; /* ranges +-1 and +-4 */
    int32_t zp[2] = {0, 0};
    pare_ctx *ctx = pare_ctx_new(0);
    pare_tensor *y = pare_f_fake_quant(ctx, x, 2, scale, zp, -127, 127);
    CHECK(y->data[1] == 1.0f && y->data[2] == -1.0f); /* clipped in channel 0 */
    CHECK_NEAR(y->data[5], 2.0, 4.0 / 127);           /* not in channel 1 */
    CHECK(pare_backward(ctx, pare_f_sum(ctx, y)) == 0);
    const float want[8] = {1, 0, 0, 1, 1, 1, 1, 1};
    CHECK(memcmp(x->grad, want, sizeof want) == 0);
    pare_ctx_free(ctx);
    pare_tensor_free(x);
}

/* ---- models ---------------------------------------------------------------------- */
/* Learnable synthetic images: class k puts a bright 2x2 blob at one of 10
 * places, on noise. */
static pare_dataset *blobs(int n, uint64_t seed)
{
    pare_dataset *ds = pare_calloc(sizeof *ds);
    ds->n = n;
    ds->rows = ds->cols = 8;
    ds->n_classes = 10;
    ds->images = pare_alloc((size_t)n * 64);
    ds->labels = pare_alloc((size_t)n);
    pare_rng r;
    pare_rng_seed(&r, seed, PARE_STREAM_TEST);
    for (int i = 0; i < n; i++) {
        int k = (int)pare_rng_below(&r, 10), y0 = (k / 5) * 4 + 1, x0 = (k % 5) + 1;
        uint8_t *img = ds->images + (size_t)i * 64;
        for (int p = 0; p < 64; p++) img[p] = (uint8_t)pare_rng_below(&r, 90);
        for (int dy = 0; dy < 2; dy++)
            for (int dx = 0; dx < 2; dx++) img[(y0 + dy) * 8 + x0 + dx] = (uint8_t)(200 + pare_rng_below(&r, 56));
        ds->labels[i] = (uint8_t)k;
    }
    return ds;
}

static void free_dataset(pare_dataset *ds)
{
    pare_free(ds->images);
    pare_free(ds->labels);
    pare_free(ds);
}

static pare_model *small_bn_cnn(void)
{
    pare_model *m =
        pare_sequential("tiny-bn", pare_conv2d_ex("c1", 1, 6, 3, 1, 1, 1), pare_batchnorm2d("bn1", 6), pare_relu(),
                        pare_maxpool2d(2), pare_conv2d_ex("c2", 6, 8, 3, 1, 0, 0), pare_batchnorm2d("bn2", 8),
                        pare_relu(), pare_flatten(), pare_linear("f1", 8 * 2 * 2, 16), pare_relu(), pare_dropout(0.25f),
                        pare_linear("f2", 16, 10), pare_log_softmax(), NULL);
    m->seed = 11;
    CHECKF(pare_build(m, 1, 8, 8) == 0, "%s", pare_error());
    return m;
}

static void train_steps(pare_model *m, const pare_dataset *ds, int epochs, float lr)
{
    pare_ctx *ctx = pare_ctx_new(0);
    pare_loader_config lc = pare_loader_defaults();
    lc.batch = 32;
    pare_loader *ld = pare_loader_new(ds, NULL, ds->n, &lc);
    pare_optim *o = pare_sgd(m, lr, 0.9f);
    pare_fit_config fc = pare_fit_defaults(epochs);
    fc.progress = 0;
    CHECKF(pare_fit(ctx, m, o, ld, &fc, NULL) == 0, "%s", pare_error());
    pare_optim_free(o);
    pare_loader_free(ld);
    pare_ctx_free(ctx);
}

/* Eval-mode outputs (before the LogSoftmax) of the first n images. */
static void outputs(pare_model *m, const pare_dataset *ds, int n, float *out)
{
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    pare_model_train(m, 0);
    int shape[4] = {n, 1, 8, 8};
    pare_tensor *x = pare_ctx_tensor(ctx, 4, shape);
    for (int i = 0; i < n * 64; i++) x->data[i] = ((float)ds->images[i] / 255 - PARE_MNIST_MEAN) / PARE_MNIST_STD;
    pare_tensor *y = pare_forward_layers(ctx, m, x, 0, m->n_layers - 1);
    memcpy(out, y->data, (size_t)n * 10 * sizeof(float));
    pare_ctx_free(ctx);
}

TEST(fold_batchnorm_is_exact_in_eval)
{
    pare_model *m = small_bn_cnn();
    pare_dataset *ds = blobs(200, 4);
    train_steps(m, ds, 2, 0.02f); /* running statistics and affine parameters away from their initial values */
    float before[64 * 10], after[64 * 10];
    outputs(m, ds, 64, before);
    char notes[4][128];
    CHECKF(pare_fold_batchnorm(m, notes, 4) == 2, "%s", pare_error());
    CHECK(m->n_layers == 11 && pare_model_find(m, "bn1") == NULL && pare_model_find(m, "bn2") == NULL);
    CHECK(pare_model_find(m, "c2")->has_bias); /* created for the fold */
    CHECK(strstr(notes[0], "bn1") && strstr(notes[0], "c1"));
    outputs(m, ds, 64, after);
    double worst = 0;
    for (int i = 0; i < 640; i++) worst = fmax(worst, fabs(before[i] - after[i]) / (1 + fabs(before[i])));
    CHECKF(worst < 1e-5, "folded model differs by %g", worst);
    CHECK(pare_fold_batchnorm(m, NULL, 0) == 0);
    pare_model_free(m);
    free_dataset(ds);
}

TEST(qat_prepare_places_hooks_where_int8_requantizes)
{
    pare_model *m = small_bn_cnn();
    CHECKF(pare_quant_prepare_qat(m, NULL, NULL, 0) == 2, "%s", pare_error());
    /* after folding: c1 relu pool c2 relu flatten f1 relu dropout f2 logsoftmax */
    const int want[11] = {0, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0};
    int bad = 0;
    for (int i = 0; i < m->n_layers; i++) bad += (pare_quant_observer(m, i) != NULL) != want[i];
    CHECKF(bad == 0, "%d layers with a misplaced observer", bad);
    CHECK(pare_quant_observer(m, -1) && pare_quant_observer(m, -1)->kind == PARE_OBSERVE_MOVING_AVG);
    CHECK(pare_hook_find(&m->layers[0]->weight_hooks, "fakequant") &&
          pare_hook_find(&m->layers[9]->weight_hooks, "fakequant"));
    CHECK(pare_quant_prepare_qat(m, NULL, NULL, 0) == -1); /* twice */
    pare_quant_unprepare(m);
    CHECK(!pare_quant_observer(m, -1) && !pare_hook_find(&m->layers[0]->weight_hooks, "fakequant"));
    pare_model_free(m);

    pare_model *bad_model =
        pare_sequential("s", pare_flatten(), pare_linear("f", 4, 3), pare_softmax(), pare_linear("g", 3, 2), NULL);
    CHECK(pare_build(bad_model, 4, 0, 0) == 0);
    CHECK(pare_quant_prepare_qat(bad_model, NULL, NULL, 0) == -1);
    CHECKF(strstr(pare_error(), "Softmax") != NULL, "%s", pare_error());
    CHECK(!pare_quant_observer(bad_model, -1) && !pare_hook_find(&bad_model->layers[1]->weight_hooks, "fakequant"));
    pare_model_free(bad_model);
}

TEST(qat_ranges_learn_in_training_and_freeze_in_eval)
{
    pare_model *m = small_bn_cnn();
    pare_dataset *ds = blobs(128, 5);
    CHECK(pare_quant_prepare_qat(m, NULL, NULL, 0) == 2);
    train_steps(m, ds, 1, 0.01f);
    const pare_observer *o = pare_quant_observer(m, 1);
    CHECK(o && o->count > 0);
    float lo = o->min, hi = o->max;
    long long count = o->count;
    float out[64 * 10];
    outputs(m, ds, 64, out);
    CHECK(o->min == lo && o->max == hi && o->count == count);
    pare_model_free(m);
    free_dataset(ds);
}

/* QAT -> convert: the int8 model computes with the integers the fake-quant
 * model trained with, so the two agree on the argmax and the logits differ
 * by at most about one output step (rounding of the int32 bias and of
 * requantization, against float sums). */
static void qat_agreement(int weight_bits, int per_tensor)
{
    pare_model *m = small_bn_cnn();
    pare_dataset *ds = blobs(1000, 6);
    train_steps(m, ds, 3, 0.02f);
    pare_quant_config cfg = pare_quant_defaults();
    cfg.weight_bits = weight_bits;
    cfg.per_tensor = per_tensor;
    cfg.observer = PARE_OBSERVE_MOVING_AVG;
    CHECK(pare_quant_prepare_qat(m, &cfg, NULL, 0) == 2);
    train_steps(m, ds, 1, 0.005f);
    pare_qmodel *qm = pare_quant_convert(m, &cfg);
    CHECKF(qm != NULL, "%s", pare_error());
    if (!qm) return;
    if (per_tensor)
        for (int i = 0; i < qm->n_layers; i++)
            if (qm->layers[i].kind == PARE_Q_CONV || qm->layers[i].kind == PARE_Q_LINEAR)
                CHECK(qm->layers[i].w_scale[0] == qm->layers[i].w_scale[qm->layers[i].out_c - 1]);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_quant_agreement_stats st;
    CHECKF(pare_quant_agreement(ctx, m, qm, ds, 0, &st) == 0, "%s", pare_error());
    CHECKF(st.images == 1000 && st.same_argmax >= 999, "%d-bit%s: same argmax on %d of %d", weight_bits,
           per_tensor ? " per tensor" : "", st.same_argmax, st.images);
    CHECKF(st.within_one_step >= 0.999 && st.max_steps <= 2.0, "%d-bit: %.4f within one step, max %.2f steps",
           weight_bits, st.within_one_step, st.max_steps);
    /* and the model learned the task through fake-quant */
    void *scratch = pare_alloc(qm->scratch_bytes);
    double acc = pare_qmodel_evaluate(qm, ds, 0, scratch, qm->scratch_bytes);
    CHECKF(acc > 0.9, "%d-bit int8 accuracy %.3f on the training blobs", weight_bits, acc);
    pare_free(scratch);
    pare_qmodel_free(qm);
    pare_ctx_free(ctx);
    pare_model_free(m);
    free_dataset(ds);
}

TEST(qat_convert_agrees_with_fake_quant_8bit)
{
    qat_agreement(8, 0);
}

TEST(qat_convert_agrees_with_fake_quant_4bit_per_tensor)
{
    qat_agreement(4, 1);
}

/* Static conversion folds a BatchNorm2d after a conv on the fly: the same
 * int8 weights as converting a model folded beforehand, and (ranges observed
 * on the same values up to float rounding) the same predictions. */
TEST(static_convert_folds_batchnorm)
{
    pare_dataset *ds = blobs(300, 9);
    pare_model *a = small_bn_cnn(), *b = small_bn_cnn();
    train_steps(a, ds, 6, 0.02f);
    train_steps(b, ds, 6, 0.02f); /* same seed, same data: the same model */
    CHECK(pare_fold_batchnorm(b, NULL, 0) == 2);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_qmodel *qa = NULL, *qb = NULL;
    if (!pare_quant_prepare(a, NULL) && !pare_quant_calibrate(ctx, a, ds, 256)) qa = pare_quant_convert(a, NULL);
    if (!pare_quant_prepare(b, NULL) && !pare_quant_calibrate(ctx, b, ds, 256)) qb = pare_quant_convert(b, NULL);
    CHECKF(qa && qb, "%s", pare_error());
    if (qa && qb) {
        CHECK(qa->n_layers == qb->n_layers && strstr(qa->notes[0], "BatchNorm2d (folded) + ReLU"));
        int same = 1;
        for (int i = 0; i < qa->n_layers && same; i++) {
            const pare_qlayer *la = &qa->layers[i], *lb = &qb->layers[i];
            if (la->kind != PARE_Q_CONV && la->kind != PARE_Q_LINEAR) continue;
            size_t n = (size_t)la->out_c * (la->kind == PARE_Q_CONV ? la->kernel * la->kernel * la->in_c : la->in_c);
            same = !memcmp(la->weight, lb->weight, n) && !memcmp(la->w_scale, lb->w_scale, la->out_c * sizeof(float));
        }
        CHECK(same);
        void *sa = pare_alloc(qa->scratch_bytes), *sb = pare_alloc(qb->scratch_bytes);
        double acc_a = pare_qmodel_evaluate(qa, ds, 0, sa, qa->scratch_bytes);
        double acc_b = pare_qmodel_evaluate(qb, ds, 0, sb, qb->scratch_bytes);
        CHECKF(fabs(acc_a - acc_b) <= 0.01 && acc_a > 0.8, "accuracy %.3f vs %.3f", acc_a, acc_b);
        pare_free(sa);
        pare_free(sb);
    }
    pare_qmodel_free(qa);
    pare_qmodel_free(qb);
    pare_ctx_free(ctx);
    pare_model_free(a);
    pare_model_free(b);
    free_dataset(ds);
}

/* Sigmoid, Tanh (lookup tables) and AvgPool2d (requantized average) through
 * QAT, conversion, save and load: the int8 model follows the fake-quant
 * one, and the file gives back the same integers. */
static pare_model *small_lut_cnn(void)
{
    pare_model *m = pare_sequential("tiny-lut", pare_conv2d_ex("c1", 1, 6, 3, 1, 1, 1), pare_tanh(), pare_avgpool2d(2),
                                    pare_flatten(), pare_linear("f1", 6 * 4 * 4, 16), pare_sigmoid(),
                                    pare_linear("f2", 16, 10), pare_log_softmax(), NULL);
    m->seed = 13;
    CHECKF(pare_build(m, 1, 8, 8) == 0, "%s", pare_error());
    return m;
}

TEST(qat_lookup_tables_and_average_pool)
{
    pare_model *m = small_lut_cnn();
    pare_dataset *ds = blobs(1000, 10);
    train_steps(m, ds, 4, 0.05f);
    pare_quant_config cfg = pare_quant_defaults();
    cfg.observer = PARE_OBSERVE_MOVING_AVG;
    CHECKF(pare_quant_prepare_qat(m, &cfg, NULL, 0) == 0, "%s", pare_error());
    /* fake-quant after tanh, avgpool, sigmoid, f2, and f1 (no ReLU after it) */
    const int want[8] = {1, 1, 1, 0, 1, 1, 1, 0};
    int misplaced = 0;
    for (int i = 0; i < m->n_layers; i++) misplaced += (pare_quant_observer(m, i) != NULL) != want[i];
    CHECK(misplaced == 0);
    train_steps(m, ds, 1, 0.01f);
    pare_qmodel *qm = pare_quant_convert(m, &cfg);
    CHECKF(qm != NULL, "%s", pare_error());
    if (!qm) return;
    int kinds = 0;
    for (int i = 0; i < qm->n_layers; i++) kinds |= 1 << qm->layers[i].kind;
    CHECK((kinds & (1 << PARE_Q_LUT)) && (kinds & (1 << PARE_Q_AVGPOOL)));
    pare_ctx *ctx = pare_ctx_new(0);
    pare_quant_agreement_stats st;
    CHECKF(pare_quant_agreement(ctx, m, qm, ds, 0, &st) == 0, "%s", pare_error());
    CHECKF(st.same_argmax >= 999 && st.within_one_step >= 0.999, "same argmax %d of %d, %.4f within one step",
           st.same_argmax, st.images, st.within_one_step);
    void *scratch = pare_alloc(qm->scratch_bytes);
    double acc = pare_qmodel_evaluate(qm, ds, 0, scratch, qm->scratch_bytes);
    CHECKF(acc > 0.9, "int8 accuracy %.3f on the training blobs", acc);
    /* the file round trip: the same outputs */
    char path[] = "/tmp/pare_test_qat_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    CHECKF(pare_qmodel_save(qm, path) == 0, "%s", pare_error());
    pare_qmodel *back = pare_qmodel_load(path);
    CHECKF(back != NULL, "%s", pare_error());
    if (back) {
        enum { N = 16 };
        float x[N * 64], a[N * 10], b[N * 10];
        for (int i = 0; i < N * 64; i++) x[i] = ((float)ds->images[i] / 255 - PARE_MNIST_MEAN) / PARE_MNIST_STD;
        void *sb = pare_alloc(back->scratch_bytes);
        CHECK(pare_qmodel_forward_float(qm, x, N, a, scratch, qm->scratch_bytes) == 0);
        CHECK(pare_qmodel_forward_float(back, x, N, b, sb, back->scratch_bytes) == 0);
        CHECK(memcmp(a, b, sizeof a) == 0);
        pare_free(sb);
        pare_qmodel_free(back);
    }
    remove(path);
    pare_free(scratch);
    pare_qmodel_free(qm);
    pare_ctx_free(ctx);
    pare_model_free(m);
    free_dataset(ds);
}
