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

/* ---- maxpool2d -------------------------------------------------------------
 * The position of each window's maximum is saved as one byte, relative to
 * the window (ky * k + kx), so windows up to 16x16 are supported. */
#define MAX_POOL_WINDOW 16

static void maxpool_backward(pare_ctx *ctx, pare_node *n)
{
    pool_dims d = dims_of(n->in[0], n->iarg[0], n->iarg[1]);
    const uint8_t *arg = n->saved;
    const float *dy = n->out->grad;
    int fresh;
    float *dx = pare_grad_dst(ctx, n->in[0], &fresh);
    if (fresh) memset(dx, 0, n->in[0]->size * sizeof(float));
        /* Windows may overlap when stride < kernel: each plane is one thread's. */
#pragma omp parallel for schedule(static) if (n->in[0]->size > PARE_PARALLEL_MIN)
    for (int p = 0; p < d.planes; p++) {
        float *dst = dx + (size_t)p * d.h * d.w;
        size_t o = (size_t)p * d.oh * d.ow;
        for (int oy = 0; oy < d.oh; oy++)
            for (int ox = 0; ox < d.ow; ox++, o++) {
                int ky = arg[o] / d.k, kx = arg[o] % d.k;
                dst[(oy * d.s + ky) * d.w + ox * d.s + kx] += dy[o];
            }
    }
}
static const pare_op maxpool_op = {"maxpool2d", maxpool_backward};

/* The common 2x2 window with stride 2, written with selects so the compiler
 * vectorizes it (the comparisons are data-dependent: as branches they
 * mispredict half the time). The same first-maximum rule as the general loop. */
static void max2x2_row(const float *restrict r0, const float *restrict r1, int ow, float *restrict out,
                       uint8_t *restrict arg)
{
    for (int ox = 0; ox < ow; ox++) {
        float a = r0[2 * ox], b = r0[2 * ox + 1], c = r1[2 * ox], e = r1[2 * ox + 1];
        float m = a;
        int k = 0;
        k = b > m ? 1 : k, m = b > m ? b : m;
        k = c > m ? 2 : k, m = c > m ? c : m;
        k = e > m ? 3 : k, m = e > m ? e : m;
        out[ox] = m;
        arg[ox] = (uint8_t)k;
    }
}

static void max_window_plane(const pool_dims *d, const float *src, float *out, uint8_t *arg)
{
    for (int oy = 0; oy < d->oh; oy++)
        for (int ox = 0; ox < d->ow; ox++) {
            const float *w0 = src + (size_t)oy * d->s * d->w + (size_t)ox * d->s;
            int best = 0;
            for (int ky = 0; ky < d->k; ky++)
                for (int kx = 0; kx < d->k; kx++)
                    if (w0[ky * d->w + kx] > w0[best / d->k * d->w + best % d->k]) best = ky * d->k + kx;
            out[oy * d->ow + ox] = w0[best / d->k * d->w + best % d->k];
            arg[oy * d->ow + ox] = (uint8_t)best;
        }
}

pare_tensor *pare_f_maxpool2d(pare_ctx *ctx, pare_tensor *x, int kernel, int stride)
{
    PARE_CHECK(kernel >= 1 && kernel <= MAX_POOL_WINDOW, "maxpool2d: window %d outside [1, %d]", kernel,
               MAX_POOL_WINDOW);
    pool_dims d = dims_of(x, kernel, stride);
    pare_tensor *y = pool_output(ctx, x, &d, "maxpool2d");
    uint8_t *arg = pare_arena_alloc(&ctx->arena, y->size);
    PARE_CHECK(arg, "arena full");
#pragma omp parallel for schedule(static) if (x->size > PARE_PARALLEL_MIN)
    for (int p = 0; p < d.planes; p++) {
        const float *src = x->data + (size_t)p * d.h * d.w;
        float *out = y->data + (size_t)p * d.oh * d.ow;
        uint8_t *a = arg + (size_t)p * d.oh * d.ow;
        if (d.k == 2 && d.s == 2)
            for (int oy = 0; oy < d.oh; oy++)
                max2x2_row(src + (size_t)2 * oy * d.w, src + (size_t)(2 * oy + 1) * d.w, d.ow, out + oy * d.ow,
                           a + oy * d.ow);
        else
            max_window_plane(&d, src, out, a);
    }
    pare_node *n = pare_record(ctx, &maxpool_op, y, 1, &x);
    if (n) {
        n->saved = arg;
        n->iarg[0] = kernel;
        n->iarg[1] = stride;
    }
    return y;
}

/* ---- avgpool2d --------------------------------------------------------------- */
static void avgpool_backward(pare_ctx *ctx, pare_node *n)
{
    pool_dims d = dims_of(n->in[0], n->iarg[0], n->iarg[1]);
    const float *dy = n->out->grad;
    float *dx = pare_grad_of(ctx, n->in[0]);
    float inv = 1.0f / (float)(d.k * d.k);
#pragma omp parallel for schedule(static) if (n->in[0]->size > PARE_PARALLEL_MIN)
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
#pragma omp parallel for schedule(static) if (x->size > PARE_PARALLEL_MIN)
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
