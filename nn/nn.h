/* pare nn: named layers built from autograd ops, Sequential with shape
 * inference, initialization, summary, hooks, the layer-edit API, and
 * save/load in safetensors. nn never includes compress/. */
#ifndef PARE_NN_H
#define PARE_NN_H

#include "autograd/autograd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Kinds are bit flags so a set of kinds can be passed as one argument. */
typedef enum pare_layer_kind {
    PARE_LINEAR = 1 << 0,
    PARE_CONV2D = 1 << 1,
    PARE_MAXPOOL2D = 1 << 2,
    PARE_AVGPOOL2D = 1 << 3,
    PARE_RELU = 1 << 4,
    PARE_SIGMOID = 1 << 5,
    PARE_TANH = 1 << 6,
    PARE_FLATTEN = 1 << 7,
    PARE_DROPOUT = 1 << 8,
    PARE_BATCHNORM2D = 1 << 9,
    PARE_SOFTMAX = 1 << 10,
    PARE_LOG_SOFTMAX = 1 << 11,
    PARE_CUSTOM = 1 << 12, /* a type defined outside nn: never fused, not in the architecture JSON */
} pare_layer_kind;

#define PARE_NAME_MAX 48
typedef struct pare_layer pare_layer;
typedef struct pare_model pare_model;
typedef struct pare_hook pare_hook;

/* ---- hooks ---------------------------------------------------------------
 * A hook transforms a layer's weight before use (weight chain) or its output
 * after the layer (output chain), or the model's input (input chain). nn runs
 * the chains in order and knows nothing else about them: compress/ builds
 * masks, fake-quant and codebooks from this. */
struct pare_hook {
    char name[PARE_NAME_MAX];
    /* Returns the transformed tensor (new, or t itself), recording autograd
     * ops as needed. layer is NULL for the model's input chain. */
    pare_tensor *(*apply)(pare_ctx *ctx, pare_hook *self, pare_layer *layer, pare_tensor *t);
    /* Structured surgery: dimension `dim` of the layer's weight (0 = outputs,
     * 1 = inputs) keeps only the listed indices. Optional. */
    void (*resize)(pare_hook *self, pare_layer *layer, int dim, const int *keep, int n_keep, int block);
    /* Releases state. Optional. */
    void (*destroy)(pare_hook *self);
    /* Tensors this hook wants saved with the model, as "<layer>.<hook>.<key>". */
    int n_state;
    const char *state_names[4];
    pare_tensor *state[4];
    void *user;
};

#define PARE_MAX_HOOKS 8
typedef struct pare_hook_chain {
    pare_hook *hooks[PARE_MAX_HOOKS];
    int n;
} pare_hook_chain;

int pare_hook_add(pare_hook_chain *chain, pare_hook *hook); /* appends; -1 if full */
pare_hook *pare_hook_find(pare_hook_chain *chain, const char *name);
int pare_hook_remove(pare_hook_chain *chain, const char *name); /* destroys it; -1 if absent */
pare_tensor *pare_hook_run(pare_ctx *ctx, pare_hook_chain *chain, pare_layer *layer, pare_tensor *t);
void pare_hook_chain_clear(pare_hook_chain *chain); /* destroys every hook */

/* ---- layers --------------------------------------------------------------- */
typedef struct pare_layer_type pare_layer_type;
struct pare_layer {
    const pare_layer_type *type;
    pare_layer_kind kind;
    char name[PARE_NAME_MAX]; /* "conv1", "fc1", or "" for parameter-free layers */
    /* configuration */
    int in_features, out_features; /* Linear: features; Conv2d: channels; BN: channels */
    int kernel, stride, pad;       /* Conv2d and pooling */
    int has_bias;
    float p;             /* Dropout */
    float eps, momentum; /* BatchNorm2d */
    /* parameters (persistent, with grads); BatchNorm: weight = gamma, bias = beta */
    pare_tensor *weight, *bias;
    pare_tensor *running_mean, *running_var; /* BatchNorm buffers, no grad */
    /* shapes per sample (without N), filled by pare_build */
    int in_ndim, in_shape[3];
    int out_ndim, out_shape[3];
    pare_hook_chain weight_hooks, output_hooks;
    /* State of a layer type defined outside nn (kind PARE_CUSTOM, such as
     * compress/'s sparse and dynamic-int8 layers), freed with the layer. */
    void *impl;
    void (*impl_free)(void *impl);
};

