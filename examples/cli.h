/* Small helpers shared by the example programs: option parsing, data
 * loading with friendly errors, JSON output. Not part of the library. */
#ifndef PARE_EXAMPLES_CLI_H
#define PARE_EXAMPLES_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "optim/fit.h"

typedef enum cli_type { CLI_INT, CLI_U64, CLI_FLOAT, CLI_STR, CLI_FLAG } cli_type;
typedef struct cli_opt {
    const char *name; /* "--epochs" */
    cli_type type;
    void *dst; /* int*, uint64_t*, float*, const char**, int* */
    const char *help;
} cli_opt;

/* Parses argv[first..]; on an unknown option or a bad value prints the
 * problem and the usage to stderr and exits with status 2. --help prints the
 * usage and exits 0. */
void cli_parse(int argc, char **argv, int first, const cli_opt *opts, int n_opts, const char *usage);
PARE_NORETURN void cli_usage_error(const char *usage, const cli_opt *opts, int n_opts, const char *fmt, ...);
/* Prints "error: <pare_error()>" (with context) and exits 1. */
PARE_NORETURN void cli_die(const char *context);

/* Sets the thread count (0: all cores) and returns what is in effect. */
int cli_threads(int requested);
/* Loads MNIST-style train or test data from dir, exiting on error. */
pare_dataset *cli_load(const char *dir, int train);

/* JSON line builder for --json output (one object on one line). */
typedef struct cli_json {
    char buf[4096];
    size_t len;
} cli_json;
void cli_json_begin(cli_json *j, const char *cmd);
void cli_json_str(cli_json *j, const char *key, const char *value);
void cli_json_num(cli_json *j, const char *key, double value);
void cli_json_int(cli_json *j, const char *key, long long value);
void cli_json_raw(cli_json *j, const char *key, const char *raw);
void cli_json_end(cli_json *j, FILE *out);

/* Evaluation throughput at batch 256 (images/s) and median batch-1 latency
 * in microseconds, on the first n images of ds. */
void cli_measure_speed(pare_ctx *ctx, pare_model *m, const pare_dataset *ds, double *img_per_s, double *latency_us);

long cli_file_size(const char *path);

/* The median of n timings (upper median for even n); sorts v. */
double cli_median(double *v, int n);

/* The loaders of a run: training (minus n_val images held out for
 * validation by a seeded split), validation (NULL when n_val is 0) and test
 * (batch 256, in file order). Exits on error. */
typedef struct cli_loaders {
    pare_loader *train, *val, *test;
    int *train_idx, *val_idx, n_train;
} cli_loaders;
void cli_make_loaders(cli_loaders *l, const pare_dataset *train, const pare_dataset *test, int batch, int n_val,
                      uint64_t seed);
void cli_free_loaders(cli_loaders *l);
#endif
