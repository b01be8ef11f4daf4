/* Sparse inference and storage at 90% sparsity: seedcnn's fc1 (128 x 1600)
 * through the dense kernel (pare_sgemm, as Linear runs it) and the CSR
 * kernel, in the same run, at batch 1 and 256; and the stored size of a
 * 90%-sparse seedcnn in the compressed format against the dense file.
 * Each time is the median of repetitions after a warm-up. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compress/prune.h"
#include "examples/cli.h"

#define REPS        15
#define REP_SECONDS 0.01

typedef struct job {
    const pare_csr *a;
    const float *w, *x, *bias;
    float *y, *scratch;
    int batch, rows, cols, sparse;
} job;

static void run(const job *j)
{
    if (j->sparse) {
        pare_csr_linear_into(j->a, j->x, j->batch, j->bias, j->y, j->scratch);
        return;
    }
    pare_sgemm(0, 1, j->batch, j->rows, j->cols, 1.0f, j->x, j->cols, j->w, j->cols, 0.0f, j->y, j->rows);
    for (int i = 0; i < j->batch; i++)
        for (int r = 0; r < j->rows; r++) j->y[(size_t)i * j->rows + r] += j->bias[r];
}

/* Median seconds per call. */
static double time_job(const job *j)
{
    double t[REPS];
    long calls = 1;
    for (double s = 0; s < REP_SECONDS; calls *= 2) { /* calibrate the repetition length */
        double t0 = pare_now();
        for (long c = 0; c < calls; c++) run(j);
        s = pare_now() - t0;
    }
    for (int r = 0; r < REPS; r++) {
        double t0 = pare_now();
        for (long c = 0; c < calls; c++) run(j);
        t[r] = (pare_now() - t0) / (double)calls;
    }
    return cli_median(t, REPS);
}

static int kernels(void)
{
    enum { ROWS = 128, COLS = 1600, MAXB = 256 };
    float *w = pare_calloc(sizeof(float) * ROWS * COLS), *x = pare_calloc(sizeof(float) * MAXB * COLS);
    float *y1 = pare_calloc(sizeof(float) * MAXB * ROWS), *y2 = pare_calloc(sizeof(float) * MAXB * ROWS), bias[ROWS];
    pare_rng r;
    pare_rng_seed(&r, 1, PARE_STREAM_TEST);
    /* Magnitude pruning of a uniform matrix at 90% keeps |w| above 0.9. */
    for (int i = 0; i < ROWS * COLS; i++) {
        float v = pare_rng_range(&r, -1, 1);
        w[i] = v > 0.9f || v < -0.9f ? v : 0.0f;
    }
    for (int i = 0; i < MAXB * COLS; i++) x[i] = pare_rng_range(&r, 0, 1);
    for (int i = 0; i < ROWS; i++) bias[i] = pare_rng_range(&r, -1, 1);
    pare_csr *a = pare_csr_from_dense(w, ROWS, COLS);
    float *scratch = pare_calloc(sizeof(float) * (pare_csr_linear_scratch(a, MAXB) + 1));
    printf("fc1 %d x %d at %.1f%% sparsity (%d non-zeros), %d thread(s)\n", ROWS, COLS,
           100.0 * (1.0 - (double)a->nnz / (ROWS * COLS)), a->nnz, pare_threads());
    printf("%-8s %12s %12s %9s %12s\n", "batch", "dense us", "sparse us", "speed-up", "max |diff|");
    int ok = 1;
    const int batches[2] = {1, 256};
    for (int b = 0; b < 2; b++) {
        job d = {a, w, x, bias, y1, scratch, batches[b], ROWS, COLS, 0}, s = d;
        s.sparse = 1;
        s.y = y2;
        double td = time_job(&d), ts = time_job(&s), diff = 0;
        run(&d);
        run(&s);
        for (int i = 0; i < batches[b] * ROWS; i++) {
            double e = y1[i] - y2[i];
            diff = e > diff ? e : -e > diff ? -e : diff;
        }
        ok &= diff < 1e-3;
        printf("%-8d %12.2f %12.2f %8.2fx %12.2g%s\n", batches[b], 1e6 * td, 1e6 * ts, td / ts, diff,
               batches[b] == 1 ? "   (goal at batch 1: >= 2x)" : "");
    }
    pare_csr_free(a);
    pare_free(w), pare_free(x), pare_free(y1), pare_free(y2), pare_free(scratch);
    return ok ? 0 : 1;
}

/* Stored bytes of seedcnn pruned to 90% (global magnitude): dense float
 * file against the compressed sparse one, which must load back the same. */
static int storage(void)
{
    pare_model *m = pare_model_zoo("seedcnn");
    if (!m || pare_build(m, 1, 28, 28) || pare_prune_attach(m, NULL) ||
        pare_prune_select(m, 0.9f, PARE_PRUNE_GLOBAL, PARE_PRUNE_MAGNITUDE, 0)) {
        fprintf(stderr, "error: %s\n", pare_error());
        return 1;
    }
    char dense[] = "/tmp/pare_bench_dense_XXXXXX", sparse[] = "/tmp/pare_bench_sparse_XXXXXX";
    close(mkstemp(dense));
    close(mkstemp(sparse));
    int rc = 1;
    pare_model *back = NULL;
    if (!pare_prune_save(m, dense, NULL) && !pare_prune_save_sparse(m, sparse) &&
        (back = pare_prune_load_sparse(sparse))) {
        long bd = cli_file_size(dense), bs = cli_file_size(sparse);
        int same = 1;
        for (int i = 0; i < m->n_layers; i++)
            if (m->layers[i]->weight)
                same &= !memcmp(m->layers[i]->weight->data, back->layers[i]->weight->data,
                                m->layers[i]->weight->size * sizeof(float));
        printf("seedcnn at 90%% sparsity: dense file %ld B, sparse file %ld B = %.1f%% (goal <= 16%%), "
               "loads back %s\n",
               bd, bs, 100.0 * (double)bs / (double)bd, same ? "identical" : "DIFFERENT");
        rc = same ? 0 : 1;
    } else {
        fprintf(stderr, "error: %s\n", pare_error());
    }
    unlink(dense);
    unlink(sparse);
    pare_model_free(back);
    pare_model_free(m);
    return rc;
}

