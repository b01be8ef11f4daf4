/* The optimizers: configuration checks, one block for all state, the
 * update rules (after PyTorch's, operation by operation), the accessors
 * pruning uses, gradient clipping and learning-rate schedules. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "optim/optim.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

#define MAX_STATE 2

/* Elementwise loops over a parameter split across threads when it is large;
 * each element has one owner, so the thread count never changes a bit. */
#ifdef _OPENMP
#define PRAGMA(x) _Pragma(#x)
#define PARALLEL_FOR(n) PRAGMA(omp parallel for schedule(static) if ((n) > 32768))
#else
#define PARALLEL_FOR(n)
#endif

/* Per-parameter bookkeeping. PyTorch keeps a step count per parameter and
 * creates the momentum buffer on a parameter's first step; so do we. */
typedef struct pare_optim_slot {
    size_t size;             /* element count at creation */
    float *state[MAX_STATE]; /* carved from the optimizer's block */
    long steps;              /* updates this parameter has had */
} pare_optim_slot;

struct pare_optim {
    pare_optim_config cfg;
    /* The hyperparameters as the decimals they were written as, in double,
     * for the quantities PyTorch computes in Python (1 - beta^t, lr / bc1). */
    double lr, momentum, dampening, weight_decay, beta1, beta2, eps;
    int n_state; /* buffers per parameter: 0, 1 or 2 */
    const char *const *state_names;
    long steps;         /* pare_step calls */
    int n;              /* parameters */
    pare_param *params; /* everything below points into this one allocation */
    pare_optim_slot *slots;
};

static const char *const sgd_state[] = {"momentum_buffer"};
static const char *const adam_state[] = {"exp_avg", "exp_avg_sq"};

/* PyTorch's hyperparameters are Python doubles and it computes 1 - beta,
 * 1 - beta^t and lr / (1 - beta1^t) in double before rounding to float.
 * (double)0.9f is 0.899999976..., which would move 1 - beta1 by a few
 * float ulps; the shortest decimal that rounds back to 0.9f is 0.9, the
 * number the user wrote, so we compute from that. */
static double decimal(float f)
{
    if (!isfinite(f)) return (double)f;
    char buf[40];
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, (double)f);
        double d = strtod(buf, NULL);
        if ((float)d == f) return d;
    }
    return (double)f; /* 9 significant digits always round-trip */
}

/* ---- the update rules ---------------------------------------------------------
 * Line for line after torch.optim's single-tensor functions
 * (_single_tensor_sgd, _single_tensor_adam, _single_tensor_adamw in PyTorch
 * 1.13), so that pare and PyTorch give the same bits from the same weights
 * and gradients. Each PyTorch tensor op becomes one float
 * expression in the same order:
 *   a.mul_(s)                  a * s
 *   a.add_(b, alpha=s)         fmaf(b, s, a)    PyTorch's CPU kernel is a fused
 *   a.addcmul_(b, c, value=s)  fmaf(s * b, c, a)   multiply-add (Vectorized::fmadd)
 *   a.addcdiv_(b, c, value=s)  a + s * b / c
 * fmaf is exactly rounded by definition, so this is explicit FMA, the same
 * on every machine, as DESIGN.md asks. Scalars PyTorch computes in Python
 * (1 - beta, lr / (1 - beta1^t)) are computed in double and rounded to float
 * once, as PyTorch does when it hands them to a kernel. Every element is
 * updated by one thread, so the thread count never changes a result. The
 * grad is zeroed in the same pass. */
static void sgd_update(pare_optim *o, int i)
{
    pare_tensor *t = o->params[i].t;
    pare_optim_slot *s = &o->slots[i];
    float *restrict p = t->data, *restrict g = t->grad, *restrict buf = s->state[0];
    const float wd = o->cfg.weight_decay, mom = o->cfg.momentum;
    const float keep = (float)(1.0 - o->dampening); /* alpha = 1 - dampening */
    const float neg_lr = (float)-o->lr;
    const int first = s->steps == 0, nesterov = o->cfg.nesterov, has_buf = o->n_state > 0;
    const long n = (long)t->size;
    s->steps++;
    PARALLEL_FOR(n)
    for (long j = 0; j < n; j++) {
        float d = g[j];
        if (wd != 0.0f) d = fmaf(p[j], wd, d); /* d_p.add(param, alpha=wd) */
        if (has_buf) {
            /* PyTorch creates the buffer as a copy of d_p on the first step. */
            float b = first ? d : fmaf(d, keep, buf[j] * mom); /* buf.mul_(mom).add_(d_p, alpha=1-damp) */
            buf[j] = b;
            d = nesterov ? fmaf(b, mom, d) : b; /* d_p.add(buf, alpha=mom) */
        }
        p[j] = fmaf(d, neg_lr, p[j]); /* param.add_(d_p, alpha=-lr) */
        g[j] = 0.0f;
    }
}

