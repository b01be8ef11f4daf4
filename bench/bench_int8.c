/* Inference speed of seedcnn as static int8 against the float model, in the
 * same run: images/s at batch 256 and median latency at batch 1, on 1 and 2
 * threads, and the ratios. Weights are the seed-0 initialization calibrated
 * on 256 images: speed does not depend on the values. Uses MNIST when
 * present, else random images. The machine is shared: every figure is the
 * best of ROUNDS rounds, float and int8 interleaved, so that a burst of
 * load elsewhere hits both alike.
 *
 *   bench_int8            the table
 *   bench_int8 --json     one JSON line (bench/torch_compare.py reads it)
 *   bench_int8 --kernel K force an int8 kernel (reference, avx2, avx512-vnni) */
#include <stdlib.h>
#include <string.h>

#include "compress/quant.h"
#include "examples/cli.h"

enum { N_IMAGES = 2560, ROUNDS = 3, REPS = 300 };

static pare_dataset *images(void)
{
    pare_dataset *ds = pare_mnist_load("data/mnist", 0);
    if (ds) return ds;
    ds = pare_calloc(sizeof *ds);
    ds->n = N_IMAGES, ds->rows = 28, ds->cols = 28, ds->n_classes = 10;
    ds->images = pare_alloc((size_t)ds->n * 784);
    ds->labels = pare_calloc((size_t)ds->n);
    pare_rng r;
    pare_rng_seed(&r, 0, PARE_STREAM_TEST);
    for (size_t i = 0; i < (size_t)ds->n * 784; i++) ds->images[i] = (uint8_t)pare_rng_below(&r, 256);
    return ds;
}

typedef struct speed {
    double ips, lat; /* images/s at batch 256, median µs at batch 1 */
} speed;

static void keep_best(speed *best, speed s)
{
    if (s.ips > best->ips) best->ips = s.ips;
    if (best->lat == 0 || s.lat < best->lat) best->lat = s.lat;
}

/* Images/s over the images at batch 256 (float input, as the float model
 * gets it) and the median batch-1 latency. */
static speed int8_speed(const pare_qmodel *qm, const float *x, int n, void *scratch, float *y)
{
    int per = 784;
    speed s;
    pare_qmodel_forward_float(qm, x, 256, y, scratch, qm->scratch_bytes); /* warm-up */
    double t = pare_now();
    for (int i = 0; i < n; i += 256)
        pare_qmodel_forward_float(qm, x + (size_t)i * per, n - i < 256 ? n - i : 256, y, scratch, qm->scratch_bytes);
    s.ips = n / (pare_now() - t);
    double samples[REPS];
    for (int r = 0; r < REPS; r++) {
        double t0 = pare_now();
        pare_qmodel_forward_float(qm, x + (size_t)(r % n) * per, 1, y, scratch, qm->scratch_bytes);
        samples[r] = pare_now() - t0;
    }
    s.lat = 1e6 * cli_median(samples, REPS);
    return s;
}

static pare_qmodel *convert(pare_ctx *ctx, pare_model *m, const pare_dataset *ds)
{
    pare_quant_config cfg = pare_quant_defaults();
    if (pare_build(m, 1, 28, 28) || pare_quant_prepare(m, &cfg) || pare_quant_calibrate(ctx, m, ds, 256)) return NULL;
    pare_qmodel *qm = pare_quant_convert(m, &cfg);
    pare_quant_unprepare(m);
    return qm;
}

int main(int argc, char **argv)
{
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--kernel") && i + 1 < argc) {
            if (pare_qkernel_select(argv[++i])) {
                fprintf(stderr, "bench_int8: %s\n", pare_error());
                return 1;
            }
        } else {
            fprintf(stderr, "usage: bench_int8 [--json] [--kernel reference|avx2|avx512-vnni]\n");
            return 2;
        }
    }
    pare_set_threads(1);
    pare_dataset *all = images();
    pare_dataset view = *all; /* the first N_IMAGES: enough to time, quick to repeat */
    if (view.n > N_IMAGES) view.n = N_IMAGES;
    pare_model *m = pare_model_zoo("seedcnn");
    pare_ctx *ctx = pare_ctx_new(0);
    pare_qmodel *qm = convert(ctx, m, &view);
    if (!qm) {
        fprintf(stderr, "bench_int8: %s\n", pare_error());
        return 1;
    }
    int n = view.n, per = 784;
    void *scratch = pare_alloc(qm->scratch_bytes);
    float *x = pare_alloc((size_t)n * per * sizeof(float)), *y = pare_alloc((size_t)256 * qm->n_out * sizeof(float));
    for (size_t i = 0; i < (size_t)n * per; i++)
        x[i] = ((float)view.images[i] / 255 - PARE_MNIST_MEAN) / PARE_MNIST_STD;

    speed f[2] = {{0, 0}, {0, 0}}, q[2] = {{0, 0}, {0, 0}};
    for (int round = 0; round < ROUNDS; round++)
        for (int t = 0; t < 2; t++) {
            pare_set_threads(t + 1);
            speed s;
            cli_measure_speed(ctx, m, &view, &s.ips, &s.lat);
            keep_best(&f[t], s);
            keep_best(&q[t], int8_speed(qm, x, n, scratch, y));
        }
    if (json) {
        printf("{\"kernel\": \"%s\", \"float_ips_t1\": %.1f, \"int8_ips_t1\": %.1f, \"float_lat_t1\": %.2f, "
               "\"int8_lat_t1\": %.2f, \"float_ips_t2\": %.1f, \"int8_ips_t2\": %.1f, \"float_lat_t2\": %.2f, "
               "\"int8_lat_t2\": %.2f}\n",
               pare_qkernel_name(), f[0].ips, q[0].ips, f[0].lat, q[0].lat, f[1].ips, q[1].ips, f[1].lat, q[1].lat);
    } else {
        printf("seedcnn inference, float vs int8 (%s kernel), best of %d rounds\n", pare_qkernel_name(), ROUNDS);
        printf("%-34s %10s %10s %8s\n", "figure", "float", "int8", "ratio");
        for (int t = 0; t < 2; t++) {
            printf("img/s at batch 256, %d thread%-6s %10.0f %10.0f %7.2fx\n", t + 1, t ? "s" : "", f[t].ips, q[t].ips,
                   q[t].ips / f[t].ips);
            printf("latency us at batch 1, %d thread%-3s %10.1f %10.1f %7.2fx\n", t + 1, t ? "s" : "", f[t].lat,
                   q[t].lat, f[t].lat / q[t].lat);
        }
        printf("int8 on 2 threads vs 1: %.2fx at batch 256; scratch %zu KB (room for %d threads)\n",
               q[1].ips / q[0].ips, qm->scratch_bytes / 1024, qm->threads);
    }
    pare_free(scratch), pare_free(x), pare_free(y);
    pare_qmodel_free(qm);
    pare_ctx_free(ctx);
    pare_model_free(m);
    pare_dataset_free(all);
    return 0;
}
