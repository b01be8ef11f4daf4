/* Matrix products: matmul and linear (x W^T + b). */
#include "autograd/autograd.h"

/* ---- matmul: y[M,N] = a[M,K] b[K,N] ------------------------------------- */
static void matmul_backward(pare_ctx *ctx, pare_node *n)
{
    pare_tensor *a = n->in[0], *b = n->in[1];
    int M = a->shape[0], K = a->shape[1], N = b->shape[1];
    const float *dy = n->out->grad;
    int fresh;
    if (pare_wants_grad(a)) { /* da = dy b^T */
        float *da = pare_grad_dst(ctx, a, &fresh);
        pare_sgemm(0, 1, M, K, N, 1.0f, dy, N, b->data, N, fresh ? 0.0f : 1.0f, da, K);
    }
    if (pare_wants_grad(b)) /* db = a^T dy */
        pare_sgemm(1, 0, K, N, M, 1.0f, a->data, K, dy, N, 1.0f, pare_grad_of(ctx, b), N);
}
static const pare_op matmul_op = {"matmul", matmul_backward};

pare_tensor *pare_f_matmul(pare_ctx *ctx, pare_tensor *a, pare_tensor *b)
{
    PARE_CHECK(a->ndim == 2 && b->ndim == 2 && a->shape[1] == b->shape[0], "matmul: [%d, %d] x [%d, %d]", a->shape[0],
               a->shape[1], b->shape[0], b->shape[1]);
    int M = a->shape[0], K = a->shape[1], N = b->shape[1];
    pare_tensor *y = pare_tensor_2d(&ctx->arena, M, N);
    pare_sgemm(0, 0, M, N, K, 1.0f, a->data, K, b->data, N, 0.0f, y->data, N);
    pare_tensor *in[2] = {a, b};
    pare_record(ctx, &matmul_op, y, 2, in);
    return y;
}

/* ---- linear: y[N,out] = x[N,in] W[out,in]^T + b[out] ---------------------- */
static void linear_backward(pare_ctx *ctx, pare_node *n)
{
    pare_tensor *x = n->in[0], *w = n->in[1], *b = n->in[2];
    int N = x->shape[0], in = w->shape[1], out = w->shape[0];
    const float *dy = n->out->grad;
    int fresh;
    if (pare_wants_grad(x)) { /* dx = dy W */
        float *dx = pare_grad_dst(ctx, x, &fresh);
        pare_sgemm(0, 0, N, in, out, 1.0f, dy, out, w->data, in, fresh ? 0.0f : 1.0f, dx, in);
    }
    if (pare_wants_grad(w)) /* dW = dy^T x */
        pare_sgemm(1, 0, out, in, N, 1.0f, dy, out, x->data, in, 1.0f, pare_grad_of(ctx, w), in);
    if (pare_wants_grad(b)) {
        float *db = pare_grad_of(ctx, b);
        for (int o = 0; o < out; o++) {
            double s = 0;
            for (int i = 0; i < N; i++) s += dy[(size_t)i * out + o];
            db[o] += (float)s;
        }
    }
}
static const pare_op linear_op = {"linear", linear_backward};

pare_tensor *pare_f_linear(pare_ctx *ctx, pare_tensor *x, pare_tensor *w, pare_tensor *b)
{
    PARE_CHECK(x->ndim == 2 && w->ndim == 2 && x->shape[1] == w->shape[1],
               "linear: input [%d, %d] with weight [%d, %d]", x->shape[0], x->shape[1], w->shape[0], w->shape[1]);
    PARE_CHECK(!b || (int)b->size == w->shape[0], "linear: %zu biases for %d outputs", b->size, w->shape[0]);
    int N = x->shape[0], in = w->shape[1], out = w->shape[0];
    pare_tensor *y = pare_tensor_2d(&ctx->arena, N, out);
    pare_sgemm(0, 1, N, out, in, 1.0f, x->data, in, w->data, in, 0.0f, y->data, out);
    if (b)
        for (int i = 0; i < N; i++)
            for (int o = 0; o < out; o++) y->data[(size_t)i * out + o] += b->data[o];
    pare_tensor *inputs[3] = {x, w, b};
    pare_record(ctx, &linear_op, y, b ? 3 : 2, inputs);
    return y;
}
