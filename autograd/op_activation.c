/* Activations: relu, sigmoid, tanh, dropout. */
#include <math.h>

#include "autograd/autograd.h"

static pare_tensor *like(pare_ctx *ctx, const pare_tensor *x)
{
    return pare_ctx_tensor(ctx, x->ndim, x->shape);
}

/* ---- relu: y = max(x, 0); the gradient at exactly 0 is 0, as in PyTorch --- */
static void relu_backward(pare_ctx *ctx, pare_node *n)
{
    const float *y = n->out->data, *dy = n->out->grad;
    int fresh;
    float *dx = pare_grad_dst(ctx, n->in[0], &fresh);
    size_t size = n->out->size;
#pragma omp parallel for schedule(static) if (size > PARE_PARALLEL_MIN)
    for (size_t i = 0; i < size; i++) {
        float g = y[i] > 0.0f ? dy[i] : 0.0f;
        dx[i] = fresh ? g : dx[i] + g;
    }
}
static const pare_op relu_op = {"relu", relu_backward};

pare_tensor *pare_f_relu(pare_ctx *ctx, pare_tensor *x)
{
    pare_tensor *y = like(ctx, x);
    const float *xd = x->data;
    float *yd = y->data;
    size_t size = x->size;
#pragma omp parallel for schedule(static) if (size > PARE_PARALLEL_MIN)
    for (size_t i = 0; i < size; i++) yd[i] = xd[i] > 0.0f ? xd[i] : 0.0f;
    pare_record(ctx, &relu_op, y, 1, &x);
    return y;
}

/* ---- sigmoid: y = 1 / (1 + e^-x); dy/dx = y (1 - y) -------------------------- */
static void sigmoid_backward(pare_ctx *ctx, pare_node *n)
{
    const float *y = n->out->data, *dy = n->out->grad;
    float *dx = pare_grad_of(ctx, n->in[0]);
    for (size_t i = 0; i < n->out->size; i++) dx[i] += dy[i] * y[i] * (1.0f - y[i]);
}
static const pare_op sigmoid_op = {"sigmoid", sigmoid_backward};

pare_tensor *pare_f_sigmoid(pare_ctx *ctx, pare_tensor *x)
{
    pare_tensor *y = like(ctx, x);
    for (size_t i = 0; i < x->size; i++) {
        float v = x->data[i];
        /* Two forms so that exp never overflows. */
        y->data[i] = v >= 0 ? 1.0f / (1.0f + expf(-v)) : expf(v) / (1.0f + expf(v));
    }
    pare_record(ctx, &sigmoid_op, y, 1, &x);
    return y;
}

/* ---- tanh: dy/dx = 1 - y^2 ------------------------------------------------------ */
static void tanh_backward(pare_ctx *ctx, pare_node *n)
{
    const float *y = n->out->data, *dy = n->out->grad;
    float *dx = pare_grad_of(ctx, n->in[0]);
    for (size_t i = 0; i < n->out->size; i++) dx[i] += dy[i] * (1.0f - y[i] * y[i]);
}
static const pare_op tanh_op = {"tanh", tanh_backward};

pare_tensor *pare_f_tanh(pare_ctx *ctx, pare_tensor *x)
{
    pare_tensor *y = like(ctx, x);
    for (size_t i = 0; i < x->size; i++) y->data[i] = tanhf(x->data[i]);
    pare_record(ctx, &tanh_op, y, 1, &x);
    return y;
}

/* ---- dropout: inverted, keep with probability 1 - p, scale by 1 / (1 - p) ------
 * The mask is a pure function of (seed, call counter, element), recomputed in
 * backward rather than stored, and independent of how loops are split. */
static float dropout_factor(uint64_t seed, uint64_t counter, size_t i, float p)
{
    return pare_hash_uniform(seed, counter, i) >= p ? 1.0f / (1.0f - p) : 0.0f;
}

static void dropout_backward(pare_ctx *ctx, pare_node *n)
{
    uint64_t counter = (uint64_t)(uint32_t)n->iarg[0] | (uint64_t)(uint32_t)n->iarg[1] << 32;
    float p = n->farg[0];
    const float *dy = n->out->grad;
    float *dx = pare_grad_of(ctx, n->in[0]);
    for (size_t i = 0; i < n->out->size; i++) dx[i] += dy[i] * dropout_factor(ctx->seed, counter, i, p);
}
static const pare_op dropout_op = {"dropout", dropout_backward};

pare_tensor *pare_f_dropout(pare_ctx *ctx, pare_tensor *x, float p)
{
    PARE_CHECK(p >= 0.0f && p < 1.0f, "dropout probability %g outside [0, 1)", (double)p);
    if (!ctx->training || p == 0.0f) return x;
    uint64_t counter = ctx->step++;
    pare_tensor *y = like(ctx, x);
    for (size_t i = 0; i < x->size; i++) y->data[i] = x->data[i] * dropout_factor(ctx->seed, counter, i, p);
    pare_node *n = pare_record(ctx, &dropout_op, y, 1, &x);
    if (n) {
        n->iarg[0] = (int)(uint32_t)counter;
        n->iarg[1] = (int)(uint32_t)(counter >> 32);
        n->farg[0] = p;
    }
    return y;
}
