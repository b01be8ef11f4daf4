/* pare tensor module: storage, shapes, the step arena, the PRNG and raw kernels.
 * Knows nothing about gradients beyond carrying a grad pointer for autograd. */
#ifndef PARE_TENSOR_H
#define PARE_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PARE_VERSION  "0.1.0"
#define PARE_MAX_DIMS 4
#define PARE_ALIGN    64

/* ---- errors -------------------------------------------------------------
 * Errors a user can cause return -1 (or NULL) and leave a message here that
 * says what was wrong and what to do. Programming errors abort via PARE_CHECK. */
const char *pare_error(void);
int pare_set_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
void pare_clear_error(void);
/* GNU's spelling as well as C11's, so that analyzers see the abort path. */
#if defined(__GNUC__)
#define PARE_NORETURN _Noreturn __attribute__((noreturn))
#else
#define PARE_NORETURN _Noreturn
#endif
PARE_NORETURN void pare_fatal(const char *file, int line, const char *fmt, ...);
#define PARE_CHECK(cond, ...)                                                                                          \
    do {                                                                                                               \
        if (!(cond)) pare_fatal(__FILE__, __LINE__, __VA_ARGS__);                                                      \
    } while (0)

/* ---- counted allocation -------------------------------------------------
 * Every heap allocation in pare goes through here, so a test can prove that
 * a training step after the first performs none. Memory is 64-byte aligned. */
void *pare_alloc(size_t bytes);  /* aborts on out-of-memory */
void *pare_calloc(size_t bytes); /* zeroed */
void pare_free(void *p);
uint64_t pare_alloc_count(void); /* number of pare_alloc/pare_calloc calls so far */
size_t pare_alloc_live_bytes(void);

/* ---- arena ----------------------------------------------------------------
 * A bump allocator in chained blocks that never move. Rewinding keeps the
 * blocks, so a loop that allocates the same amounts each step stops calling
 * malloc after its first step. It can run in a caller-provided buffer. */
typedef struct pare_arena_block pare_arena_block;
typedef struct pare_arena {
    pare_arena_block *first, *cur;
    size_t block_bytes; /* size of the next block to allocate */
    size_t high_water;  /* most bytes ever in use at once */
    size_t in_use;
    int fixed; /* 1: caller's buffer, never grows */
} pare_arena;
typedef struct pare_arena_pos {
    pare_arena_block *block;
    size_t used;
    size_t in_use;
} pare_arena_pos;

void pare_arena_init(pare_arena *a, size_t first_block_bytes);
void pare_arena_init_fixed(pare_arena *a, void *buf, size_t bytes);
void pare_arena_destroy(pare_arena *a);
void *pare_arena_alloc(pare_arena *a, size_t bytes); /* NULL only for a full fixed arena */
void *pare_arena_zalloc(pare_arena *a, size_t bytes);
pare_arena_pos pare_arena_pos_get(const pare_arena *a);
void pare_arena_rewind(pare_arena *a, pare_arena_pos pos);
/* Under AddressSanitizer released arena memory is poisoned; these mark a
 * region readable again (to move data out of it) or released. No-ops otherwise. */
void pare_arena_unpoison(const void *p, size_t bytes);
void pare_arena_poison(const void *p, size_t bytes);

/* ---- tensors --------------------------------------------------------------
 * float32, contiguous, row-major, up to 4 dims. `node` is the index of the
 * tape node that produced it, or -1 for a leaf. */
typedef struct pare_tensor {
    float *data;
    float *grad; /* NULL until needed; persistent for parameters */
    int ndim;
    int shape[PARE_MAX_DIMS];
    size_t size;
    int node;
    int requires_grad;
} pare_tensor;

/* A tensor in the arena (lives until the arena is rewound past it). */
pare_tensor *pare_tensor_new(pare_arena *a, int ndim, const int *shape);
pare_tensor *pare_tensor_zeros(pare_arena *a, int ndim, const int *shape);
pare_tensor *pare_tensor_4d(pare_arena *a, int n, int c, int h, int w);
pare_tensor *pare_tensor_2d(pare_arena *a, int rows, int cols);
/* A persistent tensor (parameters, buffers); with_grad allocates a zeroed grad. */
pare_tensor *pare_tensor_persistent(int ndim, const int *shape, int with_grad);
void pare_tensor_free(pare_tensor *t);
size_t pare_shape_size(int ndim, const int *shape);
int pare_shape_equal(const pare_tensor *a, const pare_tensor *b);
/* "[64, 32, 26, 26]" into buf; returns buf. */
char *pare_shape_str(int ndim, const int *shape, char *buf, size_t len);

