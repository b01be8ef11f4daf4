/* Option parsing, friendly errors and JSON output for the example programs. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "examples/cli.h"

static void print_usage(FILE *f, const char *usage, const cli_opt *opts, int n)
{
    fprintf(f, "usage: %s\n", usage);
    for (int i = 0; i < n; i++) fprintf(f, "  %-18s %s\n", opts[i].name, opts[i].help);
}

void cli_usage_error(const char *usage, const cli_opt *opts, int n_opts, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "error: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    print_usage(stderr, usage, opts, n_opts);
    exit(2);
}

void cli_die(const char *context)
{
    fprintf(stderr, "error: %s%s%s\n", context ? context : "", context ? ": " : "", pare_error());
    exit(1);
}

static int parse_value(const cli_opt *o, const char *s)
{
    char *end;
    errno = 0;
    switch (o->type) {
    case CLI_INT: {
        long v = strtol(s, &end, 10);
        if (errno || *end || end == s || v < -2147483647L || v > 2147483647L) return -1;
        *(int *)o->dst = (int)v;
        return 0;
    }
    case CLI_U64: {
        if (*s == '-') return -1;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno || *end || end == s) return -1;
        *(uint64_t *)o->dst = (uint64_t)v;
        return 0;
    }
    case CLI_FLOAT: {
        float v = strtof(s, &end);
        if (errno || *end || end == s || !isfinite(v)) return -1;
        *(float *)o->dst = v;
        return 0;
    }
    case CLI_STR:
        *(const char **)o->dst = s;
        return 0;
    case CLI_FLAG:
        break;
    }
    return -1;
}

void cli_parse(int argc, char **argv, int first, const cli_opt *opts, int n, const char *usage)
{
    for (int i = first; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            print_usage(stdout, usage, opts, n);
            exit(0);
        }
        const cli_opt *o = NULL;
        for (int k = 0; k < n && !o; k++)
            if (!strcmp(argv[i], opts[k].name)) o = &opts[k];
        if (!o) cli_usage_error(usage, opts, n, "unknown option '%s'", argv[i]);
        if (o->type == CLI_FLAG) {
            *(int *)o->dst = 1;
            continue;
        }
        if (i + 1 >= argc) cli_usage_error(usage, opts, n, "option %s needs a value", o->name);
        if (parse_value(o, argv[++i]))
            cli_usage_error(usage, opts, n, "option %s: '%s' is not a valid %s", o->name, argv[i],
                            o->type == CLI_FLOAT ? "number" : "non-negative integer");
    }
}

int cli_threads(int requested)
{
    pare_set_threads(requested > 0 ? requested : pare_cores_available());
    return pare_threads();
}

pare_dataset *cli_load(const char *dir, int train)
{
    pare_dataset *ds = pare_mnist_load(dir, train);
    if (!ds) cli_die(train ? "loading the training set" : "loading the test set");
    return ds;
}

/* ---- JSON --------------------------------------------------------------- */
static void jput(cli_json *j, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(j->buf + j->len, sizeof j->buf - j->len, fmt, ap);
    va_end(ap);
    if (n > 0) j->len = j->len + (size_t)n < sizeof j->buf ? j->len + (size_t)n : sizeof j->buf - 1;
}

static void jkey(cli_json *j, const char *key)
{
    jput(j, "%s\"%s\":", j->len > 1 ? "," : "", key);
}

void cli_json_begin(cli_json *j, const char *cmd)
{
    j->len = 0;
    j->buf[0] = '\0';
    jput(j, "{");
    cli_json_str(j, "cmd", cmd);
}

void cli_json_str(cli_json *j, const char *key, const char *value)
{
    jkey(j, key);
    jput(j, "\"");
    for (const char *p = value; *p; p++) {
        if (*p == '"' || *p == '\\')
            jput(j, "\\%c", *p);
        else if ((unsigned char)*p < 0x20)
            jput(j, "\\u%04x", (unsigned char)*p);
        else
            jput(j, "%c", *p);
    }
    jput(j, "\"");
}

void cli_json_num(cli_json *j, const char *key, double value)
{
    jkey(j, key);
    if (isfinite(value))
        jput(j, "%.6g", value);
    else
        jput(j, "null");
}

void cli_json_int(cli_json *j, const char *key, long long value)
{
    jkey(j, key);
    jput(j, "%lld", value);
}

void cli_json_raw(cli_json *j, const char *key, const char *raw)
{
    jkey(j, key);
    jput(j, "%s", raw);
}

void cli_json_end(cli_json *j, FILE *out)
{
    jput(j, "}");
    fprintf(out, "%s\n", j->buf);
}

/* ---- speed --------------------------------------------------------------- */
static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double cli_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

static double time_batches(pare_ctx *ctx, pare_model *m, pare_loader *ld, int max_batches, long *images)
{
    pare_batch b;
    *images = 0;
    pare_loader_start_epoch(ld, 0);
    double t0 = pare_now();
    for (int k = 0; k < max_batches; k++) {
        pare_mark mark = pare_arena_mark(ctx);
        if (!pare_loader_next(ld, &ctx->arena, &b)) {
            pare_arena_release(ctx, mark);
            break;
        }
        pare_forward(ctx, m, b.x);
        *images += b.n;
        pare_arena_release(ctx, mark);
    }
    return pare_now() - t0;
}

void cli_measure_speed(pare_ctx *ctx, pare_model *m, const pare_dataset *ds, double *img_per_s, double *latency_us)
{
    int was_training = m->training, grad = pare_set_grad_enabled(ctx, 0);
    pare_model_train(m, 0);
    pare_loader_config lc = pare_loader_defaults();
    lc.batch = 256;
    lc.shuffle = 0;
    pare_loader *ld = pare_loader_new(ds, NULL, ds->n, &lc);
    long images;
    time_batches(ctx, m, ld, 4, &images); /* warm-up: first touch of the arena */
    double t = time_batches(ctx, m, ld, 1 << 30, &images);
    *img_per_s = t > 0 ? images / t : 0;
    pare_loader_free(ld);

    lc.batch = 1;
    ld = pare_loader_new(ds, NULL, ds->n < 1000 ? ds->n : 1000, &lc);
    enum { REPS = 300 };
    double samples[REPS];
    time_batches(ctx, m, ld, 20, &images);
    for (int r = 0; r < REPS; r++) samples[r] = time_batches(ctx, m, ld, 1, &images);
    *latency_us = 1e6 * cli_median(samples, REPS);
    pare_loader_free(ld);
    pare_model_train(m, was_training);
    pare_set_grad_enabled(ctx, grad);
}

long cli_file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

void cli_make_loaders(cli_loaders *l, const pare_dataset *train, const pare_dataset *test, int batch, int n_val,
                      uint64_t seed)
{
    if (pare_split_indices(train->n, n_val, seed, &l->train_idx, &l->n_train, &l->val_idx)) cli_die("--val");
    pare_loader_config lc = pare_loader_defaults();
    lc.batch = batch;
    lc.seed = seed;
    l->train = pare_loader_new(train, l->train_idx, l->n_train, &lc);
    lc.batch = 256;
    lc.shuffle = 0;
    l->test = pare_loader_new(test, NULL, test->n, &lc);
    l->val = n_val ? pare_loader_new(train, l->val_idx, n_val, &lc) : NULL;
    if (!l->train || !l->test || (n_val && !l->val)) cli_die("data");
}

void cli_free_loaders(cli_loaders *l)
{
    pare_loader_free(l->train);
    pare_loader_free(l->val);
    pare_loader_free(l->test);
    pare_free(l->train_idx);
    pare_free(l->val_idx);
}
