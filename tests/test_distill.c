/* Knowledge distillation: the KD loss (gradcheck, value against an
 * independent double computation, T^2 scaling, alpha = 0 is plain
 * cross-entropy bit for bit) and the training loop (the teacher untouched,
 * the student learning, bad configurations refused). */
#include <string.h>

#include "compress/compress.h"
#include "tests/test.h"

enum { KN = 6, KK = 5 };
static const int kd_labels[KN] = {0, 3, 2, 4, 1, 3};

static pare_tensor *rand_tensor(int n, int k, float scale, uint64_t seed, int with_grad)
{
    int shape[2] = {n, k};
    pare_tensor *t = pare_tensor_persistent(2, shape, with_grad);
    pare_rng r;
    pare_rng_seed(&r, seed, PARE_STREAM_TEST);
    for (size_t i = 0; i < t->size; i++) t->data[i] = scale * pare_rng_range(&r, -1.0f, 1.0f);
    return t;
}

/* The loss from its definition, in double, with no shared code. */
static double kd_reference(const float *s, const float *t, const int *labels, int N, int K, double T, double alpha)
{
    double total = 0;
    for (int i = 0; i < N; i++) {
        double zs = 0, zt = 0, z1 = 0, kl = 0;
        for (int k = 0; k < K; k++) {
            zs += exp(s[i * K + k] / T);
            zt += exp(t[i * K + k] / T);
            z1 += exp((double)s[i * K + k]);
        }
        for (int k = 0; k < K; k++) {
            double pt = exp(t[i * K + k] / T) / zt, ps = exp(s[i * K + k] / T) / zs;
            kl += pt * log(pt / ps);
        }
        double ce = -log(exp((double)s[i * K + labels[i]]) / z1);
        total += alpha * T * T * kl + (1 - alpha) * ce;
    }
    return total / N;
}

typedef struct kd_args {
    pare_tensor *teacher;
    float T, alpha;
} kd_args;

static pare_tensor *f_kd(pare_ctx *c, pare_tensor **x, void *u)
{
    kd_args *a = u;
    return pare_kd_loss(c, x[0], a->teacher, kd_labels, a->T, a->alpha);
}

TEST(kd_loss_gradcheck)
{
    const float Ts[3] = {1.0f, 4.0f, 20.0f}, alphas[3] = {0.5f, 0.9f, 1.0f};
    for (int i = 0; i < 3; i++) {
        pare_tensor *s = rand_tensor(KN, KK, 3.0f, 10 + i, 1), *t = rand_tensor(KN, KK, 3.0f, 20 + i, 0);
        kd_args a = {t, Ts[i], alphas[i]};
        pare_gradcheck_result r = pare_gradcheck(f_kd, &s, 1, &a, 1e-2, 2e-3, 2e-2);
        CHECKF(r.worst_ratio <= 1.0, "gradcheck kd_loss T=%g: index %d analytic %.6g numeric %.6g", (double)Ts[i],
               r.worst_index, r.analytic, r.numeric);
        pare_tensor_free(s);
        pare_tensor_free(t);
    }
}

TEST(kd_loss_value_matches_double_reference)
{
    pare_tensor *s = rand_tensor(KN, KK, 8.0f, 1, 1), *t = rand_tensor(KN, KK, 8.0f, 2, 0);
    pare_ctx *ctx = pare_ctx_new(0);
    const float Ts[3] = {1.0f, 4.0f, 20.0f}, alphas[3] = {0.0f, 0.9f, 1.0f};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            double want = kd_reference(s->data, t->data, kd_labels, KN, KK, Ts[i], alphas[j]);
            double got = pare_kd_loss(ctx, s, t, kd_labels, Ts[i], alphas[j])->data[0];
            CHECKF(fabs(got - want) <= 1e-6 * (1 + fabs(want)), "T %g alpha %g: %.9g, expected %.9g", (double)Ts[i],
                   (double)alphas[j], got, want);
        }
    /* Logits far apart (a confident teacher) stay finite: log-sum-exp. */
    for (size_t i = 0; i < s->size; i++) t->data[i] *= 100.0f, s->data[i] *= -100.0f;
    CHECK(isfinite(pare_kd_loss(ctx, s, t, kd_labels, 1.0f, 0.5f)->data[0]));
    pare_ctx_free(ctx);
    pare_tensor_free(s);
    pare_tensor_free(t);
}

