/* Softmax, log-softmax and the losses (mean over the batch). */
#include <math.h>

#include "autograd/autograd.h"

static void check_rows(const pare_tensor *x, const char *op)
{
    PARE_CHECK(x->ndim == 2, "%s needs [N, K], got %d dims", op, x->ndim);
}

static void check_labels(const int *labels, int N, int K)
{
    for (int i = 0; i < N; i++)
        PARE_CHECK(labels[i] >= 0 && labels[i] < K, "label %d of sample %d outside [0, %d)", labels[i], i, K);
}

/* ---- softmax: dx = y (dy - sum(dy y)) ------------------------------------- */
static void softmax_backward(pare_ctx *ctx, pare_node *n)
{
    int N = n->out->shape[0], K = n->out->shape[1];
    const float *y = n->out->data, *dy = n->out->grad;
    float *dx = pare_grad_of(ctx, n->in[0]);
    for (int i = 0; i < N; i++) {
        size_t o = (size_t)i * K;
        double dot = pare_vec_dot(dy + o, y + o, (size_t)K);
        for (int k = 0; k < K; k++) dx[o + k] += y[o + k] * (float)(dy[o + k] - dot);
    }
}
static const pare_op softmax_op = {"softmax", softmax_backward};

pare_tensor *pare_f_softmax(pare_ctx *ctx, pare_tensor *x)
{
    check_rows(x, "softmax");
    pare_tensor *y = pare_ctx_tensor(ctx, 2, x->shape);
    pare_log_softmax_rows(x->data, x->shape[0], x->shape[1], y->data);
    for (size_t i = 0; i < y->size; i++) y->data[i] = expf(y->data[i]);
    pare_record(ctx, &softmax_op, y, 1, &x);
    return y;
}

/* ---- log_softmax: dx = dy - softmax * sum(dy) ------------------------------ */
static void log_softmax_backward(pare_ctx *ctx, pare_node *n)
{
    int N = n->out->shape[0], K = n->out->shape[1];
    const float *y = n->out->data, *dy = n->out->grad;
    float *dx = pare_grad_of(ctx, n->in[0]);
    for (int i = 0; i < N; i++) {
        size_t o = (size_t)i * K;
        double s = pare_vec_sum(dy + o, (size_t)K);
        for (int k = 0; k < K; k++) dx[o + k] += dy[o + k] - expf(y[o + k]) * (float)s;
    }
}
static const pare_op log_softmax_op = {"log_softmax", log_softmax_backward};

pare_tensor *pare_f_log_softmax(pare_ctx *ctx, pare_tensor *x)
{
    check_rows(x, "log_softmax");
    pare_tensor *y = pare_ctx_tensor(ctx, 2, x->shape);
    pare_log_softmax_rows(x->data, x->shape[0], x->shape[1], y->data);
    pare_record(ctx, &log_softmax_op, y, 1, &x);
    return y;
}

/* ---- nll_loss: -mean(logp[i, y_i]) ------------------------------------------ */
static void nll_backward(pare_ctx *ctx, pare_node *n)
{
    int N = n->in[0]->shape[0], K = n->in[0]->shape[1];
    const int *labels = n->saved;
    float g = n->out->grad[0] / (float)N;
    float *dx = pare_grad_of(ctx, n->in[0]);
    for (int i = 0; i < N; i++) dx[(size_t)i * K + labels[i]] -= g;
}
static const pare_op nll_op = {"nll_loss", nll_backward};

static const int *keep_labels(pare_ctx *ctx, const int *labels, int N)
{
    int *copy = pare_arena_alloc(&ctx->arena, (size_t)N * sizeof(int));
    PARE_CHECK(copy, "arena full");
    for (int i = 0; i < N; i++) copy[i] = labels[i];
    return copy;
}

