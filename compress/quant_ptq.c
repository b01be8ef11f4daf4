/* Static post-training quantization: min/max observers watching the model
 * input and every layer output through nn's hooks, calibration on the first
 * images in file order, and conversion to the int8 runtime. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "compress/quant.h"

#define OBSERVER_NAME "observer"

typedef struct observer_hook {
    pare_hook hook; /* first: the hook pointer is the struct's */
    pare_observer obs;
    /* QAT: the output is also fake-quantized with the observer's current
     * range, and the observer learns only while the model trains (or until it
     * has seen a first batch), so that evaluation and conversion see the same
     * frozen ranges. */
    int fake_quant, act_bits;
    const pare_model *model;
} observer_hook;

static pare_tensor *observe(pare_ctx *ctx, pare_hook *self, pare_layer *layer, pare_tensor *t)
{
    (void)layer;
    observer_hook *h = (observer_hook *)self;
    if (!h->fake_quant) {
        pare_observer_update(&h->obs, t->data, t->size);
        return t; /* watches only */
    }
    if (h->model->training || h->obs.count == 0) pare_observer_update(&h->obs, t->data, t->size);
    float lo, hi;
    pare_qparams p;
    /* A non-finite range (a diverged model) leaves t alone: the NaN reaches
     * the loss, where pare_fit stops with an error. */
    if (pare_observer_range(&h->obs, &lo, &hi) || pare_qparams_choose(lo, hi, h->act_bits, 0, &p)) return t;
    return pare_f_fake_quant(ctx, t, 1, &p.scale, &p.zero_point, p.qmin, p.qmax);
}

static void observer_destroy(pare_hook *self)
{
    pare_observer_release(&((observer_hook *)self)->obs);
    pare_free(self);
}

static int add_observer(pare_hook_chain *chain, const pare_quant_config *cfg, const pare_model *fake_quant_model)
{
    if (pare_hook_find(chain, OBSERVER_NAME)) return 0;
    observer_hook *h = pare_calloc(sizeof *h);
    if (pare_observer_init(&h->obs, cfg)) {
        pare_free(h);
        return -1;
    }
    h->fake_quant = fake_quant_model != NULL;
    h->model = fake_quant_model;
    h->act_bits = cfg->act_bits;
    snprintf(h->hook.name, sizeof h->hook.name, "%s", OBSERVER_NAME);
    h->hook.apply = observe;
    h->hook.destroy = observer_destroy;
    if (pare_hook_add(chain, &h->hook)) {
        observer_destroy(&h->hook);
        return -1;
    }
    return 0;
}

int pare_quant_observe_output(pare_model *m, int layer, const pare_quant_config *cfg, int fake_quant)
{
    if (layer < -1 || layer >= m->n_layers) return pare_set_error("observe: no layer %d", layer);
    pare_hook_chain *chain = layer < 0 ? &m->input_hooks : &m->layers[layer]->output_hooks;
    return add_observer(chain, cfg, fake_quant ? m : NULL);
}

int pare_quant_prepare(pare_model *m, const pare_quant_config *cfg)
{
    pare_quant_config def = pare_quant_defaults();
    if (!cfg) cfg = &def;
    pare_observer probe; /* the configuration is checked before any hook is added */
    if (pare_observer_init(&probe, cfg)) return -1;
    pare_observer_release(&probe);
    for (int i = -1; i < m->n_layers; i++)
        if (pare_quant_observe_output(m, i, cfg, 0)) return -1;
    return 0;
}

void pare_quant_unprepare(pare_model *m)
{
    if (pare_hook_find(&m->input_hooks, OBSERVER_NAME)) pare_hook_remove(&m->input_hooks, OBSERVER_NAME);
    for (int i = 0; i < m->n_layers; i++)
        if (pare_hook_find(&m->layers[i]->output_hooks, OBSERVER_NAME))
            pare_hook_remove(&m->layers[i]->output_hooks, OBSERVER_NAME);
    pare_quant_qat_remove_weight_hooks(m);
}