static void adam_update(pare_optim *o, int i)
{
    pare_tensor *t = o->params[i].t;
    pare_optim_slot *s = &o->slots[i];
    float *restrict p = t->data, *restrict g = t->grad;
    float *restrict m = s->state[0], *restrict v = s->state[1];
    const int decoupled = o->cfg.kind == PARE_OPT_ADAMW;
    s->steps++;
    const double step = (double)s->steps;
    const double bc1 = 1.0 - pow(o->beta1, step), bc2 = 1.0 - pow(o->beta2, step);
    const float neg_step_size = (float)-(o->lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float b1 = o->cfg.beta1, b2 = o->cfg.beta2, eps = o->cfg.eps;
    const float one_b1 = (float)(1.0 - o->beta1), one_b2 = (float)(1.0 - o->beta2);
    const float l2 = decoupled ? 0.0f : o->cfg.weight_decay;
    const float decay = (float)(1.0 - o->lr * o->weight_decay);
    const long n = (long)t->size;
    PARALLEL_FOR(n)
    for (long j = 0; j < n; j++) {
        float pj = p[j], gj = g[j];
        if (decoupled)
            pj = pj * decay; /* param.mul_(1 - lr*wd) */
        else if (l2 != 0.0f)
            gj = fmaf(pj, l2, gj);                   /* grad.add(param, alpha=wd) */
        float mj = fmaf(gj, one_b1, m[j] * b1);      /* exp_avg.mul_(b1).add_(g, alpha=1-b1) */
        float vj = fmaf(one_b2 * gj, gj, v[j] * b2); /* exp_avg_sq.mul_(b2).addcmul_(g, g, value=1-b2) */
        m[j] = mj;
        v[j] = vj;
        float denom = sqrtf(vj) / bc2_sqrt + eps; /* (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps) */
        p[j] = pj + neg_step_size * mj / denom;   /* param.addcdiv_(exp_avg, denom, value=-step_size) */
        g[j] = 0.0f;
    }
}

/* ---- the object ------------------------------------------------------------------ */
pare_optim_config pare_optim_defaults(pare_optim_kind kind, float lr)
{
    pare_optim_config c;
    memset(&c, 0, sizeof c);
    c.kind = kind;
    c.lr = lr;
    c.beta1 = 0.9f;
    c.beta2 = 0.999f;
    c.eps = 1e-8f;
    c.weight_decay = kind == PARE_OPT_ADAMW ? 0.01f : 0.0f;
    return c;
}

static const char *kind_name(pare_optim_kind k)
{
    return k == PARE_OPT_SGD ? "SGD" : k == PARE_OPT_ADAM ? "Adam" : "AdamW";
}

static int check_config(const pare_optim_config *c)
{
    if (c->kind != PARE_OPT_SGD && c->kind != PARE_OPT_ADAM && c->kind != PARE_OPT_ADAMW)
        return pare_set_error("optimizer: unknown kind %d (use PARE_OPT_SGD, PARE_OPT_ADAM or PARE_OPT_ADAMW)",
                              (int)c->kind);
    const char *k = kind_name(c->kind);
    if (!(c->lr > 0.0f) || !isfinite(c->lr))
        return pare_set_error("%s: learning rate %g is not valid; it must be positive and finite (e.g. 0.01)", k,
                              (double)c->lr);
    if (!(c->weight_decay >= 0.0f) || !isfinite(c->weight_decay))
        return pare_set_error("%s: weight_decay %g is not valid; it must be >= 0 and finite", k,
                              (double)c->weight_decay);
    if (c->kind == PARE_OPT_SGD) {
        if (!(c->momentum >= 0.0f) || !isfinite(c->momentum))
            return pare_set_error("SGD: momentum %g is not valid; it must be >= 0 and finite (e.g. 0.9)",
                                  (double)c->momentum);
        if (!isfinite(c->dampening)) return pare_set_error("SGD: dampening %g is not finite", (double)c->dampening);
        if (c->nesterov && (c->momentum == 0.0f || c->dampening != 0.0f))
            return pare_set_error("SGD: Nesterov momentum needs momentum > 0 and dampening 0 "
                                  "(got momentum %g, dampening %g)",
                                  (double)c->momentum, (double)c->dampening);
        return 0;
    }
    if (!(c->beta1 >= 0.0f && c->beta1 < 1.0f) || !(c->beta2 >= 0.0f && c->beta2 < 1.0f))
        return pare_set_error("%s: betas (%g, %g) must both be in [0, 1) (PyTorch's default is (0.9, 0.999))", k,
                              (double)c->beta1, (double)c->beta2);
    if (!(c->eps > 0.0f) || !isfinite(c->eps))
        return pare_set_error("%s: eps %g is not valid; it must be positive and finite (e.g. 1e-8)", k, (double)c->eps);
    return 0;
}

static size_t round64(size_t bytes)
{
    return (bytes + 63) / 64 * 64;
}

pare_optim *pare_optim_new(pare_model *m, const pare_optim_config *cfg)
{
    if (!cfg) return pare_set_error("optimizer: no configuration given"), NULL;
    if (check_config(cfg)) return NULL;
    if (!m) return pare_set_error("%s: no model given", kind_name(cfg->kind)), NULL;
    if (!m->built)
        return pare_set_error("%s: model '%s' is not built; call pare_build before creating the optimizer",
                              kind_name(cfg->kind), m->arch),
               NULL;
    int n = pare_model_params(m, NULL, 0);
    if (n <= 0)
        return pare_set_error("%s: model '%s' has no trainable parameters", kind_name(cfg->kind), m->arch), NULL;

    pare_param *tmp = pare_alloc((size_t)n * sizeof *tmp);
    pare_model_params(m, tmp, n);
    int n_state = cfg->kind == PARE_OPT_SGD ? (cfg->momentum != 0.0f) : 2;
    /* One allocation, carved by pointers: the object, the parameter list,
     * the slots, then every state buffer on its own 64-byte boundary. */
    size_t off_params = round64(sizeof(pare_optim));
    size_t off_slots = off_params + round64((size_t)n * sizeof(pare_param));
    size_t off_state = off_slots + round64((size_t)n * sizeof(pare_optim_slot));
    size_t total = off_state;
    for (int i = 0; i < n; i++) total += (size_t)n_state * round64(tmp[i].t->size * sizeof(float));
    unsigned char *block = pare_calloc(total);

    pare_optim *o = (pare_optim *)block;
    o->cfg = *cfg;
    o->lr = decimal(cfg->lr);
    o->momentum = decimal(cfg->momentum);
    o->dampening = decimal(cfg->dampening);
    o->weight_decay = decimal(cfg->weight_decay);
    o->beta1 = decimal(cfg->beta1);
    o->beta2 = decimal(cfg->beta2);
    o->eps = decimal(cfg->eps);
    o->n_state = n_state;
    o->state_names = cfg->kind == PARE_OPT_SGD ? sgd_state : adam_state;
    o->n = n;
    o->params = (pare_param *)(block + off_params);
    o->slots = (pare_optim_slot *)(block + off_slots);
    memcpy(o->params, tmp, (size_t)n * sizeof *tmp);
    pare_free(tmp);
    size_t off = off_state;
    for (int i = 0; i < n; i++) {
        o->slots[i].size = o->params[i].t->size;
        for (int s = 0; s < n_state; s++) {
            /* cppcheck-suppress invalidPointerCast ; carved from one 64-byte aligned block */
            o->slots[i].state[s] = (float *)(block + off);
            off += round64(o->slots[i].size * sizeof(float));
        }
    }
    return o;
}

pare_optim *pare_sgd(pare_model *m, float lr, float momentum)
{
    pare_optim_config c = pare_optim_defaults(PARE_OPT_SGD, lr);
    c.momentum = momentum;
    return pare_optim_new(m, &c);
}

pare_optim *pare_adam(pare_model *m, float lr)
{
    pare_optim_config c = pare_optim_defaults(PARE_OPT_ADAM, lr);
    return pare_optim_new(m, &c);
}

pare_optim *pare_adamw(pare_model *m, float lr, float weight_decay)
{
    pare_optim_config c = pare_optim_defaults(PARE_OPT_ADAMW, lr);
    c.weight_decay = weight_decay;
    return pare_optim_new(m, &c);
}

void pare_optim_free(pare_optim *o)
{
    pare_free(o);
}

void pare_step(pare_optim *o)
{
    o->steps++;
    for (int i = 0; i < o->n; i++) {
        const pare_param *p = &o->params[i];
        if (!p->t->grad) continue;
        PARE_CHECK(p->t->size == o->slots[i].size,
                   "optimizer: parameter %s changed size (%zu -> %zu elements) since the optimizer was created; "
                   "create a new optimizer after layer surgery",
                   p->name, o->slots[i].size, p->t->size);
        if (o->cfg.kind == PARE_OPT_SGD)
            sgd_update(o, i);
        else
            adam_update(o, i);
    }
}

void pare_zero_grad(pare_optim *o)
{
    for (int i = 0; i < o->n; i++)
        if (o->params[i].t->grad) memset(o->params[i].t->grad, 0, o->params[i].t->size * sizeof(float));
}

float pare_optim_lr(const pare_optim *o)
{
    return o->cfg.lr;
}

int pare_optim_set_lr(pare_optim *o, float lr)
{
    if (!(lr > 0.0f) || !isfinite(lr))
        return pare_set_error("%s: learning rate %g is not valid; it must be positive and finite",
                              kind_name(o->cfg.kind), (double)lr);
    o->cfg.lr = lr;
    o->lr = decimal(lr);
    return 0;
}

long pare_optim_steps(const pare_optim *o)
{
    return o->steps;
}

int pare_optim_n_params(const pare_optim *o)
{
    return o->n;
}

const pare_param *pare_optim_param(const pare_optim *o, int index)
{
    return index >= 0 && index < o->n ? &o->params[index] : NULL;
}

float *pare_optim_state(pare_optim *o, int index, const char *name)
{
    if (index < 0 || index >= o->n || !name) return NULL;
    for (int s = 0; s < o->n_state; s++)
        if (strcmp(name, o->state_names[s]) == 0) return o->slots[index].state[s];
    return NULL;
}

double pare_clip_grad_norm(pare_optim *o, double max_norm)
{
    if (!(max_norm >= 0.0))
        return pare_set_error("clip_grad_norm: max_norm %g is not valid; it must be >= 0", max_norm), -1.0;
    /* One running sum in parameter order: the same bits for any thread count. */
    double sum = 0.0;
    for (int i = 0; i < o->n; i++) {
        const pare_tensor *t = o->params[i].t;
        if (!t->grad) continue;
        for (size_t j = 0; j < t->size; j++) sum += (double)t->grad[j] * (double)t->grad[j];
    }
    double norm = sqrt(sum);
    if (!isfinite(norm)) return norm;
    double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) {
        float c = (float)coef;
        for (int i = 0; i < o->n; i++) {
            pare_tensor *t = o->params[i].t;
            if (!t->grad) continue;
            float *g = t->grad;
            long n = (long)t->size;
            PARALLEL_FOR(n)
            for (long j = 0; j < n; j++) g[j] *= c;
        }
    }
    return norm;
}

