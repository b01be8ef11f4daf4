/* Optimizers against their textbook formulas computed here in double (and a
 * few cases against constants produced by torch.optim), state access for
 * pruning, gradient clipping, LR schedules and bad configurations. */
#include <math.h>
#include <string.h>

#include "optim/optim.h"
#include "tests/test.h"

/* A Linear 3 -> 2: parameters fc.weight [2, 3] then fc.bias [2], seen here
 * as one flat vector of NP values in pare_model_params order. */
#define NP 8
/* Float rounding over a few steps of values below 1 stays far below this;
 * a wrong rule (a missing bias correction, dampening on the first step, eps
 * inside the sqrt with eps = 0.1) is off by 1e-3 or more. */
#define TOL 2e-6

static float w0(int j)
{
    return (float)(0.5 * sin(0.37 * j + 0.1));
}
static float gk(int k, int j)
{
    return (float)(0.3 * cos(0.91 * j + 1.7 * k) + 0.05 * (j % 7 - 3) * (k + 1));
}

static pare_model *tiny(void)
{
    pare_model *m = pare_sequential("t", pare_linear("fc", 3, 2), NULL);
    CHECK(m && pare_build(m, 3, 0, 0) == 0);
    pare_param ps[2];
    CHECK(pare_model_params(m, ps, 2) == 2);
    for (int j = 0; j < NP; j++) (j < 6 ? ps[0].t->data : ps[1].t->data)[j < 6 ? j : j - 6] = w0(j);
    return m;
}

static float *at(pare_model *m, int j, int grad)
{
    pare_param ps[2];
    pare_model_params(m, ps, 2);
    pare_tensor *t = j < 6 ? ps[0].t : ps[1].t;
    return (grad ? t->grad : t->data) + (j < 6 ? j : j - 6);
}

static void set_grads(pare_model *m, int k)
{
    for (int j = 0; j < NP; j++) *at(m, j, 1) = gk(k, j);
}

/* Runs `steps` steps of cfg on the tiny model; weights after each step go to out[k][j]. */
static void run(const pare_optim_config *cfg, int steps, float out[][NP])
{
    pare_model *m = tiny();
    pare_optim *o = pare_optim_new(m, cfg);
    CHECKF(o != NULL, "pare_optim_new: %s", pare_error());
    if (!o) return;
    for (int k = 0; k < steps; k++) {
        set_grads(m, k);
        pare_step(o);
        for (int j = 0; j < NP; j++) out[k][j] = *at(m, j, 0);
    }
    pare_optim_free(o);
    pare_model_free(m);
}

/* ---- reference rules, written from the papers / PyTorch docs, in double ---- */
typedef struct ref {
    double lr, mom, damp, wd, b1, b2, eps;
    int nesterov, adamw;
    double p[NP], s0[NP], s1[NP];
    int t;
} ref;

static void ref_init(ref *r)
{
    for (int j = 0; j < NP; j++) r->p[j] = w0(j), r->s0[j] = r->s1[j] = 0;
    r->t = 0;
}

static void ref_sgd(ref *r, int k)
{
    for (int j = 0; j < NP; j++) {
        double d = (double)gk(k, j) + r->wd * r->p[j];
        if (r->mom != 0) {
            r->s0[j] = r->t == 0 ? d : r->mom * r->s0[j] + (1 - r->damp) * d;
            d = r->nesterov ? d + r->mom * r->s0[j] : r->s0[j];
        }
        r->p[j] -= r->lr * d;
    }
    r->t++;
}

static void ref_adam(ref *r, int k)
{
    r->t++;
    for (int j = 0; j < NP; j++) {
        double g = gk(k, j);
        if (r->adamw)
            r->p[j] *= 1 - r->lr * r->wd;
        else
            g += r->wd * r->p[j];
        r->s0[j] = r->b1 * r->s0[j] + (1 - r->b1) * g;
        r->s1[j] = r->b2 * r->s1[j] + (1 - r->b2) * g * g;
        double mhat = r->s0[j] / (1 - pow(r->b1, r->t)), vhat = r->s1[j] / (1 - pow(r->b2, r->t));
        r->p[j] -= r->lr * mhat / (sqrt(vhat) + r->eps);
    }
}

