/* Training and inference speed of seedcnn, the figures the reference
 * protocol compares with PyTorch: training images/s at batch 64 (1 and 2
 * threads, 200 steps after 20 warm-up), evaluation images/s at batch 256,
 * median latency at batch 1. Uses MNIST from data/mnist when present, else
 * random images of the same shape (speed does not depend on the pixels).
 *
 *   build/bench_train [--steps 200] [--json] [--arch seedcnn] */
#include <stdlib.h>
#include <string.h>

#include "examples/cli.h"

static pare_dataset *bench_data(int *real)
{
    pare_dataset *ds = pare_mnist_load("data/mnist", 1);
    *real = ds != NULL;
    if (ds) return ds;
    ds = pare_calloc(sizeof *ds);
    ds->n = 10240, ds->rows = 28, ds->cols = 28, ds->n_classes = 10;
    ds->images = pare_alloc((size_t)ds->n * 784);
    ds->labels = pare_alloc((size_t)ds->n);
    pare_rng r;
    pare_rng_seed(&r, 0, PARE_STREAM_TEST);
    for (size_t i = 0; i < (size_t)ds->n * 784; i++) ds->images[i] = (uint8_t)pare_rng_below(&r, 256);
    for (int i = 0; i < ds->n; i++) ds->labels[i] = (uint8_t)pare_rng_below(&r, 10);
    return ds;
}

/* Images per second of `steps` SGD steps at batch 64 after a warm-up. */
static double train_speed(const char *arch, const pare_dataset *ds, int threads, int steps)
{
    pare_set_threads(threads);
    pare_model *m = pare_model_zoo(arch);
    pare_build(m, 1, 28, 28);
    pare_optim *o = pare_sgd(m, 0.01f, 0.9f);
    pare_loader *ld = pare_loader_new(ds, NULL, ds->n, NULL);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_batch b;
    double t0 = 0;
    int epoch = 0;
    for (int k = 0; k < 20 + steps; k++) {
        if (k == 20) t0 = pare_now();
        pare_mark mark = pare_arena_mark(ctx);
        if (!pare_loader_next(ld, &ctx->arena, &b)) {
            pare_loader_start_epoch(ld, ++epoch);
            pare_loader_next(ld, &ctx->arena, &b);
        }
        pare_backward(ctx, pare_classifier_loss(ctx, m, b.x, b.labels, NULL));
        pare_step(o);
        pare_arena_release(ctx, mark);
    }
    double ips = 64.0 * steps / (pare_now() - t0);
    pare_ctx_free(ctx);
    pare_loader_free(ld);
    pare_optim_free(o);
    pare_model_free(m);
    return ips;
}

/* PyTorch 1.13 on this machine, from REFERENCE.md (not measured in this run). */
static const struct {
    const char *what;
    double torch;
} reference[] = {
    {"train img/s, 1 thread", 4000},
    {"train img/s, 2 threads", 6150},
    {"eval img/s, batch 256", 13550},
    {"latency us, batch 1", 220},
};

int main(int argc, char **argv)
{
    int steps = 200, json = 0;
    const char *arch = "seedcnn";
    cli_opt opts[] = {
        {"--steps", CLI_INT, &steps, "timed training steps (default 200)"},
        {"--arch", CLI_STR, &arch, "architecture (default seedcnn)"},
        {"--json", CLI_FLAG, &json, "print one JSON line"},
    };
    cli_parse(argc, argv, 1, opts, 3, "bench_train [--steps N] [--arch NAME] [--json]");
    if (steps <= 0 || !pare_model_zoo(arch)) cli_usage_error("bench_train", opts, 3, "bad --steps or --arch");
    int real, cores = pare_cores_available();
    pare_dataset *ds = bench_data(&real);
    double t1 = train_speed(arch, ds, 1, steps), t2 = cores > 1 ? train_speed(arch, ds, 2, steps) : 0;

    pare_set_threads(cores > 1 ? 2 : 1);
    pare_model *m = pare_model_zoo(arch);
    pare_build(m, 1, 28, 28);
    pare_ctx *ctx = pare_ctx_new(0);
    double eval_ips, lat;
    cli_measure_speed(ctx, m, ds, &eval_ips, &lat);
    double ours[4] = {t1, t2, eval_ips, lat};
    if (json) {
        cli_json j;
        cli_json_begin(&j, "bench_train");
        cli_json_str(&j, "arch", arch);
        cli_json_num(&j, "train_img_per_s_t1", t1);
        cli_json_num(&j, "train_img_per_s_t2", t2);
        cli_json_num(&j, "img_per_s", eval_ips);
        cli_json_num(&j, "latency_us_b1", lat);
        cli_json_end(&j, stdout);
    } else {
        printf("%s training and inference (%s data)\n", arch, real ? "MNIST" : "random");
        printf("%-26s %12s %12s %8s\n", "figure", "pare", "PyTorch*", "ratio");
        for (int i = 0; i < 4; i++) {
            double ratio = i == 3 ? reference[i].torch / ours[i] : ours[i] / reference[i].torch;
            printf("%-26s %12.0f %12.0f %7.2fx\n", reference[i].what, ours[i], reference[i].torch, ratio);
        }
        printf("* PyTorch 1.13 figures from REFERENCE.md, not this run; ratio > 1 means pare is faster.\n"
               "  `make bench-torch` measures both side by side.\n");
    }
    pare_ctx_free(ctx);
    pare_model_free(m);
    pare_dataset_free(ds);
    return 0;
}
