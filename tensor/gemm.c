/* Single-precision matrix product, tuned for the shapes a small CNN trains
 * with (many columns and few rows, or a long K and few outputs).
 *
 * Two paths, chosen from the shape alone:
 *
 * Tiles. C is cut into row panels of R <= MRMAX rows (about MRB) and strips
 * of NR columns. A micro-kernel keeps an R x NR tile in registers and runs k
 * as one chain of multiply-adds per element, broadcasting op(A) and reading
 * NR contiguous values of op(B) per k. op(A) is read in place when A is not
 * transposed (each row a stream) and copied into a k-major panel when it is;
 * op(B) is packed, a block of kc x NCB at a time, into NR-wide strips (a
 * plain copy, or a transpose when B is transposed), or read in place when
 * packing would not pay. The packed block lives in L2 and one A panel in L1
 * while the block's strips stream past it. K is cut into nearly equal blocks
 * of at most KCMAX; the first applies beta, later ones add on. When B is
 * transposed and has more rows than A, the product is computed as
 * C^T = op(B)^T op(A)^T into a scratch matrix, so the smaller operand is the
 * one transposed, and then written back.
 *
 * Dots. When B is transposed and C has at most DOT_MAX columns (or rows), as
 * in a weight gradient with few outputs and a long K, both operands are
 * contiguous along k: C is cut into 2 x n blocks of dot products, each kept as
 * 16 lane-wise partial sums over k (lane k mod 16), and the lanes are added
 * in a fixed tree at the end.
 *
 * Determinism: each C element is owned by one thread, and its value is the
 * same sequence of operations whichever tile, edge or thread computed it
 * (edges are zero-padded or masked, never summed differently), so the thread
 * count never changes a bit. Every tiling choice depends on the shape only.
 *
 * Memory: scratch grows once through pare_alloc, per calling thread, and is
 * reused; a call of a size already seen allocates nothing. */
#include <stddef.h>
#include <string.h>

#include "tensor.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* Multiply-add used by the kernels: fused when the target has FMA, the same
 * way in every kernel of pare, never left to the compiler's contraction.
 * (The AVX-512 kernels use _mm512_fmadd_ps, the same fused operation.) */
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
#define MADD(a, b, c) __builtin_fmaf((a), (b), (c))
#else
#define MADD(a, b, c) ((a) * (b) + (c))
#endif

#ifdef __AVX512F__
#define NR    32 /* two zmm per tile row */
#define MRB   8  /* usual tile height: 16 accumulators */
#define MRMAX 12 /* tallest tile: 24 accumulators + 2 B + 1 broadcast */
#else
#define NR    16 /* two ymm per tile row on AVX2 */
#define MRB   6  /* 12 accumulators of 16 registers */
#define MRMAX 6
#endif
#define KCMAX       384       /* K block: an A panel (R x kc) stays in L1 */
#define NCB         512       /* columns of B packed at a time: kc x NCB stays in L2 */
#define DOT_MAX     12        /* the dot path's narrow side: up to 2 x 12 accumulators */
#define DOT_KC      512       /* k per chunk in the dot path: the narrow side stays in L1 */
#define DOT_MAX_OUT (1 << 16) /* bounds the dot path's scratch (16 floats an output) */
/* Below this many multiply-adds a call runs on one thread: a fork costs more. */
#define PAR_MIN_MADDS (1 << 18)

/* ---- the tile plan: a function of the shape only ------------------------ */

typedef struct {
    int ta, tb, M, N, K;
    float alpha, beta;
    const float *A, *B;
    int lda, ldb;
    float *C;
    int ldc;
    int np, ns;   /* row panels, NR-column strips */
    int nkb, kc;  /* K blocks and their (largest) size */
    int direct_b; /* read an untransposed B in place instead of packing it */
    /* Swapped: the plan computes C^T into C (scratch, alpha 1, beta 0); the
     * caller's C, ldc, alpha, beta are kept here for the write-back. */
    int swap;
    float *C0;
    int ldc0;
    float alpha0, beta0;
} plan;

static int panel_rows(const plan *p, int i)
{
    return p->M / p->np + (i < p->M % p->np);
}
static int panel_start(const plan *p, int i)
{
    int base = p->M / p->np, extra = p->M % p->np;
    return i * base + (i < extra ? i : extra);
}

