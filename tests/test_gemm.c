/* pare_sgemm against pare_sgemm_reference.
 *
 * Two kinds of data. Small integers (|x| <= 3) make every product and partial
 * sum exact in float, so the fast kernel must match the reference bit for bit:
 * any wrong index, lost term or bad edge shows up, however large K is. Uniform
 * reals check ordinary rounding against a bound that grows with K. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "tensor/tensor.h"
#include "tests/test.h"

typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc;
    float *A, *B, *C, *R;
} gcase;

static void fill(pare_rng *r, float *x, size_t n, int integers)
{
    for (size_t i = 0; i < n; i++)
        x[i] = integers ? (float)((int)pare_rng_below(r, 7) - 3) : pare_rng_range(r, -1.0f, 1.0f);
}

/* Random operands for op(A) M x K and op(B) K x N with padded leading dimensions. */
static void case_new(gcase *g, pare_rng *r, int ta, int tb, int M, int N, int K, int integers)
{
    g->ta = ta;
    g->tb = tb;
    g->M = M;
    g->N = N;
    g->K = K;
    int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    g->lda = ac + (int)pare_rng_below(r, 3);
    g->ldb = bc + (int)pare_rng_below(r, 3);
    g->ldc = N + (int)pare_rng_below(r, 3);
    size_t na = (size_t)ar * g->lda, nb = (size_t)br * g->ldb, nc = (size_t)M * g->ldc;
    g->A = pare_alloc((na ? na : 1) * sizeof(float));
    g->B = pare_alloc((nb ? nb : 1) * sizeof(float));
    g->C = pare_alloc((nc ? nc : 1) * sizeof(float));
    g->R = pare_alloc((nc ? nc : 1) * sizeof(float));
    fill(r, g->A, na, integers);
    fill(r, g->B, nb, integers);
    fill(r, g->C, nc, integers);
    memcpy(g->R, g->C, nc * sizeof(float));
}

static void case_free(gcase *g)
{
    pare_free(g->A);
    pare_free(g->B);
    pare_free(g->C);
    pare_free(g->R);
}

static void run_fast(gcase *g, float alpha, float beta)
{
    pare_sgemm(g->ta, g->tb, g->M, g->N, g->K, alpha, g->A, g->lda, g->B, g->ldb, beta, g->C, g->ldc);
}

static void run_ref(gcase *g, float alpha, float beta)
{
    pare_sgemm_reference(g->ta, g->tb, g->M, g->N, g->K, alpha, g->A, g->lda, g->B, g->ldb, beta, g->R, g->ldc);
}

/* Counts elements of C (including the padding past N, which must be untouched)
 * that differ from R by more than the tolerance; exact when tol_per_k == 0. */
static int mismatches(const gcase *g, float alpha, float beta, const float *C0, double tol_per_k)
{
    int bad = 0;
    for (int i = 0; i < g->M; i++)
        for (int j = 0; j < g->ldc; j++) {
            size_t at = (size_t)i * g->ldc + j;
            float c = g->C[at], r = g->R[at];
            if (j >= g->N) {
                bad += memcmp(&c, &C0[at], sizeof c) != 0;
                continue;
            }
            double tol = 0;
            if (tol_per_k > 0) {
                /* |a|, |b| <= 1: a K-term dot product rounds by at most ~K eps. */
                double mag = fabs(alpha) * g->K + (beta != 0.0f ? fabs(beta) * fabs(C0[at]) : 0.0);
                tol = tol_per_k * (g->K + 2) * mag + 1e-30;
            }
            if (!(fabs((double)c - r) <= tol) && !(tol == 0 && c == r)) bad++;
        }
    return bad;
}

static const float alphas[] = {1.0f, 1.0f, 0.5f, -2.0f, 1.0f};
static const float betas[] = {0.0f, 1.0f, -2.0f, 0.25f, 0.0f};

