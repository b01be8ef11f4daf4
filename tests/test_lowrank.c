/* Low rank: the Jacobi SVD (reconstruction, orthogonality, order, on random,
 * wide, ill-conditioned and rank-deficient matrices), the rank by energy,
 * and the layer split (full-rank equivalence for Linear and strided, padded
 * Conv2d; the Eckart-Young error at lower rank; save and reload; errors). */
#include <string.h>
#include <unistd.h>

#include "compress/compress.h"
#include "tests/test.h"

static double *rand_matrix(int m, int n, uint64_t seed)
{
    double *a = pare_alloc((size_t)m * n * sizeof(double));
    pare_rng r;
    pare_rng_seed(&r, seed, PARE_STREAM_TEST);
    for (int i = 0; i < m * n; i++) a[i] = pare_rng_normal(&r);
    return a;
}

/* Worst |Q^T Q - I| over the k columns of a row-major rows x k matrix. */
static double orthogonality_error(const double *q, int rows, int k)
{
    double worst = 0;
    for (int a = 0; a < k; a++)
        for (int b = 0; b < k; b++) {
            double d = 0;
            for (int i = 0; i < rows; i++) d += q[i * k + a] * q[i * k + b];
            worst = fmax(worst, fabs(d - (a == b)));
        }
    return worst;
}

/* Worst |A - U S V^T| relative to the largest |A|. */
static double reconstruction_error(const double *a, const double *u, const double *s, const double *v, int m, int n)
{
    int k = m < n ? m : n;
    double worst = 0, big = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double x = 0;
            for (int r = 0; r < k; r++) x += u[i * k + r] * s[r] * v[j * k + r];
            worst = fmax(worst, fabs(x - a[i * n + j]));
            big = fmax(big, fabs(a[i * n + j]));
        }
    return big > 0 ? worst / big : worst;
}

static int sorted_nonnegative(const double *s, int k)
{
    for (int i = 0; i < k; i++)
        if (s[i] < 0 || (i && s[i] > s[i - 1])) return 0;
    return 1;
}

typedef struct svd_out {
    double *u, *s, *v;
} svd_out;

static int run_svd(const double *a, int m, int n, svd_out *o)
{
    int k = m < n ? m : n;
    o->u = pare_alloc((size_t)m * k * sizeof(double));
    o->s = pare_alloc((size_t)k * sizeof(double));
    o->v = pare_alloc((size_t)n * k * sizeof(double));
    return pare_svd(a, m, n, o->u, o->s, o->v);
}

static void svd_out_free(svd_out *o)
{
    pare_free(o->u);
    pare_free(o->s);
    pare_free(o->v);
}

static void check_svd(const double *a, int m, int n, int check_u)
{
    svd_out o;
    int k = m < n ? m : n;
    CHECKF(run_svd(a, m, n, &o) == 0, "%s", pare_error());
    double rec = reconstruction_error(a, o.u, o.s, o.v, m, n);
    double ou = check_u ? orthogonality_error(o.u, m, k) : 0, ov = orthogonality_error(o.v, n, k);
    CHECKF(rec < 1e-12 && ou < 1e-12 && ov < 1e-12, "%dx%d: reconstruction %g, U^T U - I %g, V^T V - I %g", m, n, rec,
           ou, ov);
    CHECK(sorted_nonnegative(o.s, k));
    svd_out_free(&o);
}

TEST(svd_random_tall_wide_and_square)
{
    const int sizes[][2] = {{1, 1}, {1, 6}, {6, 1}, {7, 5}, {5, 7}, {12, 12}, {40, 9}, {9, 40}};
    for (int i = 0; i < (int)(sizeof sizes / sizeof sizes[0]); i++) {
        double *a = rand_matrix(sizes[i][0], sizes[i][1], 100 + i);
        check_svd(a, sizes[i][0], sizes[i][1], 1);
        pare_free(a);
    }
}

/* Q (rows x cols, orthonormal columns) by Gram-Schmidt twice over a random matrix. */
static double *orthonormal(int rows, int cols, uint64_t seed)
{
    double *q = rand_matrix(rows, cols, seed);
    for (int pass = 0; pass < 2; pass++)
        for (int j = 0; j < cols; j++) {
            for (int p = 0; p < j; p++) {
                double d = 0;
                for (int i = 0; i < rows; i++) d += q[i * cols + j] * q[i * cols + p];
                for (int i = 0; i < rows; i++) q[i * cols + j] -= d * q[i * cols + p];
            }
            double nn = 0;
            for (int i = 0; i < rows; i++) nn += q[i * cols + j] * q[i * cols + j];
            for (int i = 0; i < rows; i++) q[i * cols + j] /= sqrt(nn);
        }
    return q;
}