static void make_plan(plan *p)
{
    int np = (p->M + MRB / 2) / MRB;
    if (np < 1) np = 1;
    while ((p->M + np - 1) / np > MRMAX) np++;
    p->np = np;
    p->ns = (p->N + NR - 1) / NR;
    p->nkb = (p->K + KCMAX - 1) / KCMAX;
    p->kc = (p->K + p->nkb - 1) / p->nkb;
    /* Packing pays when a strip is reused by several panels over a long k. */
    p->direct_b = !p->tb && (np <= 2 || p->K <= 16);
}

/* C^T = op(B)^T op(A)^T: A' = op(B)^T is B read with the opposite flag, and
 * likewise B' = op(A)^T. */
static void swap_plan(plan *p, float *scratch)
{
    plan q = *p;
    p->swap = 1;
    p->C0 = q.C;
    p->ldc0 = q.ldc;
    p->alpha0 = q.alpha;
    p->beta0 = q.beta;
    p->ta = !q.tb;
    p->tb = !q.ta;
    p->M = q.N;
    p->N = q.M;
    p->A = q.B;
    p->lda = q.ldb;
    p->B = q.A;
    p->ldb = q.lda;
    p->C = scratch;
    p->ldc = q.M;
    p->alpha = 1.0f;
    p->beta = 0.0f;
}

/* ---- micro-kernel --------------------------------------------------------- */

/* One R x NR tile: c = alpha * sum_k a(i,k) b(k,j) + beta * c, where
 * a(i,k) = a[i*rsa + k*csa], b(k,j) = b[k*ldbs + j]; only `cols` columns are
 * stored. beta == 0 means c is not read. */
#define KERNEL_PARAMS                                                                                                  \
    int kc, const float *restrict a, ptrdiff_t rsa, ptrdiff_t csa, const float *restrict b, ptrdiff_t ldbs,            \
        float *restrict c, ptrdiff_t ldc, int cols, float alpha, float beta
#define KERNEL_ARGS kc, a, rsa, csa, b, ldbs, c, ldc, cols, alpha, beta

#ifdef __AVX512F__
static inline __attribute__((always_inline)) void tile_kernel(const int R, KERNEL_PARAMS)
{
    __m512 c0[MRMAX], c1[MRMAX];
#pragma GCC unroll 12
    for (int i = 0; i < R; i++) c0[i] = c1[i] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 12
        for (int i = 0; i < R; i++) {
            __m512 ai = _mm512_set1_ps(a[i * rsa]);
            c0[i] = _mm512_fmadd_ps(ai, b0, c0[i]);
            c1[i] = _mm512_fmadd_ps(ai, b1, c1[i]);
        }
        a += csa;
        b += ldbs;
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    __mmask16 m0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
    __mmask16 m1 = cols >= 32 ? 0xffff : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
#pragma GCC unroll 12
    for (int i = 0; i < R; i++) {
        float *ci = c + i * ldc;
        __m512 r0 = c0[i], r1 = c1[i];
        if (alpha != 1.0f) {
            r0 = _mm512_mul_ps(va, r0);
            r1 = _mm512_mul_ps(va, r1);
        }
        if (beta == 1.0f) {
            r0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, ci), r0);
            r1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, ci + 16), r1);
        } else if (beta != 0.0f) {
            r0 = _mm512_add_ps(_mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m0, ci)), r0);
            r1 = _mm512_add_ps(_mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m1, ci + 16)), r1);
        }
        _mm512_mask_storeu_ps(ci, m0, r0);
        _mm512_mask_storeu_ps(ci + 16, m1, r1);
    }
}
#else
/* Plain C: with R and NR constant the loops unroll completely, the tile's
 * accumulators become registers and each j loop a vector multiply-add. */
