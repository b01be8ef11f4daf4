/* Inference speed of seedcnn as static int8 against the float model, in the
 * same run: images/s at batch 256 and median latency at batch 1, one thread.
 * Weights are the seed-0 initialization calibrated on 256 images: speed does
 * not depend on the values. Uses MNIST when present, else random images. */
#include <stdlib.h>

#include "compress/quant.h"
#include "examples/cli.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static pare_dataset *images(void)
{
    pare_dataset *ds = pare_mnist_load("data/mnist", 0);
    if (ds) return ds;
    ds = pare_calloc(sizeof *ds);
    ds->n = 2560, ds->rows = 28, ds->cols = 28, ds->n_classes = 10;
    ds->images = pare_alloc((size_t)ds->n * 784);
    ds->labels = pare_calloc((size_t)ds->n);
    pare_rng r;
    pare_rng_seed(&r, 0, PARE_STREAM_TEST);
    for (size_t i = 0; i < (size_t)ds->n * 784; i++) ds->images[i] = (uint8_t)pare_rng_below(&r, 256);
    return ds;
}

/* Images/s over 2,560 images at batch 256 and the median batch-1 latency (µs). */
static void int8_speed(const pare_qmodel *qm, const pare_dataset *ds, double *ips, double *lat)
{
    int per = 784, n = ds->n < 2560 ? ds->n : 2560;
    void *scratch = pare_alloc(qm->scratch_bytes);
    float *x = pare_alloc((size_t)n * per * sizeof(float)), *y = pare_alloc((size_t)256 * qm->n_out * sizeof(float));
    for (size_t i = 0; i < (size_t)n * per; i++) x[i] = ((float)ds->images[i] / 255 - PARE_MNIST_MEAN) / PARE_MNIST_STD;
    pare_qmodel_forward_float(qm, x, 256, y, scratch, qm->scratch_bytes); /* warm-up */
    double t = pare_now();
    for (int s = 0; s < n; s += 256)
        pare_qmodel_forward_float(qm, x + (size_t)s * per, n - s < 256 ? n - s : 256, y, scratch, qm->scratch_bytes);
    *ips = n / (pare_now() - t);
    enum { REPS = 300 };
    double samples[REPS];
    for (int r = 0; r < REPS; r++) {
        double t0 = pare_now();
        pare_qmodel_forward_float(qm, x + (size_t)(r % n) * per, 1, y, scratch, qm->scratch_bytes);
        samples[r] = pare_now() - t0;
    }
    qsort(samples, REPS, sizeof samples[0], cmp_double);
    *lat = 1e6 * samples[REPS / 2];
    pare_free(scratch), pare_free(x), pare_free(y);
}

int main(void)
{
    pare_set_threads(1);
    pare_dataset *ds = images();
    pare_model *m = pare_model_zoo("seedcnn");
    pare_ctx *ctx = pare_ctx_new(0);
    pare_quant_config cfg = pare_quant_defaults();
    if (pare_build(m, 1, 28, 28) || pare_quant_prepare(m, &cfg) || pare_quant_calibrate(ctx, m, ds, 256)) {
        fprintf(stderr, "bench_int8: %s\n", pare_error());
        return 1;
    }
    pare_qmodel *qm = pare_quant_convert(m, &cfg);
    if (!qm) {
        fprintf(stderr, "bench_int8: %s\n", pare_error());
        return 1;
    }
    pare_quant_unprepare(m);
    double f_ips, f_lat, q_ips, q_lat;
    cli_measure_speed(ctx, m, ds, &f_ips, &f_lat);
    int8_speed(qm, ds, &q_ips, &q_lat);
    printf("seedcnn inference, 1 thread, %s int8 kernel\n", pare_qkernel_fast() ? "AVX-512 VNNI" : "portable");
    printf("%-24s %10s %10s %8s\n", "figure", "float", "int8", "ratio");
    printf("%-24s %10.0f %10.0f %7.2fx\n", "img/s at batch 256", f_ips, q_ips, q_ips / f_ips);
    printf("%-24s %10.1f %10.1f %7.2fx\n", "latency us at batch 1", f_lat, q_lat, f_lat / q_lat);
    pare_qmodel_free(qm);
    pare_ctx_free(ctx);
    pare_model_free(m);
    pare_dataset_free(ds);
    return 0;
}
