/* 2-D convolution as one matrix product over the whole batch:
 * col[K = C*k*k, N*P] holds every sample's im2col side by side, so
 * Y[O, N*P] = W[O, K] col. An epilogue adds the bias and lays Y out as NCHW,
 * optionally applying ReLU and a non-overlapping max-pool on the way (the
 * conv -> ReLU -> MaxPool block of most CNNs), so those activations are
 * never written out. The fused result is bitwise the result of the three
 * separate ops: the same additions, the same comparisons, the same first
 * maximum. */
#include <string.h>

#include "autograd/autograd.h"

typedef struct conv_saved {
    pare_conv_geom g;
    float *col;   /* [K, N*P] */
    int relu;     /* 1: ReLU applied */
    int pool;     /* 0, or the window (= stride) of the max-pool applied */
    uint8_t *arg; /* pool: position of each window's maximum, ky * pool + kx */
} conv_saved;

static pare_conv_geom geometry(const pare_tensor *x, const pare_tensor *w, int stride, int pad)
{
    pare_conv_geom g = {x->shape[1], x->shape[2], x->shape[3], w->shape[2], w->shape[3], stride, pad, 0, 0};
    g.oh = pare_conv_out(g.h, g.kh, stride, pad);
    g.ow = pare_conv_out(g.w, g.kw, stride, pad);
    return g;
}

static inline float act(float v, int relu)
{
    return relu ? (v > 0.0f ? v : 0.0f) : v;
}

/* ---- epilogue: ymat[o][n*P + p] -> out[n][o][...] ----------------------------- */
static void plane_out(const float *src, float b, int relu, size_t P, float *dst)
{
    for (size_t p = 0; p < P; p++) dst[p] = act(src[p] + b, relu);
}

/* The common 2x2 window. The four corners of each window are first split
 * into four contiguous arrays, so that the selects that follow run on whole
 * vectors; the same first-maximum rule (row-major) as plane_pool. */
#define POOL2_CHUNK 256
static void pool2_corners(const float *restrict r, float b, int relu, int n, float *restrict even, float *restrict odd)
{
    for (int j = 0; j < n; j++) {
        even[j] = act(r[2 * j] + b, relu);
        odd[j] = act(r[2 * j + 1] + b, relu);
    }
}

static void pool2_select(const float *restrict v0, const float *restrict v1, const float *restrict v2,
                         const float *restrict v3, int n, float *restrict d, uint8_t *restrict a)
{
    for (int j = 0; j < n; j++) {
        /* k as a float: gcc vectorizes float selects, not mixed ones */
        float m = v0[j], k = 0.0f; // NOLINT(clang-analyzer-core.uninitialized.Assign): v0..v3 are filled for j < n
        k = v1[j] > m ? 1.0f : k, m = v1[j] > m ? v1[j] : m;
        k = v2[j] > m ? 2.0f : k, m = v2[j] > m ? v2[j] : m;
        k = v3[j] > m ? 3.0f : k, m = v3[j] > m ? v3[j] : m;
        d[j] = m;
        a[j] = (uint8_t)(int)k;
    }
}

/* Gathers the corners of as many whole output rows as fit in a chunk, then
 * selects over the chunk at once: rows are short (13 windows for seedcnn's
 * conv1), so per-row vectors would mostly be remainder. */
static void plane_pool2(const float *src, float b, int relu, const pare_conv_geom *g, float *dst, uint8_t *arg)
{
    int ph = g->oh / 2, pw = g->ow / 2;
    float v[4][POOL2_CHUNK];
    if (pw > POOL2_CHUNK) { /* very wide rows: a row at a time, in pieces */
        for (int py = 0; py < ph; py++)
            for (int j0 = 0; j0 < pw; j0 += POOL2_CHUNK) {
                const float *r0 = src + (size_t)2 * py * g->ow + 2 * j0, *r1 = r0 + g->ow;
                int n = pw - j0 < POOL2_CHUNK ? pw - j0 : POOL2_CHUNK;
                pool2_corners(r0, b, relu, n, v[0], v[1]);
                pool2_corners(r1, b, relu, n, v[2], v[3]);
                pool2_select(v[0], v[1], v[2], v[3], n, dst + (size_t)py * pw + j0, arg + (size_t)py * pw + j0);
            }
        return;
    }
    int rows_per_chunk = POOL2_CHUNK / pw;
    for (int py0 = 0; py0 < ph; py0 += rows_per_chunk) {
        int rows = ph - py0 < rows_per_chunk ? ph - py0 : rows_per_chunk;
        for (int r = 0; r < rows; r++) {
            const float *r0 = src + (size_t)2 * (py0 + r) * g->ow, *r1 = r0 + g->ow;
            pool2_corners(r0, b, relu, pw, v[0] + r * pw, v[1] + r * pw);
            pool2_corners(r1, b, relu, pw, v[2] + r * pw, v[3] + r * pw);
        }
        size_t at = (size_t)py0 * pw;
        pool2_select(v[0], v[1], v[2], v[3], rows * pw, dst + at, arg + at);
    }
}

