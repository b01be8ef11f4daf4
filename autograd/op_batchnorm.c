/* Batch normalization over dim 1 of [N, C, H, W] or [N, C]:
 * y = gamma * (x - mean) / sqrt(var + eps) + beta. In training the batch
 * statistics are used (biased variance) and the running ones updated
 * (unbiased variance, PyTorch's momentum rule); in eval the running ones. */
#include <math.h>

#include "autograd/autograd.h"

typedef struct bn_saved {
    float *mean, *invstd; /* per channel */
    float *xhat;          /* normalized input */
    int batch_stats;      /* 1: mean/var came from the batch */
} bn_saved;

static void bn_dims(const pare_tensor *x, int *N, int *C, size_t *inner)
{
    *N = x->shape[0];
    *C = x->shape[1];
    *inner = x->size / ((size_t)*N * (size_t)*C);
}

static void batch_moments(const pare_tensor *x, int c, double *mean, double *var)
{
    int N, C;
    size_t inner;
    bn_dims(x, &N, &C, &inner);
    double s = 0, ss = 0;
    for (int n = 0; n < N; n++) s += pare_vec_sum(x->data + ((size_t)n * C + c) * inner, inner);
    double m = s / ((double)N * inner);
    for (int n = 0; n < N; n++) {
        const float *p = x->data + ((size_t)n * C + c) * inner;
        for (size_t i = 0; i < inner; i++) ss += (p[i] - m) * (p[i] - m);
    }
    *mean = m;
    *var = ss / ((double)N * inner);
}

static void bn_backward(pare_ctx *ctx, pare_node *node)
{
    pare_tensor *x = node->in[0], *gamma = node->in[1], *beta = node->in[2];
    bn_saved *s = node->saved;
    int N, C;
    size_t inner;
    bn_dims(x, &N, &C, &inner);
    double M = (double)N * inner;
    const float *dy = node->out->grad;
    float *dx = pare_wants_grad(x) ? pare_grad_of(ctx, x) : NULL;
    float *dg = pare_wants_grad(gamma) ? pare_grad_of(ctx, gamma) : NULL;
    float *db = pare_wants_grad(beta) ? pare_grad_of(ctx, beta) : NULL;
#pragma omp parallel for schedule(static) if (x->size > PARE_PARALLEL_MIN)
    for (int c = 0; c < C; c++) {
        double sum_dy = 0, sum_dy_xhat = 0;
        for (int n = 0; n < N; n++) {
            size_t off = ((size_t)n * C + c) * inner;
            for (size_t i = 0; i < inner; i++) {
                sum_dy += dy[off + i];
                sum_dy_xhat += (double)dy[off + i] * s->xhat[off + i];
            }
        }
        if (dg) dg[c] += (float)sum_dy_xhat;
        if (db) db[c] += (float)sum_dy;
        if (!dx) continue;
        float g = gamma->data[c] * s->invstd[c];
        for (int n = 0; n < N; n++) {
            size_t off = ((size_t)n * C + c) * inner;
            for (size_t i = 0; i < inner; i++) {
                /* With batch statistics the mean and variance depend on x too. */
                double d = dy[off + i];
                if (s->batch_stats) d -= (sum_dy + s->xhat[off + i] * sum_dy_xhat) / M;
                dx[off + i] += (float)(g * d);
            }
        }
    }
}
static const pare_op bn_op = {"batchnorm", bn_backward};

pare_tensor *pare_f_batchnorm(pare_ctx *ctx, pare_tensor *x, pare_tensor *gamma, pare_tensor *beta, float *running_mean,
                              float *running_var, float momentum, float eps)
{
    PARE_CHECK(x->ndim >= 2 && (int)gamma->size == x->shape[1] && (int)beta->size == x->shape[1],
               "batchnorm: %zu scales for %d channels", gamma->size, x->ndim >= 2 ? x->shape[1] : -1);
    int N, C;
    size_t inner;
    bn_dims(x, &N, &C, &inner);
    pare_arena *a = &ctx->arena;
    bn_saved *s = pare_arena_alloc(a, sizeof *s);
    s->mean = pare_arena_alloc(a, (size_t)C * sizeof(float));
    s->invstd = pare_arena_alloc(a, (size_t)C * sizeof(float));
    s->xhat = pare_arena_alloc(a, x->size * sizeof(float));
    PARE_CHECK(s->mean && s->invstd && s->xhat, "arena full");
    s->batch_stats = ctx->training;
    double count = (double)N * inner;
    PARE_CHECK(!ctx->training || count > 1, "batchnorm in training needs more than one value per channel");
    for (int c = 0; c < C; c++) {
        double mean, var;
        if (ctx->training) {
            batch_moments(x, c, &mean, &var);
            if (running_mean) running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * mean);
            if (running_var)
                running_var[c] = (float)((1.0 - momentum) * running_var[c] + momentum * var * count / (count - 1));
        } else {
            mean = running_mean[c];
            var = running_var[c];
        }
        s->mean[c] = (float)mean;
        s->invstd[c] = (float)(1.0 / sqrt(var + eps));
    }
    pare_tensor *y = pare_ctx_tensor(ctx, x->ndim, x->shape);
#pragma omp parallel for schedule(static) if (x->size > PARE_PARALLEL_MIN)
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            size_t off = ((size_t)n * C + c) * inner;
            for (size_t i = 0; i < inner; i++) {
                float xh = (x->data[off + i] - s->mean[c]) * s->invstd[c];
                s->xhat[off + i] = xh;
                y->data[off + i] = gamma->data[c] * xh + beta->data[c];
            }
        }
    pare_tensor *in[3] = {x, gamma, beta};
    pare_node *node = pare_record(ctx, &bn_op, y, 3, in);
    if (node) node->saved = s;
    return y;
}
