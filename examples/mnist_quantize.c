/* mnist quantize: static post-training quantization of a saved float model
 * to the integer-only int8 runtime (observers on the first N training
 * images in file order, then convert), measured against the float model in
 * the same run; or dynamic quantization (--mode dynamic: Conv2d and Linear
 * with int8 weights, activations quantized per batch at run time, the rest
 * in float). QAT is not implemented yet. */
#include <stdlib.h>
#include <string.h>

#include "compress/quant.h"
#include "examples/mnist.h"

typedef struct quant_args {
    const char *model, *arch, *mode, *data, *out, *observer;
    int calib, weight_bits, act_bits, per_tensor, threads, json;
} quant_args;

typedef struct qmeasure {
    double acc, img_per_s, latency_us;
} qmeasure;

static void check_args(const quant_args *a, const char *usage, const cli_opt *opts, int n)
{
    if (!a->model || !a->out) cli_usage_error(usage, opts, n, "--model and --out are required");
    if (strcmp(a->mode, "static") != 0 && strcmp(a->mode, "dynamic") != 0)
        cli_usage_error(usage, opts, n, "--mode %s: static and dynamic are implemented (qat is not yet)", a->mode);
    if (!strcmp(a->mode, "dynamic") && a->act_bits != a->weight_bits)
        cli_usage_error(usage, opts, n,
                        "--mode dynamic uses one bit width for weights and activations "
                        "(--weight-bits %d, --act-bits %d)",
                        a->weight_bits, a->act_bits);
    if (a->per_tensor) cli_usage_error(usage, opts, n, "--per-tensor is not implemented yet (weights are per channel)");
    if (a->calib < 1) cli_usage_error(usage, opts, n, "--calib-images must be >= 1");
    if (a->weight_bits < 2 || a->weight_bits > 8 || a->act_bits < 2 || a->act_bits > 8)
        cli_usage_error(usage, opts, n, "--weight-bits and --act-bits must be in [2, 8]");
    if (a->threads < 0) cli_usage_error(usage, opts, n, "--threads must be >= 0");
    if (strcmp(a->observer, "minmax") != 0 && strcmp(a->observer, "moving-average") != 0)
        cli_usage_error(usage, opts, n, "--observer must be minmax or moving-average (got %s)", a->observer);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Images/s at batch 256 over 2,560 images, and the median batch-1 latency
 * of 300 runs, the way cli_measure_speed measures the float model. */
static void int8_speed(const pare_qmodel *qm, const pare_dataset *ds, void *scratch, qmeasure *m)
{
    int per = ds->rows * ds->cols, n = ds->n < 2560 ? ds->n : 2560;
    float *x = pare_alloc((size_t)n * per * sizeof(float)), *y = pare_alloc((size_t)n * qm->n_out * sizeof(float));
    for (size_t i = 0; i < (size_t)n * per; i++) x[i] = ((float)ds->images[i] / 255 - PARE_MNIST_MEAN) / PARE_MNIST_STD;
    pare_qmodel_forward_float(qm, x, n < 256 ? n : 256, y, scratch, qm->scratch_bytes); /* warm-up */
    double t = pare_now();
    for (int s = 0; s < n; s += 256)
        pare_qmodel_forward_float(qm, x + (size_t)s * per, n - s < 256 ? n - s : 256, y, scratch, qm->scratch_bytes);
    t = pare_now() - t;
    m->img_per_s = t > 0 ? n / t : 0;
    enum { REPS = 300 };
    double samples[REPS];
    for (int r = 0; r < REPS; r++) {
        double t0 = pare_now();
        pare_qmodel_forward_float(qm, x + (size_t)(r % n) * per, 1, y, scratch, qm->scratch_bytes);
        samples[r] = pare_now() - t0;
    }
    qsort(samples, REPS, sizeof samples[0], cmp_double);
    m->latency_us = 1e6 * samples[REPS / 2];
    pare_free(x);
    pare_free(y);
}

/* ["conv1","fc1"]: the int8 layers with weights, in order. */
static void converted_list(const pare_qmodel *qm, char *buf, size_t len)
{
    size_t at = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < qm->n_layers && at < len; i++) {
        const pare_qlayer *l = &qm->layers[i];
        if (l->kind != PARE_Q_CONV && l->kind != PARE_Q_LINEAR) continue;
        at += (size_t)snprintf(buf + at, len - at, "%s\"%s\"", at > 1 ? "," : "", l->name);
    }
    if (at < len) snprintf(buf + at, len - at, "]");
}