/* Loss value and gradient wrt s, from a fresh tape. */
static float loss_and_grad(pare_ctx *ctx, pare_tensor *s, pare_tensor *t, float T, float alpha, float *grad)
{
    pare_mark mark = pare_arena_mark(ctx);
    memset(s->grad, 0, s->size * sizeof(float));
    pare_tensor *loss = t ? pare_kd_loss(ctx, s, t, kd_labels, T, alpha) : pare_cross_entropy(ctx, s, kd_labels);
    float v = loss->data[0];
    pare_backward(ctx, loss);
    memcpy(grad, s->grad, s->size * sizeof(float));
    pare_arena_release(ctx, mark);
    return v;
}

TEST(kd_loss_alpha_zero_is_cross_entropy_bit_for_bit)
{
    pare_tensor *s = rand_tensor(KN, KK, 5.0f, 3, 1), *t = rand_tensor(KN, KK, 5.0f, 4, 0);
    pare_ctx *ctx = pare_ctx_new(0);
    float g_kd[KN * KK], g_ce[KN * KK];
    float v_kd = loss_and_grad(ctx, s, t, 4.0f, 0.0f, g_kd), v_ce = loss_and_grad(ctx, s, NULL, 0, 0, g_ce);
    CHECK(memcmp(&v_kd, &v_ce, sizeof v_kd) == 0);
    CHECK(memcmp(g_kd, g_ce, sizeof g_kd) == 0);
    pare_ctx_free(ctx);
    pare_tensor_free(s);
    pare_tensor_free(t);
}

static double norm(const float *g, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)g[i] * g[i];
    return sqrt(s);
}

/* The T^2 factor makes the soft term's gradient nearly independent of T at
 * high temperature (Hinton et al. 2015, section 2): without it the gradient
 * would shrink as 1/T^2 (4x from T = 8 to 16). With alpha = 1 the gradient is
 * T (p_s - p_t) / N exactly; check that against double too. */
TEST(kd_loss_t_squared_scaling)
{
    pare_tensor *s = rand_tensor(KN, KK, 2.0f, 5, 1), *t = rand_tensor(KN, KK, 2.0f, 6, 0);
    pare_ctx *ctx = pare_ctx_new(0);
    float g8[KN * KK], g16[KN * KK], g32[KN * KK];
    loss_and_grad(ctx, s, t, 8.0f, 1.0f, g8);
    loss_and_grad(ctx, s, t, 16.0f, 1.0f, g16);
    loss_and_grad(ctx, s, t, 32.0f, 1.0f, g32);
    double n8 = norm(g8, KN * KK), n16 = norm(g16, KN * KK), n32 = norm(g32, KN * KK);
    CHECKF(n8 > 0 && fabs(n16 / n8 - 1) < 0.02 && fabs(n32 / n16 - 1) < 0.01,
           "gradient norms at T = 8, 16, 32: %g %g %g", n8, n16, n32);
    double T = 16, worst = 0;
    for (int i = 0; i < KN; i++) {
        double zs = 0, zt = 0;
        for (int k = 0; k < KK; k++) zs += exp(s->data[i * KK + k] / T), zt += exp(t->data[i * KK + k] / T);
        for (int k = 0; k < KK; k++) {
            double want = T * (exp(s->data[i * KK + k] / T) / zs - exp(t->data[i * KK + k] / T) / zt) / KN;
            worst = fmax(worst, fabs(g16[i * KK + k] - want));
        }
    }
    CHECKF(worst < 1e-7, "alpha 1 gradient off by %g from T (p_s - p_t) / N", worst);
    pare_ctx_free(ctx);
    pare_tensor_free(s);
    pare_tensor_free(t);
}

