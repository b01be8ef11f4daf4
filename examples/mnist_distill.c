/* mnist distill: train a small student from a saved teacher, in one process.
 * --alpha 0 trains the same student alone, everything else equal, for the
 * comparison. */
#include <string.h>

#include "compress/compress.h"
#include "examples/mnist.h"

typedef struct distill_args {
    const char *teacher, *arch, *student, *data, *out;
    int epochs, batch, val, threads, json;
    float temperature, alpha, lr, momentum;
    uint64_t seed;
} distill_args;

typedef struct distill_report {
    pare_ctx *ctx;
    pare_loader *test, *val;
    int n;
    double loss[64], train_acc[64], val_acc[64], test_acc[64], seconds[64];
} distill_report;

static int after_epoch(void *user, pare_model *m, const pare_epoch_stats *s)
{
    distill_report *r = user;
    if (r->n == 64) return 0;
    int e = r->n++;
    r->loss[e] = s->loss;
    r->train_acc[e] = s->accuracy;
    r->seconds[e] = s->seconds;
    r->val_acc[e] = r->val ? pare_evaluate(r->ctx, m, r->val, NULL) : -1;
    r->test_acc[e] = pare_evaluate(r->ctx, m, r->test, NULL);
    char val[32] = "";
    if (r->val) snprintf(val, sizeof val, ", val %.2f%%", 100 * r->val_acc[e]);
    fprintf(stderr, "epoch %d: loss %.4f, train %.2f%%%s, test %.2f%%, %.1f s\n", e + 1, s->loss, 100 * s->accuracy,
            val, 100 * r->test_acc[e], s->seconds);
    return 0;
}

static void check_args(const distill_args *a, const char *usage, const cli_opt *opts, int n)
{
    if (!a->teacher || !a->student) cli_usage_error(usage, opts, n, "--teacher and --student are required");
    if (a->epochs < 0 || a->epochs > 64) cli_usage_error(usage, opts, n, "--epochs must be in [0, 64]");
    if (a->batch <= 0 || a->val < 0 || a->threads < 0)
        cli_usage_error(usage, opts, n, "--batch must be positive, --val and --threads >= 0");
    if (!(a->temperature > 0))
        cli_usage_error(usage, opts, n, "--temperature must be > 0 (got %g)", (double)a->temperature);
    if (!(a->alpha >= 0 && a->alpha <= 1))
        cli_usage_error(usage, opts, n, "--alpha must be in [0, 1] (got %g)", (double)a->alpha);
    if (!(a->lr > 0)) cli_usage_error(usage, opts, n, "--lr must be > 0");
}

static void print_table(const distill_args *a, const distill_report *r, pare_model *s, pare_model *t,
                        double teacher_acc, int threads, double total)
{
    printf("\n%s from teacher %s (%s), T %g, alpha %g, SGD lr %g momentum %g, batch %d, seed %llu, %d threads\n",
           a->student, a->teacher, t->arch, (double)a->temperature, (double)a->alpha, (double)a->lr,
           (double)a->momentum, a->batch, (unsigned long long)a->seed, threads);
    printf("%-6s %10s %10s %10s %10s %8s\n", "epoch", "kd_loss", "train_acc", r->val ? "val_acc" : "", "test_acc",
           "seconds");
    for (int e = 0; e < r->n; e++) {
        char val[16] = "";
        if (r->val) snprintf(val, sizeof val, "%.2f%%", 100 * r->val_acc[e]);
        printf("%-6d %10.4f %9.2f%% %10s %9.2f%% %8.1f\n", e + 1, r->loss[e], 100 * r->train_acc[e], val,
               100 * r->test_acc[e], r->seconds[e]);
    }
    size_t sp = pare_model_param_count(s), tp = pare_model_param_count(t);
    printf("student %zu params (%.1f%% of the teacher's %zu); teacher test acc %.2f%%; %.1f s in all\n", sp,
           100.0 * (double)sp / (double)tp, tp, 100 * teacher_acc, total);
}

static void print_json(const distill_args *a, const distill_report *r, pare_model *s, pare_model *t, double teacher_acc,
                       int threads, double total)
{
    cli_json j;
    cli_json_begin(&j, "distill");
    cli_json_str(&j, "student", a->student);
    cli_json_num(&j, "temperature", a->temperature);
    cli_json_num(&j, "alpha", a->alpha);
    cli_json_int(&j, "seed", (long long)a->seed);
    cli_json_int(&j, "epochs", a->epochs);
    cli_json_num(&j, "lr", a->lr);
    cli_json_num(&j, "test_acc", r->n ? r->test_acc[r->n - 1] : 0);
    if (r->val) cli_json_num(&j, "val_acc", r->n ? r->val_acc[r->n - 1] : 0);
    cli_json_num(&j, "teacher_test_acc", teacher_acc);
    cli_json_int(&j, "params", (long long)pare_model_param_count(s));
    cli_json_int(&j, "teacher_params", (long long)pare_model_param_count(t));
    if (a->out) cli_json_int(&j, "size_bytes", cli_file_size(a->out));
    cli_json_int(&j, "threads", threads);
    cli_json_num(&j, "seconds", total);
    cli_json_end(&j, stdout);
}