struct pare_layer_type {
    pare_layer_kind kind;
    const char *type_name; /* "Conv2d", ... as PyTorch prints it */
    /* Shape rule: from a per-sample input shape to the output shape; on a
     * mismatch sets pare_error naming the layer and returns -1. */
    int (*infer)(pare_layer *l, int in_ndim, const int *in_shape, int *out_ndim, int *out_shape);
    pare_tensor *(*forward)(pare_ctx *ctx, pare_model *m, pare_layer *l, pare_tensor *x);
    double (*flops)(const pare_layer *l); /* forward, per sample, multiply-add = 2 */
    void (*init_params)(pare_layer *l, pare_rng *rng);
};

/* constructors (parameters are created and initialized by pare_build) */
pare_layer *pare_linear(const char *name, int in_features, int out_features);
pare_layer *pare_linear_nobias(const char *name, int in_features, int out_features);
pare_layer *pare_conv2d(const char *name, int in_ch, int out_ch, int kernel);
pare_layer *pare_conv2d_ex(const char *name, int in_ch, int out_ch, int kernel, int stride, int pad, int has_bias);
pare_layer *pare_maxpool2d(int kernel);
pare_layer *pare_avgpool2d(int kernel);
pare_layer *pare_relu(void);
pare_layer *pare_sigmoid(void);
pare_layer *pare_tanh(void);
pare_layer *pare_flatten(void);
pare_layer *pare_dropout(float p);
pare_layer *pare_batchnorm2d(const char *name, int channels);
pare_layer *pare_softmax(void);
pare_layer *pare_log_softmax(void);
void pare_layer_free(pare_layer *l);
/* The weight as the forward pass uses it: after the weight hook chain. */
pare_tensor *pare_layer_weight(pare_ctx *ctx, pare_layer *l);

/* ---- model ------------------------------------------------------------------- */
struct pare_model {
    char arch[PARE_NAME_MAX];
    pare_layer **layers;
    int n_layers, cap;
    int in_ndim, in_shape[3];
    int built;
    int training;
    uint64_t seed; /* initialization seed, read by pare_build */
    pare_hook_chain input_hooks;
};

/* A Sequential model from a NULL-terminated list of layers (takes ownership). */
pare_model *pare_sequential(const char *arch, ...);
pare_model *pare_model_new(const char *arch);
void pare_model_free(pare_model *m);
int pare_model_append(pare_model *m, pare_layer *l);
/* Infers every shape for input [c, h, w] (h = w = 0 for a flat input of c
 * features), creates and initializes parameters from m->seed. On a mismatch
 * returns -1 and pare_error() names the layer, expected and received shape. */
int pare_build(pare_model *m, int c, int h, int w);
/* Forward pass of a batch; x is [N, c, h, w] or [N, features]. */
pare_tensor *pare_forward(pare_ctx *ctx, pare_model *m, pare_tensor *x);
/* Forward through layers [first, last) only (input hooks run when first is 0). */
pare_tensor *pare_forward_layers(pare_ctx *ctx, pare_model *m, pare_tensor *x, int first, int last);
/* The training loss of a classifier, chosen from its last layer: after a
 * LogSoftmax, NLL of the output; after a Softmax, cross-entropy of the logits
 * before it (what Keras does for sparse categorical cross-entropy on a softmax
 * output: the same value with a stable gradient); otherwise cross-entropy of
 * the output as logits. *scores, if given, receives a tensor whose row argmax
 * is the prediction. */
