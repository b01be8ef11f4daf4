/* pare autograd: a define-by-run tape, backward(), no-grad mode, and every
 * differentiable op. Each op computes its result at once and, when a gradient
 * is wanted, appends a node {op, inputs, output, saved values} to the tape.
 * backward() walks the tape in reverse, which is a topological order. */
#ifndef PARE_AUTOGRAD_H
#define PARE_AUTOGRAD_H

#include <stdint.h>

#include "tensor/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pare_ctx pare_ctx;
typedef struct pare_node pare_node;

/* An op is a name and a backward function; its forward is the public
 * pare_<op>() function that records the node. */
typedef struct pare_op {
    const char *name;
    void (*backward)(pare_ctx *ctx, pare_node *node);
} pare_op;

#define PARE_NODE_MAX_IN 4
struct pare_node {
    const pare_op *op;
    pare_tensor *in[PARE_NODE_MAX_IN];
    int n_in;
    pare_tensor *out;
    void *saved;   /* op-defined values kept for backward, in the arena */
    int iarg[8];   /* op-defined integer arguments (stride, padding, ...) */
    float farg[4]; /* op-defined float arguments */
};

struct pare_ctx {
    pare_arena arena; /* activations, their grads, scratch */
    pare_node *tape;
    int tape_len, tape_cap;
    int grad_enabled; /* 0 inside no-grad regions */
    int training;     /* dropout and batchnorm behaviour */
    uint64_t seed;    /* for dropout masks */
    uint64_t step;    /* dropout counter: each dropout call takes the next value */
};

/* A context owns one arena. arena_bytes = 0 picks a default first block. */
pare_ctx *pare_ctx_new(size_t arena_bytes);
void pare_ctx_free(pare_ctx *ctx);

/* Mark/release of a step: rewinds the arena and truncates the tape. */
typedef struct pare_mark {
    pare_arena_pos pos;
    int tape_len;
} pare_mark;
pare_mark pare_arena_mark(pare_ctx *ctx);
void pare_arena_release(pare_ctx *ctx, pare_mark mark);

/* No-grad mode: returns the previous state, for restoring. */
int pare_set_grad_enabled(pare_ctx *ctx, int enabled);

/* Runs the tape backward from a scalar loss (d loss / d loss = 1). Gradients
 * are added into every tensor with requires_grad; parameters' grads persist
 * and must be zeroed by the optimizer between steps. */
int pare_backward(pare_ctx *ctx, pare_tensor *loss);

/* ---- helpers for writing ops ------------------------------------------- */
pare_tensor *pare_ctx_tensor(pare_ctx *ctx, int ndim, const int *shape);
/* Records a node if grad is enabled and any input needs a gradient; marks
 * out as requiring grad. Returns the node (or NULL when nothing is recorded). */
pare_node *pare_record(pare_ctx *ctx, const pare_op *op, pare_tensor *out, int n_in, pare_tensor *const *in);
/* The gradient buffer of t, zero-initialized in the arena on first use. */
float *pare_grad_of(pare_ctx *ctx, pare_tensor *t);
/* For a backward that writes every element of t's gradient: the buffer, with
 * *fresh = 1 when it was just created (uninitialized: store, do not add) or
 * 0 when it already holds contributions (add to them). Saves zeroing and
 * re-reading a buffer in the usual case of a tensor with one consumer. */
float *pare_grad_dst(pare_ctx *ctx, pare_tensor *t, int *fresh);
/* Whether backward must compute the gradient of this input. */
static inline int pare_wants_grad(const pare_tensor *t)
{
    return t && t->requires_grad;
}

/* The quantization rule (compress/quant.h writes it down): x / scale in
 * float (as TFLite's reference computes it) rounded half away from zero,
 * plus the zero point. pare_quantize_unclamped gives that integer where it
 * lies within one of [qmin, qmax], and qmin - 1 or qmax + 1 beyond (NaN:
 * qmin - 1): the quotient is bounded first so that its conversion to int is
 * defined, and rounding is spelled as truncation plus a correction so that
 * loops over it vectorize. */
static inline int32_t pare_quantize_unclamped(float x, float scale, int32_t zero_point, int32_t qmin, int32_t qmax)
{
    float q = x / scale;
    float lo = (float)(qmin - zero_point - 1), hi = (float)(qmax - zero_point + 1);
    q = q >= lo ? q : lo; /* NaN fails the test: lo */
    q = q <= hi ? q : hi;
    int32_t t = (int32_t)q;    /* toward zero */
    float frac = q - (float)t; /* exact */
    return t + (frac >= 0.5f) - (frac <= -0.5f) + zero_point;
}
/* Clamped to [qmin, qmax]. *in_range (may be NULL) says whether the clamp
 * left the value alone. */
static inline int32_t pare_quantize_round(float x, float scale, int32_t zero_point, int32_t qmin, int32_t qmax,
                                          int *in_range)
{
    int32_t q = pare_quantize_unclamped(x, scale, zero_point, qmin, qmax);
    if (in_range) *in_range = q >= qmin && q <= qmax;
    return q < qmin ? qmin : q > qmax ? qmax : q;
}
/* Quantize then dequantize: scale * (q - zero_point). */
static inline float pare_fake_quant_value(float x, float scale, int32_t zero_point, int32_t qmin, int32_t qmax,
                                          int *in_range)
{
    return scale * (float)(pare_quantize_round(x, scale, zero_point, qmin, qmax, in_range) - zero_point);
}