/* A = Q1 diag(sigma) Q2^T with singular values from 1 down to 1e-12. */
TEST(svd_ill_conditioned_keeps_small_singular_values)
{
    enum { M = 10, N = 8 };
    double *q1 = orthonormal(M, N, 1), *q2 = orthonormal(N, N, 2), sigma[N], a[M * N];
    for (int j = 0; j < N; j++) sigma[j] = pow(10.0, -12.0 * j / (N - 1));
    for (int i = 0; i < M; i++)
        for (int c = 0; c < N; c++) {
            double x = 0;
            for (int j = 0; j < N; j++) x += q1[i * N + j] * sigma[j] * q2[c * N + j];
            a[i * N + c] = x;
        }
    check_svd(a, M, N, 0);
    svd_out o;
    CHECK(run_svd(a, M, N, &o) == 0);
    /* The large ones to double precision; the tiny ones to what the rounding
     * of A itself (about 1e-16 absolute) allows. */
    for (int j = 0; j < N; j++)
        CHECKF(fabs(o.s[j] - sigma[j]) <= 1e-12 * sigma[j] + 1e-15, "sigma %d: %.17g, expected %.17g", j, o.s[j],
               sigma[j]);
    /* U's columns for values well above the rounding are orthonormal too. */
    double worst = 0;
    for (int p = 0; p < 5; p++) {
        double d = 0;
        for (int i = 0; i < M; i++) d += o.u[i * N + p] * o.u[i * N + p];
        worst = fmax(worst, fabs(d - 1));
    }
    CHECKF(worst < 1e-9, "|u_j| - 1 up to %g", worst);
    svd_out_free(&o);
    pare_free(q1);
    pare_free(q2);
}

TEST(svd_rank_deficient_and_zero)
{
    enum { M = 6, N = 4 };
    double a[M * N], zero[M * N] = {0};
    double *x = rand_matrix(M, 2, 7), *y = rand_matrix(2, N, 8);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) a[i * N + j] = x[i * 2] * y[j] + x[i * 2 + 1] * y[N + j];
    svd_out o;
    CHECK(run_svd(a, M, N, &o) == 0);
    CHECK(o.s[1] > 0.1 && o.s[2] < 1e-12 * o.s[0] && o.s[3] < 1e-12 * o.s[0]);
    CHECK(reconstruction_error(a, o.u, o.s, o.v, M, N) < 1e-12 && orthogonality_error(o.v, N, N) < 1e-12);
    svd_out_free(&o);
    CHECK(run_svd(zero, M, N, &o) == 0);
    CHECK(o.s[0] == 0 && o.s[3] == 0 && orthogonality_error(o.v, N, N) == 0);
    svd_out_free(&o);
    CHECK(pare_svd(a, 0, N, NULL, NULL, NULL) == -1);
    pare_free(x);
    pare_free(y);
}

TEST(rank_for_energy)
{
    const double s[3] = {3, 2, 1}; /* energies 9, 4, 1 of 14 */
    CHECK(pare_rank_for_energy(s, 3, 0.5) == 1);
    CHECK(pare_rank_for_energy(s, 3, 9.0 / 14) == 1);
    CHECK(pare_rank_for_energy(s, 3, 0.9) == 2);
    CHECK(pare_rank_for_energy(s, 3, 0.95) == 3);
    CHECK(pare_rank_for_energy(s, 3, 1.0) == 3);
    CHECK(pare_rank_for_energy(s, 3, 0) == -1);
    CHECK(strstr(pare_error(), "(0, 1]") != NULL);
    CHECK(pare_rank_for_energy(s, 3, 1.5) == -1);
    const double z[2] = {0, 0};
    CHECK(pare_rank_for_energy(z, 2, 0.9) == 1);
}

/* ---- layers --------------------------------------------------------------------------- */
static pare_tensor *input(int n, int c, int h, int w, uint64_t seed)
{
    int shape[4] = {n, c, h, w};
    pare_tensor *x = pare_tensor_persistent(h ? 4 : 2, shape, 0);
    pare_rng r;
    pare_rng_seed(&r, seed, PARE_STREAM_TEST);
    for (size_t i = 0; i < x->size; i++) x->data[i] = pare_rng_range(&r, -1.0f, 1.0f);
    return x;
}

/* Model output for x as a heap copy. */
static float *outputs(pare_model *m, pare_tensor *x, size_t *n)
{
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    pare_model_train(m, 0);
    pare_tensor *y = pare_forward(ctx, m, x);
    float *out = pare_alloc(y->size * sizeof(float));
    memcpy(out, y->data, y->size * sizeof(float));
    *n = y->size;
    pare_ctx_free(ctx);
    return out;
}