pare_tensor *pare_classifier_loss(pare_ctx *ctx, pare_model *m, pare_tensor *x, const int *labels,
                                  pare_tensor **scores);
void pare_model_train(pare_model *m, int training);
pare_layer *pare_model_find(pare_model *m, const char *name);
int pare_model_index(const pare_model *m, const char *name);

/* ---- layer-edit API (compress/ reaches a model only through these) ------- */
int pare_model_insert(pare_model *m, int index, pare_layer *l);
int pare_model_remove(pare_model *m, int index);                 /* frees the layer */
int pare_model_replace(pare_model *m, int index, pare_layer *l); /* frees the old one */
/* Keeps only the listed output units (dim 0) or input units (dim 1) of a
 * Linear/Conv2d/BatchNorm2d layer's parameters and runs the hooks' resize.
 * For inputs, `block` is how many consecutive features one unit owns (H*W
 * when a Conv feeds a Linear through Flatten; 1 otherwise). Shapes must be
 * re-inferred with pare_build afterwards (parameters are kept). */
int pare_layer_resize(pare_layer *l, int dim, const int *keep, int n_keep, int block);

/* ---- parameters ----------------------------------------------------------- */
typedef struct pare_param {
    char name[128]; /* "conv1.weight", "fc1.mask.values" */
    pare_tensor *t;
    pare_layer *layer;
    int is_weight;
} pare_param;
/* Trainable parameters in layer order; returns the count (writes at most max). */
int pare_model_params(pare_model *m, pare_param *out, int max);
/* All tensors saved with the model: parameters, BatchNorm buffers, hook state. */
int pare_model_tensors(pare_model *m, pare_param *out, int max);
size_t pare_model_param_count(pare_model *m);
double pare_model_flops(const pare_model *m);
/* Layers, output shapes, parameters and forward FLOPs, as a table. */
void pare_summary(const pare_model *m, FILE *out);

/* ---- init ------------------------------------------------------------------- */
/* PyTorch's defaults: Kaiming-uniform weights (a = sqrt(5)), so U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
 * and the same bound for biases. */
void pare_init_kaiming_uniform(pare_tensor *w, int fan_in, pare_rng *rng);
void pare_init_uniform(pare_tensor *t, float bound, pare_rng *rng);

/* ---- the architecture zoo -------------------------------------------------- */
/* seedcnn, seedcnn-bn, kerascnn, lenet5, lenet300, mlp64, mlp32; NULL and
 * pare_error() set for an unknown name. Not yet built. */
pare_model *pare_model_zoo(const char *arch);
const char *const *pare_model_zoo_names(void);

/* ---- save / load (safetensors; the generic reader/writer is nn/safetensors.h) */
/* Writes atomically (temp file, fsync, rename). metadata: NULL-terminated
 * key, value pairs added to pare.format, pare.version and pare.arch. */
int pare_save(pare_model *m, const char *path, const char *const *metadata);
/* Loads a model; its architecture comes from pare.arch, or from arch_name
 * for a file without pare metadata (from PyTorch). Returns NULL on error. */
pare_model *pare_load(const char *path, const char *arch_name);
/* Loads weights into an existing, built model: every tensor must be there as
 * F32 with its shape, and a tensor the model lacks is an error (except
 * PyTorch's *.num_batches_tracked). Nothing is copied unless all match. */
int pare_load_into(pare_model *m, const char *path);
/* The architecture as JSON (the layer list), and back. to_json returns the
 * length as snprintf does (buf may be NULL with len 0), or -1 if the model
 * was never built; from_json builds the model (pare_build) or returns NULL. */
int pare_arch_to_json(const pare_model *m, char *buf, size_t len);
pare_model *pare_arch_from_json(const char *json);

#ifdef __cplusplus
}
#endif
#endif
