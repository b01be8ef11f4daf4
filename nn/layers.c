/* Layer types: each owns its shape rule, forward, FLOP count and init. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nn/nn.h"

/* ---- shared helpers ---------------------------------------------------------- */
static const char *label(const pare_layer *l)
{
    return l->name[0] ? l->name : l->type->type_name;
}

static int need_image(const pare_layer *l, int in_ndim, const int *in_shape)
{
    if (in_ndim == 3) return 0;
    char s[64];
    return pare_set_error("layer %s (%s): expected an input of shape [C, H, W], received %s", label(l),
                          l->type->type_name, pare_shape_str(in_ndim, in_shape, s, sizeof s));
}

static int same_shape(pare_layer *l, int in_ndim, const int *in_shape, int *out_ndim, int *out_shape)
{
    (void)l;
    *out_ndim = in_ndim;
    memcpy(out_shape, in_shape, (size_t)in_ndim * sizeof(int));
    return 0;
}

static double no_flops(const pare_layer *l)
{
    (void)l;
    return 0;
}

static void no_params(pare_layer *l, pare_rng *rng)
{
    (void)l;
    (void)rng;
}

void pare_init_uniform(pare_tensor *t, float bound, pare_rng *rng)
{
    for (size_t i = 0; i < t->size; i++) t->data[i] = pare_rng_range(rng, -bound, bound);
}

void pare_init_kaiming_uniform(pare_tensor *w, int fan_in, pare_rng *rng)
{
    /* kaiming_uniform_(a = sqrt(5)): gain sqrt(2 / (1 + 5)), bound = gain * sqrt(3 / fan_in). */
    pare_init_uniform(w, 1.0f / sqrtf((float)fan_in), rng);
}

static void weight_and_bias(pare_layer *l, int ndim, const int *wshape, int fan_in, pare_rng *rng)
{
    l->weight = pare_tensor_persistent(ndim, wshape, 1);
    pare_init_kaiming_uniform(l->weight, fan_in, rng);
    if (l->has_bias) {
        int n = wshape[0];
        l->bias = pare_tensor_persistent(1, &n, 1);
        pare_init_uniform(l->bias, 1.0f / sqrtf((float)fan_in), rng);
    }
}

pare_tensor *pare_layer_weight(pare_ctx *ctx, pare_layer *l)
{
    return l->weight_hooks.n ? pare_hook_run(ctx, &l->weight_hooks, l, l->weight) : l->weight;
}

/* ---- Linear -------------------------------------------------------------- */
static int linear_infer(pare_layer *l, int in_ndim, const int *in_shape, int *out_ndim, int *out_shape)
{
    char s[64];
    if (in_ndim != 1)
        return pare_set_error("layer %s (Linear): expected %d input features, received a tensor of shape %s "
                              "(add a Flatten before it)",
                              label(l), l->in_features, pare_shape_str(in_ndim, in_shape, s, sizeof s));
    if (in_shape[0] != l->in_features)
        return pare_set_error("layer %s (Linear): expected %d input features (in_features), received %d", label(l),
                              l->in_features, in_shape[0]);
    *out_ndim = 1;
    out_shape[0] = l->out_features;
    return 0;
}

static pare_tensor *linear_forward(pare_ctx *ctx, pare_model *m, pare_layer *l, pare_tensor *x)
{
    (void)m;
    return pare_f_linear(ctx, x, pare_layer_weight(ctx, l), l->bias);
}

static double linear_flops(const pare_layer *l)
{
    return 2.0 * l->in_features * l->out_features;
}

static void linear_init(pare_layer *l, pare_rng *rng)
{
    int shape[2] = {l->out_features, l->in_features};
    weight_and_bias(l, 2, shape, l->in_features, rng);
}

static const pare_layer_type linear_type = {PARE_LINEAR,    "Linear",     linear_infer,
                                            linear_forward, linear_flops, linear_init};

/* ---- Conv2d ---------------------------------------------------------------- */
static int conv_infer(pare_layer *l, int in_ndim, const int *in_shape, int *out_ndim, int *out_shape)
{
    if (need_image(l, in_ndim, in_shape)) return -1;
    if (in_shape[0] != l->in_features)
        return pare_set_error("layer %s (Conv2d): expected %d input channels (in_channels), received %d", label(l),
                              l->in_features, in_shape[0]);
    int oh = pare_conv_out(in_shape[1], l->kernel, l->stride, l->pad);
    int ow = pare_conv_out(in_shape[2], l->kernel, l->stride, l->pad);
    if (oh <= 0 || ow <= 0)
        return pare_set_error("layer %s (Conv2d): a %dx%d kernel (padding %d) does not fit a %dx%d input", label(l),
                              l->kernel, l->kernel, l->pad, in_shape[1], in_shape[2]);
    *out_ndim = 3;
    out_shape[0] = l->out_features;
    out_shape[1] = oh;
    out_shape[2] = ow;
    return 0;
}

