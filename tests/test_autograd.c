/* Gradcheck of every differentiable op, the kinks on their own with exact
 * expected values, and the tape's behaviour (no-grad, release, errors). */
#include <math.h>
#include <string.h>

#include "autograd/autograd.h"
#include "tests/test.h"

/* Central differences in float with this step; errors are judged against
 * atol + rtol * |numeric|. A wrong backward is off by O(1), far outside. */
#define EPS  1e-2
#define ATOL 2e-3
#define RTOL 2e-2

static pare_tensor *param(int ndim, const int *shape, float lo, float hi, uint64_t seed)
{
    pare_tensor *t = pare_tensor_persistent(ndim, shape, 1);
    pare_rng r;
    pare_rng_seed(&r, seed, PARE_STREAM_TEST);
    for (size_t i = 0; i < t->size; i++) t->data[i] = pare_rng_range(&r, lo, hi);
    return t;
}

/* Values at least `gap` from zero, so ReLU is never evaluated across its kink. */
static pare_tensor *param_away_from_zero(int ndim, const int *shape, float gap, uint64_t seed)
{
    pare_tensor *t = param(ndim, shape, -1.0f, 1.0f, seed);
    for (size_t i = 0; i < t->size; i++) t->data[i] += t->data[i] >= 0 ? gap : -gap;
    return t;
}

/* Distinct values spaced by more than 2*EPS so max-pool never meets a tie. */
static pare_tensor *param_distinct(int ndim, const int *shape, uint64_t seed)
{
    pare_tensor *t = pare_tensor_persistent(ndim, shape, 1);
    int *idx = pare_alloc(t->size * sizeof(int));
    for (size_t i = 0; i < t->size; i++) idx[i] = (int)i;
    pare_rng r;
    pare_rng_seed(&r, seed, PARE_STREAM_TEST);
    pare_rng_shuffle(&r, idx, (int)t->size);
    for (size_t i = 0; i < t->size; i++) t->data[i] = 0.05f * (float)idx[i] - 1.0f;
    pare_free(idx);
    return t;
}

static void free_all(pare_tensor **t, int n)
{
    for (int i = 0; i < n; i++) pare_tensor_free(t[i]);
}

static void expect_gradcheck(const char *what, pare_gradcheck_fn fn, pare_tensor **in, int n, void *user)
{
    pare_gradcheck_result r = pare_gradcheck(fn, in, n, user, EPS, ATOL, RTOL);
    CHECKF(r.worst_ratio <= 1.0, "gradcheck %s: input %d index %d analytic %.6g numeric %.6g (ratio %.3g)", what,
           r.worst_input, r.worst_index, r.analytic, r.numeric, r.worst_ratio);
}

/* ---- one function per op ---------------------------------------------------- */
static pare_tensor *f_add(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_f_add(c, x[0], x[1]);
}
static pare_tensor *f_add_bias(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_f_add_bias(c, x[0], x[1]);
}
static pare_tensor *f_mul(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_f_mul(c, x[0], x[1]);
}
static pare_tensor *f_scale(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_f_scale(c, x[0], -2.5f);
}
static pare_tensor *f_flatten(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_f_mul(c, pare_f_flatten(c, x[0]), pare_f_flatten(c, x[0]));
}
static pare_tensor *f_sum(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_f_sum(c, pare_f_mul(c, x[0], x[0]));
}
static pare_tensor *f_mean(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_f_mean(c, pare_f_mul(c, x[0], x[0]));
}
static pare_tensor *f_relu(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_f_relu(c, x[0]);
}
static pare_tensor *f_sigmoid(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_f_sigmoid(c, x[0]);
}
static pare_tensor *f_tanh(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_f_tanh(c, x[0]);
}
static pare_tensor *f_dropout(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    c->step = 7; /* the same mask for every evaluation */
    return pare_f_dropout(c, x[0], 0.3f);
}
static pare_tensor *f_matmul(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_f_matmul(c, x[0], x[1]);
}
static pare_tensor *f_linear(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_f_linear(c, x[0], x[1], x[2]);
}
static pare_tensor *f_linear_nobias(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_f_linear(c, x[0], x[1], NULL);
}
static pare_tensor *f_conv(pare_ctx *c, pare_tensor **x, void *u)
{
    const int *sp = u;
    return pare_f_conv2d(c, x[0], x[1], x[2], sp[0], sp[1]);
}
static pare_tensor *f_maxpool(pare_ctx *c, pare_tensor **x, void *u)
{
    const int *ks = u;
    return pare_f_maxpool2d(c, x[0], ks[0], ks[1]);
}
static pare_tensor *f_avgpool(pare_ctx *c, pare_tensor **x, void *u)
{
    const int *ks = u;
    return pare_f_avgpool2d(c, x[0], ks[0], ks[1]);
}
static pare_tensor *f_batchnorm(pare_ctx *c, pare_tensor **x, void *u)
{
    c->training = *(const int *)u;
    float rm[3] = {0.1f, -0.2f, 0.3f}, rv[3] = {0.5f, 1.5f, 2.0f};
    return pare_f_batchnorm(c, x[0], x[1], x[2], rm, rv, 0.1f, 1e-5f);
}
static pare_tensor *f_softmax(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_f_softmax(c, x[0]);
}
static pare_tensor *f_log_softmax(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_f_log_softmax(c, x[0]);
}
static const int labels5[5] = {0, 3, 2, 3, 1};
static pare_tensor *f_nll(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_nll_loss(c, pare_f_log_softmax(c, x[0]), labels5);
}
static pare_tensor *f_ce(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_cross_entropy(c, x[0], labels5);
}
static pare_tensor *f_mse(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    return pare_mse_loss(c, x[0], x[1]);
}

