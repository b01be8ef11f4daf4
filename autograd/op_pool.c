/* Pooling over [N, C, H, W]: max (gradient to the first maximum of each
 * window) and average. Windows that do not fit are dropped (floor), as in PyTorch. */
#include <string.h>

#include "autograd/autograd.h"

typedef struct pool_dims {
    int planes, h, w, k, s, oh, ow;
} pool_dims;

static pool_dims dims_of(const pare_tensor *x, int kernel, int stride)
{
    pool_dims d = {x->shape[0] * x->shape[1], x->shape[2], x->shape[3], kernel, stride, 0, 0};
    d.oh = pare_conv_out(d.h, kernel, stride, 0);
    d.ow = pare_conv_out(d.w, kernel, stride, 0);
    return d;
}

static pare_tensor *pool_output(pare_ctx *ctx, const pare_tensor *x, const pool_dims *d, const char *op)
{
    PARE_CHECK(x->ndim == 4, "%s needs [N, C, H, W]", op);
    PARE_CHECK(d->oh > 0 && d->ow > 0 && d->s > 0, "%s: window %d does not fit %dx%d", op, d->k, d->h, d->w);
    return pare_tensor_4d(&ctx->arena, x->shape[0], x->shape[1], d->oh, d->ow);
}

/* ---- maxpool2d ------------------------------------------------------------- */
static void maxpool_backward(pare_ctx *ctx, pare_node *n)
{
    const int *arg = n->saved;
    const float *dy = n->out->grad;
    int fresh;
    float *dx = pare_grad_dst(ctx, n->in[0], &fresh);
    if (fresh) memset(dx, 0, n->in[0]->size * sizeof(float));
    size_t out_plane = (size_t)n->out->shape[2] * n->out->shape[3];
    size_t in_plane = (size_t)n->in[0]->shape[2] * n->in[0]->shape[3];
    int planes = n->out->shape[0] * n->out->shape[1];
    /* Windows may overlap when stride < kernel: each plane is one thread's. */
#pragma omp parallel for schedule(static)
    for (int p = 0; p < planes; p++)
        for (size_t i = 0; i < out_plane; i++) {
            size_t o = (size_t)p * out_plane + i;
            dx[(size_t)p * in_plane + (size_t)arg[o]] += dy[o];
        }
}
static const pare_op maxpool_op = {"maxpool2d", maxpool_backward};

/* The common 2x2 window with stride 2, unrolled and branch-free (the
 * comparisons are data-dependent and mispredict half the time); the same
 * first-maximum rule as the general loop. */
static void max2x2_plane(const pool_dims *d, const float *src, float *out, int *arg)
{
    for (int oy = 0; oy < d->oh; oy++) {
        const float *r0 = src + (size_t)(2 * oy) * d->w, *r1 = r0 + d->w;
        int base = 2 * oy * d->w;
        for (int ox = 0; ox < d->ow; ox++) {
            int c = 2 * ox, best = base + c;
            float m = r0[c];
            int t = r0[c + 1] > m;
            m = t ? r0[c + 1] : m, best = t ? base + c + 1 : best;
            t = r1[c] > m;
            m = t ? r1[c] : m, best = t ? base + d->w + c : best;
            t = r1[c + 1] > m;
            m = t ? r1[c + 1] : m, best = t ? base + d->w + c + 1 : best;
            out[oy * d->ow + ox] = m;
            arg[oy * d->ow + ox] = best;
        }
    }
}

pare_tensor *pare_f_maxpool2d(pare_ctx *ctx, pare_tensor *x, int kernel, int stride)
{
    pool_dims d = dims_of(x, kernel, stride);
    pare_tensor *y = pool_output(ctx, x, &d, "maxpool2d");
    int *arg = pare_arena_alloc(&ctx->arena, y->size * sizeof(int));
    PARE_CHECK(arg, "arena full");
#pragma omp parallel for schedule(static)
    for (int p = 0; p < d.planes; p++) {
        const float *src = x->data + (size_t)p * d.h * d.w;
        if (d.k == 2 && d.s == 2) {
            max2x2_plane(&d, src, y->data + (size_t)p * d.oh * d.ow, arg + (size_t)p * d.oh * d.ow);
            continue;
        }
        for (int oy = 0; oy < d.oh; oy++)
            for (int ox = 0; ox < d.ow; ox++) {
                int best = oy * d.s * d.w + ox * d.s;
                for (int ky = 0; ky < d.k; ky++)
                    for (int kx = 0; kx < d.k; kx++) {
                        int at = (oy * d.s + ky) * d.w + ox * d.s + kx;
                        if (src[at] > src[best]) best = at;
                    }
                size_t o = ((size_t)p * d.oh + oy) * d.ow + ox;
                y->data[o] = src[best];
                arg[o] = best;
            }
    }
    pare_node *n = pare_record(ctx, &maxpool_op, y, 1, &x);
    if (n) n->saved = arg;
    return y;
}

/* ---- avgpool2d --------------------------------------------------------------- */
static void avgpool_backward(pare_ctx *ctx, pare_node *n)
{
    pool_dims d = dims_of(n->in[0], n->iarg[0], n->iarg[1]);
    const float *dy = n->out->grad;
    float *dx = pare_grad_of(ctx, n->in[0]);
    float inv = 1.0f / (float)(d.k * d.k);
#pragma omp parallel for schedule(static)
    for (int p = 0; p < d.planes; p++) {
        float *dst = dx + (size_t)p * d.h * d.w;
        for (int oy = 0; oy < d.oh; oy++)
            for (int ox = 0; ox < d.ow; ox++) {
                float g = dy[((size_t)p * d.oh + oy) * d.ow + ox] * inv;
                for (int ky = 0; ky < d.k; ky++)
                    for (int kx = 0; kx < d.k; kx++) dst[(oy * d.s + ky) * d.w + ox * d.s + kx] += g;
            }
    }
}
static const pare_op avgpool_op = {"avgpool2d", avgpool_backward};

pare_tensor *pare_f_avgpool2d(pare_ctx *ctx, pare_tensor *x, int kernel, int stride)
{
    pool_dims d = dims_of(x, kernel, stride);
    pare_tensor *y = pool_output(ctx, x, &d, "avgpool2d");
    float inv = 1.0f / (float)(d.k * d.k);
#pragma omp parallel for schedule(static)
    for (int p = 0; p < d.planes; p++) {
        const float *src = x->data + (size_t)p * d.h * d.w;
        for (int oy = 0; oy < d.oh; oy++)
            for (int ox = 0; ox < d.ow; ox++) {
                float s = 0.0f;
                for (int ky = 0; ky < d.k; ky++)
                    for (int kx = 0; kx < d.k; kx++) s += src[(oy * d.s + ky) * d.w + ox * d.s + kx];
                y->data[((size_t)p * d.oh + oy) * d.ow + ox] = s * inv;
            }
    }
    pare_node *n = pare_record(ctx, &avgpool_op, y, 1, &x);
    if (n) {
        n->iarg[0] = kernel;
        n->iarg[1] = stride;
    }
    return y;
}