static double max_diff(const float *a, const float *b, size_t n)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)a[i] - b[i]));
    return worst;
}

static pare_model *mlp_model(void)
{
    pare_model *m =
        pare_sequential("mlp", pare_linear("fc1", 20, 12), pare_relu(), pare_linear_nobias("fc2", 12, 5), NULL);
    m->seed = 3;
    PARE_CHECK(pare_build(m, 20, 0, 0) == 0, "%s", pare_error());
    return m;
}

/* Conv with stride 2 and padding 1, then one followed by ReLU and MaxPool
 * (the fused path), then a Linear. */
static pare_model *cnn_model(void)
{
    pare_model *m =
        pare_sequential("cnn", pare_conv2d_ex("conv1", 3, 6, 3, 2, 1, 1), pare_relu(), pare_conv2d("conv2", 6, 8, 3),
                        pare_relu(), pare_maxpool2d(2), pare_flatten(), pare_linear("fc1", 8 * 1 * 1, 4), NULL);
    m->seed = 4;
    PARE_CHECK(pare_build(m, 3, 9, 9) == 0, "%s", pare_error());
    return m;
}

TEST(lowrank_linear_full_rank_is_equivalent)
{
    pare_model *m = mlp_model();
    pare_tensor *x = input(7, 20, 0, 0, 1);
    size_t n0, n1;
    float *before = outputs(m, x, &n0);
    CHECK(pare_lowrank_max_rank(m, "fc1") == 12 && pare_lowrank_max_rank(m, "fc2") == 5);
    CHECKF(pare_lowrank_layer(m, "fc1", 12) == 0, "%s", pare_error());
    CHECKF(pare_lowrank_layer(m, "fc2", 5) == 0, "%s", pare_error());
    float *after = outputs(m, x, &n1);
    CHECK(n0 == n1 && max_diff(before, after, n0) < 1e-4);
    pare_layer *a = pare_model_find(m, "fc1.0"), *b = pare_model_find(m, "fc1.1");
    CHECK(a && b && !pare_model_find(m, "fc1") && m->n_layers == 5);
    CHECK(a && !a->bias && a->weight->shape[0] == 12 && a->weight->shape[1] == 20);
    CHECK(b && b->bias && b->weight->shape[0] == 12 && b->weight->shape[1] == 12);
    CHECK(!pare_model_find(m, "fc2.1")->bias); /* no bias before, none after */
    pare_free(before);
    pare_free(after);
    pare_tensor_free(x);
    pare_model_free(m);
}

TEST(lowrank_conv_full_rank_is_equivalent_with_stride_and_padding)
{
    pare_model *m = cnn_model();
    pare_tensor *x = input(5, 3, 9, 9, 2);
    size_t n0, n1;
    float *before = outputs(m, x, &n0);
    CHECK(pare_lowrank_max_rank(m, "conv1") == 6 && pare_lowrank_max_rank(m, "conv2") == 8);
    CHECKF(pare_lowrank_layer(m, "conv1", 6) == 0, "%s", pare_error());
    CHECKF(pare_lowrank_layer(m, "conv2", 8) == 0, "%s", pare_error());
    float *after = outputs(m, x, &n1);
    CHECKF(n0 == n1 && max_diff(before, after, n0) < 1e-4, "outputs differ by %g", max_diff(before, after, n0));
    pare_layer *a = pare_model_find(m, "conv1.0"), *b = pare_model_find(m, "conv1.1");
    CHECK(a && a->kernel == 3 && a->stride == 2 && a->pad == 1 && !a->bias && a->out_features == 6);
    CHECK(b && b->kernel == 1 && b->stride == 1 && b->pad == 0 && b->bias && b->in_features == 6);
    CHECK(a && a->out_shape[1] == 5 && a->out_shape[2] == 5);
    pare_free(before);
    pare_free(after);
    pare_tensor_free(x);
    pare_model_free(m);
}

/* At rank r the product of the factors is the best rank-r approximation:
 * its squared Frobenius error is the sum of the dropped sigma^2. */