/* Runs both for 4 steps and compares every weight after every step. */
static void check_against_ref(const char *what, const pare_optim_config *cfg, ref *r)
{
    float got[4][NP];
    run(cfg, 4, got);
    ref_init(r);
    for (int k = 0; k < 4; k++) {
        if (cfg->kind == PARE_OPT_SGD)
            ref_sgd(r, k);
        else
            ref_adam(r, k);
        for (int j = 0; j < NP; j++)
            CHECKF(fabs(got[k][j] - r->p[j]) <= TOL, "%s: step %d element %d: %.9g, expected %.9g", what, k + 1, j,
                   (double)got[k][j], r->p[j]);
    }
}

/* ---- SGD ------------------------------------------------------------------- */
TEST(sgd_plain_is_p_minus_lr_sum_of_grads)
{
    pare_optim_config c = pare_optim_defaults(PARE_OPT_SGD, 0.1f);
    float got[3][NP];
    run(&c, 3, got);
    for (int j = 0; j < NP; j++) {
        double g1 = gk(0, j), g2 = gk(1, j), g3 = gk(2, j);
        CHECK_NEAR(got[0][j], w0(j) - 0.1 * g1, TOL);
        CHECK_NEAR(got[2][j], w0(j) - 0.1 * (g1 + g2 + g3), TOL);
    }
}

TEST(sgd_momentum_unrolled)
{
    pare_optim_config c = pare_optim_defaults(PARE_OPT_SGD, 0.1f);
    c.momentum = 0.9f;
    float got[3][NP];
    run(&c, 3, got);
    for (int j = 0; j < NP; j++) {
        double g1 = gk(0, j), g2 = gk(1, j), g3 = gk(2, j), mu = 0.9;
        double b1 = g1, b2 = mu * g1 + g2, b3 = mu * mu * g1 + mu * g2 + g3;
        CHECK_NEAR(got[0][j], w0(j) - 0.1 * b1, TOL);
        CHECK_NEAR(got[1][j], w0(j) - 0.1 * (b1 + b2), TOL);
        CHECK_NEAR(got[2][j], w0(j) - 0.1 * (b1 + b2 + b3), TOL);
    }
}

TEST(sgd_nesterov_unrolled)
{
    pare_optim_config c = pare_optim_defaults(PARE_OPT_SGD, 0.1f);
    c.momentum = 0.9f;
    c.nesterov = 1;
    float got[3][NP];
    run(&c, 3, got);
    for (int j = 0; j < NP; j++) {
        double g1 = gk(0, j), g2 = gk(1, j), mu = 0.9;
        double b1 = g1, b2 = mu * g1 + g2;
        double p1 = w0(j) - 0.1 * (g1 + mu * b1), p2 = p1 - 0.1 * (g2 + mu * b2);
        CHECK_NEAR(got[0][j], p1, TOL);
        CHECK_NEAR(got[1][j], p2, TOL);
    }
    ref r = {.lr = 0.1, .mom = 0.9, .nesterov = 1};
    check_against_ref("nesterov", &c, &r);
}

TEST(sgd_weight_decay)
{
    pare_optim_config c = pare_optim_defaults(PARE_OPT_SGD, 0.1f);
    c.weight_decay = 0.05f;
    float got[1][NP];
    run(&c, 1, got);
    for (int j = 0; j < NP; j++) CHECK_NEAR(got[0][j], w0(j) - 0.1 * (gk(0, j) + 0.05 * w0(j)), TOL);
    ref r = {.lr = 0.1, .wd = 0.05};
    check_against_ref("sgd wd", &c, &r);
    c.momentum = 0.9f;
    c.nesterov = 1;
    ref r2 = {.lr = 0.1, .wd = 0.05, .mom = 0.9, .nesterov = 1};
    check_against_ref("nesterov wd", &c, &r2);
}

TEST(sgd_dampening_skips_the_first_step)
{
    pare_optim_config c = pare_optim_defaults(PARE_OPT_SGD, 0.1f);
    c.momentum = 0.8f;
    c.dampening = 0.5f;
    float got[2][NP];
    run(&c, 2, got);
    for (int j = 0; j < NP; j++) {
        double g1 = gk(0, j), g2 = gk(1, j);
        CHECK_NEAR(got[0][j], w0(j) - 0.1 * g1, TOL); /* buf = grad, undamped */
        CHECK_NEAR(got[1][j], w0(j) - 0.1 * g1 - 0.1 * (0.8 * g1 + 0.5 * g2), TOL);
    }
    c.weight_decay = 0.1f;
    ref r = {.lr = 0.1, .mom = 0.8, .damp = 0.5, .wd = 0.1};
    check_against_ref("dampening wd", &c, &r);
}