static void print_report(const quant_args *a, const pare_qmodel *qm, const qmeasure *base, const qmeasure *q,
                         long base_size, long size, int threads)
{
    printf("static int8 quantization of %s: weights %d-bit per channel (symmetric), activations %d-bit per tensor "
           "(asymmetric), %s observers on the first %d training images\n",
           a->model, a->weight_bits, a->act_bits, a->observer, a->calib);
    for (int i = 0; i < qm->n_notes; i++) printf("  %s\n", qm->notes[i]);
    printf("left in float: none\n\n%-8s %10s %12s %10s %10s\n", "model", "test_acc", "size_bytes", "img/s", "us(b=1)");
    printf("%-8s %9.2f%% %12ld %10.0f %10.0f\n", "float", 100 * base->acc, base_size, base->img_per_s,
           base->latency_us);
    printf("%-8s %9.2f%% %12ld %10.0f %10.0f\n", "int8", 100 * q->acc, size, q->img_per_s, q->latency_us);
    printf("accuracy change %+.2f points; size %.1f%% of the float file; %d thread(s) for float, 1 for int8 "
           "(%s kernel)\n",
           100 * (q->acc - base->acc), base_size > 0 ? 100.0 * size / base_size : 0, threads,
           pare_qkernel_fast() ? "AVX-512 VNNI" : "portable");
    if (!a->json) return;
    char conv[512];
    converted_list(qm, conv, sizeof conv);
    cli_json j;
    cli_json_begin(&j, "quantize");
    cli_json_str(&j, "mode", a->mode);
    cli_json_int(&j, "weight_bits", a->weight_bits);
    cli_json_int(&j, "act_bits", a->act_bits);
    cli_json_int(&j, "calib_images", a->calib);
    cli_json_str(&j, "observer", a->observer);
    cli_json_num(&j, "test_acc", q->acc);
    cli_json_num(&j, "base_test_acc", base->acc);
    cli_json_int(&j, "size_bytes", size);
    cli_json_int(&j, "base_size_bytes", base_size);
    cli_json_num(&j, "img_per_s", q->img_per_s);
    cli_json_num(&j, "base_img_per_s", base->img_per_s);
    cli_json_num(&j, "latency_us_b1", q->latency_us);
    cli_json_num(&j, "base_latency_us_b1", base->latency_us);
    cli_json_raw(&j, "converted", conv);
    cli_json_raw(&j, "float_layers", "[]");
    cli_json_int(&j, "threads", threads);
    cli_json_end(&j, stdout);
}

/* ["conv1","fc1"] from a list of names. */
static void name_list(char (*names)[PARE_NAME_MAX], int n, char *buf, size_t len)
{
    size_t at = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < n && at < len; i++)
        at += (size_t)snprintf(buf + at, len - at, "%s\"%s\"", i ? "," : "", names[i]);
    if (at < len) snprintf(buf + at, len - at, "]");
}

/* --mode dynamic: converts m in place, saves, and measures it through the
 * float tooling (pare_evaluate, cli_measure_speed) as the base was. */
