/* mnist train: train an architecture from scratch on the reference protocol. */
#include <string.h>

#include "examples/mnist.h"

typedef struct train_args {
    const char *arch, *optim, *schedule, *data, *out;
    int epochs, batch, nesterov, val, threads, json;
    float lr, momentum, weight_decay, clip;
    uint64_t seed;
} train_args;

/* Per-epoch reporting: test accuracy (and validation, when held out). */
typedef struct epoch_report {
    pare_ctx *ctx;
    pare_loader *test, *val;
    int n;
    double train_loss[64], train_acc[64], test_acc[64], val_acc[64], img_per_s[64], seconds[64];
} epoch_report;

static int after_epoch(void *user, pare_model *m, const pare_epoch_stats *s)
{
    epoch_report *r = user;
    if (r->n == 64) return 0;
    int e = r->n++;
    r->train_loss[e] = s->loss;
    r->train_acc[e] = s->accuracy;
    r->img_per_s[e] = s->img_per_s;
    r->seconds[e] = s->seconds;
    r->val_acc[e] = r->val ? pare_evaluate(r->ctx, m, r->val, NULL) : -1;
    r->test_acc[e] = pare_evaluate(r->ctx, m, r->test, NULL);
    fprintf(stderr, "epoch %d: loss %.4f, %s%.2f%%, test %.2f%%, %.0f img/s, %.1f s\n", e + 1, s->loss,
            r->val ? "val " : "train ", 100 * (r->val ? r->val_acc[e] : s->accuracy), 100 * r->test_acc[e],
            s->img_per_s, s->seconds);
    return 0;
}

static pare_optim *make_optimizer(pare_model *m, const train_args *a)
{
    pare_optim_kind kind = !strcmp(a->optim, "adam")    ? PARE_OPT_ADAM
                           : !strcmp(a->optim, "adamw") ? PARE_OPT_ADAMW
                                                        : PARE_OPT_SGD;
    pare_optim_config oc = pare_optim_defaults(kind, a->lr);
    if (kind == PARE_OPT_SGD) {
        oc.momentum = a->momentum;
        oc.nesterov = a->nesterov;
    }
    if (a->weight_decay >= 0) oc.weight_decay = a->weight_decay;
    pare_optim *o = pare_optim_new(m, &oc);
    if (!o) cli_die("optimizer");
    return o;
}

static void print_table(const train_args *a, const epoch_report *r, pare_model *m, int threads, double total_s)
{
    printf("\n%s, %s lr %g, batch %d, seed %llu, %d threads\n", a->arch, a->optim, (double)a->lr, a->batch,
           (unsigned long long)a->seed, threads);
    printf("%-6s %10s %10s %10s %10s %10s %8s\n", "epoch", "train_loss", "train_acc", r->val ? "val_acc" : "",
           "test_acc", "img/s", "seconds");
    for (int e = 0; e < r->n; e++) {
        char val[16] = "";
        if (r->val) snprintf(val, sizeof val, "%.2f%%", 100 * r->val_acc[e]);
        printf("%-6d %10.4f %9.2f%% %10s %9.2f%% %10.0f %8.1f\n", e + 1, r->train_loss[e], 100 * r->train_acc[e], val,
               100 * r->test_acc[e], r->img_per_s[e], r->seconds[e]);
    }
    printf("params %zu, %.2f MFLOP/image forward, %.1f s in all\n", pare_model_param_count(m),
           pare_model_flops(m) / 1e6, total_s);
}

static void print_json(const train_args *a, const epoch_report *r, pare_model *m, int threads, double total_s)
{
    cli_json j;
    double ips = 0, train_s = 0;
    for (int e = 0; e < r->n; e++) train_s += r->seconds[e];
    for (int e = 0; e < r->n; e++) ips += r->img_per_s[e] * r->seconds[e] / (train_s > 0 ? train_s : 1);
    cli_json_begin(&j, "train");
    cli_json_str(&j, "arch", a->arch);
    cli_json_int(&j, "epochs", a->epochs);
    cli_json_int(&j, "seed", (long long)a->seed);
    cli_json_int(&j, "threads", threads);
    cli_json_num(&j, "test_acc", r->n ? r->test_acc[r->n - 1] : 0);
    if (r->val) cli_json_num(&j, "val_acc", r->n ? r->val_acc[r->n - 1] : 0);
    cli_json_num(&j, "train_loss", r->n ? r->train_loss[r->n - 1] : 0);
    cli_json_num(&j, "seconds", total_s);
    cli_json_num(&j, "train_img_per_s", ips);
    cli_json_int(&j, "params", (long long)pare_model_param_count(m));
    if (a->out) cli_json_int(&j, "size_bytes", cli_file_size(a->out));
    cli_json_end(&j, stdout);
}

