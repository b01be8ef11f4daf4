/* Quantization-aware training: BatchNorm folded into the conv before it,
 * fake-quant on every Conv2d/Linear weight (the weight chain) and on the
 * activations the int8 model will requantize (observers that also
 * fake-quantize, on the output chains), so that ordinary training learns
 * weights that survive quantization; pare_quant_convert then produces the
 * int8 model from the same ranges and the same weight rule. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "compress/quant.h"

#define FQ_WEIGHT_NAME "fakequant"

/* ---- BatchNorm folding -------------------------------------------------------
 * conv(x) = W x + b followed by BN with running mean mu, variance var, gamma,
 * beta and eps in eval mode is, per output channel c with
 * g_c = gamma_c / sqrt(var_c + eps):  (g_c W_c) x + g_c (b_c - mu_c) + beta_c.
 * Folding with the running statistics is exact for inference; training the
 * folded conv afterwards (QAT) no longer normalizes by batch statistics. */
void pare_fold_batchnorm_values(const pare_layer *conv, const pare_layer *bn, const float *w, float *w_out,
                                float *b_out)
{
    int out = conv->out_features;
    size_t per = conv->weight->size / (size_t)out;
    for (int c = 0; c < out; c++) {
        double g = (double)bn->weight->data[c] / sqrt((double)bn->running_var->data[c] + bn->eps);
        double bias = conv->has_bias ? conv->bias->data[c] : 0; /* read before b_out[c] may overwrite it */
        for (size_t i = 0; i < per; i++) w_out[c * per + i] = (float)(g * w[c * per + i]);
        b_out[c] = (float)(g * (bias - bn->running_mean->data[c]) + bn->bias->data[c]);
    }
}

/* In place; a conv without a bias gets one. */
static void fold_into(pare_layer *conv, const pare_layer *bn)
{
    if (!conv->has_bias) {
        int out = conv->out_features;
        conv->bias = pare_tensor_persistent(1, &out, 1);
        memset(conv->bias->data, 0, (size_t)out * sizeof(float));
        conv->has_bias = 1;
    }
    pare_fold_batchnorm_values(conv, bn, conv->weight->data, conv->weight->data, conv->bias->data);
}

int pare_fold_batchnorm(pare_model *m, char (*notes)[128], int max_notes)
{
    if (!m->built) return pare_set_error("fold BatchNorm: the model is not built");
    int folded = 0;
    for (int i = 0; i + 1 < m->n_layers; i++) {
        pare_layer *conv = m->layers[i], *bn = m->layers[i + 1];
        if (conv->kind != PARE_CONV2D || bn->kind != PARE_BATCHNORM2D) continue;
        if (bn->in_features != conv->out_features)
            return pare_set_error("fold BatchNorm: %s has %d channels, %s outputs %d", bn->name, bn->in_features,
                                  conv->name, conv->out_features);
        if (conv->weight_hooks.n)
            return pare_set_error("fold BatchNorm: %s has weight hooks (%s); fold before pruning or QAT", conv->name,
                                  conv->weight_hooks.hooks[0]->name);
        fold_into(conv, bn);
        if (notes && folded < max_notes) {
            char line[2 * PARE_NAME_MAX + 64];
            snprintf(line, sizeof line, "%s: BatchNorm2d folded into %s (running statistics)", bn->name, conv->name);
            snprintf(notes[folded], 128, "%.127s", line);
        }
        folded++;
        if (pare_model_remove(m, i + 1)) return -1;
    }
    if (!m->built &&
        pare_build(m, m->in_shape[0], m->in_ndim == 3 ? m->in_shape[1] : 0, m->in_ndim == 3 ? m->in_shape[2] : 0))
        return -1;
    return folded;
}

/* ---- weight fake-quant ------------------------------------------------------
 * Symmetric, per output channel (or per tensor), scales from the weight as it
 * is at this step: the rule pare_quantize_weight applies at conversion. */
typedef struct fq_weight_hook {
    pare_hook hook; /* first */
    int bits, per_tensor, enabled;
} fq_weight_hook;