static inline __attribute__((always_inline)) void tile_kernel(const int R, KERNEL_PARAMS)
{
    float acc[MRMAX][NR];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 16
        for (int j = 0; j < NR; j++) acc[i][j] = 0.0f;
    for (int k = 0; k < kc; k++) {
        const float *ak = a + k * csa, *bk = b + k * ldbs;
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            float ai = ak[i * rsa];
#pragma GCC unroll 16
            for (int j = 0; j < NR; j++) acc[i][j] = MADD(ai, bk[j], acc[i][j]);
        }
    }
    for (int i = 0; i < R; i++) {
        float *ci = c + i * ldc;
        for (int j = 0; j < cols; j++) {
            float r = alpha != 1.0f ? alpha * acc[i][j] : acc[i][j];
            if (beta == 1.0f)
                r = ci[j] + r;
            else if (beta != 0.0f)
                r = beta * ci[j] + r;
            ci[j] = r;
        }
    }
}
#endif

/* One specialized copy per tile height, so the accumulators stay in registers. */
static void kernel(int R, KERNEL_PARAMS)
{
    switch (R) {
#define CASE(r)                                                                                                        \
    case r:                                                                                                            \
        tile_kernel(r, KERNEL_ARGS);                                                                                   \
        break;
        CASE(1)
        CASE(2) CASE(3) CASE(4) CASE(5) CASE(6)
#if MRMAX > 6
            CASE(7) CASE(8) CASE(9) CASE(10) CASE(11) CASE(12)
#endif
#undef CASE
                default : PARE_CHECK(0, "sgemm: tile height %d out of range", R);
    }
}

/* ---- packing -------------------------------------------------------------- */

/* NR floats; spelled out so the compiler emits vector moves, not a memcpy call. */
static inline void copy_row(float *restrict d, const float *restrict src)
{
#ifdef __AVX512F__
    _mm512_storeu_ps(d, _mm512_loadu_ps(src));
    _mm512_storeu_ps(d + 16, _mm512_loadu_ps(src + 16));
#else
    float t[NR];
    for (int j = 0; j < NR; j++) t[j] = src[j];
    for (int j = 0; j < NR; j++) d[j] = t[j];
#endif
}

#ifdef __AVX512F__
/* dst[t*ldd + i] = src[i*lds + t] for a 16 x 16 block. */
static inline void transpose16(const float *src, size_t lds, float *dst, size_t ldd)
{
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * lds);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
#define PD(x) _mm512_castps_pd(x)
#define PS(x) _mm512_castpd_ps(x)
    for (int i = 0; i < 16; i += 4) {
        r[i] = PS(_mm512_unpacklo_pd(PD(t[i]), PD(t[i + 2])));
        r[i + 1] = PS(_mm512_unpackhi_pd(PD(t[i]), PD(t[i + 2])));
        r[i + 2] = PS(_mm512_unpacklo_pd(PD(t[i + 1]), PD(t[i + 3])));
        r[i + 3] = PS(_mm512_unpackhi_pd(PD(t[i + 1]), PD(t[i + 3])));
    }
#undef PD
#undef PS
    for (int h = 0; h < 16; h += 8)
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
        }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
    for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + i * ldd, r[i]);
}
#endif

/* One strip of a transposed B: d[k*NR + j] = src[j*ldb + k] for j < cols,
 * zero for cols <= j < NR. */
static void pack_strip_t(const float *restrict src, size_t ldb, int kc, int cols, float *restrict d)
{
    int j0 = 0;
#ifdef __AVX512F__
    /* Whole 16 x 16 blocks by register transposes, the rest element by element. */
    int k0 = kc / 16 * 16;
    j0 = cols / 16 * 16;
    for (int j = 0; j < j0; j += 16)
        for (int k = 0; k < k0; k += 16) transpose16(src + j * ldb + k, ldb, d + (size_t)k * NR + j, NR);
    for (int j = 0; j < j0; j++)
        for (int k = k0; k < kc; k++) d[(size_t)k * NR + j] = src[j * ldb + k];
#endif
    for (int j = j0; j < cols; j++)
        for (int k = 0; k < kc; k++) d[(size_t)k * NR + j] = src[j * ldb + k];
    for (int k = 0; k < kc; k++)
        for (int j = cols; j < NR; j++) d[(size_t)k * NR + j] = 0.0f;
}

/* op(B)[p0:p0+kc, j0:j0+ncols] as strips of NR columns: strip s starts at
 * dst + s*kc*NR and holds (k, j) at [k*NR + j], zero-padded past ncols. */