/* ---- Adam / AdamW ---------------------------------------------------------- */
TEST(adam_first_step_is_lr_times_sign)
{
    /* m_hat = g and v_hat = g^2 after one step, so p -= lr * g / (|g| + eps). */
    pare_optim_config c = pare_optim_defaults(PARE_OPT_ADAM, 0.01f);
    c.eps = 0.1f;
    float got[1][NP];
    run(&c, 1, got);
    for (int j = 0; j < NP; j++) {
        double g = gk(0, j);
        CHECK_NEAR(got[0][j], w0(j) - 0.01 * g / (fabs(g) + 0.1), 1e-7);
    }
}

TEST(adam_matches_formula)
{
    pare_optim_config c = pare_optim_defaults(PARE_OPT_ADAM, 0.1f);
    ref r = {.lr = 0.1, .b1 = 0.9, .b2 = 0.999, .eps = 1e-8};
    check_against_ref("adam", &c, &r);
    /* eps large enough that its place (after the sqrt) matters; L2 decay. */
    c.beta1 = 0.8f;
    c.beta2 = 0.95f;
    c.eps = 0.1f;
    c.weight_decay = 0.2f;
    ref r2 = {.lr = 0.1, .b1 = 0.8, .b2 = 0.95, .eps = 0.1, .wd = 0.2};
    check_against_ref("adam l2", &c, &r2);
}

TEST(adamw_matches_formula)
{
    pare_optim_config c = pare_optim_defaults(PARE_OPT_ADAMW, 0.1f);
    CHECK(c.weight_decay == 0.01f && c.beta1 == 0.9f && c.beta2 == 0.999f && c.eps == 1e-8f);
    c.weight_decay = 0.5f;
    ref r = {.lr = 0.1, .b1 = 0.9, .b2 = 0.999, .eps = 1e-8, .wd = 0.5, .adamw = 1};
    check_against_ref("adamw", &c, &r);
    /* Decoupled: the first step is the Adam step applied to the decayed weight. */
    float got[1][NP];
    run(&c, 1, got);
    for (int j = 0; j < NP; j++) {
        double g = gk(0, j);
        CHECK_NEAR(got[0][j], w0(j) * (1 - 0.1 * 0.5) - 0.1 * g / (fabs(g) + 1e-8), TOL);
    }
}

/* Constants printed by torch.optim (PyTorch 1.13, CPU, foreach=False) for
 * these inputs: weights w0(j), gradient gk(k, j) at step k, 3 steps. pare
 * follows PyTorch's float operations exactly (fused multiply-adds where its
 * kernels use them), so these match bit for bit: any difference at all
 * means the order of operations changed. */
TEST(matches_torch_optim_bitwise)
{
    static const float sgd[NP] = {0.230345309f, 0.399217367f, 0.515146792f,  0.524611473f,
                                  0.424484342f, 0.25628069f,  0.0713352486f, 0.403134555f};
    static const float adam[NP] = {0.0511368848f, 0.230335101f, 0.398621768f, 0.486406684f,
                                   0.502598286f,  0.437854201f, 0.336871535f, 0.219775617f};
    static const float adam_exp_avg[NP] = {-0.0923327506f, -0.0762085319f, -0.0445502996f, -0.000145450162f,
                                           0.0443717614f,  0.0762802809f,  0.0925993547f,  -0.0939587653f};
    static const float adam_exp_avg_sq[NP] = {0.000684684899f, 0.000391460519f, 0.000158688112f, 0.0001703296f,
                                              0.000257186359f, 0.000325802161f, 0.00040539357f,  0.000690965215f};
    static const float adamw[NP] = {0.0511234999f, 0.230268553f, 0.398507118f, 0.486263484f,
                                    0.502446413f,  0.437717646f, 0.336764693f, 0.219711721f};
    float got[3][NP];
    /* torch.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01) */
    pare_optim_config c = pare_optim_defaults(PARE_OPT_SGD, 0.1f);
    c.momentum = 0.9f;
    c.nesterov = 1;
    c.weight_decay = 0.01f;
    run(&c, 3, got);
    for (int j = 0; j < NP; j++)
        CHECKF(got[2][j] == sgd[j], "SGD %d: %.9g vs torch %.9g", j, (double)got[2][j], (double)sgd[j]);
    /* torch.optim.Adam(lr=0.01), weights and both moments */
    pare_model *m = tiny();
    pare_optim *o = pare_adam(m, 0.01f);
    for (int k = 0; k < 3; k++) {
        set_grads(m, k);
        pare_step(o);
    }
    for (int j = 0; j < NP; j++) {
        int pi = j < 6 ? 0 : 1, e = j < 6 ? j : j - 6;
        float w = *at(m, j, 0), ea = pare_optim_state(o, pi, "exp_avg")[e];
        float eas = pare_optim_state(o, pi, "exp_avg_sq")[e];
        CHECKF(w == adam[j], "Adam %d: %.9g vs torch %.9g", j, (double)w, (double)adam[j]);
        CHECKF(ea == adam_exp_avg[j], "Adam exp_avg %d: %.9g vs torch %.9g", j, (double)ea, (double)adam_exp_avg[j]);
        CHECKF(eas == adam_exp_avg_sq[j], "Adam exp_avg_sq %d: %.9g vs torch %.9g", j, (double)eas,
               (double)adam_exp_avg_sq[j]);
    }
    pare_optim_free(o);
    pare_model_free(m);
    /* torch.optim.AdamW(lr=0.01) (weight_decay 0.01) */
    c = pare_optim_defaults(PARE_OPT_ADAMW, 0.01f);
    run(&c, 3, got);
    for (int j = 0; j < NP; j++)
        CHECKF(got[2][j] == adamw[j], "AdamW %d: %.9g vs torch %.9g", j, (double)got[2][j], (double)adamw[j]);
}

