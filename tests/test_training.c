/* End-to-end training on small synthetic data: determinism (same seed twice,
 * 1 vs 2 threads: identical weights bit for bit), no allocation after the
 * first step, and learning actually happening. */
#include <string.h>

#include "optim/fit.h"
#include "tests/test.h"

/* A tiny 10-class image set: each class is a bright square at its own place,
 * plus seeded noise, so a small CNN can learn it in a few steps. */
static pare_dataset *toy_dataset(int n, uint64_t seed)
{
    pare_dataset *ds = pare_calloc(sizeof *ds);
    ds->n = n, ds->rows = 12, ds->cols = 12, ds->n_classes = 10;
    ds->images = pare_alloc((size_t)n * 144);
    ds->labels = pare_alloc((size_t)n);
    pare_rng r;
    pare_rng_seed(&r, seed, PARE_STREAM_TEST);
    for (int i = 0; i < n; i++) {
        int c = (int)pare_rng_below(&r, 10);
        ds->labels[i] = (uint8_t)c;
        uint8_t *img = ds->images + (size_t)i * 144;
        for (int p = 0; p < 144; p++) img[p] = (uint8_t)pare_rng_below(&r, 60);
        int y0 = (c / 5) * 6, x0 = (c % 5) * 2;
        for (int y = y0; y < y0 + 5; y++)
            for (int x = x0; x < x0 + 3; x++) img[y * 12 + x] = 250;
    }
    return ds;
}

static pare_model *toy_model(void)
{
    pare_model *m = pare_sequential("toy", pare_conv2d("conv1", 1, 8, 3), pare_batchnorm2d("bn1", 8), pare_relu(),
                                    pare_maxpool2d(2), pare_flatten(), pare_dropout(0.1f), pare_linear("fc1", 200, 32),
                                    pare_relu(), pare_linear("fc2", 32, 10), pare_log_softmax(), NULL);
    PARE_CHECK(pare_build(m, 1, 12, 12) == 0, "%s", pare_error());
    return m;
}

/* Trains `epochs` epochs with `threads` threads; returns the trained model. */
static pare_model *train_toy(const pare_dataset *ds, int threads, int epochs, pare_optim_kind kind)
{
    int old = pare_threads();
    pare_set_threads(threads);
    pare_model *m = toy_model();
    pare_optim_config oc = pare_optim_defaults(kind, kind == PARE_OPT_SGD ? 0.05f : 2e-3f);
    if (kind == PARE_OPT_SGD) oc.momentum = 0.9f;
    pare_optim *o = pare_optim_new(m, &oc);
    pare_loader_config lc = pare_loader_defaults();
    lc.batch = 32;
    pare_loader *ld = pare_loader_new(ds, NULL, ds->n, &lc);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_fit_config fc = pare_fit_defaults(epochs);
    fc.progress = 0;
    CHECK(pare_fit(ctx, m, o, ld, &fc, NULL) == 0);
    pare_ctx_free(ctx);
    pare_loader_free(ld);
    pare_optim_free(o);
    pare_set_threads(old);
    return m;
}

static int same_weights(pare_model *a, pare_model *b)
{
    pare_param pa[32], pb[32];
    int n = pare_model_tensors(a, pa, 32);
    if (n != pare_model_tensors(b, pb, 32)) return 0;
    for (int i = 0; i < n; i++)
        if (pa[i].t->size != pb[i].t->size || memcmp(pa[i].t->data, pb[i].t->data, pa[i].t->size * 4)) return 0;
    return 1;
}

TEST(same_seed_twice_gives_identical_weights)
{
    pare_dataset *ds = toy_dataset(200, 1);
    pare_model *a = train_toy(ds, 1, 2, PARE_OPT_SGD), *b = train_toy(ds, 1, 2, PARE_OPT_SGD);
    CHECK(same_weights(a, b));
    pare_model_free(a), pare_model_free(b);
    pare_dataset_free(ds);
}

TEST(one_and_two_threads_give_identical_weights)
{
#ifdef _OPENMP
    pare_dataset *ds = toy_dataset(200, 2);
    for (int k = 0; k < 2; k++) {
        pare_optim_kind kind = k ? PARE_OPT_ADAM : PARE_OPT_SGD;
        pare_model *a = train_toy(ds, 1, 2, kind), *b = train_toy(ds, 2, 2, kind);
        CHECKF(same_weights(a, b), "1 vs 2 threads differ (%s)", k ? "adam" : "sgd");
        pare_model_free(a), pare_model_free(b);
    }
    pare_dataset_free(ds);
#else
    CHECK(pare_threads() == 1); /* built without OpenMP: one thread only */
#endif
}

TEST(training_learns_the_toy_task)
{
    pare_dataset *ds = toy_dataset(400, 3), *test = toy_dataset(200, 4);
    pare_model *m = train_toy(ds, 1, 3, PARE_OPT_SGD);
    pare_loader *ld = pare_loader_new(test, NULL, test->n, NULL);
    pare_ctx *ctx = pare_ctx_new(0);
    double acc = pare_evaluate(ctx, m, ld, NULL);
    CHECKF(acc > 0.9, "toy accuracy %.3f", acc);
    pare_ctx_free(ctx);
    pare_loader_free(ld);
    pare_model_free(m);
    pare_dataset_free(ds), pare_dataset_free(test);
}

/* After the first step, a training step allocates nothing: the arena and the
 * gemm buffers are reused, the tape has reached its size. */
TEST(no_allocation_after_the_first_step)
{
    pare_dataset *ds = toy_dataset(256, 5);
    pare_model *m = toy_model();
    pare_optim *o = pare_sgd(m, 0.05f, 0.9f);
    pare_loader_config lc = pare_loader_defaults();
    lc.batch = 32;
    pare_loader *ld = pare_loader_new(ds, NULL, ds->n, &lc);
    pare_ctx *ctx = pare_ctx_new(0);
    uint64_t after_first = 0;
    pare_batch b;
    for (int epoch = 0; epoch < 2; epoch++) {
        pare_loader_start_epoch(ld, epoch);
        for (int k = 0;; k++) {
            pare_mark mark = pare_arena_mark(ctx);
            if (!pare_loader_next(ld, &ctx->arena, &b)) break;
            pare_backward(ctx, pare_classifier_loss(ctx, m, b.x, b.labels, NULL));
            pare_step(o);
            pare_arena_release(ctx, mark);
            if (epoch == 0 && k == 0) after_first = pare_alloc_count();
        }
    }
    CHECKF(pare_alloc_count() == after_first, "%llu allocations after the first step",
           (unsigned long long)(pare_alloc_count() - after_first));
    pare_ctx_free(ctx);
    pare_loader_free(ld);
    pare_optim_free(o);
    pare_model_free(m);
    pare_dataset_free(ds);
}
