/* mnist quantize: a saved float model to int8, measured against the float
 * model in the same run. --mode static: post-training quantization to the
 * integer-only int8 runtime (observers on the first N training images in
 * file order, then convert). --mode qat: BatchNorm folded, fake-quant on
 * weights and activations, fine-tuned (1 epoch of SGD at lr 1e-3 by
 * default), then converted to the same runtime. --mode dynamic: Conv2d and
 * Linear with int8 weights, activations quantized per batch at run time, the
 * rest in float. */
#include <stdlib.h>
#include <string.h>

#include "compress/quant.h"
#include "examples/mnist.h"

typedef struct quant_args {
    const char *model, *arch, *mode, *data, *out, *observer;
    int calib, weight_bits, act_bits, per_tensor, threads, json;
    int epochs, batch;
    float lr, momentum, percentile;
    uint64_t seed;
} quant_args;

typedef struct qmeasure {
    double acc, img_per_s, latency_us;
} qmeasure;

/* The observer of a --observer name, -1 if none. */
static int observer_kind(const char *name)
{
    static const char *const names[] = {"minmax", "moving-average", "histogram", "percentile"};
    static const pare_observer_kind kinds[] = {PARE_OBSERVE_MINMAX, PARE_OBSERVE_MOVING_AVG, PARE_OBSERVE_HISTOGRAM,
                                               PARE_OBSERVE_PERCENTILE};
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) return (int)kinds[i];
    return -1;
}