/* ---- the object ------------------------------------------------------------ */
TEST(step_zeroes_grads_and_counts)
{
    pare_model *m = tiny();
    pare_optim *o = pare_adam(m, 0.01f);
    CHECK(o && pare_optim_steps(o) == 0);
    set_grads(m, 0);
    pare_step(o);
    int zero = 1;
    for (int j = 0; j < NP; j++) zero &= *at(m, j, 1) == 0.0f;
    CHECK(zero);
    CHECK(pare_optim_steps(o) == 1);
    set_grads(m, 1);
    pare_zero_grad(o);
    zero = 1;
    for (int j = 0; j < NP; j++) zero &= *at(m, j, 1) == 0.0f;
    CHECK(zero);
    CHECK(pare_optim_lr(o) == 0.01f);
    CHECK(pare_optim_set_lr(o, 0.5f) == 0 && pare_optim_lr(o) == 0.5f);
    CHECK(pare_optim_set_lr(o, 0.0f) == -1 && strstr(pare_error(), "learning rate"));
    CHECK(pare_optim_set_lr(o, NAN) == -1 && pare_optim_lr(o) == 0.5f);
    pare_optim_free(o);
    pare_model_free(m);
}

TEST(set_lr_takes_effect_on_next_step)
{
    pare_model *m = tiny();
    pare_optim *o = pare_sgd(m, 0.1f, 0.0f);
    set_grads(m, 0);
    pare_step(o);
    pare_optim_set_lr(o, 0.01f);
    set_grads(m, 1);
    pare_step(o);
    for (int j = 0; j < NP; j++) CHECK_NEAR(*at(m, j, 0), w0(j) - 0.1 * gk(0, j) - 0.01 * gk(1, j), TOL);
    pare_optim_free(o);
    pare_model_free(m);
}