TEST(gradcheck_elementwise)
{
    int s[3] = {2, 3, 4}, c[1] = {3};
    pare_tensor *in[2] = {param(3, s, -1, 1, 1), param(3, s, -1, 1, 2)};
    expect_gradcheck("add", f_add, in, 2, NULL);
    expect_gradcheck("mul", f_mul, in, 2, NULL);
    expect_gradcheck("scale", f_scale, in, 1, NULL);
    expect_gradcheck("flatten", f_flatten, in, 1, NULL);
    expect_gradcheck("sum", f_sum, in, 1, NULL);
    expect_gradcheck("mean", f_mean, in, 1, NULL);
    expect_gradcheck("sigmoid", f_sigmoid, in, 1, NULL);
    expect_gradcheck("tanh", f_tanh, in, 1, NULL);
    pare_tensor *b[2] = {in[0], param(1, c, -1, 1, 3)};
    expect_gradcheck("add_bias", f_add_bias, b, 2, NULL);
    pare_tensor_free(b[1]);
    free_all(in, 2);
}

TEST(gradcheck_relu_and_dropout)
{
    int s[2] = {4, 6};
    pare_tensor *x = param_away_from_zero(2, s, 0.05f, 4);
    expect_gradcheck("relu", f_relu, &x, 1, NULL);
    expect_gradcheck("dropout", f_dropout, &x, 1, NULL);
    pare_tensor_free(x);
}

TEST(gradcheck_matmul_linear)
{
    int sa[2] = {3, 5}, sb[2] = {5, 4}, sw[2] = {4, 5}, sbias[1] = {4};
    pare_tensor *in[3] = {param(2, sa, -1, 1, 5), param(2, sb, -1, 1, 6), NULL};
    expect_gradcheck("matmul", f_matmul, in, 2, NULL);
    pare_tensor_free(in[1]);
    in[1] = param(2, sw, -1, 1, 7);
    in[2] = param(1, sbias, -1, 1, 8);
    expect_gradcheck("linear", f_linear, in, 3, NULL);
    expect_gradcheck("linear without bias", f_linear_nobias, in, 2, NULL);
    free_all(in, 3);
}

TEST(gradcheck_conv2d)
{
    /* stride/padding combinations, including a window that does not tile the input */
    const int cases[4][2] = {{1, 0}, {1, 1}, {2, 0}, {2, 1}};
    int sx[4] = {2, 3, 7, 6}, sw[4] = {4, 3, 3, 3}, sb[1] = {4};
    for (int i = 0; i < 4; i++) {
        pare_tensor *in[3] = {param(4, sx, -1, 1, 9), param(4, sw, -1, 1, 10), param(1, sb, -1, 1, 11)};
        char what[64];
        snprintf(what, sizeof what, "conv2d stride %d pad %d", cases[i][0], cases[i][1]);
        expect_gradcheck(what, f_conv, in, 3, (void *)cases[i]);
        free_all(in, 3);
    }
}