static void pack_block(const plan *p, int p0, int kc, int j0, int ncols, float *restrict dst)
{
    size_t ldb = (size_t)p->ldb;
    int nst = (ncols + NR - 1) / NR, full = ncols / NR;
    if (p->tb) {
        for (int s = 0; s < nst; s++) {
            int cols = ncols - s * NR < NR ? ncols - s * NR : NR;
            pack_strip_t(p->B + (size_t)(j0 + s * NR) * ldb + p0, ldb, kc, cols, dst + (size_t)s * kc * NR);
        }
        return;
    }
    /* A few rows at a time: each row is read front to back across the strips
     * and each strip is written front to back. */
    for (int k0 = 0; k0 < kc; k0 += 8) {
        int k1 = kc - k0 < 8 ? kc : k0 + 8;
        const float *src = p->B + (size_t)(p0 + k0) * ldb + j0;
        for (int s = 0; s < full; s++)
            for (int k = k0; k < k1; k++)
                copy_row(dst + ((size_t)s * kc + k) * NR, src + (size_t)(k - k0) * ldb + s * NR);
        if (full < nst)
            for (int k = k0; k < k1; k++) {
                float *d = dst + ((size_t)full * kc + k) * NR;
                const float *r = src + (size_t)(k - k0) * ldb + full * NR;
                int cols = ncols - full * NR;
                for (int j = 0; j < cols; j++) d[j] = r[j];
                for (int j = cols; j < NR; j++) d[j] = 0.0f;
            }
    }
}

/* op(A)[i0:i0+R, p0:p0+kc] of a transposed A into dst[k*R + i]. */
static void pack_panel_t(const plan *p, int i0, int R, int p0, int kc, float *restrict dst)
{
    const float *src = p->A + (size_t)p0 * p->lda + i0;
    for (int k = 0; k < kc; k++)
        for (int i = 0; i < R; i++) dst[k * R + i] = src[(size_t)k * p->lda + i];
}

/* ---- the tile path's driver ---------------------------------------------- */

typedef struct {
    int pb, pe, sb, se; /* this thread's panels and strips */
} share;

/* Splits nth threads into a tm x tn grid over (panels, strips). The cost
 * counts the tiles a thread computes and the strips it packs (a thread that
 * shares strips with others packs them too). */
static share my_share(const plan *p, int tid, int nth)
{
    long best = -1;
    int tm = nth, tn = 1;
    for (int n = nth; n >= 1; n--) {
        if (nth % n) continue;
        int m = nth / n;
        long strips = (p->ns + n - 1) / n, panels = (p->np + m - 1) / m;
        long cost = strips * panels * MRB + (p->direct_b ? 0 : strips * (p->tb ? 16 : 4));
        if (best < 0 || cost < best) {
            best = cost;
            tn = n;
            tm = m;
        }
    }
    int ti = tid / tn, tj = tid % tn;
    share s = {(int)((long)p->np * ti / tm), (int)((long)p->np * (ti + 1) / tm), (int)((long)p->ns * tj / tn),
               (int)((long)p->ns * (tj + 1) / tn)};
    return s;
}

/* Loop order: a packed block of B (kc x NCB) sits in L2; one row panel of A
 * at a time sits in L1 while the block's strips stream past it. */