/* ---- ops (each in autograd/op_*.c, forward and backward side by side) ---
 * Ops that share a name with a layer constructor of nn/ carry an f_ (as in
 * torch.nn.functional): pare_f_relu(ctx, x) is the op, pare_relu() the layer. */
/* elementwise and shape */
pare_tensor *pare_f_add(pare_ctx *ctx, pare_tensor *a, pare_tensor *b);      /* same shape */
pare_tensor *pare_f_add_bias(pare_ctx *ctx, pare_tensor *x, pare_tensor *b); /* b[C] over dim 1 */
pare_tensor *pare_f_mul(pare_ctx *ctx, pare_tensor *a, pare_tensor *b);      /* same shape */
pare_tensor *pare_f_scale(pare_ctx *ctx, pare_tensor *x, float s);
pare_tensor *pare_f_reshape(pare_ctx *ctx, pare_tensor *x, int ndim, const int *shape);
pare_tensor *pare_f_flatten(pare_ctx *ctx, pare_tensor *x); /* [N, ...] -> [N, rest] */
pare_tensor *pare_f_sum(pare_ctx *ctx, pare_tensor *x);     /* scalar [1] */
pare_tensor *pare_f_mean(pare_ctx *ctx, pare_tensor *x);    /* scalar [1] */
/* activations */
pare_tensor *pare_f_relu(pare_ctx *ctx, pare_tensor *x);
pare_tensor *pare_f_sigmoid(pare_ctx *ctx, pare_tensor *x);
pare_tensor *pare_f_tanh(pare_ctx *ctx, pare_tensor *x);
/* Inverted dropout with probability p; identity when not training. */
pare_tensor *pare_f_dropout(pare_ctx *ctx, pare_tensor *x, float p);
/* products */
pare_tensor *pare_f_matmul(pare_ctx *ctx, pare_tensor *a, pare_tensor *b); /* [M,K] x [K,N] */
/* x[N, in] W[out, in]^T + b[out]; b may be NULL. */
pare_tensor *pare_f_linear(pare_ctx *ctx, pare_tensor *x, pare_tensor *w, pare_tensor *b);
/* x[N,C,H,W] * w[O,C,k,k] + b[O]; b may be NULL. */
pare_tensor *pare_f_conv2d(pare_ctx *ctx, pare_tensor *x, pare_tensor *w, pare_tensor *b, int stride, int pad);
/* conv2d, then ReLU (relu = 1), then a max-pool with window and stride `pool`
 * (0: none), as one op: bitwise the same as the three ops, without writing
 * the intermediate activations. */
pare_tensor *pare_f_conv2d_fused(pare_ctx *ctx, pare_tensor *x, pare_tensor *w, pare_tensor *b, int stride, int pad,
                                 int relu, int pool);
/* pooling over [N,C,H,W] */
pare_tensor *pare_f_maxpool2d(pare_ctx *ctx, pare_tensor *x, int kernel, int stride);
pare_tensor *pare_f_avgpool2d(pare_ctx *ctx, pare_tensor *x, int kernel, int stride);
/* Batch normalization over dim 1 of [N,C,H,W] or [N,C]. In training, uses
 * batch statistics and updates running_mean/var (PyTorch's unbiased variance
 * and momentum rule); otherwise uses the running statistics. */
pare_tensor *pare_f_batchnorm(pare_ctx *ctx, pare_tensor *x, pare_tensor *gamma, pare_tensor *beta, float *running_mean,
                              float *running_var, float momentum, float eps);
/* Fake quantization (quantize, then dequantize), per tensor (channels = 1)
 * or per slice of dim 0 (channels = shape[0]: weight rows / output channels),
 * with scale[c] > 0 and zero_point[c] per channel; backward is the
 * straight-through estimator (the gradient passes inside the clipping range,
 * 0 outside). The rounding rule is pare_quantize_round's. */
pare_tensor *pare_f_fake_quant(pare_ctx *ctx, pare_tensor *x, int channels, const float *scale,
                               const int32_t *zero_point, int32_t qmin, int32_t qmax);
/* row-wise over the last dim of [N, K] */
pare_tensor *pare_f_softmax(pare_ctx *ctx, pare_tensor *x);
pare_tensor *pare_f_log_softmax(pare_ctx *ctx, pare_tensor *x);
/* losses, mean over the batch; labels are class indices in [0, K) */
pare_tensor *pare_nll_loss(pare_ctx *ctx, pare_tensor *logp, const int *labels);
pare_tensor *pare_cross_entropy(pare_ctx *ctx, pare_tensor *logits, const int *labels);
pare_tensor *pare_mse_loss(pare_ctx *ctx, pare_tensor *pred, pare_tensor *target);

/* ---- gradcheck -----------------------------------------------------------
 * Compares backward() against central finite differences of
 * f = sum(fn(inputs) * r) for a fixed random r. Inputs are persistent
 * tensors with grads. Returns the worst |analytic - numeric| /
 * (atol + rtol * |numeric|); <= 1 passes. */
typedef pare_tensor *(*pare_gradcheck_fn)(pare_ctx *ctx, pare_tensor **inputs, void *user);
typedef struct pare_gradcheck_result {
    double worst_ratio; /* <= 1 passes */
    double max_abs_err;
    int worst_input, worst_index;
    double analytic, numeric;
} pare_gradcheck_result;
pare_gradcheck_result pare_gradcheck(pare_gradcheck_fn fn, pare_tensor **inputs, int n_inputs, void *user, double eps,
                                     double atol, double rtol);

#ifdef __cplusplus
}
#endif
#endif