/* ---- PRNG -----------------------------------------------------------------
 * xoshiro256** seeded by splitmix64 from (seed, stream): separate streams for
 * initialization, shuffling and dropout, never rand(). */
enum { PARE_STREAM_INIT = 1, PARE_STREAM_SHUFFLE = 2, PARE_STREAM_DROPOUT = 3, PARE_STREAM_TEST = 99 };
typedef struct pare_rng {
    uint64_t s[4];
} pare_rng;
void pare_rng_seed(pare_rng *r, uint64_t seed, uint64_t stream);
uint64_t pare_rng_u64(pare_rng *r);
float pare_rng_uniform(pare_rng *r); /* [0, 1), 24 random bits */
float pare_rng_range(pare_rng *r, float lo, float hi);
float pare_rng_normal(pare_rng *r);               /* Box-Muller */
uint64_t pare_rng_below(pare_rng *r, uint64_t n); /* unbiased, n > 0 */
void pare_rng_shuffle(pare_rng *r, int *idx, int n);
/* Counter-based: a pure function of (seed, counter, index), so a dropout mask
 * does not depend on how a loop is split between threads. */
float pare_hash_uniform(uint64_t seed, uint64_t counter, uint64_t index);

/* ---- threads ----------------------------------------------------------------
 * Parallel loops partition outputs only: results are bitwise identical for
 * any thread count. Without OpenMP these are no-ops and report 1. */
/* Loops over less work than this (elements touched) run on one thread: a
 * parallel region costs a few microseconds, and far more when another
 * program holds a core and the team must wait for a descheduled thread. */
#define PARE_PARALLEL_MIN 32768
void pare_set_threads(int n);
int pare_threads(void);
int pare_cores_available(void);

/* ---- kernels ------------------------------------------------------------- */
/* C = alpha * op(A) * op(B) + beta * C, row-major. op(A) is M x K, op(B) is
 * K x N. trans_a/trans_b: 0 = as stored, 1 = transposed. When beta == 0, C is
 * not read (it may hold NaN). */
void pare_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                int ldb, float beta, float *C, int ldc);
/* Straightforward triple loop (double accumulation) for tests and benches. */
void pare_sgemm_reference(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                          const float *B, int ldb, float beta, float *C, int ldc);

/* Geometry of a 2-D convolution or pooling window over one image. */
typedef struct pare_conv_geom {
    int c, h, w; /* input channels and size */
    int kh, kw;  /* window */
    int stride, pad;
    int oh, ow; /* output size */
} pare_conv_geom;
/* Output size of a window; returns 0 if the window does not fit. */
int pare_conv_out(int in, int k, int stride, int pad);
/* One image x[c][h][w] into columns: row (ci,ky,kx), column (oy,ox) of a
 * matrix with row stride ldcol (so a batch can share one matrix). */
void pare_im2col(const pare_conv_geom *g, const float *x, float *col, size_t ldcol);
/* The adjoint: adds columns back into dx[c][h][w] (dx must be initialized). */
void pare_col2im(const pare_conv_geom *g, const float *col, size_t ldcol, float *dx);

/* Elementwise and reductions on float arrays. Sums run in a fixed order. */
void pare_vec_fill(float *x, size_t n, float v);
void pare_vec_copy(float *dst, const float *src, size_t n);
void pare_vec_add(float *dst, const float *a, const float *b, size_t n);
void pare_vec_acc(float *dst, const float *src, size_t n);       /* dst += src */
void pare_vec_axpy(float *y, float a, const float *x, size_t n); /* y += a*x */
void pare_vec_scale(float *x, float a, size_t n);
double pare_vec_sum(const float *x, size_t n);
double pare_vec_dot(const float *a, const float *b, size_t n);
float pare_vec_max(const float *x, size_t n);
size_t pare_vec_argmax(const float *x, size_t n);
/* Row-wise log-softmax of x[rows][cols] with the row maximum subtracted
 * first (log-sum-exp in double), into out (may equal x). */
void pare_log_softmax_rows(const float *x, int rows, int cols, float *out);

#ifdef __cplusplus
}
#endif
#endif