int mnist_distill(int argc, char **argv)
{
    distill_args a = {NULL, NULL, NULL, "data/mnist", NULL, 3, 64, 0, 0, 0, 4.0f, 0.9f, 0.01f, 0.9f, 0};
    cli_opt opts[] = {
        {"--teacher", CLI_STR, &a.teacher, "the teacher's model file (any saved model: float, pruned, low-rank)"},
        {"--arch", CLI_STR, &a.arch, "the teacher's architecture, for a file without pare metadata"},
        {"--student", CLI_STR, &a.student, "student architecture: mlp64 | mlp32 | lenet300 | lenet5 | ..."},
        {"--temperature", CLI_FLOAT, &a.temperature, "softmax temperature T (default 4)"},
        {"--alpha", CLI_FLOAT, &a.alpha, "weight of the soft targets (default 0.9; 0: the student alone)"},
        {"--epochs", CLI_INT, &a.epochs, "epochs (default 3)"},
        {"--batch", CLI_INT, &a.batch, "batch size (default 64)"},
        {"--lr", CLI_FLOAT, &a.lr, "SGD learning rate (default 0.01)"},
        {"--momentum", CLI_FLOAT, &a.momentum, "SGD momentum (default 0.9)"},
        {"--val", CLI_INT, &a.val, "hold out this many training images for validation (default 0)"},
        {"--seed", CLI_U64, &a.seed, "seed for the student's initialization and shuffling (default 0)"},
        {"--threads", CLI_INT, &a.threads, "threads (default: all cores)"},
        {"--data", CLI_STR, &a.data, "directory of the MNIST IDX files (default data/mnist)"},
        {"--out", CLI_STR, &a.out, "save the student here (safetensors)"},
        {"--json", CLI_FLAG, &a.json, "end stdout with one JSON line"},
    };
    const int n = (int)(sizeof opts / sizeof opts[0]);
    const char *usage = "mnist distill --teacher FILE --student ARCH [--temperature 4] [--alpha 0.9] [--epochs 3] "
                        "[--seed S] [--out FILE] [--json]";
    cli_parse(argc, argv, 2, opts, n, usage);
    check_args(&a, usage, opts, n);
    int threads = cli_threads(a.threads);

    pare_model *student = pare_model_zoo(a.student);
    if (!student) cli_usage_error(usage, opts, n, "--student: %s", pare_error());
    student->seed = a.seed;
    if (pare_build(student, 1, 28, 28)) cli_die(a.student);
    pare_model *teacher = mnist_load_model(a.teacher, a.arch);
    pare_dataset *train = cli_load(a.data, 1), *test = cli_load(a.data, 0);
    if (a.val >= train->n) cli_usage_error(usage, opts, n, "--val %d leaves no training images", a.val);
    cli_loaders l;
    cli_make_loaders(&l, train, test, a.batch, a.val, a.seed);

    pare_ctx *ctx = pare_ctx_new(0);
    ctx->seed = a.seed;
    double teacher_acc = pare_evaluate(ctx, teacher, l.test, NULL);
    fprintf(stderr, "teacher %s (%s, %zu parameters): test %.2f%%\n", a.teacher, teacher->arch,
            pare_model_param_count(teacher), 100 * teacher_acc);
    pare_optim *o = pare_sgd(student, a.lr, a.momentum);
    if (!o) cli_die("optimizer");
    distill_report r;
    memset(&r, 0, sizeof r);
    r.ctx = ctx, r.test = l.test, r.val = l.val;
    pare_distill_config dc = pare_distill_defaults();
    dc.epochs = a.epochs, dc.temperature = a.temperature, dc.alpha = a.alpha;
    dc.on_epoch = after_epoch, dc.user = &r;
    fprintf(stderr, "distilling into %s (%zu parameters), T %g, alpha %g, %d threads\n", a.student,
            pare_model_param_count(student), (double)a.temperature, (double)a.alpha, threads);
    double t0 = pare_now();
    if (pare_distill(ctx, student, teacher, o, l.train, &dc, NULL)) cli_die("distill");
    double total = pare_now() - t0;
    if (a.out) {
        if (pare_save(student, a.out, NULL)) cli_die("saving");
        fprintf(stderr, "saved %s (%ld bytes)\n", a.out, cli_file_size(a.out));
    }
    print_table(&a, &r, student, teacher, teacher_acc, threads, total);
    if (a.json) print_json(&a, &r, student, teacher, teacher_acc, threads, total);

    pare_optim_free(o);
    pare_ctx_free(ctx);
    cli_free_loaders(&l);
    pare_dataset_free(train);
    pare_dataset_free(test);
    pare_model_free(teacher);
    pare_model_free(student);
    return 0;
}
