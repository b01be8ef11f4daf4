/* pare against PyTorch on seedcnn: the same weights and batch must give the
 * same log-probabilities, loss and gradients, and two SGD steps the same
 * weights, to float rounding. tests/golden/seedcnn.safetensors was written
 * once by tests/golden/make_golden.py with torch 1.13. */
#include <math.h>
#include <string.h>

#include "nn/safetensors.h"
#include "optim/optim.h"
#include "tests/test.h"

#define GOLDEN "tests/golden/seedcnn.safetensors"

/* Largest |a - b| relative to the largest |b| of the tensor (and at least 1e-3). */
static double rel_diff(const float *a, const float *b, size_t n)
{
    double worst = 0, scale = 1e-3;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(b[i]));
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)a[i] - b[i]));
    return worst / scale;
}

static float *read_like(const pare_st_file *f, const char *name, const pare_tensor *like)
{
    float *buf = pare_alloc(like->size * sizeof(float));
    if (pare_st_read(f, name, PARE_ST_F32, like->ndim, like->shape, buf)) {
        test_checkf(0, __FILE__, __LINE__, "%s", pare_error());
        pare_free(buf);
        return NULL;
    }
    return buf;
}

static pare_model *golden_model(const pare_st_file *f)
{
    pare_model *m = pare_model_zoo("seedcnn");
    PARE_CHECK(pare_build(m, 1, 28, 28) == 0, "%s", pare_error());
    pare_param p[8];
    int n = pare_model_params(m, p, 8);
    for (int i = 0; i < n; i++)
        if (pare_st_read(f, p[i].name, PARE_ST_F32, p[i].t->ndim, p[i].t->shape, p[i].t->data))
            test_checkf(0, __FILE__, __LINE__, "%s", pare_error());
    return m;
}

/* One forward + backward of the golden batch; returns the loss tensor. */
static pare_tensor *forward_backward(pare_ctx *ctx, pare_model *m, const pare_st_file *f, pare_tensor **out)
{
    int xs[4] = {4, 1, 28, 28}, one = 4;
    pare_tensor *x = pare_ctx_tensor(ctx, 4, xs);
    float labels_f[4];
    pare_st_read(f, "input", PARE_ST_F32, 4, xs, x->data);
    pare_st_read(f, "labels", PARE_ST_F32, 1, &one, labels_f);
    int labels[4];
    for (int i = 0; i < 4; i++) labels[i] = (int)labels_f[i];
    *out = pare_forward(ctx, m, x);
    pare_tensor *loss = pare_nll_loss(ctx, *out, labels);
    pare_backward(ctx, loss);
    return loss;
}

TEST(golden_forward_loss_and_gradients_match_pytorch)
{
    pare_st_file *f = pare_st_open(GOLDEN);
    CHECKF(f != NULL, "%s", pare_error());
    if (!f) return;
    pare_model *m = golden_model(f);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_tensor *out, *loss = forward_backward(ctx, m, f, &out);

    float *want = read_like(f, "output", out);
    if (want)
        CHECKF(rel_diff(out->data, want, out->size) < 1e-6, "output differs by %.3g",
               rel_diff(out->data, want, out->size));
    pare_free(want);
    float want_loss;
    int one = 1;
    pare_st_read(f, "loss", PARE_ST_F32, 1, &one, &want_loss);
    CHECK_NEAR(loss->data[0], want_loss, 1e-6 * fabs(want_loss));

    pare_param p[8];
    int n = pare_model_params(m, p, 8);
    for (int i = 0; i < n; i++) {
        char name[160];
        snprintf(name, sizeof name, "grad.%.120s", p[i].name);
        float *g = read_like(f, name, p[i].t);
        if (!g) continue;
        double d = rel_diff(p[i].t->grad, g, p[i].t->size);
        CHECKF(d < 1e-5, "%s differs by %.3g of its largest value", name, d);
        pare_free(g);
    }
    pare_ctx_free(ctx);
    pare_model_free(m);
    pare_st_close(f);
}

TEST(golden_two_sgd_steps_match_pytorch)
{
    pare_st_file *f = pare_st_open(GOLDEN);
    CHECKF(f != NULL, "%s", pare_error());
    if (!f) return;
    pare_model *m = golden_model(f);
    pare_optim *o = pare_sgd(m, 0.01f, 0.9f);
    pare_ctx *ctx = pare_ctx_new(0);
    for (int step = 0; step < 2; step++) {
        pare_mark mark = pare_arena_mark(ctx);
        pare_tensor *out;
        forward_backward(ctx, m, f, &out);
        pare_step(o);
        pare_arena_release(ctx, mark);
    }
    pare_param p[8];
    int n = pare_model_params(m, p, 8), compared = 0;
    for (int i = 0; i < n; i++) {
        char name[160];
        snprintf(name, sizeof name, "sgd2.%.120s", p[i].name);
        if (!pare_st_find(f, name)) continue; /* fc1 is left out of the file */
        float *w = read_like(f, name, p[i].t);
        if (!w) continue;
        double d = rel_diff(p[i].t->data, w, p[i].t->size);
        CHECKF(d < 1e-6, "%s differs by %.3g of its largest value", name, d);
        compared++;
        pare_free(w);
    }
    CHECK(compared == 6);
    pare_ctx_free(ctx);
    pare_optim_free(o);
    pare_model_free(m);
    pare_st_close(f);
}