TEST(gradcheck_pooling)
{
    const int cases[3][2] = {{2, 2}, {3, 2}, {2, 1}}; /* kernel, stride: tiled, overlapping, dense */
    int s[4] = {2, 2, 7, 7};
    for (int i = 0; i < 3; i++) {
        pare_tensor *x = param_distinct(4, s, 12);
        expect_gradcheck("maxpool2d", f_maxpool, &x, 1, (void *)cases[i]);
        expect_gradcheck("avgpool2d", f_avgpool, &x, 1, (void *)cases[i]);
        pare_tensor_free(x);
    }
}

TEST(gradcheck_batchnorm)
{
    int sx[4] = {4, 3, 3, 2}, sc[1] = {3};
    pare_tensor *in[3] = {param(4, sx, -2, 2, 13), param(1, sc, 0.5f, 1.5f, 14), param(1, sc, -1, 1, 15)};
    int training = 1, eval = 0;
    expect_gradcheck("batchnorm train", f_batchnorm, in, 3, &training);
    expect_gradcheck("batchnorm eval", f_batchnorm, in, 3, &eval);
    free_all(in, 3);
}

TEST(gradcheck_softmax_and_losses)
{
    int s[2] = {5, 4};
    pare_tensor *in[2] = {param(2, s, -2, 2, 16), param(2, s, -1, 1, 17)};
    expect_gradcheck("softmax", f_softmax, in, 1, NULL);
    expect_gradcheck("log_softmax", f_log_softmax, in, 1, NULL);
    expect_gradcheck("nll_loss", f_nll, in, 1, NULL);
    expect_gradcheck("cross_entropy", f_ce, in, 1, NULL);
    expect_gradcheck("mse_loss", f_mse, in, 2, NULL);
    free_all(in, 2);
}

/* A wrong backward must fail the check: a gradcheck that cannot fail proves nothing. */
static void broken_backward(pare_ctx *ctx, pare_node *n)
{
    float *dx = pare_grad_of(ctx, n->in[0]);
    for (size_t i = 0; i < n->out->size; i++) dx[i] += 1.1f * n->out->grad[i]; /* 10% too large */
}
static const pare_op broken_op = {"broken", broken_backward};
static pare_tensor *f_broken(pare_ctx *c, pare_tensor **x, void *u)
{
    (void)u;
    pare_tensor *y = pare_ctx_tensor(c, x[0]->ndim, x[0]->shape);
    memcpy(y->data, x[0]->data, y->size * sizeof(float));
    pare_record(c, &broken_op, y, 1, x);
    return y;
}

TEST(gradcheck_catches_a_wrong_backward)
{
    int s[1] = {6};
    pare_tensor *x = param(1, s, -1, 1, 18);
    pare_gradcheck_result r = pare_gradcheck(f_broken, &x, 1, NULL, EPS, ATOL, RTOL);
    CHECK(r.worst_ratio > 1.0);
    pare_tensor_free(x);
}

/* ---- kinks, with exact values ----------------------------------------------- */
static void run_backward_of_sum(pare_ctx *ctx, pare_tensor *y)
{
    CHECK(pare_backward(ctx, pare_f_sum(ctx, y)) == 0);
}

TEST(relu_kink_gradient_is_zero_at_zero)
{
    int s[1] = {3};
    pare_tensor *x = pare_tensor_persistent(1, s, 1);
    x->data[0] = 0.0f, x->data[1] = -1.0f, x->data[2] = 2.0f;
    pare_ctx *ctx = pare_ctx_new(0);
    run_backward_of_sum(ctx, pare_f_relu(ctx, x));
    CHECK(x->grad[0] == 0.0f && x->grad[1] == 0.0f && x->grad[2] == 1.0f);
    pare_ctx_free(ctx);
    pare_tensor_free(x);
}

TEST(maxpool_tie_sends_gradient_to_the_first_maximum)
{
    int s[4] = {1, 1, 2, 2};
    pare_tensor *x = pare_tensor_persistent(4, s, 1);
    pare_vec_fill(x->data, 4, 3.0f);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_tensor *y = pare_f_maxpool2d(ctx, x, 2, 2);
    CHECK(y->data[0] == 3.0f);
    run_backward_of_sum(ctx, y);
    CHECK(x->grad[0] == 1.0f && x->grad[1] == 0.0f && x->grad[2] == 0.0f && x->grad[3] == 0.0f);
    pare_ctx_free(ctx);
    pare_tensor_free(x);
}