static void run_tiles(const plan *p, share sh, float *bbuf, float *abuf)
{
    if (sh.pb >= sh.pe || sh.sb >= sh.se) return; /* more threads than tiles */
    for (int jb = sh.sb; jb < sh.se; jb += NCB / NR) {
        int je = sh.se - jb < NCB / NR ? sh.se : jb + NCB / NR;
        int j0 = jb * NR, ncols = (p->N < je * NR ? p->N : je * NR) - j0;
        for (int kb = 0; kb < p->nkb; kb++) {
            int p0 = kb * p->kc, kc = p->K - p0 < p->kc ? p->K - p0 : p->kc;
            float beta = kb == 0 ? p->beta : 1.0f;
            /* In place needs whole strips: a ragged last one is packed, padded. */
            int direct = p->direct_b && ncols == (je - jb) * NR;
            if (!direct) pack_block(p, p0, kc, j0, ncols, bbuf);
            for (int pi = sh.pb; pi < sh.pe; pi++) {
                int i0 = panel_start(p, pi), R = panel_rows(p, pi);
                const float *a = p->A + (size_t)i0 * p->lda + p0;
                ptrdiff_t rsa = p->lda, csa = 1;
                if (p->ta) {
                    pack_panel_t(p, i0, R, p0, kc, abuf);
                    a = abuf;
                    rsa = 1;
                    csa = R;
                }
                for (int s = jb; s < je; s++) {
                    int cols = p->N - s * NR < NR ? p->N - s * NR : NR;
                    const float *bs = direct ? p->B + (size_t)p0 * p->ldb + s * NR : bbuf + (size_t)(s - jb) * kc * NR;
                    ptrdiff_t ldbs = direct ? p->ldb : NR;
                    kernel(R, kc, a, rsa, csa, bs, ldbs, p->C + (size_t)i0 * p->ldc + s * NR, p->ldc, cols, p->alpha,
                           beta);
                }
            }
        }
    }
    if (!p->swap) return;
    /* Write this thread's part of C^T back: C = alpha * T^T + beta * C. */
    int i0 = panel_start(p, sh.pb), i1 = sh.pe == p->np ? p->M : panel_start(p, sh.pe);
    int j1 = p->N < sh.se * NR ? p->N : sh.se * NR;
    for (int j = sh.sb * NR; j < j1; j++) {
        float *c = p->C0 + (size_t)j * p->ldc0;
        for (int i = i0; i < i1; i++) {
            float t = p->alpha0 * p->C[(size_t)i * p->ldc + j];
            c[i] = p->beta0 == 0.0f ? t : p->beta0 == 1.0f ? c[i] + t : p->beta0 * c[i] + t;
        }
    }
}

/* ---- the dot path ----------------------------------------------------------- */

/* C[i][j] = alpha * sum_k W[i][k] V[j][k] + beta * C[i][j] over rows of two
 * k-contiguous operands: V, the narrow side (n <= DOT_MAX rows), against pairs
 * of rows of W, the wide side. C is written through strides, so either side
 * can be A. */
typedef struct {
    const float *W, *V;
    size_t ldw, ldv;
    int nw, n, K;
    float *C;
    size_t csw, csv; /* C strides along the wide and the narrow index */
    float alpha, beta;
} dotplan;

static inline void dot_store(const dotplan *d, int i, int j, float sum)
{
    float *c = d->C + (size_t)i * d->csw + (size_t)j * d->csv;
    float r = d->alpha * sum;
    *c = d->beta == 0.0f ? r : d->beta == 1.0f ? *c + r : d->beta * *c + r;
}

/* A pair of rows (or a single last row) of W against all of V over k in
 * [k0, k0+kc): 16 lane-wise partial sums per element (lane = k mod 16),
 * carried in `acc` between chunks; after the last chunk the lanes are added
 * in a fixed tree (l + l+8, then l+4, l+2, l+1) and C is written. */
#ifdef __AVX512F__
static inline float lane_sum(__m512 v)
{
    __m256 h =
        _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    return _mm_cvtss_f32(q);
}