/* Max-pool of act(src + b) over k x k windows with stride k; first maximum wins. */
static void plane_pool(const float *src, float b, int relu, const pare_conv_geom *g, int k, float *dst, uint8_t *arg)
{
    int ph = g->oh / k, pw = g->ow / k;
    for (int py = 0; py < ph; py++)
        for (int px = 0; px < pw; px++) {
            const float *w0 = src + (size_t)py * k * g->ow + (size_t)px * k;
            float m = act(w0[0] + b, relu);
            int best = 0;
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++) {
                    float v = act(w0[ky * g->ow + kx] + b, relu);
                    best = v > m ? ky * k + kx : best;
                    m = v > m ? v : m;
                }
            dst[py * pw + px] = m;
            arg[py * pw + px] = (uint8_t)best;
        }
}

static void epilogue(const float *ymat, const float *bias, int N, int O, const pare_conv_geom *g, int relu, int pool,
                     float *out, uint8_t *arg)
{
    size_t P = (size_t)g->oh * g->ow, NP = (size_t)N * P;
    size_t Q = pool ? (size_t)(g->oh / pool) * (g->ow / pool) : P; /* output plane */
#pragma omp parallel for schedule(static) if (NP * O > PARE_PARALLEL_MIN)
    for (int n = 0; n < N; n++)
        for (int o = 0; o < O; o++) {
            const float *src = ymat + (size_t)o * NP + (size_t)n * P;
            float b = bias ? bias[o] : 0.0f;
            size_t at = ((size_t)n * O + o) * Q;
            if (pool == 2)
                plane_pool2(src, b, relu, g, out + at, arg + at);
            else if (pool)
                plane_pool(src, b, relu, g, pool, out + at, arg + at);
            else
                plane_out(src, b, relu, P, out + at);
        }
}

/* The adjoint of the epilogue: the output gradient back into [O, N*P] order,
 * through the pool's maxima and ReLU's active outputs. */
static void epilogue_backward(const conv_saved *s, const float *y, const float *dy, int N, int O, float *dymat)
{
    const pare_conv_geom *g = &s->g;
    size_t P = (size_t)g->oh * g->ow, NP = (size_t)N * P;
    int k = s->pool, pw = k ? g->ow / k : 0;
    size_t Q = k ? (size_t)(g->oh / k) * pw : P;
#pragma omp parallel for schedule(static) if (NP * O > PARE_PARALLEL_MIN)
    for (int o = 0; o < O; o++)
        for (int n = 0; n < N; n++) {
            float *dst = dymat + (size_t)o * NP + (size_t)n * P;
            size_t at = ((size_t)n * O + o) * Q;
            if (!k) {
                for (size_t p = 0; p < P; p++) dst[p] = !s->relu || y[at + p] > 0.0f ? dy[at + p] : 0.0f;
                continue;
            }
            memset(dst, 0, P * sizeof(float));
            for (size_t q = 0; q < Q; q++) {
                if (s->relu && !(y[at + q] > 0.0f)) continue;
                int py = (int)(q / (size_t)pw), px = (int)(q % (size_t)pw), a = s->arg[at + q];
                dst[(size_t)(py * k + a / k) * g->ow + (size_t)(px * k + a % k)] = dy[at + q];
            }
        }
}

/* ---- the op ------------------------------------------------------------------------ */
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
    epilogue_backward(s, node->out->data, node->out->grad, N, O, dymat);
    if (db)
        for (int o = 0; o < O; o++) db[o] += (float)pare_vec_sum(dymat + (size_t)o * NP, NP);
    if (dw) /* dW[O,K] += dY[O,NP] col[K,NP]^T */
        pare_sgemm(0, 1, O, K, (int)NP, 1.0f, dymat, (int)NP, s->col, (int)NP, 1.0f, dw, K);
    if (dx) { /* dcol[K,NP] = W^T dY, then scatter back per sample */
        float *dcol = pare_arena_alloc(&ctx->arena, (size_t)K * NP * sizeof(float));
        PARE_CHECK(dcol, "arena full");
        pare_sgemm(1, 0, K, (int)NP, O, 1.0f, w->data, K, dymat, (int)NP, 0.0f, dcol, (int)NP);
        size_t img = (size_t)s->g.c * s->g.h * s->g.w;
#pragma omp parallel for schedule(static) if ((size_t)K * NP > PARE_PARALLEL_MIN)
        for (int n = 0; n < N; n++) pare_col2im(&s->g, dcol + (size_t)n * P, NP, dx + (size_t)n * img);
    }
    pare_arena_rewind(&ctx->arena, scratch);
}
static const pare_op conv_op = {"conv2d", conv_backward};