pare_tensor *pare_nll_loss(pare_ctx *ctx, pare_tensor *logp, const int *labels)
{
    check_rows(logp, "nll_loss");
    int N = logp->shape[0], K = logp->shape[1], one = 1;
    check_labels(labels, N, K);
    double s = 0;
    for (int i = 0; i < N; i++) s -= logp->data[(size_t)i * K + labels[i]];
    pare_tensor *y = pare_ctx_tensor(ctx, 1, &one);
    y->data[0] = (float)(s / N);
    pare_node *n = pare_record(ctx, &nll_op, y, 1, &logp);
    if (n) n->saved = (void *)keep_labels(ctx, labels, N);
    return y;
}

/* ---- cross_entropy: nll(log_softmax(logits)), fused; dx = (p - onehot) / N -- */
typedef struct ce_saved {
    const int *labels;
    float *logp;
} ce_saved;

static void ce_backward(pare_ctx *ctx, pare_node *n)
{
    int N = n->in[0]->shape[0], K = n->in[0]->shape[1];
    const ce_saved *s = n->saved;
    float g = n->out->grad[0] / (float)N;
    float *dx = pare_grad_of(ctx, n->in[0]);
    for (int i = 0; i < N; i++)
        for (int k = 0; k < K; k++) {
            size_t o = (size_t)i * K + k;
            dx[o] += g * (expf(s->logp[o]) - (k == s->labels[i] ? 1.0f : 0.0f));
        }
}
static const pare_op ce_op = {"cross_entropy", ce_backward};

pare_tensor *pare_cross_entropy(pare_ctx *ctx, pare_tensor *logits, const int *labels)
{
    check_rows(logits, "cross_entropy");
    int N = logits->shape[0], K = logits->shape[1], one = 1;
    check_labels(labels, N, K);
    float *logp = pare_arena_alloc(&ctx->arena, logits->size * sizeof(float));
    PARE_CHECK(logp, "arena full");
    pare_log_softmax_rows(logits->data, N, K, logp);
    double s = 0;
    for (int i = 0; i < N; i++) s -= logp[(size_t)i * K + labels[i]];
    pare_tensor *y = pare_ctx_tensor(ctx, 1, &one);
    y->data[0] = (float)(s / N);
    pare_node *n = pare_record(ctx, &ce_op, y, 1, &logits);
    if (n) {
        ce_saved *sv = pare_arena_alloc(&ctx->arena, sizeof *sv);
        PARE_CHECK(sv, "arena full");
        sv->labels = keep_labels(ctx, labels, N);
        sv->logp = logp;
        n->saved = sv;
    }
    return y;
}

/* ---- mse_loss: mean((pred - target)^2) --------------------------------------- */
static void mse_backward(pare_ctx *ctx, pare_node *n)
{
    pare_tensor *p = n->in[0], *t = n->in[1];
    float g = 2.0f * n->out->grad[0] / (float)p->size;
    float *dp = pare_wants_grad(p) ? pare_grad_of(ctx, p) : NULL;
    float *dt = pare_wants_grad(t) ? pare_grad_of(ctx, t) : NULL;
    for (size_t i = 0; i < p->size; i++) {
        float d = g * (p->data[i] - t->data[i]);
        if (dp) dp[i] += d;
        if (dt) dt[i] -= d;
    }
}
static const pare_op mse_op = {"mse_loss", mse_backward};

pare_tensor *pare_mse_loss(pare_ctx *ctx, pare_tensor *pred, pare_tensor *target)
{
    PARE_CHECK(pred->size == target->size, "mse_loss: %zu predictions for %zu targets", pred->size, target->size);
    int one = 1;
    double s = 0;
    for (size_t i = 0; i < pred->size; i++) {
        double d = (double)pred->data[i] - target->data[i];
        s += d * d;
    }
    pare_tensor *y = pare_ctx_tensor(ctx, 1, &one);
    y->data[0] = (float)(s / (double)pred->size);
    pare_tensor *in[2] = {pred, target};
    pare_record(ctx, &mse_op, y, 2, in);
    return y;
}