TEST(state_accessors)
{
    pare_model *m = pare_sequential("t2", pare_linear("fc1", 3, 4), pare_relu(), pare_linear("fc2", 4, 2), NULL);
    CHECK(pare_build(m, 3, 0, 0) == 0);
    pare_optim *o = pare_sgd(m, 0.1f, 0.9f);
    CHECK(pare_optim_n_params(o) == 4);
    const char *names[4] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};
    pare_tensor *ts[4] = {m->layers[0]->weight, m->layers[0]->bias, m->layers[2]->weight, m->layers[2]->bias};
    for (int i = 0; i < 4; i++) {
        const pare_param *p = pare_optim_param(o, i);
        CHECK(p && strcmp(p->name, names[i]) == 0 && p->t == ts[i]);
        float *buf = pare_optim_state(o, i, "momentum_buffer");
        CHECK(buf != NULL && ((uintptr_t)buf % 64) == 0);
        for (size_t j = 0; buf && j < ts[i]->size; j++) CHECK(buf[j] == 0.0f);
        CHECK(pare_optim_state(o, i, "exp_avg") == NULL);
        CHECK(pare_optim_state(o, i, "nonsense") == NULL);
    }
    CHECK(pare_optim_param(o, 4) == NULL && pare_optim_param(o, -1) == NULL);
    CHECK(pare_optim_state(o, 4, "momentum_buffer") == NULL);
    /* Buffers of different params do not overlap. */
    CHECK(pare_optim_state(o, 0, "momentum_buffer") + 12 <= pare_optim_state(o, 1, "momentum_buffer"));
    /* After one step the buffer is the gradient (PyTorch's first-step rule). */
    for (size_t j = 0; j < ts[2]->size; j++) ts[2]->grad[j] = (float)j - 3.5f;
    pare_step(o);
    float *b = pare_optim_state(o, 2, "momentum_buffer");
    int same = 1;
    for (size_t j = 0; j < ts[2]->size; j++) same &= b[j] == (float)j - 3.5f;
    CHECK(same);
    pare_optim_free(o);

    o = pare_sgd(m, 0.1f, 0.0f); /* no momentum: no buffer, as in PyTorch */
    CHECK(pare_optim_state(o, 0, "momentum_buffer") == NULL);
    pare_optim_free(o);

    o = pare_adamw(m, 0.1f, 0.01f);
    for (size_t j = 0; j < ts[1]->size; j++) ts[1]->grad[j] = 2.0f;
    pare_step(o);
    float *ea = pare_optim_state(o, 1, "exp_avg"), *eas = pare_optim_state(o, 1, "exp_avg_sq");
    CHECK(ea && eas && ea != eas && pare_optim_state(o, 1, "momentum_buffer") == NULL);
    if (ea && eas) {
        CHECK_NEAR(ea[0], 0.1 * 2.0, 1e-7);                  /* (1 - beta1) g */
        CHECK_NEAR(eas[3], 0.001 * 4.0, 1e-9);               /* (1 - beta2) g^2 */
        CHECK(pare_optim_state(o, 0, "exp_avg")[0] == 0.0f); /* fc1.weight had zero grad */
    }
    pare_optim_free(o);
    pare_model_free(m);
}

TEST(param_without_grad_is_skipped)
{
    pare_model *m = tiny();
    pare_optim *o = pare_adam(m, 0.1f);
    pare_tensor *bias = m->layers[0]->bias;
    float *saved = bias->grad;
    set_grads(m, 0);
    bias->grad = NULL; /* as PyTorch skips a parameter whose grad is None */
    pare_step(o);
    bias->grad = saved;
    CHECK(bias->data[0] == w0(6) && bias->data[1] == w0(7));
    CHECK(pare_optim_state(o, 1, "exp_avg")[0] == 0.0f);
    CHECK(*at(m, 0, 0) != w0(0));
    pare_optim_free(o);
    pare_model_free(m);
}

TEST(step_does_not_allocate)
{
    pare_model *m = tiny();
    pare_optim *o = pare_sgd(m, 0.1f, 0.9f);
    uint64_t before = pare_alloc_count();
    for (int k = 0; k < 5; k++) {
        set_grads(m, k);
        pare_clip_grad_norm(o, 0.5);
        pare_step(o);
    }
    CHECK(pare_alloc_count() == before);
    pare_optim_free(o);
    pare_model_free(m);
}

/* Large parameters are updated in parallel; the bits must not depend on the thread count. */
TEST(same_bits_for_any_thread_count)
{
    pare_optim_kind kinds[3] = {PARE_OPT_SGD, PARE_OPT_ADAM, PARE_OPT_ADAMW};
    int saved = pare_threads();
    for (int kd = 0; kd < 3; kd++) {
        float *result[2] = {NULL, NULL};
        size_t n = 0;
        for (int run_i = 0; run_i < 2; run_i++) {
            pare_set_threads(run_i ? 4 : 1);
            pare_model *m = pare_sequential("big", pare_linear("fc", 300, 200), NULL);
            pare_build(m, 300, 0, 0);
            pare_optim_config c = pare_optim_defaults(kinds[kd], 0.01f);
            c.momentum = 0.9f;
            c.weight_decay = 0.01f;
            pare_optim *o = pare_optim_new(m, &c);
            pare_tensor *w = m->layers[0]->weight;
            n = w->size;
            for (int k = 0; k < 3; k++) {
                for (size_t j = 0; j < n; j++) w->grad[j] = gk(k, (int)j);
                pare_clip_grad_norm(o, 10.0);
                pare_step(o);
            }
            result[run_i] = pare_alloc(n * sizeof(float));
            memcpy(result[run_i], w->data, n * sizeof(float));
            pare_optim_free(o);
            pare_model_free(m);
        }
        CHECKF(memcmp(result[0], result[1], n * sizeof(float)) == 0, "kind %d differs between 1 and 4 threads", kd);
        pare_free(result[0]);
        pare_free(result[1]);
    }
    pare_set_threads(saved);
}