TEST(dropout_keeps_the_expected_share_and_scales)
{
    int s[1] = {20000};
    pare_tensor *x = pare_tensor_persistent(1, s, 1);
    pare_vec_fill(x->data, x->size, 1.0f);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_tensor *y = pare_f_dropout(ctx, x, 0.25f);
    size_t kept = 0;
    int values_ok = 1;
    for (size_t i = 0; i < y->size; i++) {
        kept += y->data[i] != 0.0f;
        values_ok &= y->data[i] == 0.0f || fabsf(y->data[i] - 1.0f / 0.75f) < 1e-6f;
    }
    CHECK(values_ok);
    CHECK_NEAR((double)kept / y->size, 0.75, 0.015);
    ctx->training = 0;
    CHECK(pare_f_dropout(ctx, x, 0.25f) == x);
    pare_ctx_free(ctx);
    pare_tensor_free(x);
}

TEST(losses_known_values)
{
    int s[2] = {2, 3};
    pare_tensor *x = pare_tensor_persistent(2, s, 1);
    const float v[6] = {1, 2, 3, 0, 0, 0};
    memcpy(x->data, v, sizeof v);
    const int labels[2] = {2, 1};
    pare_ctx *ctx = pare_ctx_new(0);
    double lse = log(exp(1.0) + exp(2.0) + exp(3.0));
    double expected = ((lse - 3.0) + log(3.0)) / 2;
    CHECK_NEAR(pare_cross_entropy(ctx, x, labels)->data[0], expected, 1e-6);
    CHECK_NEAR(pare_nll_loss(ctx, pare_f_log_softmax(ctx, x), labels)->data[0], expected, 1e-6);
    /* large logits must not overflow */
    x->data[0] = 1000.0f;
    CHECK(isfinite(pare_cross_entropy(ctx, x, labels)->data[0]));
    pare_ctx_free(ctx);
    pare_tensor_free(x);
}

/* ---- the tape ---------------------------------------------------------------- */
TEST(no_grad_records_nothing)
{
    int s[1] = {4};
    pare_tensor *x = param(1, s, -1, 1, 19);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    pare_tensor *y = pare_f_sum(ctx, pare_f_relu(ctx, x));
    CHECK(ctx->tape_len == 0 && !y->requires_grad);
    CHECK(pare_backward(ctx, y) == -1 && strstr(pare_error(), "no-grad"));
    pare_ctx_free(ctx);
    pare_tensor_free(x);
}

TEST(release_rewinds_tape_and_arena)
{
    int s[1] = {4};
    pare_tensor *x = param(1, s, -1, 1, 20);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_mark m = pare_arena_mark(ctx);
    run_backward_of_sum(ctx, pare_f_tanh(ctx, x));
    CHECK(ctx->tape_len == 2);
    pare_arena_release(ctx, m);
    CHECK(ctx->tape_len == 0 && ctx->arena.in_use == m.pos.in_use);
    pare_ctx_free(ctx);
    pare_tensor_free(x);
}

TEST(backward_rejects_non_scalar)
{
    int s[1] = {4};
    pare_tensor *x = param(1, s, -1, 1, 21);
    pare_ctx *ctx = pare_ctx_new(0);
    CHECK(pare_backward(ctx, pare_f_relu(ctx, x)) == -1 && strstr(pare_error(), "scalar"));
    pare_ctx_free(ctx);
    pare_tensor_free(x);
}

/* The fused conv -> ReLU -> max-pool must give exactly what the three ops give,
 * forward and backward. */
static void grads_of(pare_tensor **in, int n, float **out)
{
    for (int i = 0; i < n; i++) {
        out[i] = pare_alloc(in[i]->size * sizeof(float));
        memcpy(out[i], in[i]->grad, in[i]->size * sizeof(float));
        memset(in[i]->grad, 0, in[i]->size * sizeof(float));
    }
}

