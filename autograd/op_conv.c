/* 2-D convolution as one matrix product over the whole batch:
 * col[K = C*k*k, N*P] holds every sample's im2col side by side, so
 * Y[O, N*P] = W[O, K] col, which is then laid out as NCHW. */
#include <string.h>

#include "autograd/autograd.h"

typedef struct conv_saved {
    pare_conv_geom g;
    float *col; /* [K, N*P] */
} conv_saved;

static pare_conv_geom geometry(const pare_tensor *x, const pare_tensor *w, int stride, int pad)
{
    pare_conv_geom g = {x->shape[1], x->shape[2], x->shape[3], w->shape[2], w->shape[3], stride, pad, 0, 0};
    g.oh = pare_conv_out(g.h, g.kh, stride, pad);
    g.ow = pare_conv_out(g.w, g.kw, stride, pad);
    return g;
}

/* out[n][o][p] = ymat[o][n*P + p] (+ b[o]) */
static void ymat_to_nchw(const float *ymat, const float *bias, int N, int O, size_t P, float *out)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        for (int o = 0; o < O; o++) {
            const float *src = ymat + (size_t)o * N * P + (size_t)n * P;
            float *dst = out + ((size_t)n * O + o) * P;
            float b = bias ? bias[o] : 0.0f;
            for (size_t p = 0; p < P; p++) dst[p] = src[p] + b;
        }
}

static void nchw_to_ymat(const float *dy, int N, int O, size_t P, float *ymat)
{
#pragma omp parallel for schedule(static)
    for (int o = 0; o < O; o++)
        for (int n = 0; n < N; n++)
            memcpy(ymat + (size_t)o * N * P + (size_t)n * P, dy + ((size_t)n * O + o) * P, P * sizeof(float));
}

static void conv_backward(pare_ctx *ctx, pare_node *node)
{
    pare_tensor *x = node->in[0], *w = node->in[1], *b = node->in[2];
    conv_saved *s = node->saved;
    int N = x->shape[0], O = w->shape[0];
    size_t P = (size_t)s->g.oh * s->g.ow, NP = (size_t)N * P;
    int K = s->g.c * s->g.kh * s->g.kw;
    /* Gradients this op creates come first; dymat and dcol are scratch. */
    float *dw = pare_wants_grad(w) ? pare_grad_of(ctx, w) : NULL;
    float *db = pare_wants_grad(b) ? pare_grad_of(ctx, b) : NULL;
    float *dx = pare_wants_grad(x) ? pare_grad_of(ctx, x) : NULL;
    pare_arena_pos scratch = pare_arena_pos_get(&ctx->arena);
    float *dymat = pare_arena_alloc(&ctx->arena, (size_t)O * NP * sizeof(float));
    PARE_CHECK(dymat, "arena full");
    nchw_to_ymat(node->out->grad, N, O, P, dymat);
    if (db)
        for (int o = 0; o < O; o++) db[o] += (float)pare_vec_sum(dymat + (size_t)o * NP, NP);
    if (dw) /* dW[O,K] += dY[O,NP] col[K,NP]^T */
        pare_sgemm(0, 1, O, K, (int)NP, 1.0f, dymat, (int)NP, s->col, (int)NP, 1.0f, dw, K);
    if (dx) { /* dcol[K,NP] = W^T dY, then scatter back per sample */
        float *dcol = pare_arena_alloc(&ctx->arena, (size_t)K * NP * sizeof(float));
        PARE_CHECK(dcol, "arena full");
        pare_sgemm(1, 0, K, (int)NP, O, 1.0f, w->data, K, dymat, (int)NP, 0.0f, dcol, (int)NP);
        size_t img = (size_t)s->g.c * s->g.h * s->g.w;
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) pare_col2im(&s->g, dcol + (size_t)n * P, NP, dx + (size_t)n * img);
    }
    pare_arena_rewind(&ctx->arena, scratch);
}
static const pare_op conv_op = {"conv2d", conv_backward};

pare_tensor *pare_f_conv2d(pare_ctx *ctx, pare_tensor *x, pare_tensor *w, pare_tensor *b, int stride, int pad)
{
    PARE_CHECK(x->ndim == 4 && w->ndim == 4 && x->shape[1] == w->shape[1],
               "conv2d: input [%d, %d, %d, %d] with weight [%d, %d, %d, %d]", x->shape[0], x->shape[1],
               x->shape[2], x->shape[3], w->shape[0], w->shape[1], w->shape[2], w->shape[3]);
    pare_conv_geom g = geometry(x, w, stride, pad);
    PARE_CHECK(g.oh > 0 && g.ow > 0, "conv2d: %dx%d kernel does not fit a %dx%d input", g.kh, g.kw, g.h, g.w);
    int N = x->shape[0], O = w->shape[0], K = g.c * g.kh * g.kw;
    size_t P = (size_t)g.oh * g.ow, NP = (size_t)N * P, img = (size_t)g.c * g.h * g.w;
    /* Output first, then the columns (kept for backward), then the product in
     * [O, N*P] order, which is scratch: released once laid out as NCHW. */
    pare_tensor *y = pare_tensor_4d(&ctx->arena, N, O, g.oh, g.ow);
    float *col = pare_arena_alloc(&ctx->arena, (size_t)K * NP * sizeof(float));
    pare_arena_pos scratch = pare_arena_pos_get(&ctx->arena);
    float *ymat = pare_arena_alloc(&ctx->arena, (size_t)O * NP * sizeof(float));
    PARE_CHECK(col && ymat, "arena full");
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) pare_im2col(&g, x->data + (size_t)n * img, col + (size_t)n * P, NP);
    pare_sgemm(0, 0, O, (int)NP, K, 1.0f, w->data, K, col, (int)NP, 0.0f, ymat, (int)NP);
    ymat_to_nchw(ymat, b ? b->data : NULL, N, O, P, y->data);
    pare_arena_rewind(&ctx->arena, scratch);
    pare_tensor *in[3] = {x, w, b};
    pare_node *node = pare_record(ctx, &conv_op, y, b ? 3 : 2, in);
    if (node) {
        conv_saved *s = pare_arena_alloc(&ctx->arena, sizeof *s);
        PARE_CHECK(s, "arena full");
        s->g = g;
        s->col = col;
        node->saved = s;
    }
    return y;
}