const pare_observer *pare_quant_observer(pare_model *m, int layer)
{
    if (layer < -1 || layer >= m->n_layers) return NULL;
    pare_hook_chain *chain = layer < 0 ? &m->input_hooks : &m->layers[layer]->output_hooks;
    pare_hook *h = pare_hook_find(chain, OBSERVER_NAME);
    return h && h->apply == observe ? &((observer_hook *)h)->obs : NULL;
}

pare_quant_config pare_quant_defaults(void)
{
    pare_quant_config c = {.weight_bits = 8,
                           .act_bits = 8,
                           .per_tensor = 0,
                           .observer = PARE_OBSERVE_MINMAX,
                           .averaging = 0.01f,
                           .hist_bins = 2048,
                           .percentile = 99.99f};
    return c;
}

int pare_quant_calibrate(pare_ctx *ctx, pare_model *m, const pare_dataset *ds, int n)
{
    if (!m->built) return pare_set_error("calibration: the model is not built");
    if (!pare_quant_observer(m, -1)) return pare_set_error("calibration: run pare_quant_prepare first");
    if (n < 1 || n > ds->n) n = ds->n;
    pare_loader_config cfg = pare_loader_defaults();
    cfg.batch = 256;
    cfg.shuffle = 0; /* the protocol: the first n images in file order */
    cfg.flat = m->in_ndim == 1;
    pare_loader *ld = pare_loader_new(ds, NULL, n, &cfg);
    if (!ld) return -1;
    int was_training = m->training, grad = pare_set_grad_enabled(ctx, 0);
    pare_model_train(m, 0);
    pare_batch b;
    int rc = 0;
    pare_mark mark = pare_arena_mark(ctx);
    while (pare_loader_next(ld, &ctx->arena, &b) == 1) {
        if (!pare_forward(ctx, m, b.x)) rc = -1;
        pare_arena_release(ctx, mark);
        if (rc) break;
    }
    pare_model_train(m, was_training);
    pare_set_grad_enabled(ctx, grad);
    pare_loader_free(ld);
    return rc;
}

/* ---- convert ------------------------------------------------------------------ */
typedef struct convert_state {
    pare_qmodel *qm;
    pare_model *m;
    const pare_quant_config *cfg;
    int h, w, c; /* current int8 activation, NHWC */
    float scale;
    int32_t zp;
    int pre_h, pre_w, pre_c; /* the CHW shape a Flatten flattened, for the next Linear */
    pare_ctx *ctx;           /* for the weights as the forward pass sees them */
} convert_state;

/* The weight after the layer's weight hooks (a pruning mask, say): what the
 * float model computes with, so masked weights quantize to exactly 0. A QAT
 * fake-quant of the weight is skipped: conversion quantizes the weight it
 * was applied to with the same rule, which gives the integers the fake-quant
 * model computed with. */
static const float *effective_weight(convert_state *s, pare_layer *l)
{
    int was = pare_quant_qat_weight_hooks_enable(l, 0);
    const float *w = pare_layer_weight(s->ctx, l)->data;
    pare_quant_qat_weight_hooks_enable(l, was);
    return w;
}

static void note(pare_qmodel *qm, const char *fmt, const char *a, const char *b)
{
    if (qm->n_notes == PARE_QMAX_NOTES) return;
    char line[256];
    snprintf(line, sizeof line, fmt, a, b);
    memcpy(qm->notes[qm->n_notes], line, sizeof qm->notes[0] - 1); /* long notes are cut */
    qm->notes[qm->n_notes++][sizeof qm->notes[0] - 1] = 0;
}

static const char *layer_label(const pare_layer *l)
{
    return l->name[0] ? l->name : l->type->type_name;
}