static void check_args(train_args *a, const char *usage, const cli_opt *opts, int n)
{
    if (!a->arch) cli_usage_error(usage, opts, n, "--arch is required");
    if (a->epochs < 0 || a->batch <= 0 || a->val < 0 || a->threads < 0)
        cli_usage_error(usage, opts, n, "--epochs, --batch, --val and --threads must be positive");
    if (strcmp(a->optim, "sgd") && strcmp(a->optim, "adam") && strcmp(a->optim, "adamw"))
        cli_usage_error(usage, opts, n, "--optim must be sgd, adam or adamw (got '%s')", a->optim);
    if (strcmp(a->schedule, "none") && strcmp(a->schedule, "step") && strcmp(a->schedule, "cosine"))
        cli_usage_error(usage, opts, n, "--schedule must be none, step or cosine (got '%s')", a->schedule);
    if (a->lr < 0) a->lr = strcmp(a->optim, "sgd") ? 1e-3f : 0.01f;
    if (a->epochs > 64) cli_usage_error(usage, opts, n, "--epochs is limited to 64");
}

int mnist_train(int argc, char **argv)
{
    train_args a = {NULL, NULL, "none", "data/mnist", NULL, 3, 64, 0, 0, 0, 0, -1, 0.9f, -1, 0, 0};
    cli_opt opts[] = {
        {"--arch", CLI_STR, &a.arch, "seedcnn | seedcnn-bn | kerascnn | lenet5 | lenet300 | mlp64 | mlp32"},
        {"--epochs", CLI_INT, &a.epochs, "epochs (default 3)"},
        {"--batch", CLI_INT, &a.batch, "batch size (default 64)"},
        {"--optim", CLI_STR, &a.optim, "sgd | adam | adamw (default sgd; adam for kerascnn)"},
        {"--lr", CLI_FLOAT, &a.lr, "learning rate (default 0.01 for sgd, 1e-3 for adam/adamw)"},
        {"--momentum", CLI_FLOAT, &a.momentum, "SGD momentum (default 0.9)"},
        {"--nesterov", CLI_FLAG, &a.nesterov, "Nesterov momentum"},
        {"--weight-decay", CLI_FLOAT, &a.weight_decay, "weight decay (default 0; adamw 0.01)"},
        {"--schedule", CLI_STR, &a.schedule, "none | step | cosine learning-rate schedule per epoch"},
        {"--clip", CLI_FLOAT, &a.clip, "clip the global gradient norm to this (default off)"},
        {"--val", CLI_INT, &a.val, "hold out this many training images for validation (default 0)"},
        {"--seed", CLI_U64, &a.seed, "seed for initialization and shuffling (default 0)"},
        {"--threads", CLI_INT, &a.threads, "threads (default: all cores)"},
        {"--data", CLI_STR, &a.data, "directory of the MNIST IDX files (default data/mnist)"},
        {"--out", CLI_STR, &a.out, "save the trained model here (safetensors)"},
        {"--json", CLI_FLAG, &a.json, "end stdout with one JSON line"},
    };
    const int n = (int)(sizeof opts / sizeof opts[0]);
    const char *usage = "mnist train --arch NAME [options]";
    cli_parse(argc, argv, 2, opts, n, usage);
    if (!a.optim) a.optim = a.arch && !strcmp(a.arch, "kerascnn") ? "adam" : "sgd";
    check_args(&a, usage, opts, n);
    int threads = cli_threads(a.threads);

    pare_model *m = pare_model_zoo(a.arch);
    if (!m) cli_usage_error(usage, opts, n, "%s", pare_error());
    m->seed = a.seed;
    if (pare_build(m, 1, 28, 28)) cli_die(a.arch);
    pare_dataset *train = cli_load(a.data, 1), *test = cli_load(a.data, 0);
    if (a.val >= train->n) cli_usage_error(usage, opts, n, "--val %d leaves no training images", a.val);

    cli_loaders l;
    cli_make_loaders(&l, train, test, a.batch, a.val, a.seed);

    pare_optim *o = make_optimizer(m, &a);
    pare_ctx *ctx = pare_ctx_new(0);
    ctx->seed = a.seed;
    epoch_report report = {ctx, l.test, l.val, 0, {0}, {0}, {0}, {0}, {0}, {0}};
    pare_lr_schedule sched = {!strcmp(a.schedule, "step")     ? PARE_LR_STEP
                              : !strcmp(a.schedule, "cosine") ? PARE_LR_COSINE
                                                              : PARE_LR_CONSTANT,
                              a.lr,
                              1,
                              0.5f,
                              a.epochs,
                              0.0f};
    pare_fit_config fc = pare_fit_defaults(a.epochs);
    fc.schedule = &sched;
    fc.clip = a.clip;
    fc.on_epoch = after_epoch;
    fc.user = &report;
    fprintf(stderr, "training %s (%zu parameters) on %d images, %d threads\n", a.arch, pare_model_param_count(m),
            l.n_train, threads);
    double t0 = pare_now();
    if (pare_fit(ctx, m, o, l.train, &fc, NULL)) cli_die("training");
    double total = pare_now() - t0;
    if (a.out) {
        if (pare_save(m, a.out, NULL)) cli_die("saving");
        fprintf(stderr, "saved %s (%ld bytes)\n", a.out, cli_file_size(a.out));
    }
    print_table(&a, &report, m, threads, total);
    if (a.json) print_json(&a, &report, m, threads, total);

    pare_ctx_free(ctx);
    pare_optim_free(o);
    cli_free_loaders(&l);
    pare_dataset_free(train);
    pare_dataset_free(test);
    pare_model_free(m);
    return 0;
}