/* softmax(./T) cannot tell logits from their log-softmax: a LogSoftmax output
 * works as teacher logits too. */
TEST(kd_loss_teacher_log_softmax_is_equivalent)
{
    pare_tensor *s = rand_tensor(KN, KK, 3.0f, 7, 0), *t = rand_tensor(KN, KK, 3.0f, 8, 0);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_tensor *lt = pare_f_log_softmax(ctx, t);
    double a = pare_kd_loss(ctx, s, t, kd_labels, 4.0f, 0.9f)->data[0];
    double b = pare_kd_loss(ctx, s, lt, kd_labels, 4.0f, 0.9f)->data[0];
    CHECK_NEAR(a, b, 1e-5);
    pare_ctx_free(ctx);
    pare_tensor_free(s);
    pare_tensor_free(t);
}

/* ---- the loop ----------------------------------------------------------------------- */
static pare_dataset *toy_digits(int n, uint64_t seed)
{
    pare_dataset *ds = pare_calloc(sizeof *ds);
    ds->n = n, ds->rows = 12, ds->cols = 12, ds->n_classes = 10;
    ds->images = pare_alloc((size_t)n * 144);
    ds->labels = pare_alloc((size_t)n);
    pare_rng r;
    pare_rng_seed(&r, seed, PARE_STREAM_TEST);
    for (int i = 0; i < n; i++) {
        int c = (int)pare_rng_below(&r, 10);
        ds->labels[i] = (uint8_t)c;
        uint8_t *img = ds->images + (size_t)i * 144;
        for (int p = 0; p < 144; p++) img[p] = (uint8_t)pare_rng_below(&r, 60);
        for (int y = (c / 5) * 6; y < (c / 5) * 6 + 5; y++)
            for (int x = (c % 5) * 2; x < (c % 5) * 2 + 3; x++) img[y * 12 + x] = 250;
    }
    return ds;
}

static pare_model *built(pare_model *m, uint64_t seed)
{
    m->seed = seed;
    PARE_CHECK(pare_build(m, 1, 12, 12) == 0, "%s", pare_error());
    return m;
}

static pare_model *toy_teacher(void)
{
    /* Dropout and BatchNorm: both must behave as in eval mode. */
    return built(pare_sequential("teacher", pare_conv2d("conv1", 1, 8, 3), pare_batchnorm2d("bn1", 8), pare_relu(),
                                 pare_maxpool2d(2), pare_flatten(), pare_dropout(0.3f), pare_linear("fc1", 200, 10),
                                 pare_log_softmax(), NULL),
                 11);
}

static pare_model *toy_student(int classes)
{
    return built(pare_sequential("student", pare_flatten(), pare_linear("fc1", 144, 16), pare_relu(),
                                 pare_linear("fc2", 16, classes), pare_log_softmax(), NULL),
                 12);
}

/* Every saved tensor of m (weights, BatchNorm running statistics), or with
 * grads = 1 the parameters' gradients (zeros where none), concatenated. */
static float *snapshot_of(pare_model *m, size_t *n, int grads)
{
    pare_param p[16];
    int k = pare_model_tensors(m, p, 16);
    size_t total = 0;
    for (int i = 0; i < k; i++) total += p[i].t->size;
    float *out = pare_alloc(total * sizeof(float)), *w = out;
    for (int i = 0; i < k; i++) {
        const float *src = grads ? p[i].t->grad : p[i].t->data;
        if (src)
            memcpy(w, src, p[i].t->size * sizeof(float));
        else
            memset(w, 0, p[i].t->size * sizeof(float));
        w += p[i].t->size;
    }
    *n = total;
    return out;
}

static float *snapshot(pare_model *m, size_t *n)
{
    return snapshot_of(m, n, 0);
}