/* ---- pruning keeps zeros zero ---------------------------------------------- */
/* A pruning loop zeroes weights and their state once; from then on a zero
 * gradient must leave them exactly zero with no further masking: SGD's
 * buffer stays mu*0 + 0 and the step is 0 (weight decay of 0 is 0); Adam's
 * moments stay 0 and the step is 0 / (0 + eps) = 0; AdamW decays 0 to 0. */
TEST(pruned_entries_stay_zero)
{
    pare_optim_config cfgs[3];
    cfgs[0] = pare_optim_defaults(PARE_OPT_SGD, 0.1f);
    cfgs[0].momentum = 0.9f;
    cfgs[0].nesterov = 1;
    cfgs[0].weight_decay = 0.01f;
    cfgs[1] = pare_optim_defaults(PARE_OPT_ADAM, 0.1f);
    cfgs[1].weight_decay = 0.01f;
    cfgs[2] = pare_optim_defaults(PARE_OPT_ADAMW, 0.1f);
    const int pruned[3] = {1, 4, 6}; /* flat indices: two weights and a bias */
    for (int c = 0; c < 3; c++) {
        pare_model *m = tiny();
        pare_optim *o = pare_optim_new(m, &cfgs[c]);
        const char *state = c == 0 ? "momentum_buffer" : "exp_avg";
        for (int k = 0; k < 6; k++) {
            set_grads(m, k);
            for (int q = 0; q < 3; q++)
                if (k > 0) *at(m, pruned[q], 1) = 0.0f; /* the mask hook zeroes these grads */
            pare_step(o);
            for (int q = 0; q < 3; q++) {
                int j = pruned[q], pi = j < 6 ? 0 : 1, e = j < 6 ? j : j - 6;
                if (k == 0) { /* prune after the first step: weight and state */
                    *at(m, j, 0) = 0.0f;
                    pare_optim_state(o, pi, state)[e] = 0.0f;
                    if (c > 0) pare_optim_state(o, pi, "exp_avg_sq")[e] = 0.0f;
                } else {
                    CHECKF(*at(m, j, 0) == 0.0f, "config %d step %d: pruned weight %d became %g", c, k, j,
                           (double)*at(m, j, 0));
                    CHECK(pare_optim_state(o, pi, state)[e] == 0.0f);
                    if (c > 0) CHECK(pare_optim_state(o, pi, "exp_avg_sq")[e] == 0.0f);
                }
            }
        }
        CHECK(*at(m, 0, 0) != w0(0)); /* unpruned weights still train */
        pare_optim_free(o);
        pare_model_free(m);
    }
}

/* ---- clipping ---------------------------------------------------------------- */
TEST(clip_grad_norm_value_and_scaling)
{
    pare_model *m = tiny();
    pare_optim *o = pare_sgd(m, 0.1f, 0.0f);
    set_grads(m, 0);
    double sq = 0;
    float g0[NP];
    for (int j = 0; j < NP; j++) g0[j] = gk(0, j), sq += (double)g0[j] * g0[j];
    double norm = sqrt(sq);
    /* Above the norm: returned, nothing changes. */
    CHECK_NEAR(pare_clip_grad_norm(o, norm * 2), norm, 1e-12);
    int same = 1;
    for (int j = 0; j < NP; j++) same &= *at(m, j, 1) == g0[j];
    CHECK(same);
    /* Below: every grad scaled by max_norm / (norm + 1e-6); the new norm is max_norm. */
    CHECK_NEAR(pare_clip_grad_norm(o, 0.25), norm, 1e-12);
    double sq2 = 0;
    for (int j = 0; j < NP; j++) {
        CHECK_NEAR(*at(m, j, 1), g0[j] * (0.25 / (norm + 1e-6)), 1e-8);
        sq2 += (double)*at(m, j, 1) * *at(m, j, 1);
    }
    CHECK_NEAR(sqrt(sq2), 0.25, 1e-6);
    /* A 3-4-5 case by hand. */
    for (int j = 0; j < NP; j++) *at(m, j, 1) = 0.0f;
    *at(m, 2, 1) = 3.0f;
    *at(m, 7, 1) = -4.0f;
    CHECK_NEAR(pare_clip_grad_norm(o, 1.0), 5.0, 1e-12);
    CHECK_NEAR(*at(m, 2, 1), 0.6, 1e-6);
    CHECK_NEAR(*at(m, 7, 1), -0.8, 1e-6);
    /* Bad input and non-finite grads. */
    CHECK(pare_clip_grad_norm(o, -1.0) == -1.0 && strstr(pare_error(), "max_norm"));
    CHECK(pare_clip_grad_norm(o, NAN) == -1.0);
    *at(m, 0, 1) = INFINITY;
    CHECK(isinf(pare_clip_grad_norm(o, 1.0)));
    CHECK(*at(m, 2, 1) == *at(m, 2, 1) && fabs(*at(m, 2, 1) - 0.6) < 1e-6); /* left alone */
    pare_optim_free(o);
    pare_model_free(m);
}