static int act_params(convert_state *s, int index, pare_qparams *p)
{
    const pare_observer *o = pare_quant_observer(s->m, index);
    const char *what = index < 0 ? "the input" : layer_label(s->m->layers[index]);
    float lo, hi;
    if (!o || o->count == 0) {
        pare_set_error("convert: %s was never observed (pare_quant_prepare, then pare_quant_calibrate)", what);
        return -1; /* spelled out so analyzers see that *p is set whenever 0 is returned */
    }
    if (pare_observer_range(o, &lo, &hi)) return -1;
    return pare_qparams_choose(lo, hi, s->cfg->act_bits, 0, p);
}

static pare_qlayer *new_qlayer(convert_state *s, pare_qkind kind, const char *name)
{
    pare_qmodel *qm = s->qm;
    if (qm->n_layers == PARE_QMAX_LAYERS) {
        pare_set_error("convert: more than %d int8 layers", PARE_QMAX_LAYERS);
        return NULL;
    }
    pare_qlayer *q = &qm->layers[qm->n_layers++];
    memset(q, 0, sizeof *q);
    q->kind = kind;
    size_t len = strlen(name);
    memcpy(q->name, name, len < PARE_NAME_MAX ? len : PARE_NAME_MAX - 1);
    q->in_h = s->h;
    q->in_w = s->w;
    q->in_c = s->c;
    q->in_zp = s->zp;
    q->in_scale = s->scale;
    q->act_min = -128;
    q->act_max = 127;
    q->out_scale = s->scale;
    q->out_zp = s->zp;
    return q;
}

/* Weights (already in the int8 world's order, rows = output channels),
 * bias and multipliers of a conv or linear layer whose output parameters
 * are *out. */
static int quantize_params(convert_state *s, pare_qlayer *q, const float *w, int rows, int cols, const float *bias,
                           const pare_qparams *out, int relu)
{
    q->weight_bits = s->cfg->weight_bits;
    q->weight = pare_alloc((size_t)rows * cols);
    q->bias = pare_alloc((size_t)rows * sizeof(int32_t));
    q->mult = pare_alloc((size_t)rows * sizeof(int32_t));
    q->shift = pare_alloc((size_t)rows * sizeof(int32_t));
    q->w_scale = pare_alloc((size_t)rows * sizeof(float));
    if (pare_quantize_weight(w, rows, cols, s->cfg->weight_bits, s->cfg->per_tensor, q->weight, q->w_scale)) return -1;
    q->out_c = rows;
    q->out_scale = out->scale;
    q->out_zp = out->zero_point;
    q->act_min = relu && out->zero_point > out->qmin ? out->zero_point : out->qmin;
    q->act_max = out->qmax;
    q->relu = relu;
    for (int r = 0; r < rows; r++) {
        double acc_scale = (double)q->in_scale * q->w_scale[r];
        double b = bias ? round(bias[r] / acc_scale) : 0;
        q->bias[r] = (int32_t)fmax(fmin(b, 1 << 30), -(1 << 30)); /* the runtime's exactness bound */
        int sh;
        if (pare_quantize_multiplier(acc_scale / out->scale, &q->mult[r], &sh)) return -1;
        q->shift[r] = sh;
    }
    s->c = rows;
    s->scale = out->scale;
    s->zp = out->zero_point;
    return 0;
}

/* A BatchNorm2d right after conv layer i (same channels), or NULL. */
static const pare_layer *following_bn(const convert_state *s, int i)
{
    const pare_layer *l = s->m->layers[i];
    if (l->kind != PARE_CONV2D || i + 1 >= s->m->n_layers) return NULL;
    const pare_layer *bn = s->m->layers[i + 1];
    return bn->kind == PARE_BATCHNORM2D && bn->in_features == l->out_features ? bn : NULL;
}

/* The float layer at i, a BatchNorm2d after a conv (folded) and, when the
 * next layer is a ReLU, that too (fused: the ReLU's observer gives the
 * output range). Returns how many layers it took. */
