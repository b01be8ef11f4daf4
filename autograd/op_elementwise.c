/* Elementwise and shape ops: add, add_bias, mul, scale, reshape, flatten, sum, mean. */
#include <string.h>

#include "autograd/autograd.h"

static pare_tensor *like(pare_ctx *ctx, const pare_tensor *x)
{
    return pare_ctx_tensor(ctx, x->ndim, x->shape);
}

static void check_same_shape(const char *op, const pare_tensor *a, const pare_tensor *b)
{
    char sa[64], sb[64];
    PARE_CHECK(pare_shape_equal(a, b), "%s: shapes %s and %s differ", op,
               pare_shape_str(a->ndim, a->shape, sa, sizeof sa), pare_shape_str(b->ndim, b->shape, sb, sizeof sb));
}

/* ---- add: y = a + b --------------------------------------------------- */
static void add_backward(pare_ctx *ctx, pare_node *n)
{
    for (int i = 0; i < 2; i++)
        if (pare_wants_grad(n->in[i])) pare_vec_acc(pare_grad_of(ctx, n->in[i]), n->out->grad, n->out->size);
}
static const pare_op add_op = {"add", add_backward};

pare_tensor *pare_f_add(pare_ctx *ctx, pare_tensor *a, pare_tensor *b)
{
    check_same_shape("add", a, b);
    pare_tensor *y = like(ctx, a);
    pare_vec_add(y->data, a->data, b->data, y->size);
    pare_tensor *in[2] = {a, b};
    pare_record(ctx, &add_op, y, 2, in);
    return y;
}

/* ---- add_bias: y[n, c, ...] = x[n, c, ...] + b[c] ---------------------- */
static void bias_dims(const pare_tensor *x, int *batch, int *channels, size_t *inner)
{
    *batch = x->shape[0];
    *channels = x->shape[1];
    *inner = x->size / ((size_t)*batch * (size_t)*channels);
}

static void add_bias_backward(pare_ctx *ctx, pare_node *n)
{
    pare_tensor *x = n->in[0], *b = n->in[1];
    const float *dy = n->out->grad;
    if (pare_wants_grad(x)) {
        int fresh;
        float *dx = pare_grad_dst(ctx, x, &fresh);
        if (fresh)
            pare_vec_copy(dx, dy, x->size);
        else
            pare_vec_acc(dx, dy, x->size);
    }
    if (!pare_wants_grad(b)) return;
    int N, C;
    size_t inner;
    bias_dims(x, &N, &C, &inner);
    float *db = pare_grad_of(ctx, b);
#pragma omp parallel for schedule(static) if (x->size > PARE_PARALLEL_MIN)
    for (int c = 0; c < C; c++) {
        double s = 0;
        for (int i = 0; i < N; i++) s += pare_vec_sum(dy + ((size_t)i * C + c) * inner, inner);
        db[c] += (float)s;
    }
}
static const pare_op add_bias_op = {"add_bias", add_bias_backward};

pare_tensor *pare_f_add_bias(pare_ctx *ctx, pare_tensor *x, pare_tensor *b)
{
    PARE_CHECK(x->ndim >= 2 && (int)b->size == x->shape[1], "add_bias: %zu biases for %d channels", b->size,
               x->ndim >= 2 ? x->shape[1] : -1);
    int N, C;
    size_t inner;
    bias_dims(x, &N, &C, &inner);
    pare_tensor *y = like(ctx, x);
#pragma omp parallel for schedule(static) if (x->size > PARE_PARALLEL_MIN)
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) {
            size_t off = ((size_t)i * C + c) * inner;
            for (size_t k = 0; k < inner; k++) y->data[off + k] = x->data[off + k] + b->data[c];
        }
    pare_tensor *in[2] = {x, b};
    pare_record(ctx, &add_bias_op, y, 2, in);
    return y;
}