TEST(lowrank_truncation_error_is_the_dropped_energy)
{
    pare_model *m = mlp_model();
    pare_layer *l = pare_model_find(m, "fc1");
    int rows = 12, cols = 20, r = 4;
    double a[12 * 20], u[12 * 12], s[12], v[20 * 12];
    for (int i = 0; i < rows * cols; i++) a[i] = l->weight->data[i];
    CHECK(pare_svd(a, rows, cols, u, s, v) == 0);
    double dropped = 0;
    for (int j = r; j < 12; j++) dropped += s[j] * s[j];
    CHECK(pare_lowrank_params(m, "fc1", r) == (size_t)(r * (rows + cols) + rows));
    CHECK(pare_lowrank_layer(m, "fc1", r) == 0);
    const float *w0 = pare_model_find(m, "fc1.0")->weight->data, *w1 = pare_model_find(m, "fc1.1")->weight->data;
    double err = 0;
    for (int i = 0; i < rows; i++)
        for (int c = 0; c < cols; c++) {
            double x = 0;
            for (int j = 0; j < r; j++) x += (double)w1[i * r + j] * w0[j * cols + c];
            err += (x - a[i * cols + c]) * (x - a[i * cols + c]);
        }
    CHECKF(fabs(err - dropped) < 1e-5 * (1 + dropped), "error %g, dropped energy %g", err, dropped);
    pare_model_free(m);
}

TEST(lowrank_energy_rank_of_a_layer)
{
    pare_model *m = mlp_model();
    int r90 = pare_lowrank_energy_rank(m, "fc1", 0.9), r100 = pare_lowrank_energy_rank(m, "fc1", 1.0);
    CHECK(r90 >= 1 && r90 < 12 && r100 == 12);
    CHECK(pare_lowrank_energy_rank(m, "fc1", 0) == -1);
    pare_model_free(m);
}

TEST(lowrank_model_saves_and_reloads_from_its_file)
{
    pare_model *m = cnn_model();
    CHECK(pare_lowrank_layer(m, "conv2", 3) == 0 && pare_lowrank_layer(m, "fc1", 2) == 0);
    char path[64];
    snprintf(path, sizeof path, "/tmp/pare_test_lowrank_%d.safetensors", (int)getpid());
    CHECKF(pare_save(m, path, NULL) == 0, "%s", pare_error());
    pare_model *back = pare_load(path, NULL);
    CHECKF(back != NULL, "%s", pare_error());
    if (back) {
        pare_tensor *x = input(3, 3, 9, 9, 5);
        size_t n0, n1;
        float *a = outputs(m, x, &n0), *b = outputs(back, x, &n1);
        CHECK(n0 == n1 && memcmp(a, b, n0 * sizeof(float)) == 0);
        CHECK(!pare_model_find(back, "conv2.0")->bias && pare_model_find(back, "conv2.1")->kernel == 1);
        CHECK(pare_model_param_count(back) == pare_model_param_count(m));
        pare_free(a);
        pare_free(b);
        pare_tensor_free(x);
        pare_model_free(back);
    }
    remove(path);
    pare_model_free(m);
}

static pare_tensor *identity_hook(pare_ctx *ctx, pare_hook *self, pare_layer *layer, pare_tensor *t)
{
    (void)ctx, (void)self, (void)layer;
    return t;
}

TEST(lowrank_bad_arguments_leave_the_model_unchanged)
{
    pare_model *m = mlp_model();
    int n = m->n_layers;
    size_t params = pare_model_param_count(m);
    CHECK(pare_lowrank_layer(m, "fc9", 2) == -1 && strstr(pare_error(), "no layer named 'fc9'"));
    CHECK(pare_lowrank_layer(m, "fc1", 0) == -1 && strstr(pare_error(), "outside [1, 12]"));
    CHECK(pare_lowrank_layer(m, "fc1", 13) == -1 && strstr(pare_error(), "outside [1, 12]"));
    CHECK(pare_lowrank_max_rank(m, "fc9") == -1);
    pare_model *c = cnn_model();
    CHECK(pare_lowrank_layer(c, "", 1) == -1);
    pare_model_free(c);
    static pare_hook hook = {"mask", identity_hook, NULL, NULL, 0, {0}, {0}, NULL};
    pare_layer *fc2 = pare_model_find(m, "fc2");
    CHECK(pare_hook_add(&fc2->weight_hooks, &hook) == 0);
    CHECK(pare_lowrank_layer(m, "fc2", 2) == -1 && strstr(pare_error(), "has hooks"));
    fc2->weight_hooks.n = 0; /* the hook is static: nothing to destroy */
    CHECK(m->n_layers == n && pare_model_param_count(m) == params && m->built);
    /* Splitting twice would need the names again. */
    CHECK(pare_lowrank_layer(m, "fc1", 3) == 0);
    pare_layer *taken = pare_linear("fc2.0", 1, 1);
    CHECK(pare_model_insert(m, m->n_layers, taken) == 0);
    CHECK(pare_lowrank_layer(m, "fc2", 2) == -1 && strstr(pare_error(), "not built"));
    m->built = 1; /* pretend, to reach the name check */
    CHECK(pare_lowrank_layer(m, "fc2", 2) == -1 && strstr(pare_error(), "taken"));
    pare_model_free(m);
}