static int fused_output(convert_state *s, int i, pare_qparams *out, int *relu)
{
    int last = i + (following_bn(s, i) != NULL);
    *relu = last + 1 < s->m->n_layers && s->m->layers[last + 1]->kind == PARE_RELU;
    last += *relu;
    return act_params(s, last, out) ? -1 : last - i + 1;
}

static int convert_conv(convert_state *s, int i)
{
    pare_layer *l = s->m->layers[i];
    const pare_layer *bn = following_bn(s, i);
    pare_qparams out;
    int relu, taken = fused_output(s, i, &out, &relu);
    if (taken < 0) return -1;
    pare_qlayer *q = new_qlayer(s, PARE_Q_CONV, l->name);
    if (!q) return -1;
    q->kernel = l->kernel;
    q->stride = l->stride;
    q->pad = l->pad;
    int o = l->out_features, in = l->in_features, k = l->kernel, cols = k * k * in;
    float *w = pare_alloc((size_t)o * cols * sizeof(float)), *folded = NULL, *bias = l->has_bias ? l->bias->data : NULL;
    const float *src = effective_weight(s, l);
    if (bn) {
        folded = pare_alloc(((size_t)o * cols + o) * sizeof(float));
        pare_fold_batchnorm_values(l, bn, src, folded, folded + (size_t)o * cols);
        src = folded;
        bias = folded + (size_t)o * cols;
    }
    /* OIHW (training) -> OHWI (int8 world) */
    for (int a = 0; a < o; a++)
        for (int c = 0; c < in; c++)
            for (int y = 0; y < k; y++)
                for (int x = 0; x < k; x++)
                    w[(size_t)a * cols + ((size_t)y * k + x) * in + c] = src[(((size_t)a * in + c) * k + y) * k + x];
    int rc = quantize_params(s, q, w, o, cols, bias, &out, relu);
    pare_free(w);
    pare_free(folded);
    if (rc) return -1;
    s->h = l->out_shape[1];
    s->w = l->out_shape[2];
    note(s->qm, "%s: Conv2d%s -> int8 conv", l->name,
         bn && relu ? " + BatchNorm2d (folded) + ReLU"
         : bn       ? " + BatchNorm2d (folded)"
         : relu     ? " + ReLU"
                    : "");
    return taken;
}

static int convert_linear(convert_state *s, int i)
{
    pare_layer *l = s->m->layers[i];
    pare_qparams out;
    int relu, taken = fused_output(s, i, &out, &relu);
    if (taken < 0) return -1;
    pare_qlayer *q = new_qlayer(s, PARE_Q_LINEAR, l->name);
    if (!q) return -1;
    int o = l->out_features, in = l->in_features;
    float *w = pare_alloc((size_t)o * in * sizeof(float));
    int ph = s->pre_h, pw = s->pre_w, pc = s->pre_c;
    const float *wsrc = effective_weight(s, l);
    for (int a = 0; a < o; a++)
        for (int j = 0; j < in; j++) {
            /* Flatten in NHWC gives feature (y, x, c); the float model's column is CHW's */
            int src = j;
            if (ph * pw > 1 && pc * ph * pw == in) {
                int c = j % pc, x = (j / pc) % pw, y = j / (pc * pw);
                src = (c * ph + y) * pw + x;
            }
            w[(size_t)a * in + j] = wsrc[(size_t)a * in + src];
        }
    s->pre_h = s->pre_w = s->pre_c = 0;
    int rc = quantize_params(s, q, w, o, in, l->has_bias ? l->bias->data : NULL, &out, relu);
    pare_free(w);
    if (rc) return -1;
    note(s->qm, "%s: Linear%s -> int8 linear", l->name, relu ? " + ReLU" : "");
    return taken;
}

/* Average pooling to its own output parameters: the window's sum of
 * (q - zp_in) times s_in / (s_out * window) in fixed point. */