static void quantize_dynamic(const quant_args *a, pare_ctx *ctx, pare_model *m, const pare_dataset *test,
                             const qmeasure *base, int threads)
{
    pare_dq_report r;
    if (pare_quant_dynamic(m, PARE_CONV2D | PARE_LINEAR, a->weight_bits, &r) < 0) cli_die("dynamic quantization");
    if (pare_quant_dynamic_save(m, a->out)) cli_die("saving");
    long base_size = cli_file_size(a->model), size = cli_file_size(a->out);
    qmeasure q;
    pare_loader_config lc = pare_loader_defaults();
    lc.batch = 256;
    lc.shuffle = 0;
    pare_loader *ld = pare_loader_new(test, NULL, test->n, &lc);
    q.acc = pare_evaluate(ctx, m, ld, NULL);
    pare_loader_free(ld);
    cli_measure_speed(ctx, m, test, &q.img_per_s, &q.latency_us);

    printf("dynamic int8 quantization of %s: weights %d-bit per channel (symmetric), activations %d-bit per tensor "
           "(asymmetric) from each batch's own range, int32 accumulation, output dequantized to float\n",
           a->model, a->weight_bits, a->weight_bits);
    for (int i = 0; i < r.n_converted; i++) printf("  %s -> dynamic int8\n", r.converted[i]);
    if (!r.n_float) printf("left in float: none (ReLU, pooling, flatten and softmax run in float between them)\n");
    for (int i = 0; i < r.n_float; i++) printf("  left in float: %s (%s)\n", r.float_layers[i], r.reason[i]);
    printf("\n%-8s %10s %12s %10s %10s\n", "model", "test_acc", "size_bytes", "img/s", "us(b=1)");
    printf("%-8s %9.2f%% %12ld %10.0f %10.0f\n", "float", 100 * base->acc, base_size, base->img_per_s,
           base->latency_us);
    printf("%-8s %9.2f%% %12ld %10.0f %10.0f\n", "dyn-int8", 100 * q.acc, size, q.img_per_s, q.latency_us);
    printf("accuracy change %+.2f points; size %.1f%% of the float file; %d thread(s) for both\n",
           100 * (q.acc - base->acc), base_size > 0 ? 100.0 * size / base_size : 0, threads);
    if (!a->json) return;
    char conv[1024], fl[1024];
    name_list(r.converted, r.n_converted, conv, sizeof conv);
    name_list(r.float_layers, r.n_float, fl, sizeof fl);
    cli_json j;
    cli_json_begin(&j, "quantize");
    cli_json_str(&j, "mode", a->mode);
    cli_json_int(&j, "weight_bits", a->weight_bits);
    cli_json_int(&j, "act_bits", a->weight_bits);
    cli_json_num(&j, "test_acc", q.acc);
    cli_json_num(&j, "base_test_acc", base->acc);
    cli_json_int(&j, "size_bytes", size);
    cli_json_int(&j, "base_size_bytes", base_size);
    cli_json_num(&j, "img_per_s", q.img_per_s);
    cli_json_num(&j, "base_img_per_s", base->img_per_s);
    cli_json_num(&j, "latency_us_b1", q.latency_us);
    cli_json_num(&j, "base_latency_us_b1", base->latency_us);
    cli_json_raw(&j, "converted", conv);
    cli_json_raw(&j, "float_layers", fl);
    cli_json_int(&j, "threads", threads);
    cli_json_end(&j, stdout);
}

