/* Knowledge distillation: the KD loss as one autograd op, and the training
 * loop in which the teacher gives soft targets batch by batch. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "compress/compress.h"

/* ---- the KD loss op ------------------------------------------------------------ */
/* log softmax(r / T) of one row, in double (the soft targets of a large T are
 * close together; float would lose the differences the student learns). */
static void log_softmax_scaled(const float *r, int K, double T, double *out)
{
    double m = r[0];
    for (int k = 1; k < K; k++) m = r[k] > m ? r[k] : m;
    double s = 0;
    for (int k = 0; k < K; k++) s += exp(((double)r[k] - m) / T);
    double lse = log(s); // cppcheck-suppress invalidFunctionArg ; s >= 1 (the maximum's term)
    for (int k = 0; k < K; k++) out[k] = ((double)r[k] - m) / T - lse;
}

/* KL(p_t || p_s) of one row; its gradient wrt the student logits is
 * (p_s - p_t) / T, written to g (times `scale`). */
static double kl_row(const float *s, const float *t, int K, double T, double scale, float *g)
{
    double ls[64], lt[64], kl = 0;
    log_softmax_scaled(s, K, T, ls);
    log_softmax_scaled(t, K, T, lt);
    for (int k = 0; k < K; k++) {
        double pt = exp(lt[k]);
        kl += pt * (lt[k] - ls[k]); /* pt = 0 (underflow) adds 0, never 0 * inf */
        g[k] = (float)(scale * (exp(ls[k]) - pt) / T);
    }
    return kl;
}

typedef struct kd_saved {
    int *labels;
    float *logp;   /* log softmax(s), for the hard-label term */
    float *soft_g; /* alpha T^2 d KL / ds per element, before the 1/N */
    float hard_w;  /* 1 - alpha */
} kd_saved;

/* dL/ds = g_out / N * ((1 - alpha)(softmax(s) - onehot) + alpha T (p_s - p_t)). */
static void kd_backward(pare_ctx *ctx, pare_node *n)
{
    int N = n->in[0]->shape[0], K = n->in[0]->shape[1];
    const kd_saved *sv = n->saved;
    float g = n->out->grad[0] / (float)N;
    float *dx = pare_grad_of(ctx, n->in[0]);
    for (int i = 0; i < N; i++)
        for (int k = 0; k < K; k++) {
            size_t o = (size_t)i * K + k;
            float hard = sv->hard_w * (expf(sv->logp[o]) - (k == sv->labels[i] ? 1.0f : 0.0f));
            dx[o] += g * hard + g * sv->soft_g[o];
        }
}
static const pare_op kd_op = {"kd_loss", kd_backward};

static void *arena_get(pare_ctx *ctx, size_t bytes)
{
    void *p = pare_arena_alloc(&ctx->arena, bytes);
    PARE_CHECK(p, "arena full");
    return p;
}

pare_tensor *pare_kd_loss(pare_ctx *ctx, pare_tensor *s, const pare_tensor *t, const int *labels, float temperature,
                          float alpha)
{
    PARE_CHECK(s->ndim == 2 && t->ndim == 2 && s->shape[0] == t->shape[0] && s->shape[1] == t->shape[1],
               "kd_loss: student and teacher logits must both be [N, K]");
    PARE_CHECK(s->shape[1] <= 64, "kd_loss: at most 64 classes (got %d)", s->shape[1]);
    PARE_CHECK(temperature > 0 && alpha >= 0 && alpha <= 1, "kd_loss: needs T > 0 and alpha in [0, 1]");
    int N = s->shape[0], K = s->shape[1], one = 1;
    kd_saved *sv = arena_get(ctx, sizeof *sv);
    sv->labels = arena_get(ctx, (size_t)N * sizeof(int));
    sv->logp = arena_get(ctx, s->size * sizeof(float));
    sv->soft_g = arena_get(ctx, s->size * sizeof(float));
    sv->hard_w = 1.0f - alpha;
    /* the same kernel as pare_cross_entropy, so alpha = 0 reproduces it bit for bit */
    pare_log_softmax_rows(s->data, N, K, sv->logp);
    double ce = 0, kl = 0, T = temperature, scale = (double)alpha * T * T;
    for (int i = 0; i < N; i++) {
        PARE_CHECK(labels[i] >= 0 && labels[i] < K, "label %d of sample %d outside [0, %d)", labels[i], i, K);
        sv->labels[i] = labels[i];
        ce -= sv->logp[(size_t)i * K + labels[i]];
        kl += kl_row(s->data + (size_t)i * K, t->data + (size_t)i * K, K, T, scale, sv->soft_g + (size_t)i * K);
    }
    pare_tensor *y = pare_ctx_tensor(ctx, 1, &one);
    /* alpha = 0 leaves (ce / N) untouched: the same float as cross_entropy. */
    y->data[0] = (float)(scale * (kl / N) + (1.0 - alpha) * (ce / N));
    pare_node *n = pare_record(ctx, &kd_op, y, 1, &s);
    if (n) n->saved = sv;
    return y;
}