static int convert_avgpool(convert_state *s, int i, const char *name)
{
    pare_layer *l = s->m->layers[i];
    pare_qparams out;
    if (act_params(s, i, &out)) return -1;
    pare_qlayer *q = new_qlayer(s, PARE_Q_AVGPOOL, name);
    if (!q) return -1;
    q->kernel = l->kernel;
    q->stride = l->stride;
    q->out_c = s->c;
    q->mult = pare_alloc(sizeof(int32_t));
    q->shift = pare_alloc(sizeof(int32_t));
    int sh;
    if (pare_quantize_multiplier((double)s->scale / ((double)out.scale * l->kernel * l->kernel), q->mult, &sh))
        return -1;
    q->shift[0] = sh;
    q->out_scale = out.scale;
    q->out_zp = out.zero_point;
    q->act_min = out.qmin;
    q->act_max = out.qmax;
    s->h = l->out_shape[1];
    s->w = l->out_shape[2];
    s->scale = out.scale;
    s->zp = out.zero_point;
    note(s->qm, "%s: AvgPool2d -> int8 average pool (requantized)%s", name, "");
    return 1;
}

/* Sigmoid or Tanh as a table over the 256 int8 inputs: each input value
 * dequantized, through the float layer's own op (so the table holds the
 * very floats the fake-quant model computes), quantized to the output's
 * observed parameters. */
static int convert_lut(convert_state *s, int i, const char *name)
{
    pare_layer *l = s->m->layers[i];
    pare_qparams out, in = {s->scale, s->zp, -128, 127};
    if (act_params(s, i, &out)) return -1;
    pare_qlayer *q = new_qlayer(s, PARE_Q_LUT, name);
    if (!q) return -1;
    int n = 256;
    pare_tensor *x = pare_ctx_tensor(s->ctx, 1, &n);
    for (int v = 0; v < n; v++) x->data[v] = pare_dequantize_value(v - 128, &in);
    pare_tensor *y = l->kind == PARE_SIGMOID ? pare_f_sigmoid(s->ctx, x) : pare_f_tanh(s->ctx, x);
    q->lut = pare_alloc(256);
    for (int v = 0; v < n; v++) q->lut[v] = (int8_t)pare_quantize_value(y->data[v], &out);
    q->out_c = s->c;
    q->out_scale = out.scale;
    q->out_zp = out.zero_point;
    q->act_min = out.qmin;
    q->act_max = out.qmax;
    s->scale = out.scale;
    s->zp = out.zero_point;
    note(s->qm, "%s: %s -> int8 lookup table", name, l->type->type_name);
    return 1;
}