static pare_tensor *fake_quant_weight(pare_ctx *ctx, pare_hook *self, pare_layer *layer, pare_tensor *w)
{
    (void)layer;
    fq_weight_hook *h = (fq_weight_hook *)self;
    if (!h->enabled || w->ndim < 1 || w->shape[0] < 1) return w;
    int rows = w->shape[0], cols = (int)(w->size / (size_t)rows);
    float *scales = pare_arena_alloc(&ctx->arena, (size_t)rows * sizeof(float));
    int32_t *zero = pare_arena_alloc(&ctx->arena, (size_t)rows * sizeof(int32_t));
    int32_t qmin, qmax;
    /* A non-finite weight (a diverged model) is left alone: the loss turns
     * NaN and pare_fit reports it. */
    if (!scales || !zero || pare_weight_scales(w->data, rows, cols, h->bits, h->per_tensor, scales) ||
        pare_qrange(h->bits, 1, &qmin, &qmax))
        return w;
    memset(zero, 0, (size_t)rows * sizeof(int32_t));
    return pare_f_fake_quant(ctx, w, rows, scales, zero, qmin, qmax);
}

static void fq_weight_destroy(pare_hook *self)
{
    pare_free(self);
}

static int add_weight_fake_quant(pare_layer *l, const pare_quant_config *cfg)
{
    if (pare_hook_find(&l->weight_hooks, FQ_WEIGHT_NAME)) return 0;
    fq_weight_hook *h = pare_calloc(sizeof *h);
    snprintf(h->hook.name, sizeof h->hook.name, "%s", FQ_WEIGHT_NAME);
    h->hook.apply = fake_quant_weight;
    h->hook.destroy = fq_weight_destroy;
    h->bits = cfg->weight_bits;
    h->per_tensor = cfg->per_tensor;
    h->enabled = 1;
    if (pare_hook_add(&l->weight_hooks, &h->hook)) { /* last: after a pruning mask */
        pare_free(h);
        return pare_set_error("QAT: the weight hook chain of %s is full", l->name);
    }
    return 0;
}

int pare_quant_qat_weight_hooks_enable(pare_layer *l, int enabled)
{
    pare_hook *h = pare_hook_find(&l->weight_hooks, FQ_WEIGHT_NAME);
    if (!h || h->apply != fake_quant_weight) return 0;
    fq_weight_hook *f = (fq_weight_hook *)h;
    int was = f->enabled;
    f->enabled = enabled;
    return was;
}

void pare_quant_qat_remove_weight_hooks(pare_model *m)
{
    for (int i = 0; i < m->n_layers; i++) {
        pare_hook *h = pare_hook_find(&m->layers[i]->weight_hooks, FQ_WEIGHT_NAME);
        if (h && h->apply == fake_quant_weight) pare_hook_remove(&m->layers[i]->weight_hooks, FQ_WEIGHT_NAME);
    }
}

/* ---- prepare ------------------------------------------------------------------
 * Where the int8 model has its own activation parameters: the input, and the
 * output of each Conv2d/Linear, taken after the ReLU that follows it (fused:
 * the int8 layer clamps). MaxPool2d, Flatten and Dropout keep their input's
 * parameters, a lone ReLU clamps the previous layer, a final (Log)Softmax is
 * dropped: none of them gets a fake-quant. Anything else has no int8 kernel,
 * and QAT refuses it up front rather than train for a model that cannot be
 * converted. */
static int qat_points(const pare_model *m, int *points, int *n_points)
{
    *n_points = 0;
    points[(*n_points)++] = -1;
    for (int i = 0; i < m->n_layers; i++) {
        const pare_layer *l = m->layers[i];
        switch (l->kind) {
        case PARE_CONV2D:
        case PARE_LINEAR: {
            int relu = i + 1 < m->n_layers && m->layers[i + 1]->kind == PARE_RELU;
            points[(*n_points)++] = i + relu;
            i += relu;
            break;
        }
        case PARE_AVGPOOL2D: /* requantized to their own parameters */
        case PARE_SIGMOID:
        case PARE_TANH:
            points[(*n_points)++] = i;
            break;
        case PARE_MAXPOOL2D:
        case PARE_FLATTEN:
        case PARE_DROPOUT:
        case PARE_RELU:
            break;
        case PARE_SOFTMAX:
        case PARE_LOG_SOFTMAX:
            if (i == m->n_layers - 1) break;
            /* fall through */
        default:
            return pare_set_error("QAT: layer %d (%s, %s) has no int8 kernel; the int8 runtime runs Conv2d (with a "
                                  "BatchNorm2d after it, folded), Linear, ReLU, Sigmoid, Tanh, MaxPool2d, AvgPool2d, "
                                  "Flatten, Dropout and a final (Log)Softmax",
                                  i, l->name[0] ? l->name : l->type->type_name, l->type->type_name);
        }
    }
    return 0;
}

