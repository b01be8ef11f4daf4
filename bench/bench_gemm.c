/* pare_sgemm throughput on the shapes the MNIST CNN trains with (batch 64)
 * and evaluates with (batch 256), at 1 and 2 threads. Each figure is the
 * median of several timed repetitions after a warm-up; a repetition repeats
 * the call until it lasts a few milliseconds. The last column says whether
 * the 1- and 2-thread results are bitwise identical (they must be). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "examples/cli.h"
#include "tensor/tensor.h"

typedef struct {
    const char *name;
    int ta, tb, M, N, K;
} shape;

static const shape shapes[] = {
    {"conv1 fwd", 0, 0, 32, 43264, 9},
    {"conv2 fwd", 0, 0, 64, 7744, 288},
    {"conv2 dW", 0, 1, 64, 288, 7744},
    {"conv2 dX", 1, 0, 288, 7744, 64},
    {"conv1 dW", 0, 1, 32, 9, 43264},
    {"fc1 fwd", 0, 1, 64, 128, 1600},
    {"fc1 dX", 0, 0, 64, 1600, 128},
    {"fc1 dW", 1, 0, 128, 1600, 64},
    {"fc2 fwd", 0, 1, 64, 10, 128},
    {"fc2 dX", 0, 0, 64, 128, 10},
    {"fc2 dW", 1, 0, 10, 128, 64},
    {"eval conv1 b256", 0, 0, 32, 173056, 9},
    {"eval conv2 b256", 0, 0, 64, 30976, 288},
    {"eval fc1 b256", 0, 1, 256, 128, 1600},
    {"eval fc2 b256", 0, 1, 256, 10, 128},
};

#define REPS          9
#define REP_SECONDS   0.004
#define SHAPE_SECONDS 0.4

/* Median seconds per call of one shape at the current thread count. On a busy
 * machine a shape stops after SHAPE_SECONDS (at least 3 repetitions), so the
 * whole run stays short. */
static double time_shape(const shape *s, const float *A, int lda, const float *B, int ldb, float *C)
{
    double start = pare_now(), one = 1e30;
    for (int w = 0; w < 3; w++) {
        double t0 = pare_now();
        pare_sgemm(s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 0.0f, C, s->N);
        double t = pare_now() - t0;
        if (t < one) one = t;
    }
    int calls = one > 0 ? (int)(REP_SECONDS / one) + 1 : 1000;
    double t[REPS];
    int reps = 0;
    while (reps < REPS && (reps < 3 || pare_now() - start < SHAPE_SECONDS)) {
        double t0 = pare_now();
        for (int c = 0; c < calls; c++) pare_sgemm(s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 0.0f, C, s->N);
        t[reps++] = (pare_now() - t0) / calls;
    }
    return cli_median(t, reps);
}

int main(void)
{
    int max_threads = pare_cores_available() >= 2 ? 2 : 1;
#ifndef _OPENMP
    max_threads = 1;
#endif
    int saved = pare_threads();
    pare_rng rng;
    pare_rng_seed(&rng, 0, PARE_STREAM_TEST);
    printf("pare_sgemm GFLOP/s (median of %d), batch 64 training shapes and batch 256 eval\n", REPS);
    printf("%-16s %2s %6s %7s %6s %8s %8s %6s %5s\n", "shape", "op", "M", "N", "K", "1 thr",
           max_threads > 1 ? "2 thr" : "-", "x", "same");
    double t_start = pare_now();
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const shape *s = &shapes[i];
        size_t na = (size_t)s->M * s->K, nb = (size_t)s->K * s->N, nc = (size_t)s->M * s->N;
        float *A = pare_alloc(na * sizeof(float)), *B = pare_alloc(nb * sizeof(float));
        float *C = pare_alloc(nc * sizeof(float)), *C1 = pare_alloc(nc * sizeof(float));
        for (size_t j = 0; j < na; j++) A[j] = pare_rng_range(&rng, -1.0f, 1.0f);
        for (size_t j = 0; j < nb; j++) B[j] = pare_rng_range(&rng, -1.0f, 1.0f);
        int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
        double flops = 2.0 * s->M * s->N * s->K, gf[2] = {0, 0};
        for (int th = 1; th <= max_threads; th++) {
            pare_set_threads(th);
            gf[th - 1] = flops / time_shape(s, A, lda, B, ldb, C) * 1e-9;
            if (th == 1) memcpy(C1, C, nc * sizeof(float));
        }
        int same = max_threads < 2 || memcmp(C, C1, nc * sizeof(float)) == 0;
        printf("%-16s %c%c %6d %7d %6d %8.1f %8.1f %6.2f %5s\n", s->name, s->ta ? 'T' : 'N', s->tb ? 'T' : 'N', s->M,
               s->N, s->K, gf[0], gf[1], gf[0] > 0 ? gf[1] / gf[0] : 0.0, same ? "yes" : "NO");
        fflush(stdout);
        pare_free(A);
        pare_free(B);
        pare_free(C);
        pare_free(C1);
    }
    pare_set_threads(saved);
    fprintf(stderr, "bench_gemm: %.1f s\n", pare_now() - t_start);
    return 0;
}