int mnist_quantize(int argc, char **argv)
{
    quant_args a = {NULL, NULL, "static", "data/mnist", NULL, "minmax", 1024, 8, 8, 0, 0, 0};
    cli_opt opts[] = {
        {"--model", CLI_STR, &a.model, "float model file (safetensors)"},
        {"--arch", CLI_STR, &a.arch, "architecture, for a file without pare metadata"},
        {"--mode", CLI_STR, &a.mode, "static or dynamic (qat: not implemented yet)"},
        {"--calib-images", CLI_INT, &a.calib, "calibrate on the first N training images, file order (default 1024)"},
        {"--weight-bits", CLI_INT, &a.weight_bits, "weight bits, 2..8 (default 8; stored one per byte)"},
        {"--act-bits", CLI_INT, &a.act_bits, "activation bits, 2..8 (default 8)"},
        {"--observer", CLI_STR, &a.observer, "minmax (default) or moving-average (c = 0.01)"},
        {"--per-tensor", CLI_FLAG, &a.per_tensor, "per-tensor weight scales (not implemented yet)"},
        {"--threads", CLI_INT, &a.threads, "threads for the float model (default: all cores)"},
        {"--data", CLI_STR, &a.data, "directory of the MNIST IDX files (default data/mnist)"},
        {"--out", CLI_STR, &a.out, "write the int8 model here (safetensors, pare.format int8)"},
        {"--json", CLI_FLAG, &a.json, "end stdout with one JSON line"},
    };
    const int n = (int)(sizeof opts / sizeof opts[0]);
    const char *usage = "mnist quantize --model FILE --mode static|dynamic [--calib-images 1024] [--weight-bits 8] "
                        "[--act-bits 8] --out FILE [--json]";
    cli_parse(argc, argv, 2, opts, n, usage);
    check_args(&a, usage, opts, n);
    int threads = cli_threads(a.threads);

    pare_model *m = mnist_load_model(a.model, a.arch);
    pare_dataset *train = cli_load(a.data, 1), *test = cli_load(a.data, 0);
    pare_ctx *ctx = pare_ctx_new(0);
    qmeasure base, q;
    pare_loader_config lc = pare_loader_defaults();
    lc.batch = 256;
    lc.shuffle = 0;
    pare_loader *ld = pare_loader_new(test, NULL, test->n, &lc);
    base.acc = pare_evaluate(ctx, m, ld, NULL);
    pare_loader_free(ld);
    cli_measure_speed(ctx, m, test, &base.img_per_s, &base.latency_us);
    if (!strcmp(a.mode, "dynamic")) {
        quantize_dynamic(&a, ctx, m, test, &base, threads);
        pare_ctx_free(ctx);
        pare_dataset_free(train);
        pare_dataset_free(test);
        pare_model_free(m);
        return 0;
    }

    pare_quant_config cfg = pare_quant_defaults();
    cfg.weight_bits = a.weight_bits;
    cfg.act_bits = a.act_bits;
    if (!strcmp(a.observer, "moving-average")) cfg.observer = PARE_OBSERVE_MOVING_AVG;
    if (pare_quant_prepare(m, &cfg) || pare_quant_calibrate(ctx, m, train, a.calib)) cli_die("calibration");
    pare_qmodel *qm = pare_quant_convert(m, &cfg);
    if (!qm) cli_die("convert");
    pare_quant_unprepare(m);
    if (pare_qmodel_save(qm, a.out)) cli_die("saving");
    long base_size = cli_file_size(a.model), size = cli_file_size(a.out);

    void *scratch = pare_alloc(qm->scratch_bytes); /* planned at convert; nothing else is allocated to run */
    q.acc = pare_qmodel_evaluate(qm, test, 0, scratch, qm->scratch_bytes);
    if (q.acc < 0) cli_die("int8 evaluation");
    int8_speed(qm, test, scratch, &q);
    print_report(&a, qm, &base, &q, base_size, size, threads);

    pare_free(scratch);
    pare_qmodel_free(qm);
    pare_ctx_free(ctx);
    pare_dataset_free(train);
    pare_dataset_free(test);
    pare_model_free(m);
    return 0;
}

/* mnist eval on an int8 file: accuracy and speed of the integer runtime. */
int mnist_eval_int8(const char *path, const char *data, int threads, int json)
{
    pare_qmodel *qm = pare_qmodel_load(path);
    if (!qm) cli_die(NULL);
    pare_dataset *test = cli_load(data, 0);
    void *scratch = pare_alloc(qm->scratch_bytes);
    qmeasure q;
    q.acc = pare_qmodel_evaluate(qm, test, 0, scratch, qm->scratch_bytes);
    if (q.acc < 0) cli_die("int8 evaluation");
    int8_speed(qm, test, scratch, &q);
    printf("model      %s (int8)\n", path);
    printf("test acc   %.2f%%  (%d images)\n", 100 * q.acc, test->n);
    printf("speed      %.0f img/s at batch 256, %.0f us at batch 1 (%s int8 kernel, 1 thread)\n", q.img_per_s,
           q.latency_us, pare_qkernel_fast() ? "AVX-512 VNNI" : "portable");
    if (json) {
        cli_json j;
        cli_json_begin(&j, "eval");
        cli_json_str(&j, "format", "int8");
        cli_json_num(&j, "test_acc", q.acc);
        cli_json_int(&j, "size_bytes", cli_file_size(path));
        cli_json_num(&j, "img_per_s", q.img_per_s);
        cli_json_num(&j, "latency_us_b1", q.latency_us);
        cli_json_int(&j, "threads", threads);
        cli_json_end(&j, stdout);
    }
    pare_free(scratch);
    pare_dataset_free(test);
    pare_qmodel_free(qm);
    return 0;
}