TEST(fused_conv_relu_pool_equals_the_separate_ops)
{
    const int cases[][4] = {
        {1, 0, 1, 2}, {1, 1, 1, 2}, {2, 1, 0, 3}, {1, 0, 1, 0}, {1, 0, 0, 2}}; /* stride, pad, relu, pool */
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        int stride = cases[t][0], pad = cases[t][1], relu = cases[t][2], pool = cases[t][3];
        int sx[4] = {3, 2, 11, 10}, sw[4] = {4, 2, 3, 3}, sb[1] = {4};
        pare_tensor *in[3] = {param(4, sx, -1, 1, 30 + t), param(4, sw, -1, 1, 40 + t), param(1, sb, -1, 1, 50 + t)};
        pare_ctx *ctx = pare_ctx_new(0);
        pare_tensor *y = pare_f_conv2d(ctx, in[0], in[1], in[2], stride, pad);
        if (relu) y = pare_f_relu(ctx, y);
        if (pool) y = pare_f_maxpool2d(ctx, y, pool, pool);
        pare_tensor *r = pare_ctx_tensor(ctx, y->ndim, y->shape);
        for (size_t i = 0; i < r->size; i++) r->data[i] = (float)((i * 7) % 5) - 2.0f;
        pare_backward(ctx, pare_f_sum(ctx, pare_f_mul(ctx, y, r)));
        float *separate[3];
        grads_of(in, 3, separate);
        pare_tensor *z = pare_f_conv2d_fused(ctx, in[0], in[1], in[2], stride, pad, relu, pool);
        CHECK(pare_shape_equal(y, z) && memcmp(y->data, z->data, y->size * sizeof(float)) == 0);
        pare_backward(ctx, pare_f_sum(ctx, pare_f_mul(ctx, z, r)));
        for (int i = 0; i < 3; i++) {
            double d = 0;
            for (size_t e = 0; e < in[i]->size; e++) d = fmax(d, fabs(separate[i][e] - in[i]->grad[e]));
            CHECKF(memcmp(separate[i], in[i]->grad, in[i]->size * sizeof(float)) == 0, "case %zu input %d: %g", t, i,
                   d);
            pare_free(separate[i]);
        }
        pare_ctx_free(ctx);
        free_all(in, 3);
    }
}

TEST(model_forward_fuses_only_without_hooks_between)
{
    pare_ctx *ctx = pare_ctx_new(0);
    int sx[4] = {2, 1, 8, 8}, sw[4] = {3, 1, 3, 3}, sb[1] = {3};
    pare_tensor *x = param(4, sx, -1, 1, 60), *w = param(4, sw, -1, 1, 61), *b = param(1, sb, -1, 1, 62);
    pare_tensor *fused = pare_f_conv2d_fused(ctx, x, w, b, 1, 0, 1, 2);
    CHECK(fused->shape[2] == 3 && fused->shape[3] == 3);
    CHECK(ctx->tape_len == 1 && !strcmp(ctx->tape[0].op->name, "conv2d"));
    pare_ctx_free(ctx);
    pare_tensor_free(x), pare_tensor_free(w), pare_tensor_free(b);
}

TEST(a_second_backward_does_not_reuse_stale_gradients)
{
    int s[1] = {5};
    pare_tensor *x = param(1, s, -1, 1, 70);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_tensor *loss = pare_f_sum(ctx, pare_f_tanh(ctx, pare_f_scale(ctx, x, 2.0f)));
    CHECK(pare_backward(ctx, loss) == 0);
    float once[5];
    memcpy(once, x->grad, sizeof once);
    CHECK(pare_backward(ctx, loss) == 0);
    int ok = 1;
    for (int i = 0; i < 5; i++) ok &= x->grad[i] == 2.0f * once[i];
    CHECK(ok); /* leaf gradients accumulate; intermediate ones start afresh */
    pare_ctx_free(ctx);
    pare_tensor_free(x);
}

/* Without a tape the convolution runs 64 samples at a time; the output must
 * not change (70 samples: a full chunk and a partial one). */
TEST(conv_without_tape_gives_the_same_output_in_chunks)
{
    int sx[4] = {70, 2, 9, 9}, sw[4] = {5, 2, 3, 3}, sb[1] = {5};
    pare_tensor *x = param(4, sx, -1, 1, 80), *w = param(4, sw, -1, 1, 81), *b = param(1, sb, -1, 1, 82);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_tensor *taped = pare_f_conv2d_fused(ctx, x, w, b, 1, 1, 1, 2);
    pare_set_grad_enabled(ctx, 0);
    pare_tensor *chunked = pare_f_conv2d_fused(ctx, x, w, b, 1, 1, 1, 2);
    CHECK(memcmp(taped->data, chunked->data, taped->size * sizeof(float)) == 0);
    pare_ctx_free(ctx);
    pare_tensor_free(x), pare_tensor_free(w), pare_tensor_free(b);
}