/* ---- schedules --------------------------------------------------------------- */
TEST(lr_schedules_closed_forms)
{
    pare_lr_schedule c = {.kind = PARE_LR_CONSTANT, .base_lr = 0.05f};
    for (int e = 0; e < 5; e++) CHECK(pare_lr_at(&c, e) == 0.05f);

    pare_lr_schedule s = {.kind = PARE_LR_STEP, .base_lr = 0.1f, .step_size = 3, .gamma = 0.5f};
    const double step_expect[8] = {0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025};
    for (int e = 0; e < 8; e++) CHECK(pare_lr_at(&s, e) == (float)step_expect[e]);
    s.gamma = 0.1f;
    CHECK(pare_lr_at(&s, 6) == 0.001f); /* 0.1 * 0.1^2 rounded once, as PyTorch's double gives */

    pare_lr_schedule k = {.kind = PARE_LR_COSINE, .base_lr = 0.1f, .total = 10, .min_lr = 0.001f};
    CHECK(pare_lr_at(&k, 0) == 0.1f);
    CHECK(pare_lr_at(&k, 5) == (float)((0.1 + 0.001) / 2));
    CHECK(pare_lr_at(&k, 10) == 0.001f);
    for (int e = 0; e <= 12; e++) {
        double want = 0.001 + (0.1 - 0.001) * (1 + cos(3.14159265358979323846 * e / 10)) / 2;
        CHECK_NEAR(pare_lr_at(&k, e), want, 1e-7 * want); /* float rounding */
    }
    CHECK(pare_lr_at(&k, 3) > pare_lr_at(&k, 4));

    /* Bad schedules give NaN and a message. */
    pare_lr_schedule bad = s;
    bad.step_size = 0;
    CHECK(isnan(pare_lr_at(&bad, 1)) && strstr(pare_error(), "step_size"));
    bad = k;
    bad.total = 0;
    CHECK(isnan(pare_lr_at(&bad, 1)) && strstr(pare_error(), "total"));
    bad = c;
    bad.base_lr = -1;
    CHECK(isnan(pare_lr_at(&bad, 0)) && strstr(pare_error(), "base_lr"));
    CHECK(isnan(pare_lr_at(&c, -1)) && strstr(pare_error(), "epoch"));
    CHECK(isnan(pare_lr_at(NULL, 0)));
}

/* ---- bad configurations ---------------------------------------------------- */
static void expect_rejected(pare_model *m, pare_optim_config c, const char *word)
{
    pare_clear_error();
    pare_optim *o = pare_optim_new(m, &c);
    CHECKF(o == NULL, "accepted a bad config (expected an error about %s)", word);
    CHECKF(strstr(pare_error(), word) != NULL, "error '%s' does not mention '%s'", pare_error(), word);
    pare_optim_free(o);
}