static int convert_one(convert_state *s, int i)
{
    pare_layer *l = s->m->layers[i];
    char name[PARE_NAME_MAX];
    const char *base = l->kind == PARE_MAXPOOL2D   ? "maxpool"
                       : l->kind == PARE_AVGPOOL2D ? "avgpool"
                       : l->kind == PARE_SIGMOID   ? "sigmoid"
                       : l->kind == PARE_TANH      ? "tanh"
                                                   : "flatten";
    snprintf(name, sizeof name, "%s%d", base, i);
    switch (l->kind) {
    case PARE_AVGPOOL2D:
        return convert_avgpool(s, i, name);
    case PARE_SIGMOID:
    case PARE_TANH:
        return convert_lut(s, i, name);
    case PARE_CONV2D:
        return convert_conv(s, i);
    case PARE_LINEAR:
        return convert_linear(s, i);
    case PARE_MAXPOOL2D: {
        pare_qlayer *q = new_qlayer(s, PARE_Q_MAXPOOL, name);
        if (!q) return -1;
        q->kernel = l->kernel;
        q->stride = l->stride;
        q->out_c = s->c;
        s->h = l->out_shape[1];
        s->w = l->out_shape[2];
        note(s->qm, "%s: MaxPool2d -> int8 maxpool%s", name, "");
        return 1;
    }
    case PARE_FLATTEN: {
        pare_qlayer *q = new_qlayer(s, PARE_Q_FLATTEN, name);
        if (!q) return -1;
        s->pre_h = s->h;
        s->pre_w = s->w;
        s->pre_c = s->c;
        s->c = s->h * s->w * s->c;
        s->h = s->w = 1;
        q->out_c = s->c;
        note(s->qm, "%s: Flatten -> int8 flatten (NHWC; the next Linear's columns permuted from CHW)%s", name, "");
        return 1;
    }
    case PARE_DROPOUT:
        note(s->qm, "%s%sDropout: dropped, the identity at inference", l->name, l->name[0] ? " " : "");
        return 1;
    case PARE_RELU:
        /* A ReLU not fused into a conv/linear: a clamp at the zero point of
         * the previous int8 layer, exact when that layer's output is real. */
        if (s->qm->n_layers && s->qm->layers[s->qm->n_layers - 1].kind != PARE_Q_FLATTEN) {
            pare_qlayer *p = &s->qm->layers[s->qm->n_layers - 1];
            if (p->act_min < p->out_zp) p->act_min = p->out_zp;
            note(s->qm, "ReLU: clamp of %s%s", p->name, "");
            return 1;
        }
        break;
    case PARE_SOFTMAX:
    case PARE_LOG_SOFTMAX:
        if (i == s->m->n_layers - 1) {
            note(s->qm, "%s: dropped (argmax unchanged; the int8 model outputs logits)%s", l->type->type_name, "");
            return 1;
        }
        break;
    default:
        break;
    }
    return pare_set_error("convert: layer %d (%s, %s) has no int8 kernel here; the int8 runtime runs Conv2d (with "
                          "a BatchNorm2d after it, folded), Linear, ReLU, Sigmoid, Tanh, MaxPool2d, AvgPool2d, "
                          "Flatten, Dropout and a final (Log)Softmax",
                          i, layer_label(l), l->type->type_name);
}

pare_qmodel *pare_quant_convert(pare_model *m, const pare_quant_config *cfg)
{
    pare_quant_config def = pare_quant_defaults();
    if (!cfg) cfg = &def;
    int32_t lo, hi;
    if (pare_qrange(cfg->weight_bits, 1, &lo, &hi) || pare_qrange(cfg->act_bits, 0, &lo, &hi)) return NULL;
    if (!m->built) {
        pare_set_error("convert: the model is not built");
        return NULL;
    }
    convert_state s = {0};
    s.qm = pare_calloc(sizeof *s.qm);
    s.ctx = pare_ctx_new(0);
    pare_set_grad_enabled(s.ctx, 0);
    s.m = m;
    s.cfg = cfg;
    snprintf(s.qm->arch, sizeof s.qm->arch, "%s", m->arch);
    s.qm->in_c = m->in_shape[0];
    s.qm->in_h = m->in_ndim == 3 ? m->in_shape[1] : 0;
    s.qm->in_w = m->in_ndim == 3 ? m->in_shape[2] : 0;
    pare_qparams in;
    if (act_params(&s, -1, &in)) goto fail;
    s.qm->in_scale = s.scale = in.scale;
    s.qm->in_zp = s.zp = in.zero_point;
    s.c = m->in_shape[0];
    s.h = m->in_ndim == 3 ? m->in_shape[1] : 1;
    s.w = m->in_ndim == 3 ? m->in_shape[2] : 1;
    for (int i = 0; i < m->n_layers;) {
        int taken = convert_one(&s, i);
        if (taken < 0) goto fail;
        i += taken;
    }
    if (pare_qmodel_plan(s.qm)) goto fail;
    pare_ctx_free(s.ctx);
    return s.qm;
fail:
    pare_ctx_free(s.ctx);
    pare_qmodel_free(s.qm);
    return NULL;
}