/* Forward of samples [n0, n0 + n): columns, product, epilogue into out.
 * Returns the columns, which stay allocated when `keep` (for backward); the
 * product in [O, n*P] order is scratch and released. */
#define CONV_CHUNK 64
static float *conv_chunk(pare_ctx *ctx, const pare_conv_geom *g, const pare_tensor *x, int n0, int n,
                         const pare_tensor *w, const pare_tensor *b, int relu, int pool, float *out, uint8_t *arg,
                         int keep)
{
    int O = w->shape[0], K = g->c * g->kh * g->kw;
    size_t P = (size_t)g->oh * g->ow, NP = (size_t)n * P, img = (size_t)g->c * g->h * g->w;
    pare_arena_pos start = pare_arena_pos_get(&ctx->arena);
    float *col = pare_arena_alloc(&ctx->arena, (size_t)K * NP * sizeof(float));
    pare_arena_pos scratch = pare_arena_pos_get(&ctx->arena);
    float *ymat = pare_arena_alloc(&ctx->arena, (size_t)O * NP * sizeof(float));
    PARE_CHECK(col && ymat, "arena full");
    const float *xs = x->data + (size_t)n0 * img;
#pragma omp parallel for schedule(static) if ((size_t)K * NP > PARE_PARALLEL_MIN)
    for (int i = 0; i < n; i++) pare_im2col(g, xs + (size_t)i * img, col + (size_t)i * P, NP);
    pare_sgemm(0, 0, O, (int)NP, K, 1.0f, w->data, K, col, (int)NP, 0.0f, ymat, (int)NP);
    epilogue(ymat, b ? b->data : NULL, n, O, g, relu, pool, out, arg);
    pare_arena_rewind(&ctx->arena, keep ? scratch : start);
    return keep ? col : NULL;
}

pare_tensor *pare_f_conv2d_fused(pare_ctx *ctx, pare_tensor *x, pare_tensor *w, pare_tensor *b, int stride, int pad,
                                 int relu, int pool)
{
    PARE_CHECK(x->ndim == 4 && w->ndim == 4 && x->shape[1] == w->shape[1],
               "conv2d: input [%d, %d, %d, %d] with weight [%d, %d, %d, %d]", x->shape[0], x->shape[1], x->shape[2],
               x->shape[3], w->shape[0], w->shape[1], w->shape[2], w->shape[3]);
    pare_conv_geom g = geometry(x, w, stride, pad);
    PARE_CHECK(g.oh > 0 && g.ow > 0, "conv2d: %dx%d kernel does not fit a %dx%d input", g.kh, g.kw, g.h, g.w);
    PARE_CHECK(pool >= 0 && pool <= 16 && (!pool || (g.oh >= pool && g.ow >= pool)),
               "conv2d: a %d-pool does not fit a %dx%d output", pool, g.oh, g.ow);
    int N = x->shape[0], O = w->shape[0];
    pare_tensor *y = pool ? pare_tensor_4d(&ctx->arena, N, O, g.oh / pool, g.ow / pool)
                          : pare_tensor_4d(&ctx->arena, N, O, g.oh, g.ow);
    uint8_t *arg = pool ? pare_arena_alloc(&ctx->arena, y->size) : NULL;
    PARE_CHECK(arg || !pool, "arena full");
    pare_tensor *in[3] = {x, w, b};
    int taped = ctx->grad_enabled && (pare_wants_grad(x) || pare_wants_grad(w) || pare_wants_grad(b));
    /* Backward needs the whole batch's columns; without it, a chunk of samples
     * at a time keeps the scratch independent of the batch size. */
    int chunk = taped ? N : CONV_CHUNK;
    float *col = NULL;
    for (int n0 = 0; n0 < N; n0 += chunk) {
        int n = N - n0 < chunk ? N - n0 : chunk;
        size_t at = (size_t)n0 * O * (y->size / ((size_t)N * O));
        col = conv_chunk(ctx, &g, x, n0, n, w, b, relu, pool, y->data + at, arg ? arg + at : NULL, taped);
    }
    pare_node *node = pare_record(ctx, &conv_op, y, b ? 3 : 2, in);
    if (node) {
        conv_saved *s = pare_arena_alloc(&ctx->arena, sizeof *s);
        PARE_CHECK(s, "arena full");
        *s = (conv_saved){g, col, relu, pool, arg};
        node->saved = s;
    }
    return y;
}

pare_tensor *pare_f_conv2d(pare_ctx *ctx, pare_tensor *x, pare_tensor *w, pare_tensor *b, int stride, int pad)
{
    return pare_f_conv2d_fused(ctx, x, w, b, stride, pad, 0, 0);
}