/* One case, every alpha/beta pair; the last pair starts from a C full of NaN. */
static int check_case(pare_rng *r, int ta, int tb, int M, int N, int K, int integers)
{
    int bad = 0;
    for (size_t v = 0; v < sizeof alphas / sizeof alphas[0]; v++) {
        gcase g;
        case_new(&g, r, ta, tb, M, N, K, integers);
        size_t nc = (size_t)M * g.ldc;
        if (v == 4)
            for (size_t i = 0; i < nc; i++) g.C[i] = g.R[i] = NAN;
        float C0[1];
        float *c0 = nc ? pare_alloc(nc * sizeof(float)) : C0;
        memcpy(c0, g.C, nc * sizeof(float));
        run_fast(&g, alphas[v], betas[v]);
        run_ref(&g, alphas[v], betas[v]);
        int b = mismatches(&g, alphas[v], betas[v], c0, integers ? 0.0 : 2 * FLT_EPSILON);
        if (b)
            fprintf(stderr, "    %c%c M=%d N=%d K=%d alpha=%g beta=%g: %d wrong\n", ta ? 'T' : 'N', tb ? 'T' : 'N', M,
                    N, K, alphas[v], betas[v], b);
        bad += b;
        if (nc) pare_free(c0);
        case_free(&g);
    }
    return bad;
}

TEST(gemm_ragged_small_exact)
{
    pare_rng r;
    pare_rng_seed(&r, 1, PARE_STREAM_TEST);
    for (int combo = 0; combo < 4; combo++)
        for (int t = 0; t < 12; t++) {
            int M = 1 + (int)pare_rng_below(&r, 70), N = 1 + (int)pare_rng_below(&r, 70);
            int K = 1 + (int)pare_rng_below(&r, 70);
            CHECK(check_case(&r, combo >> 1, combo & 1, M, N, K, 1) == 0);
        }
}

TEST(gemm_ragged_small_rounding)
{
    pare_rng r;
    pare_rng_seed(&r, 2, PARE_STREAM_TEST);
    for (int combo = 0; combo < 4; combo++)
        for (int t = 0; t < 6; t++) {
            int M = 1 + (int)pare_rng_below(&r, 70), N = 1 + (int)pare_rng_below(&r, 70);
            int K = 1 + (int)pare_rng_below(&r, 70);
            CHECK(check_case(&r, combo >> 1, combo & 1, M, N, K, 0) == 0);
        }
}

/* Every tile height and width edge, including the thin ones. */
TEST(gemm_edges_exact)
{
    pare_rng r;
    pare_rng_seed(&r, 3, PARE_STREAM_TEST);
    static const int sizes[] = {1, 2, 7, 8, 9, 12, 13, 16, 17, 31, 32, 33};
    for (int combo = 0; combo < 4; combo++)
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            CHECK(check_case(&r, combo >> 1, combo & 1, sizes[i], 33, 5, 1) == 0);
            CHECK(check_case(&r, combo >> 1, combo & 1, 9, sizes[i], 3, 1) == 0);
        }
}

/* Past the K blocking and with many column strips and row panels, in both data kinds. */
TEST(gemm_large_blocks)
{
    pare_rng r;
    pare_rng_seed(&r, 4, PARE_STREAM_TEST);
    for (int combo = 0; combo < 4; combo++) {
        CHECK(check_case(&r, combo >> 1, combo & 1, 37, 301, 1100, 1) == 0);
        CHECK(check_case(&r, combo >> 1, combo & 1, 75, 97, 777, 0) == 0);
    }
    /* The CNN's thin shapes: long K with few outputs, tiny K with many. */
    CHECK(check_case(&r, 0, 1, 32, 9, 5000, 1) == 0);
    CHECK(check_case(&r, 0, 1, 5, 70, 1100, 1) == 0); /* few rows instead of few columns */
    CHECK(check_case(&r, 0, 1, 12, 12, 37, 1) == 0);  /* a k tail shorter than a vector */
    CHECK(check_case(&r, 0, 1, 13, 13, 33, 1) == 0);
    CHECK(check_case(&r, 0, 1, 7, 300, 700, 0) == 0);
    CHECK(check_case(&r, 0, 1, 64, 10, 128, 1) == 0);
    CHECK(check_case(&r, 0, 0, 32, 2000, 9, 1) == 0);
    CHECK(check_case(&r, 1, 0, 10, 128, 64, 1) == 0);
}