TEST(bad_configs_rejected)
{
    pare_model *m = tiny();
    pare_optim_config c;
    c = pare_optim_defaults(PARE_OPT_SGD, 0.0f), expect_rejected(m, c, "learning rate");
    c = pare_optim_defaults(PARE_OPT_SGD, -0.1f), expect_rejected(m, c, "learning rate");
    c = pare_optim_defaults(PARE_OPT_ADAM, NAN), expect_rejected(m, c, "learning rate");
    c = pare_optim_defaults(PARE_OPT_ADAM, INFINITY), expect_rejected(m, c, "learning rate");
    c = pare_optim_defaults(PARE_OPT_SGD, 0.1f), c.momentum = -0.5f, expect_rejected(m, c, "momentum");
    c = pare_optim_defaults(PARE_OPT_SGD, 0.1f), c.nesterov = 1, expect_rejected(m, c, "Nesterov");
    c = pare_optim_defaults(PARE_OPT_SGD, 0.1f), c.nesterov = 1, c.momentum = 0.9f, c.dampening = 0.1f,
    expect_rejected(m, c, "dampening");
    c = pare_optim_defaults(PARE_OPT_SGD, 0.1f), c.weight_decay = -0.01f, expect_rejected(m, c, "weight_decay");
    c = pare_optim_defaults(PARE_OPT_ADAMW, 0.1f), c.weight_decay = NAN, expect_rejected(m, c, "weight_decay");
    c = pare_optim_defaults(PARE_OPT_ADAM, 0.1f), c.beta1 = 1.0f, expect_rejected(m, c, "betas");
    c = pare_optim_defaults(PARE_OPT_ADAMW, 0.1f), c.beta2 = -0.1f, expect_rejected(m, c, "betas");
    c = pare_optim_defaults(PARE_OPT_ADAM, 0.1f), c.eps = 0.0f, expect_rejected(m, c, "eps");
    c = pare_optim_defaults(PARE_OPT_ADAM, 0.1f), c.kind = (pare_optim_kind)7, expect_rejected(m, c, "kind");
    c = pare_optim_defaults(PARE_OPT_SGD, 0.1f);
    expect_rejected(NULL, c, "no model");
    CHECK(pare_optim_new(m, NULL) == NULL);

    pare_model *unbuilt = pare_sequential("u", pare_linear("fc", 3, 2), NULL);
    expect_rejected(unbuilt, c, "not built");
    pare_model_free(unbuilt);
    pare_model *empty = pare_sequential("e", pare_relu(), NULL);
    CHECK(pare_build(empty, 3, 0, 0) == 0);
    expect_rejected(empty, c, "no trainable parameters");
    pare_model_free(empty);

    /* The shorthands validate too, and good configs are accepted. */
    CHECK(pare_sgd(m, -1.0f, 0.9f) == NULL);
    CHECK(pare_adamw(m, 0.1f, -1.0f) == NULL);
    pare_optim *o = pare_sgd(m, 0.1f, 0.0f);
    CHECK(o != NULL);
    pare_optim_free(o);
    c = pare_optim_defaults(PARE_OPT_SGD, 0.1f), c.momentum = 0.9f, c.nesterov = 1;
    o = pare_optim_new(m, &c);
    CHECK(o != NULL);
    pare_optim_free(o);
    pare_model_free(m);
}

/* ---- end to end -------------------------------------------------------------- */
TEST(training_loop_reduces_loss)
{
    pare_model *m = pare_sequential("e2e", pare_linear("fc1", 2, 8), pare_tanh(), pare_linear("fc2", 8, 2), NULL);
    CHECK(pare_build(m, 2, 0, 0) == 0);
    pare_ctx *ctx = pare_ctx_new(0);
    const float xs[8] = {1, 1, -1, -1, 1, -1, -1, 1};
    const int ys[4] = {0, 0, 1, 1};
    pare_optim_kind kinds[2] = {PARE_OPT_SGD, PARE_OPT_ADAM};
    for (int kd = 0; kd < 2; kd++) {
        pare_optim_config c = pare_optim_defaults(kinds[kd], kd ? 0.05f : 0.2f);
        c.momentum = 0.9f;
        pare_optim *o = pare_optim_new(m, &c);
        float first = 0, last = 0;
        for (int it = 0; it < 60; it++) {
            pare_mark mk = pare_arena_mark(ctx);
            int shape[2] = {4, 2};
            pare_tensor *x = pare_ctx_tensor(ctx, 2, shape);
            memcpy(x->data, xs, sizeof xs);
            pare_tensor *loss = pare_cross_entropy(ctx, pare_forward(ctx, m, x), ys);
            if (it == 0) first = loss->data[0];
            last = loss->data[0];
            pare_backward(ctx, loss);
            pare_step(o);
            pare_arena_release(ctx, mk);
        }
        CHECKF(last < 0.1f * first, "kind %d: loss %g -> %g", kd, (double)first, (double)last);
        pare_optim_free(o);
    }
    pare_ctx_free(ctx);
    pare_model_free(m);
}