static pare_tensor *conv_forward(pare_ctx *ctx, pare_model *m, pare_layer *l, pare_tensor *x)
{
    (void)m;
    return pare_f_conv2d(ctx, x, pare_layer_weight(ctx, l), l->bias, l->stride, l->pad);
}

static double conv_flops(const pare_layer *l)
{
    return 2.0 * l->in_features * l->kernel * l->kernel * l->out_features * l->out_shape[1] * l->out_shape[2];
}

static void conv_init(pare_layer *l, pare_rng *rng)
{
    int shape[4] = {l->out_features, l->in_features, l->kernel, l->kernel};
    weight_and_bias(l, 4, shape, l->in_features * l->kernel * l->kernel, rng);
}

static const pare_layer_type conv_type = {PARE_CONV2D, "Conv2d", conv_infer, conv_forward, conv_flops, conv_init};

/* ---- pooling --------------------------------------------------------------- */
static int pool_infer(pare_layer *l, int in_ndim, const int *in_shape, int *out_ndim, int *out_shape)
{
    if (need_image(l, in_ndim, in_shape)) return -1;
    int oh = pare_conv_out(in_shape[1], l->kernel, l->stride, 0);
    int ow = pare_conv_out(in_shape[2], l->kernel, l->stride, 0);
    if (oh <= 0 || ow <= 0)
        return pare_set_error("layer %s: a %dx%d window does not fit a %dx%d input", label(l), l->kernel, l->kernel,
                              in_shape[1], in_shape[2]);
    *out_ndim = 3;
    out_shape[0] = in_shape[0];
    out_shape[1] = oh;
    out_shape[2] = ow;
    return 0;
}

static pare_tensor *maxpool_forward(pare_ctx *ctx, pare_model *m, pare_layer *l, pare_tensor *x)
{
    (void)m;
    return pare_f_maxpool2d(ctx, x, l->kernel, l->stride);
}

static pare_tensor *avgpool_forward(pare_ctx *ctx, pare_model *m, pare_layer *l, pare_tensor *x)
{
    (void)m;
    return pare_f_avgpool2d(ctx, x, l->kernel, l->stride);
}

static const pare_layer_type maxpool_type = {PARE_MAXPOOL2D,  "MaxPool2d", pool_infer,
                                             maxpool_forward, no_flops,    no_params};
static const pare_layer_type avgpool_type = {PARE_AVGPOOL2D,  "AvgPool2d", pool_infer,
                                             avgpool_forward, no_flops,    no_params};

/* ---- activations, dropout ----------------------------------------------------- */
#define ACTIVATION(fn, op)                                                                                             \
    static pare_tensor *fn(pare_ctx *ctx, pare_model *m, pare_layer *l, pare_tensor *x)                                \
    {                                                                                                                  \
        (void)m;                                                                                                       \
        (void)l;                                                                                                       \
        return op(ctx, x);                                                                                             \
    }
ACTIVATION(relu_forward, pare_f_relu)
ACTIVATION(sigmoid_forward, pare_f_sigmoid)
ACTIVATION(tanh_forward, pare_f_tanh)
ACTIVATION(flatten_forward, pare_f_flatten)
ACTIVATION(softmax_forward, pare_f_softmax)
ACTIVATION(log_softmax_forward, pare_f_log_softmax)

static const pare_layer_type relu_type = {PARE_RELU, "ReLU", same_shape, relu_forward, no_flops, no_params};
static const pare_layer_type sigmoid_type = {PARE_SIGMOID, "Sigmoid", same_shape, sigmoid_forward, no_flops, no_params};
static const pare_layer_type tanh_type = {PARE_TANH, "Tanh", same_shape, tanh_forward, no_flops, no_params};

static pare_tensor *dropout_forward(pare_ctx *ctx, pare_model *m, pare_layer *l, pare_tensor *x)
{
    (void)m;
    return pare_f_dropout(ctx, x, l->p);
}
static const pare_layer_type dropout_type = {PARE_DROPOUT, "Dropout", same_shape, dropout_forward, no_flops, no_params};

static int flatten_infer(pare_layer *l, int in_ndim, const int *in_shape, int *out_ndim, int *out_shape)
{
    (void)l;
    *out_ndim = 1;
    out_shape[0] = (int)pare_shape_size(in_ndim, in_shape);
    return 0;
}
static const pare_layer_type flatten_type = {PARE_FLATTEN,    "Flatten", flatten_infer,
                                             flatten_forward, no_flops,  no_params};

static int vector_infer(pare_layer *l, int in_ndim, const int *in_shape, int *out_ndim, int *out_shape)
{
    char s[64];
    if (in_ndim != 1)
        return pare_set_error("layer %s: expected a vector of class scores, received %s (add a Flatten)", label(l),
                              pare_shape_str(in_ndim, in_shape, s, sizeof s));
    return same_shape(l, in_ndim, in_shape, out_ndim, out_shape);
}
static const pare_layer_type softmax_type = {PARE_SOFTMAX,    "Softmax", vector_infer,
                                             softmax_forward, no_flops,  no_params};