pare_tensor *pare_logits(pare_ctx *ctx, pare_model *m, pare_tensor *x)
{
    pare_layer_kind last = m->layers[m->n_layers - 1]->kind;
    int drop = last == PARE_SOFTMAX || last == PARE_LOG_SOFTMAX;
    return pare_forward_layers(ctx, m, x, 0, m->n_layers - drop);
}

/* ---- the training loop ------------------------------------------------------------ */
pare_distill_config pare_distill_defaults(void)
{
    pare_distill_config c;
    memset(&c, 0, sizeof c);
    c.epochs = 3;
    c.temperature = 4.0f;
    c.alpha = 0.9f;
    c.progress = 1;
    c.label = "distill";
    return c;
}

static int check_models(pare_model *student, pare_model *teacher, const pare_distill_config *cfg)
{
    if (!student->built || !teacher->built) return pare_set_error("distill: both models must be built");
    if (!(cfg->temperature > 0) || !(cfg->alpha >= 0 && cfg->alpha <= 1) || cfg->epochs < 0)
        return pare_set_error("distill: needs temperature > 0, alpha in [0, 1] and epochs >= 0 (got %g, %g, %d)",
                              (double)cfg->temperature, (double)cfg->alpha, cfg->epochs);
    if (pare_shape_size(student->in_ndim, student->in_shape) != pare_shape_size(teacher->in_ndim, teacher->in_shape))
        return pare_set_error("distill: student '%s' and teacher '%s' take inputs of different sizes", student->arch,
                              teacher->arch);
    const pare_layer *ls = student->layers[student->n_layers - 1], *lt = teacher->layers[teacher->n_layers - 1];
    if (ls->out_ndim != 1 || lt->out_ndim != 1 || ls->out_shape[0] != lt->out_shape[0])
        return pare_set_error("distill: student '%s' and teacher '%s' must both output one score per class, as many "
                              "classes each",
                              student->arch, teacher->arch);
    if (ls->out_shape[0] > 64) return pare_set_error("distill: at most 64 classes (got %d)", ls->out_shape[0]);
    return 0;
}

/* The teacher's logits for x: eval mode, no tape. Its output stays in the
 * arena under the student's activations until the step's release. */
static pare_tensor *teacher_logits(pare_ctx *ctx, pare_model *teacher, pare_tensor *x)
{
    int grad = pare_set_grad_enabled(ctx, 0);
    pare_tensor *t = pare_logits(ctx, teacher, x);
    pare_set_grad_enabled(ctx, grad);
    return t;
}

/* The student's batch input: the teacher's shape may differ ([N,1,28,28] vs
 * [N,784]); the values are the same. */
static pare_tensor *as_input(pare_ctx *ctx, pare_model *m, pare_tensor *x)
{
    int shape[4] = {x->shape[0], m->in_shape[0], m->in_shape[1], m->in_shape[2]};
    if (x->ndim == m->in_ndim + 1 && !memcmp(x->shape, shape, (size_t)x->ndim * sizeof(int))) return x;
    pare_tensor *v = pare_ctx_tensor(ctx, m->in_ndim + 1, shape);
    memcpy(v->data, x->data, x->size * sizeof(float));
    return v;
}

/* pare_fit's loss for one batch: the teacher's logits (no tape), then the
 * KD loss of the student's. */
typedef struct kd_batch {
    pare_model *teacher;
    const pare_distill_config *cfg;
} kd_batch;

static pare_tensor *kd_batch_loss(void *user, pare_ctx *ctx, pare_model *student, const pare_batch *b,
                                  pare_tensor **scores)
{
    const kd_batch *kd = user;
    pare_tensor *t = teacher_logits(ctx, kd->teacher, as_input(ctx, kd->teacher, b->x));
    pare_tensor *s = pare_logits(ctx, student, as_input(ctx, student, b->x));
    *scores = s;
    return pare_kd_loss(ctx, s, t, b->labels, kd->cfg->temperature, kd->cfg->alpha);
}

int pare_distill(pare_ctx *ctx, pare_model *student, pare_model *teacher, pare_optim *o, pare_loader *train,
                 const pare_distill_config *cfg, pare_epoch_stats *last)
{
    if (check_models(student, teacher, cfg)) return -1;
    int teacher_mode = teacher->training;
    pare_model_train(teacher, 0); /* dropout off, BatchNorm on running statistics */
    kd_batch kd = {teacher, cfg};
    pare_fit_config fc = pare_fit_defaults(cfg->epochs);
    fc.progress = cfg->progress;
    fc.label = cfg->label ? cfg->label : "distill";
    fc.on_epoch = cfg->on_epoch;
    fc.user = cfg->user;
    fc.loss = kd_batch_loss;
    fc.loss_user = &kd;
    int rc = pare_fit(ctx, student, o, train, &fc, last);
    pare_model_train(teacher, teacher_mode);
    return rc;
}