int pare_quant_prepare_qat(pare_model *m, const pare_quant_config *cfg, char (*notes)[128], int max_notes)
{
    pare_quant_config def = pare_quant_defaults();
    def.observer = PARE_OBSERVE_MOVING_AVG;
    if (!cfg) cfg = &def;
    int32_t lo, hi;
    if (pare_qrange(cfg->weight_bits, 1, &lo, &hi) || pare_qrange(cfg->act_bits, 0, &lo, &hi)) return -1;
    pare_observer probe;
    if (pare_observer_init(&probe, cfg)) return -1;
    pare_observer_release(&probe);
    if (!m->built) return pare_set_error("QAT: the model is not built");
    if (pare_quant_observer(m, -1)) return pare_set_error("QAT: the model is already prepared (observers installed)");
    int folded = pare_fold_batchnorm(m, notes, max_notes);
    if (folded < 0) return -1;
    int *points = pare_alloc((size_t)(m->n_layers + 1) * sizeof(int)), n_points;
    int rc = qat_points(m, points, &n_points);
    for (int i = 0; i < n_points && !rc; i++) rc = pare_quant_observe_output(m, points[i], cfg, 1);
    for (int i = 0; i < m->n_layers && !rc; i++)
        if (m->layers[i]->kind == PARE_CONV2D || m->layers[i]->kind == PARE_LINEAR)
            rc = add_weight_fake_quant(m->layers[i], cfg);
    pare_free(points);
    if (rc) {
        pare_quant_unprepare(m);
        return -1;
    }
    return folded;
}

/* ---- agreement of a float (fake-quant) model and its int8 conversion ------- */
/* The index past the last layer whose output the int8 model computes: a final
 * (Log)Softmax is dropped at conversion. */
static int logits_end(const pare_model *m)
{
    int last = m->layers[m->n_layers - 1]->kind;
    return last == PARE_SOFTMAX || last == PARE_LOG_SOFTMAX ? m->n_layers - 1 : m->n_layers;
}

static int argmax(const float *v, int k)
{
    int best = 0;
    for (int j = 1; j < k; j++)
        if (v[j] > v[best]) best = j;
    return best;
}

int pare_quant_agreement(pare_ctx *ctx, pare_model *m, const pare_qmodel *qm, const pare_dataset *ds, int n,
                         pare_quant_agreement_stats *st)
{
    memset(st, 0, sizeof *st);
    if (!m->built || m->n_layers < 1) return pare_set_error("agreement: the model is not built");
    if (n < 1 || n > ds->n) n = ds->n;
    pare_loader_config cfg = pare_loader_defaults();
    cfg.batch = 256;
    cfg.shuffle = 0;
    cfg.flat = m->in_ndim == 1;
    pare_loader *ld = pare_loader_new(ds, NULL, n, &cfg);
    if (!ld) return -1;
    void *scratch = pare_alloc(qm->scratch_bytes);
    float *q_out = pare_alloc((size_t)cfg.batch * qm->n_out * sizeof(float));
    int was_training = m->training, grad = pare_set_grad_enabled(ctx, 0), rc = 0, end = logits_end(m);
    pare_model_train(m, 0);
    pare_mark mark = pare_arena_mark(ctx);
    pare_batch b;
    long long logits = 0, within = 0;
    while (!rc && pare_loader_next(ld, &ctx->arena, &b) == 1) {
        pare_tensor *y = pare_forward_layers(ctx, m, b.x, 0, end);
        int k = y ? (int)(y->size / (size_t)b.n) : 0;
        if (!y || k != qm->n_out) {
            rc =
                y ? pare_set_error("agreement: the float model gives %d outputs, the int8 model %d", k, qm->n_out) : -1;
        } else if (pare_qmodel_forward_float(qm, b.x->data, b.n, q_out, scratch, qm->scratch_bytes)) {
            rc = -1;
        } else {
            for (int i = 0; i < b.n; i++) {
                const float *f = y->data + (size_t)i * k, *q = q_out + (size_t)i * k;
                st->same_argmax += argmax(f, k) == argmax(q, k);
                for (int j = 0; j < k; j++) {
                    double steps = fabs((double)f[j] - q[j]) / qm->out_scale;
                    if (steps > st->max_steps) st->max_steps = steps;
                    within += steps <= 1.0 + 1e-3; /* one step, and float rounding of the dequantized value */
                }
            }
            logits += (long long)b.n * k;
            st->images += b.n;
        }
        pare_arena_release(ctx, mark);
    }
    pare_model_train(m, was_training);
    pare_set_grad_enabled(ctx, grad);
    pare_free(q_out);
    pare_free(scratch);
    pare_loader_free(ld);
    st->within_one_step = logits ? (double)within / (double)logits : 0;
    return rc;
}