static const pare_layer_type log_softmax_type = {PARE_LOG_SOFTMAX,    "LogSoftmax", vector_infer,
                                                 log_softmax_forward, no_flops,     no_params};

/* ---- BatchNorm2d --------------------------------------------------------------- */
static int bn_infer(pare_layer *l, int in_ndim, const int *in_shape, int *out_ndim, int *out_shape)
{
    if (need_image(l, in_ndim, in_shape)) return -1;
    if (in_shape[0] != l->in_features)
        return pare_set_error("layer %s (BatchNorm2d): expected %d channels (num_features), received %d", label(l),
                              l->in_features, in_shape[0]);
    return same_shape(l, in_ndim, in_shape, out_ndim, out_shape);
}

static pare_tensor *bn_forward(pare_ctx *ctx, pare_model *m, pare_layer *l, pare_tensor *x)
{
    (void)m;
    return pare_f_batchnorm(ctx, x, pare_layer_weight(ctx, l), l->bias, l->running_mean->data, l->running_var->data,
                            l->momentum, l->eps);
}

static void bn_init(pare_layer *l, pare_rng *rng)
{
    (void)rng;
    int c = l->in_features;
    l->weight = pare_tensor_persistent(1, &c, 1);
    l->bias = pare_tensor_persistent(1, &c, 1);
    l->running_mean = pare_tensor_persistent(1, &c, 0);
    l->running_var = pare_tensor_persistent(1, &c, 0);
    pare_vec_fill(l->weight->data, (size_t)c, 1.0f);
    pare_vec_fill(l->running_var->data, (size_t)c, 1.0f);
}

static const pare_layer_type bn_type = {PARE_BATCHNORM2D, "BatchNorm2d", bn_infer, bn_forward, no_flops, bn_init};

/* ---- constructors ----------------------------------------------------------------- */
static pare_layer *layer_new(const pare_layer_type *type, const char *name)
{
    pare_layer *l = pare_calloc(sizeof *l);
    l->type = type;
    l->kind = type->kind;
    if (name) snprintf(l->name, sizeof l->name, "%s", name);
    return l;
}

pare_layer *pare_linear(const char *name, int in_features, int out_features)
{
    pare_layer *l = layer_new(&linear_type, name);
    l->in_features = in_features;
    l->out_features = out_features;
    l->has_bias = 1;
    return l;
}

pare_layer *pare_linear_nobias(const char *name, int in_features, int out_features)
{
    pare_layer *l = pare_linear(name, in_features, out_features);
    l->has_bias = 0;
    return l;
}

pare_layer *pare_conv2d_ex(const char *name, int in_ch, int out_ch, int kernel, int stride, int pad, int has_bias)
{
    pare_layer *l = layer_new(&conv_type, name);
    l->in_features = in_ch;
    l->out_features = out_ch;
    l->kernel = kernel;
    l->stride = stride;
    l->pad = pad;
    l->has_bias = has_bias;
    return l;
}

pare_layer *pare_conv2d(const char *name, int in_ch, int out_ch, int kernel)
{
    return pare_conv2d_ex(name, in_ch, out_ch, kernel, 1, 0, 1);
}

static pare_layer *pool_new(const pare_layer_type *type, int kernel)
{
    pare_layer *l = layer_new(type, NULL);
    l->kernel = kernel;
    l->stride = kernel;
    return l;
}

pare_layer *pare_maxpool2d(int kernel)
{
    return pool_new(&maxpool_type, kernel);
}
pare_layer *pare_avgpool2d(int kernel)
{
    return pool_new(&avgpool_type, kernel);
}
pare_layer *pare_relu(void)
{
    return layer_new(&relu_type, NULL);
}
pare_layer *pare_sigmoid(void)
{
    return layer_new(&sigmoid_type, NULL);
}
pare_layer *pare_tanh(void)
{
    return layer_new(&tanh_type, NULL);
}
pare_layer *pare_flatten(void)
{
    return layer_new(&flatten_type, NULL);
}
pare_layer *pare_softmax(void)
{
    return layer_new(&softmax_type, NULL);
}
pare_layer *pare_log_softmax(void)
{
    return layer_new(&log_softmax_type, NULL);
}

pare_layer *pare_dropout(float p)
{
    pare_layer *l = layer_new(&dropout_type, NULL);
    l->p = p;
    return l;
}

pare_layer *pare_batchnorm2d(const char *name, int channels)
{
    pare_layer *l = layer_new(&bn_type, name);
    l->in_features = channels;
    l->out_features = channels;
    l->eps = 1e-5f;
    l->momentum = 0.1f;
    l->has_bias = 1;
    return l;
}

void pare_layer_free(pare_layer *l)
{
    if (!l) return;
    pare_hook_chain_clear(&l->weight_hooks);
    pare_hook_chain_clear(&l->output_hooks);
    pare_tensor_free(l->weight);
    pare_tensor_free(l->bias);
    pare_tensor_free(l->running_mean);
    pare_tensor_free(l->running_var);
    if (l->impl_free) l->impl_free(l->impl);
    pare_free(l);
}