/* Two rows of W; for a lone last row both point at it and the copy is not stored. */
static inline __attribute__((always_inline)) void dot_tile(const int n, const dotplan *d, int i0, int rows, int k0,
                                                           int kc, float *restrict acc)
{
    const float *w0 = d->W + (size_t)i0 * d->ldw + k0, *w1 = rows > 1 ? w0 + d->ldw : w0;
    const float *v = d->V + k0;
    size_t ldv = d->ldv;
    int first = k0 == 0, last = k0 + kc == d->K;
    __m512 s0[DOT_MAX], s1[DOT_MAX];
#pragma GCC unroll 12
    for (int j = 0; j < n; j++) {
        s0[j] = first ? _mm512_setzero_ps() : _mm512_load_ps(acc + j * 16);
        s1[j] = first ? _mm512_setzero_ps() : _mm512_load_ps(acc + (n + j) * 16);
    }
    int k = 0;
    for (; k + 16 <= kc; k += 16) {
        __m512 a0 = _mm512_loadu_ps(w0 + k), a1 = _mm512_loadu_ps(w1 + k);
#pragma GCC unroll 12
        for (int j = 0; j < n; j++) {
            __m512 b = _mm512_loadu_ps(v + j * ldv + k);
            s0[j] = _mm512_fmadd_ps(a0, b, s0[j]);
            s1[j] = _mm512_fmadd_ps(a1, b, s1[j]);
        }
    }
    if (k < kc) { /* the k tail: masked lanes load zeros and add exact zeros */
        __mmask16 m = (__mmask16)((1u << (kc - k)) - 1);
        __m512 a0 = _mm512_maskz_loadu_ps(m, w0 + k), a1 = _mm512_maskz_loadu_ps(m, w1 + k);
#pragma GCC unroll 12
        for (int j = 0; j < n; j++) {
            __m512 b = _mm512_maskz_loadu_ps(m, v + j * ldv + k);
            s0[j] = _mm512_fmadd_ps(a0, b, s0[j]);
            s1[j] = _mm512_fmadd_ps(a1, b, s1[j]);
        }
    }
#pragma GCC unroll 12
    for (int j = 0; j < n; j++) {
        if (!last) {
            _mm512_store_ps(acc + j * 16, s0[j]);
            _mm512_store_ps(acc + (n + j) * 16, s1[j]);
            continue;
        }
        dot_store(d, i0, j, lane_sum(s0[j]));
        if (rows > 1) dot_store(d, i0 + 1, j, lane_sum(s1[j]));
    }
}

static void dot_kernel(int rows, const dotplan *d, int i0, int k0, int kc, float *acc)
{
    switch (d->n) {
#define CASE(r)                                                                                                        \
    case r:                                                                                                            \
        dot_tile(r, d, i0, rows, k0, kc, acc);                                                                         \
        break;
        CASE(1)
        CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8) CASE(9) CASE(10) CASE(11) CASE(12)
#undef CASE
            default : PARE_CHECK(0, "sgemm: dot width %d out of range", d->n);
    }
}
#else
/* Plain C, one row of W at a time: the same 16 lanes and the same final tree
 * as the AVX-512 version; the compiler vectorizes the lane loops. */
static void dot_row(const dotplan *d, int i0, int k0, int kc, float *restrict acc)
{
    const float *w = d->W + (size_t)i0 * d->ldw + k0, *v = d->V + k0;
    size_t ldv = d->ldv;
    int n = d->n, first = k0 == 0, last = k0 + kc == d->K;
    float s[DOT_MAX][16];
    for (int j = 0; j < n; j++)
        for (int l = 0; l < 16; l++) s[j][l] = first ? 0.0f : acc[j * 16 + l];
    for (int k = 0; k < kc; k += 16) {
        float a[16], b[16];
        int len = kc - k < 16 ? kc - k : 16; /* the k tail adds exact zeros */
        for (int l = 0; l < 16; l++) a[l] = l < len ? w[k + l] : 0.0f;
        for (int j = 0; j < n; j++) {
            for (int l = 0; l < 16; l++) b[l] = l < len ? v[j * ldv + k + l] : 0.0f;
            for (int l = 0; l < 16; l++) s[j][l] = MADD(a[l], b[l], s[j][l]);
        }
    }
    for (int j = 0; j < n; j++) {
        float *t = s[j];
        if (!last) {
            memcpy(acc + j * 16, t, 16 * sizeof(float));
            continue;
        }
        for (int h = 8; h >= 1; h /= 2)
            for (int l = 0; l < h; l++) t[l] += t[l + h];
        dot_store(d, i0, j, t[0]);
    }
}

static void dot_kernel(int rows, const dotplan *d, int i0, int k0, int kc, float *acc)
{
    for (int i = 0; i < rows; i++) dot_row(d, i0 + i, k0, kc, acc ? acc + i * d->n * 16 : NULL);
}
#endif

/* Threads take whole pairs; k runs in chunks so V's chunk stays in L1 while
 * the pairs stream past it. acc is NULL when K fits one chunk. */
static void run_dots(const dotplan *d, int tid, int nth, float *acc)
{
    int pairs = (d->nw + 1) / 2;
    int pb = (int)((long)pairs * tid / nth), pe = (int)((long)pairs * (tid + 1) / nth);
    for (int k0 = 0; k0 < d->K; k0 += DOT_KC) {
        int kc = d->K - k0 < DOT_KC ? d->K - k0 : DOT_KC;
        for (int q = pb; q < pe; q++)
            dot_kernel(d->nw - 2 * q < 2 ? 1 : 2, d, 2 * q, k0, kc,
                       acc ? acc + (size_t)(q - pb) * 2 * d->n * 16 : NULL);
    }
}