/* ---- learning-rate schedules ---------------------------------------------------
 * Closed forms of the epoch, so resuming at any epoch gives the same rate
 * without replaying the schedule. */
float pare_lr_at(const pare_lr_schedule *s, int epoch)
{
    if (!s) return pare_set_error("lr schedule: none given"), NAN;
    if (!(s->base_lr > 0.0f) || !isfinite(s->base_lr))
        return pare_set_error("lr schedule: base_lr %g must be positive and finite", (double)s->base_lr), NAN;
    if (epoch < 0) return pare_set_error("lr schedule: epoch %d is negative (epochs count from 0)", epoch), NAN;
    double base = decimal(s->base_lr);
    switch (s->kind) {
    case PARE_LR_CONSTANT:
        return s->base_lr;
    case PARE_LR_STEP:
        if (s->step_size <= 0 || !(s->gamma > 0.0f) || !isfinite(s->gamma))
            return pare_set_error("StepLR: step_size %d must be positive and gamma %g positive and finite",
                                  s->step_size, (double)s->gamma),
                   NAN;
        /* integer division: the number of completed steps */
        return (float)(base *
                       pow(decimal(s->gamma), (double)(epoch / s->step_size))); // NOLINT(bugprone-integer-division)
    case PARE_LR_COSINE: {
        if (s->total <= 0 || !(s->min_lr >= 0.0f) || !isfinite(s->min_lr))
            return pare_set_error("CosineAnnealingLR: total %d must be positive and min_lr %g >= 0 and finite",
                                  s->total, (double)s->min_lr),
                   NAN;
        double lo = decimal(s->min_lr);
        return (float)(lo + (base - lo) * (1.0 + cos(M_PI * (double)epoch / (double)s->total)) / 2.0);
    }
    }
    return pare_set_error("lr schedule: unknown kind %d", (int)s->kind), NAN;
}