static void check_args(const quant_args *a, const char *usage, const cli_opt *opts, int n)
{
    if (!a->model || !a->out) cli_usage_error(usage, opts, n, "--model and --out are required");
    if (strcmp(a->mode, "static") != 0 && strcmp(a->mode, "dynamic") != 0 && strcmp(a->mode, "qat") != 0)
        cli_usage_error(usage, opts, n, "--mode %s: it must be static, dynamic or qat", a->mode);
    if (!strcmp(a->mode, "dynamic") && a->act_bits != a->weight_bits)
        cli_usage_error(usage, opts, n,
                        "--mode dynamic uses one bit width for weights and activations "
                        "(--weight-bits %d, --act-bits %d)",
                        a->weight_bits, a->act_bits);
    if (a->per_tensor && !strcmp(a->mode, "dynamic"))
        cli_usage_error(usage, opts, n, "--per-tensor: dynamic quantization keeps per-channel weight scales");
    if (!strcmp(a->mode, "qat") && a->epochs < 1)
        cli_usage_error(usage, opts, n, "--mode qat needs --epochs >= 1 (the ranges are learned while training)");
    if (a->epochs < 0 || a->batch < 1 || !(a->lr > 0) || !(a->momentum >= 0 && a->momentum < 1))
        cli_usage_error(usage, opts, n, "--epochs must be >= 0, --batch >= 1, --lr > 0 and --momentum in [0, 1)");
    if (a->calib < 1) cli_usage_error(usage, opts, n, "--calib-images must be >= 1");
    if (a->weight_bits < 2 || a->weight_bits > 8 || a->act_bits < 2 || a->act_bits > 8)
        cli_usage_error(usage, opts, n, "--weight-bits and --act-bits must be in [2, 8]");
    if (a->threads < 0) cli_usage_error(usage, opts, n, "--threads must be >= 0");
    if (observer_kind(a->observer) < 0)
        cli_usage_error(usage, opts, n, "--observer must be minmax, moving-average, histogram or percentile (got %s)",
                        a->observer);
    if (!strcmp(a->mode, "qat") && observer_kind(a->observer) >= PARE_OBSERVE_HISTOGRAM)
        cli_usage_error(usage, opts, n, "--mode qat learns ranges while training: --observer minmax or moving-average");
    if (!(a->percentile > 50 && a->percentile <= 100))
        cli_usage_error(usage, opts, n, "--percentile must be in (50, 100]");
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
    m->latency_us = 1e6 * cli_median(samples, REPS);
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

/* What QAT adds to the report. */
typedef struct qat_result {
    double fake_quant_acc, seconds;
    pare_quant_agreement_stats agree;
    int n_notes; /* BatchNorm folds */
    char notes[8][128];
} qat_result;

static const char *kernel_name(void)
{
    return pare_qkernel_name(); /* reference, avx2 or avx512-vnni */
}

static void print_header(const quant_args *a, const qat_result *qat)
{
    if (qat)
        printf("quantization-aware training of %s: %d epoch(s) of SGD at lr %g (momentum %g, batch %d, seed %llu) "
               "with fake-quant on weights (%d-bit %s, symmetric) and activations (%d-bit per tensor, asymmetric, "
               "%s ranges), then converted to the int8 runtime\n",
               a->model, a->epochs, (double)a->lr, (double)a->momentum, a->batch, (unsigned long long)a->seed,
               a->weight_bits, a->per_tensor ? "per tensor" : "per channel", a->act_bits, a->observer);
    else
        printf("static int8 quantization of %s: weights %d-bit %s (symmetric), activations %d-bit per tensor "
               "(asymmetric), %s observers on the first %d training images\n",
               a->model, a->weight_bits, a->per_tensor ? "per tensor" : "per channel", a->act_bits, a->observer,
               a->calib);
}

static void print_report(const quant_args *a, const pare_qmodel *qm, const qmeasure *base, const qmeasure *q,
                         long base_size, long size, int threads, const qat_result *qat)
{
    print_header(a, qat);
    for (int i = 0; qat && i < qat->n_notes; i++) printf("  %s\n", qat->notes[i]);
    for (int i = 0; i < qm->n_notes; i++) printf("  %s\n", qm->notes[i]);
    printf("left in float: none\n\n%-10s %10s %12s %10s %10s\n", "model", "test_acc", "size_bytes", "img/s", "us(b=1)");
    printf("%-10s %9.2f%% %12ld %10.0f %10.0f\n", "float", 100 * base->acc, base_size, base->img_per_s,
           base->latency_us);
    if (qat) printf("%-10s %9.2f%% %12s %10s %10s\n", "fake-quant", 100 * qat->fake_quant_acc, "", "", "");
    printf("%-10s %9.2f%% %12ld %10.0f %10.0f\n", "int8", 100 * q->acc, size, q->img_per_s, q->latency_us);
    printf("accuracy change %+.2f points; size %.1f%% of the float file; %d thread(s) for both (int8 on the %s "
           "kernel)\n",
           100 * (q->acc - base->acc), base_size > 0 ? 100.0 * size / base_size : 0, threads, kernel_name());
    if (qat)
        printf("int8 vs fake-quant model: same argmax on %d of %d test images (%.2f%%); %.3f%% of logits within one "
               "output step (%.4g), the largest difference %.2f steps\n",
               qat->agree.same_argmax, qat->agree.images,
               qat->agree.images ? 100.0 * qat->agree.same_argmax / qat->agree.images : 0,
               100 * qat->agree.within_one_step, (double)qm->out_scale, qat->agree.max_steps);
    if (!a->json) return;
    char conv[512];
    converted_list(qm, conv, sizeof conv);
    cli_json j;
    cli_json_begin(&j, "quantize");
    cli_json_str(&j, "mode", a->mode);
    cli_json_int(&j, "weight_bits", a->weight_bits);
    cli_json_int(&j, "act_bits", a->act_bits);
    cli_json_int(&j, "per_tensor", a->per_tensor);
    if (!qat) cli_json_int(&j, "calib_images", a->calib);
    cli_json_str(&j, "observer", a->observer);
    cli_json_num(&j, "test_acc", q->acc);
    cli_json_num(&j, "base_test_acc", base->acc);
    if (qat) {
        cli_json_num(&j, "fake_quant_test_acc", qat->fake_quant_acc);
        cli_json_num(&j, "agree_argmax", qat->agree.images ? (double)qat->agree.same_argmax / qat->agree.images : 0);
        cli_json_num(&j, "logits_within_one_step", qat->agree.within_one_step);
        cli_json_num(&j, "max_logit_steps", qat->agree.max_steps);
        cli_json_int(&j, "epochs", a->epochs);
        cli_json_num(&j, "lr", a->lr);
        cli_json_num(&j, "train_seconds", qat->seconds);
    }
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

/* --mode qat: prepare (fold BatchNorm, fake-quant), fine-tune, evaluate the
 * fake-quant model. The model is then ready for pare_quant_convert. */
static void train_qat(const quant_args *a, pare_ctx *ctx, pare_model *m, const pare_quant_config *cfg,
                      const pare_dataset *train, const pare_dataset *test, qat_result *r)
{
    r->n_notes = pare_quant_prepare_qat(m, cfg, r->notes, 8);
    if (r->n_notes < 0) cli_die("QAT");
    cli_loaders l;
    cli_make_loaders(&l, train, test, a->batch, 0, a->seed);
    ctx->seed = a->seed;
    pare_optim *o = pare_sgd(m, a->lr, a->momentum); /* after folding: the parameters it sees are final */
    if (!o) cli_die("optimizer");
    pare_fit_config fc = pare_fit_defaults(a->epochs);
    fc.label = "qat";
    double t = pare_now();
    if (a->epochs && pare_fit(ctx, m, o, l.train, &fc, NULL)) cli_die("QAT fine-tune");
    r->seconds = pare_now() - t;
    r->fake_quant_acc = pare_evaluate(ctx, m, l.test, NULL);
    pare_optim_free(o);
    cli_free_loaders(&l);
}

int mnist_quantize(int argc, char **argv)
{
    quant_args a = {.mode = "static",
                    .data = "data/mnist",
                    .calib = 1024,
                    .weight_bits = 8,
                    .act_bits = 8,
                    .epochs = 1,
                    .batch = 64,
                    .lr = 1e-3f,
                    .momentum = 0.9f,
                    .percentile = 99.99f};
    cli_opt opts[] = {
        {"--model", CLI_STR, &a.model, "float model file (safetensors)"},
        {"--arch", CLI_STR, &a.arch, "architecture, for a file without pare metadata"},
        {"--mode", CLI_STR, &a.mode, "static (default), qat or dynamic"},
        {"--calib-images", CLI_INT, &a.calib, "static: calibrate on the first N training images, file order (1024)"},
        {"--epochs", CLI_INT, &a.epochs, "qat: fine-tune epochs (default 1)"},
        {"--lr", CLI_FLOAT, &a.lr, "qat: SGD learning rate (default 1e-3)"},
        {"--momentum", CLI_FLOAT, &a.momentum, "qat: SGD momentum (default 0.9)"},
        {"--batch", CLI_INT, &a.batch, "qat: batch size (default 64)"},
        {"--seed", CLI_U64, &a.seed, "qat: shuffling seed (default 0)"},
        {"--weight-bits", CLI_INT, &a.weight_bits, "weight bits, 2..8 (default 8; 4 or fewer packed two a byte)"},
        {"--act-bits", CLI_INT, &a.act_bits, "activation bits, 2..8 (default 8)"},
        {"--per-tensor", CLI_FLAG, &a.per_tensor, "one weight scale per tensor (default: per output channel)"},
        {"--observer", CLI_STR, &a.observer,
         "minmax, moving-average (c = 0.01), histogram (the range of least squared error) or percentile; default "
         "minmax for static, moving-average for qat"},
        {"--percentile", CLI_FLOAT, &a.percentile, "p of --observer percentile: range [100-p, p] (default 99.99)"},
        {"--threads", CLI_INT, &a.threads, "threads for the float and int8 models (default: all cores)"},
        {"--data", CLI_STR, &a.data, "directory of the MNIST IDX files (default data/mnist)"},
        {"--out", CLI_STR, &a.out, "write the int8 model here (safetensors, pare.format int8 or int8-dynamic)"},
        {"--json", CLI_FLAG, &a.json, "end stdout with one JSON line"},
    };
    const int n = (int)(sizeof opts / sizeof opts[0]);
    const char *usage = "mnist quantize --model FILE --mode static|qat|dynamic [--calib-images 1024] [--epochs 1 "
                        "--lr 1e-3] [--weight-bits 8] [--act-bits 8] [--per-tensor] --out FILE [--json]";
    cli_parse(argc, argv, 2, opts, n, usage);
    if (!a.observer) a.observer = strcmp(a.mode, "qat") ? "minmax" : "moving-average";
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
    cfg.per_tensor = a.per_tensor;
    cfg.observer = (pare_observer_kind)observer_kind(a.observer);
    cfg.percentile = a.percentile;
    qat_result qat = {0};
    int is_qat = !strcmp(a.mode, "qat");
    if (is_qat) {
        train_qat(&a, ctx, m, &cfg, train, test, &qat);
    } else if (pare_quant_prepare(m, &cfg) || pare_quant_calibrate(ctx, m, train, a.calib)) {
        cli_die("calibration"); /* convert folds a BatchNorm2d into the conv before it */
    }
    pare_qmodel *qm = pare_quant_convert(m, &cfg);
    if (!qm) cli_die("convert");
    if (is_qat && pare_quant_agreement(ctx, m, qm, test, 0, &qat.agree)) cli_die("agreement");
    pare_quant_unprepare(m);
    if (pare_qmodel_save(qm, a.out)) cli_die("saving");
    long base_size = cli_file_size(a.model), size = cli_file_size(a.out);

    void *scratch = pare_alloc(qm->scratch_bytes); /* planned at convert; nothing else is allocated to run */
    q.acc = pare_qmodel_evaluate(qm, test, 0, scratch, qm->scratch_bytes);
    if (q.acc < 0) cli_die("int8 evaluation");
    int8_speed(qm, test, scratch, &q);
    print_report(&a, qm, &base, &q, base_size, size, threads, is_qat ? &qat : NULL);

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
    printf("speed      %.0f img/s at batch 256, %.0f us at batch 1 (%s int8 kernel, %d thread(s))\n", q.img_per_s,
           q.latency_us, kernel_name(), threads);
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