/* ---- whole layers: dense forward against the sparse layer ---------------------- */
typedef struct fwd_job {
    pare_ctx *ctx;
    pare_model *m;
    pare_tensor *x;
} fwd_job;

static double time_forward(const fwd_job *j)
{
    double t[REPS];
    long calls = 1;
    pare_arena_pos pos = pare_arena_pos_get(&j->ctx->arena);
    for (double s = 0; s < REP_SECONDS; calls *= 2) {
        double t0 = pare_now();
        for (long c = 0; c < calls; c++) {
            pare_forward(j->ctx, j->m, j->x);
            pare_arena_rewind(&j->ctx->arena, pos);
        }
        s = pare_now() - t0;
    }
    for (int r = 0; r < REPS; r++) {
        double t0 = pare_now();
        for (long c = 0; c < calls; c++) {
            pare_forward(j->ctx, j->m, j->x);
            pare_arena_rewind(&j->ctx->arena, pos);
        }
        t[r] = (pare_now() - t0) / (double)calls;
    }
    return cli_median(t, REPS);
}

/* One of seedcnn's layers alone, pruned layer-wise by magnitude to s. */
static pare_model *one_layer(int conv, float s)
{
    pare_model *m = conv ? pare_sequential("conv2", pare_conv2d("conv2", 32, 64, 3), NULL)
                         : pare_sequential("fc1", pare_linear("fc1", 1600, 128), NULL);
    if (pare_build(m, conv ? 32 : 1600, conv ? 13 : 0, conv ? 13 : 0) || pare_prune_attach(m, NULL) ||
        pare_prune_select(m, s, PARE_PRUNE_LAYER, PARE_PRUNE_MAGNITUDE, 0)) {
        fprintf(stderr, "error: %s\n", pare_error());
        exit(1);
    }
    pare_prune_detach(m);
    return m;
}

/* Dense / sparse time of fc1 and conv2 over a range of sparsities: where the
 * sparse layer starts to win is PARE_SPARSE_MIN_DEFAULT. */
static int break_even(void)
{
    static const float sp[] = {0.5f, 0.6f, 0.7f, 0.8f, 0.9f, 0.95f};
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    int ok = 1;
    printf("\nwhole layers (pare_forward), speed-up of the sparse layer over the dense one:\n");
    printf("%-6s %-9s %10s %10s %9s %10s %10s %9s\n", "layer", "sparsity", "b1 dense", "b1 sparse", "b1 x",
           "b256 dense", "b256 sp.", "b256 x");
    for (int conv = 0; conv < 2; conv++)
        for (size_t k = 0; k < sizeof sp / sizeof sp[0]; k++) {
            pare_model *d = one_layer(conv, sp[k]), *s = one_layer(conv, sp[k]);
            pare_model_train(d, 0);
            pare_model_train(s, 0);
            if (pare_prune_sparsify(s, NULL, 0.0f) != 1) {
                fprintf(stderr, "error: %s\n", pare_error());
                return 1;
            }
            double t[2][2];
            for (int b = 0; b < 2; b++) {
                int n = b ? 256 : 1;
                pare_arena_pos pos = pare_arena_pos_get(&ctx->arena);
                pare_tensor *x =
                    conv ? pare_tensor_4d(&ctx->arena, n, 32, 13, 13) : pare_tensor_2d(&ctx->arena, n, 1600);
                for (size_t i = 0; i < x->size; i++) x->data[i] = (float)((i * 7919) % 1000) / 1000.0f;
                fwd_job jd = {ctx, d, x}, js = {ctx, s, x};
                t[b][0] = time_forward(&jd);
                t[b][1] = time_forward(&js);
                pare_tensor *yd = pare_forward(ctx, d, x), *ys = pare_forward(ctx, s, x);
                (void)yd;
                yd = pare_forward(ctx, d, x);
                double diff = 0;
                for (size_t i = 0; i < yd->size; i++) {
                    double e = (double)yd->data[i] - (double)ys->data[i];
                    diff = e > diff ? e : -e > diff ? -e : diff;
                }
                ok &= diff < 1e-3;
                pare_arena_rewind(&ctx->arena, pos);
            }
            printf("%-6s %8.0f%% %10.2f %10.2f %8.2fx %10.1f %10.1f %8.2fx\n", conv ? "conv2" : "fc1", 100.0 * sp[k],
                   1e6 * t[0][0], 1e6 * t[0][1], t[0][0] / t[0][1], 1e6 * t[1][0], 1e6 * t[1][1], t[1][0] / t[1][1]);
            pare_model_free(d);
            pare_model_free(s);
        }
    pare_ctx_free(ctx);
    return ok ? 0 : 1;
}

int main(void)
{
    cli_threads(1);
    int rc = kernels();
    rc |= storage();
    return rc | break_even();
}
