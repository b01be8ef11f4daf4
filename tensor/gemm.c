/* Single-precision matrix product, cache-blocked with packed panels and a
 * register-tiled micro-kernel written so the compiler vectorizes it.
 *
 * Determinism: every C element is owned by exactly one thread, its K sum runs
 * in the same order (KC blocks, then k within a block) whatever the thread
 * count, and edge tiles are zero-padded so they go through the same kernel as
 * full tiles. */
#include <string.h>

#include "tensor.h"

#define MR 6
#define NR 32
#define KC 256
#define MC 120
#define NC 2048

/* Multiply-add used by the kernel: fused when the target has FMA, the same
 * way in every kernel of pare, never left to the compiler's contraction. */
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
#define MADD(a, b, c) __builtin_fmaf((a), (b), (c))
#else
#define MADD(a, b, c) ((a) * (b) + (c))
#endif

static float *pack_a_buf, *pack_b_buf;
static size_t pack_a_cap, pack_b_cap;

static float *scratch(float **buf, size_t *cap, size_t n)
{
    if (*cap < n) {
        pare_free(*buf);
        *buf = pare_alloc(n * sizeof(float));
        *cap = n;
    }
    return *buf;
}

static inline float elem(const float *X, int ld, int trans, int r, int c)
{
    return trans ? X[(size_t)c * ld + r] : X[(size_t)r * ld + c];
}

/* Packs op(A)[i0:i0+mc, p0:p0+kc] into MR-row panels, k-major, zero-padded. */
static void pack_a(int trans, const float *A, int lda, int i0, int mc, int p0, int kc, float *dst)
{
    int panels = (mc + MR - 1) / MR;
#pragma omp parallel for schedule(static) if (panels > 1)
    for (int pi = 0; pi < panels; pi++) {
        float *d = dst + (size_t)pi * MR * kc;
        int rows = mc - pi * MR < MR ? mc - pi * MR : MR;
        for (int k = 0; k < kc; k++)
            for (int i = 0; i < MR; i++)
                d[k * MR + i] = i < rows ? elem(A, lda, trans, i0 + pi * MR + i, p0 + k) : 0.0f;
    }
}

/* Packs op(B)[p0:p0+kc, j0:j0+nc] into NR-column panels, k-major, zero-padded. */
static void pack_b(int trans, const float *B, int ldb, int p0, int kc, int j0, int nc, float *dst)
{
    int panels = (nc + NR - 1) / NR;
#pragma omp parallel for schedule(static) if (panels > 1)
    for (int pj = 0; pj < panels; pj++) {
        float *d = dst + (size_t)pj * NR * kc;
        int cols = nc - pj * NR < NR ? nc - pj * NR : NR;
        for (int k = 0; k < kc; k++) {
            float *row = d + (size_t)k * NR;
            if (!trans && cols == NR) {
                memcpy(row, B + (size_t)(p0 + k) * ldb + j0 + pj * NR, NR * sizeof(float));
                continue;
            }
            for (int j = 0; j < NR; j++)
                row[j] = j < cols ? elem(B, ldb, trans, p0 + k, j0 + pj * NR + j) : 0.0f;
        }
    }
}

static void micro_kernel(int kc, const float *restrict a, const float *restrict b, float acc[MR][NR])
{
    float c[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) c[i][j] = 0.0f;
    for (int k = 0; k < kc; k++) {
        const float *bk = b + (size_t)k * NR;
        for (int i = 0; i < MR; i++) {
            float ai = a[k * MR + i];
            for (int j = 0; j < NR; j++) c[i][j] = MADD(ai, bk[j], c[i][j]);
        }
    }
    memcpy(acc, c, sizeof c);
}

/* Writes one tile: the first K block applies beta, later ones accumulate. */
static void store_tile(float acc[MR][NR], int rows, int cols, float alpha, float beta,
                       float *C, int ldc)
{
    for (int i = 0; i < rows; i++) {
        float *c = C + (size_t)i * ldc;
        if (beta == 0.0f)
            for (int j = 0; j < cols; j++) c[j] = alpha * acc[i][j];
        else if (beta == 1.0f)
            for (int j = 0; j < cols; j++) c[j] += alpha * acc[i][j];
        else
            for (int j = 0; j < cols; j++) c[j] = beta * c[j] + alpha * acc[i][j];
    }
}

static void macro_block(int mc, int nc, int kc, const float *pa, const float *pb, float alpha,
                        float beta, float *C, int ldc)
{
    int mp = (mc + MR - 1) / MR, np = (nc + NR - 1) / NR;
    int tiles = mp * np;
#pragma omp parallel for schedule(static) if (tiles > 1)
    for (int t = 0; t < tiles; t++) {
        int pi = t % mp, pj = t / mp;
        float acc[MR][NR];
        micro_kernel(kc, pa + (size_t)pi * MR * kc, pb + (size_t)pj * NR * kc, acc);
        int rows = mc - pi * MR < MR ? mc - pi * MR : MR;
        int cols = nc - pj * NR < NR ? nc - pj * NR : NR;
        store_tile(acc, rows, cols, alpha, beta, C + (size_t)pi * MR * ldc + pj * NR, ldc);
    }
}

static void scale_c(int M, int N, float beta, float *C, int ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
}

void pare_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    float *pa = scratch(&pack_a_buf, &pack_a_cap, (size_t)(MC + MR) * KC);
    float *pb = scratch(&pack_b_buf, &pack_b_cap, (size_t)(NC + NR) * KC);
    for (int jc = 0; jc < N; jc += NC) {
        int nc = N - jc < NC ? N - jc : NC;
        for (int pc = 0; pc < K; pc += KC) {
            int kc = K - pc < KC ? K - pc : KC;
            float b_eff = pc == 0 ? beta : 1.0f;
            pack_b(trans_b, B, ldb, pc, kc, jc, nc, pb);
            for (int ic = 0; ic < M; ic += MC) {
                int mc = M - ic < MC ? M - ic : MC;
                pack_a(trans_a, A, lda, ic, mc, pc, kc, pa);
                macro_block(mc, nc, kc, pa, pb, alpha, b_eff, C + (size_t)ic * ldc + jc, ldc);
            }
        }
    }
}

void pare_sgemm_reference(int trans_a, int trans_b, int M, int N, int K, float alpha,
                          const float *A, int lda, const float *B, int ldb, float beta, float *C,
                          int ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += (double)elem(A, lda, trans_a, i, k) * elem(B, ldb, trans_b, k, j);
            float *c = &C[(size_t)i * ldc + j];
            *c = (float)(alpha * s + (beta == 0.0f ? 0.0 : (double)beta * *c));
        }
}