/* ---- entry ------------------------------------------------------------------ */

/* Per calling thread, so concurrent callers never share a buffer. */
static _Thread_local float *scratch_buf;
static _Thread_local size_t scratch_cap;

static float *scratch(size_t floats)
{
    if (scratch_cap < floats) {
        pare_free(scratch_buf);
        scratch_buf = pare_alloc(floats * sizeof(float));
        scratch_cap = floats;
    }
    return scratch_buf;
}

static size_t round16(size_t n)
{
    return (n + 15) / 16 * 16;
} /* 64-byte aligned slices */

static void scale_c(int M, int N, float beta, float *C, int ldc)
{
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        for (int j = 0; j < N; j++) c[j] = beta == 0.0f ? 0.0f : beta * c[j];
    }
}

static int max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static void sgemm_dots(int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                       float *C, int ldc)
{
    dotplan d;
    if (N <= M) { /* pairs of A rows against all of B */
        dotplan t = {A, B, (size_t)lda, (size_t)ldb, M, N, K, C, (size_t)ldc, 1, alpha, beta};
        d = t;
    } else {
        dotplan t = {B, A, (size_t)ldb, (size_t)lda, N, M, K, C, 1, (size_t)ldc, alpha, beta};
        d = t;
    }
    int maxth = max_threads();
    /* Partial sums carried between chunks of k: 16 floats per element. */
    size_t per = K > DOT_KC ? round16((size_t)((d.nw + 1) / 2 + 1) * 2 * d.n * 16) : 0;
    float *acc = per ? scratch(per * (size_t)maxth) : NULL;
    int par = maxth > 1 && (double)M * N * K >= PAR_MIN_MADDS && d.nw > 2;
    (void)par;
#ifdef _OPENMP
#pragma omp parallel if (par)
    {
        int tid = omp_get_thread_num();
        run_dots(&d, tid, omp_get_num_threads(), acc ? acc + per * (size_t)tid : NULL);
    }
#else
    run_dots(&d, 0, 1, acc);
#endif
}

void pare_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    if (!trans_a && trans_b && (M <= DOT_MAX || N <= DOT_MAX) && K >= 32 && (size_t)M * N <= DOT_MAX_OUT) {
        sgemm_dots(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    plan p = {trans_a, trans_b, M, N, K, alpha, beta, A, B, lda, ldb, C, ldc, 0, 0, 0, 0, 0, 0, NULL, 0, 0.0f, 0.0f};
    /* Transposing the smaller operand: worth a scratch copy of C. */
    int swap = trans_b && (trans_a || M < N) && (size_t)M * N <= ((size_t)1 << 20);
    make_plan(&p);
    int maxth = max_threads();
    size_t kc = (size_t)p.kc, cfloats = swap ? round16((size_t)M * N) : 0;
    size_t slice = round16(kc * NCB) + round16(kc * MRMAX);
    float *buf = scratch(cfloats + slice * (size_t)maxth);
    if (swap) {
        swap_plan(&p, buf);
        make_plan(&p);
    }
    float *bufs = buf + cfloats;
    int par = maxth > 1 && (double)M * N * K >= PAR_MIN_MADDS && (long)p.np * p.ns > 1;
    (void)par;
#ifdef _OPENMP
#pragma omp parallel if (par)
    {
        int tid = omp_get_thread_num();
        float *mine = bufs + slice * (size_t)tid;
        run_tiles(&p, my_share(&p, tid, omp_get_num_threads()), mine, mine + round16(kc * NCB));
    }
#else
    run_tiles(&p, my_share(&p, 0, 1), bufs, bufs + round16(kc * NCB));
#endif
}

void pare_sgemm_reference(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                          const float *B, int ldb, float beta, float *C, int ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) {
                float a = trans_a ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                float b = trans_b ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                s += (double)a * b;
            }
            float *c = &C[(size_t)i * ldc + j];
            *c = (float)(alpha * s + (beta == 0.0f ? 0.0 : (double)beta * *c));
        }
}