TEST(distill_leaves_the_teacher_untouched_and_teaches_the_student)
{
    pare_dataset *ds = toy_digits(256, 1);
    pare_model *teacher = toy_teacher(), *student = toy_student(10);
    pare_loader *ld = pare_loader_new(ds, NULL, ds->n, NULL);
    pare_ctx *ctx = pare_ctx_new(0);
    /* A teacher worth listening to: a few epochs of ordinary training first. */
    pare_optim *ot = pare_sgd(teacher, 0.05f, 0.9f);
    pare_fit_config fc = pare_fit_defaults(3);
    fc.progress = 0;
    CHECK(pare_fit(ctx, teacher, ot, ld, &fc, NULL) == 0);
    pare_optim_free(ot);
    pare_model_train(teacher, 1); /* distill must switch it to eval and back */
    size_t n_before, n_after;
    float *before = snapshot(teacher, &n_before), *grad_before = snapshot_of(teacher, &n_before, 1);
    double teacher_acc = pare_evaluate(ctx, teacher, ld, NULL);

    pare_optim *o = pare_sgd(student, 0.01f, 0.9f);
    pare_distill_config dc = pare_distill_defaults();
    dc.progress = 0;
    pare_epoch_stats st;
    CHECKF(pare_distill(ctx, student, teacher, o, ld, &dc, &st) == 0, "%s", pare_error());
    float *after = snapshot(teacher, &n_after), *grad_after = snapshot_of(teacher, &n_after, 1);
    CHECK(n_before == n_after && memcmp(before, after, n_before * sizeof(float)) == 0);
    /* No gradient reached the teacher: its forward left nothing on the tape. */
    CHECK(memcmp(grad_before, grad_after, n_before * sizeof(float)) == 0);
    CHECK(teacher->training == 1);
    CHECK(pare_evaluate(ctx, teacher, ld, NULL) == teacher_acc);
    CHECKF(st.steps == 4 && isfinite(st.loss), "steps %d loss %g", st.steps, st.loss);
    double acc = pare_evaluate(ctx, student, ld, NULL);
    CHECKF(acc > 0.5, "student accuracy %g after distillation", acc);

    pare_free(before);
    pare_free(after);
    pare_free(grad_before);
    pare_free(grad_after);
    pare_optim_free(o);
    pare_ctx_free(ctx);
    pare_loader_free(ld);
    pare_model_free(teacher);
    pare_model_free(student);
    pare_dataset_free(ds);
}

static int error_has(const char *needle)
{
    return strstr(pare_error(), needle) != NULL;
}

TEST(distill_refuses_bad_configurations)
{
    pare_dataset *ds = toy_digits(64, 2);
    pare_model *teacher = toy_teacher(), *student = toy_student(10), *odd = toy_student(7);
    pare_loader *ld = pare_loader_new(ds, NULL, ds->n, NULL);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_optim *o = pare_sgd(student, 0.01f, 0.9f);
    pare_distill_config dc = pare_distill_defaults();
    dc.progress = 0;
    dc.alpha = 1.5f;
    CHECK(pare_distill(ctx, student, teacher, o, ld, &dc, NULL) == -1);
    CHECKF(error_has("alpha in [0, 1]"), "%s", pare_error());
    dc.alpha = 0.5f;
    dc.temperature = 0;
    CHECK(pare_distill(ctx, student, teacher, o, ld, &dc, NULL) == -1);
    CHECKF(error_has("temperature > 0"), "%s", pare_error());
    dc.temperature = 4;
    CHECK(pare_distill(ctx, odd, teacher, o, ld, &dc, NULL) == -1);
    CHECKF(error_has("as many classes"), "%s", pare_error());
    pare_model *flat = pare_sequential("flat", pare_linear("fc1", 100, 10), NULL);
    PARE_CHECK(pare_build(flat, 100, 0, 0) == 0, "%s", pare_error());
    CHECK(pare_distill(ctx, flat, teacher, o, ld, &dc, NULL) == -1);
    CHECKF(error_has("inputs of different sizes"), "%s", pare_error());
    pare_model_free(flat);
    pare_optim_free(o);
    pare_ctx_free(ctx);
    pare_loader_free(ld);
    pare_model_free(teacher);
    pare_model_free(student);
    pare_model_free(odd);
    pare_dataset_free(ds);
}