/* ---- mul: y = a * b (elementwise) --------------------------------------- */
static void mul_backward(pare_ctx *ctx, pare_node *n)
{
    pare_tensor *a = n->in[0], *b = n->in[1];
    const float *dy = n->out->grad;
    if (pare_wants_grad(a)) {
        float *da = pare_grad_of(ctx, a);
        for (size_t i = 0; i < a->size; i++) da[i] += dy[i] * b->data[i];
    }
    if (pare_wants_grad(b)) {
        float *db = pare_grad_of(ctx, b);
        for (size_t i = 0; i < b->size; i++) db[i] += dy[i] * a->data[i];
    }
}
static const pare_op mul_op = {"mul", mul_backward};

pare_tensor *pare_f_mul(pare_ctx *ctx, pare_tensor *a, pare_tensor *b)
{
    check_same_shape("mul", a, b);
    pare_tensor *y = like(ctx, a);
    for (size_t i = 0; i < y->size; i++) y->data[i] = a->data[i] * b->data[i];
    pare_tensor *in[2] = {a, b};
    pare_record(ctx, &mul_op, y, 2, in);
    return y;
}

/* ---- scale: y = s * x ----------------------------------------------------- */
static void scale_backward(pare_ctx *ctx, pare_node *n)
{
    pare_vec_axpy(pare_grad_of(ctx, n->in[0]), n->farg[0], n->out->grad, n->out->size);
}
static const pare_op scale_op = {"scale", scale_backward};

pare_tensor *pare_f_scale(pare_ctx *ctx, pare_tensor *x, float s)
{
    pare_tensor *y = like(ctx, x);
    for (size_t i = 0; i < y->size; i++) y->data[i] = s * x->data[i];
    pare_node *n = pare_record(ctx, &scale_op, y, 1, &x);
    if (n) n->farg[0] = s;
    return y;
}

/* ---- reshape: same data, new shape ----------------------------------------- */
static void reshape_backward(pare_ctx *ctx, pare_node *n)
{
    pare_tensor *x = n->in[0];
    if (!x->grad) {
        x->grad = n->out->grad; /* a view: it can share the gradient buffer too */
        return;
    }
    pare_vec_acc(x->grad, n->out->grad, n->out->size);
    (void)ctx;
}
static const pare_op reshape_op = {"reshape", reshape_backward};

pare_tensor *pare_f_reshape(pare_ctx *ctx, pare_tensor *x, int ndim, const int *shape)
{
    PARE_CHECK(pare_shape_size(ndim, shape) == x->size, "reshape: %zu elements into %zu", x->size,
               pare_shape_size(ndim, shape));
    /* The view shares x's data; only the header is new. */
    pare_tensor *y = pare_arena_alloc(&ctx->arena, sizeof *y);
    PARE_CHECK(y, "arena full");
    *y = *x;
    y->grad = NULL;
    y->ndim = ndim;
    for (int i = 0; i < PARE_MAX_DIMS; i++) y->shape[i] = i < ndim ? shape[i] : 1;
    pare_record(ctx, &reshape_op, y, 1, &x);
    return y;
}

pare_tensor *pare_f_flatten(pare_ctx *ctx, pare_tensor *x)
{
    int shape[2] = {x->shape[0], (int)(x->size / (size_t)x->shape[0])};
    return pare_f_reshape(ctx, x, 2, shape);
}

/* ---- sum and mean: scalar results --------------------------------------------- */
static void sum_backward(pare_ctx *ctx, pare_node *n)
{
    float g = n->out->grad[0] * n->farg[0];
    float *dx = pare_grad_of(ctx, n->in[0]);
    for (size_t i = 0; i < n->in[0]->size; i++) dx[i] += g;
}
static const pare_op sum_op = {"sum", sum_backward};

static pare_tensor *scaled_sum(pare_ctx *ctx, pare_tensor *x, float s)
{
    int one = 1;
    pare_tensor *y = pare_ctx_tensor(ctx, 1, &one);
    y->data[0] = (float)(pare_vec_sum(x->data, x->size) * s);
    pare_node *n = pare_record(ctx, &sum_op, y, 1, &x);
    if (n) n->farg[0] = s;
    return y;
}

pare_tensor *pare_f_sum(pare_ctx *ctx, pare_tensor *x)
{
    return scaled_sum(ctx, x, 1.0f);
}

pare_tensor *pare_f_mean(pare_ctx *ctx, pare_tensor *x)
{
    return scaled_sum(ctx, x, 1.0f / (float)x->size);
}