TEST(gemm_degenerate)
{
    pare_rng r;
    pare_rng_seed(&r, 5, PARE_STREAM_TEST);
    float C[6] = {NAN, NAN, NAN, NAN, NAN, NAN}, A[6] = {1, 2, 3, 4, 5, 6};
    pare_sgemm(0, 0, 2, 3, 0, 1.0f, A, 1, A, 3, 0.0f, C, 3); /* K = 0, beta = 0: zeros */
    for (int i = 0; i < 6; i++) CHECK(C[i] == 0.0f);
    for (int i = 0; i < 6; i++) C[i] = (float)i;
    pare_sgemm(0, 0, 2, 3, 2, 0.0f, A, 2, A, 3, 2.0f, C, 3); /* alpha = 0 scales C */
    for (int i = 0; i < 6; i++) CHECK(C[i] == 2.0f * i);
    pare_sgemm(0, 0, 0, 3, 2, 1.0f, A, 2, A, 3, 0.0f, C, 3); /* M = 0: untouched */
    pare_sgemm(0, 0, 2, 0, 2, 1.0f, A, 2, A, 3, 0.0f, C, 3);
    for (int i = 0; i < 6; i++) CHECK(C[i] == 2.0f * i);
}

#ifdef _OPENMP
/* The same bits for 1, 2 and 3 threads on large ragged shapes of every layout. */
TEST(gemm_threads_bitwise)
{
    pare_rng r;
    pare_rng_seed(&r, 6, PARE_STREAM_TEST);
    int saved = pare_threads();
    static const int shapes[][3] = {{150, 700, 900}, {301, 95, 260}, {33, 11, 9000}, {40, 3000, 9}};
    for (int combo = 0; combo < 4; combo++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            gcase g;
            case_new(&g, &r, combo >> 1, combo & 1, shapes[s][0], shapes[s][1], shapes[s][2], 0);
            size_t nc = (size_t)g.M * g.ldc;
            float *first = pare_alloc(nc * sizeof(float));
            for (int th = 1; th <= 3; th++) {
                pare_set_threads(th);
                memcpy(g.C, g.R, nc * sizeof(float));
                run_fast(&g, 0.75f, 0.5f);
                if (th == 1)
                    memcpy(first, g.C, nc * sizeof(float));
                else
                    CHECKF(memcmp(first, g.C, nc * sizeof(float)) == 0,
                           "%c%c %dx%dx%d differs between 1 and %d threads", g.ta ? 'T' : 'N', g.tb ? 'T' : 'N', g.M,
                           g.N, g.K, th);
            }
            pare_free(first);
            case_free(&g);
        }
    pare_set_threads(saved);
}
#endif

/* Scratch grows once: repeated calls of a size already seen allocate nothing. */
TEST(gemm_no_alloc_after_first_call)
{
    pare_rng r;
    pare_rng_seed(&r, 7, PARE_STREAM_TEST);
    gcase g[4];
    for (int combo = 0; combo < 4; combo++) case_new(&g[combo], &r, combo >> 1, combo & 1, 64, 300, 1000, 0);
    for (int combo = 0; combo < 4; combo++) run_fast(&g[combo], 1.0f, 0.0f);
    uint64_t before = pare_alloc_count();
    for (int rep = 0; rep < 3; rep++)
        for (int combo = 0; combo < 4; combo++) run_fast(&g[combo], 1.0f, rep ? 1.0f : 0.0f);
    CHECK(pare_alloc_count() == before);
    for (int combo = 0; combo < 4; combo++) case_free(&g[combo]);
}
