/* mnist eval --model FILE [--arch NAME] [--data DIR] [--threads T] [--json]
 * A pruned model (a float file or the compressed sparse format) runs its
 * sparse-enough layers through the CSR kernel (pare_prune_sparsify). */
#include <string.h>

#include "compress/prune.h"
#include "compress/quant.h"
#include "examples/mnist.h"
#include "nn/safetensors.h"

/* pare.format of a file, or "" (the loaders report a bad file themselves). */
static void file_format(const char *path, char *buf, size_t len)
{
    buf[0] = '\0';
    pare_st_file *f = pare_st_open(path);
    const char *fmt = f ? pare_st_meta(f, "pare.format") : NULL;
    if (fmt) snprintf(buf, len, "%s", fmt);
    pare_st_close(f);
}

int mnist_eval(int argc, char **argv)
{
    const char *model = NULL, *arch = NULL, *data = "data/mnist";
    int threads = 0, json = 0;
    cli_opt opts[] = {
        {"--model", CLI_STR, &model, "model file (safetensors)"},
        {"--arch", CLI_STR, &arch, "architecture, for a file without pare metadata (from PyTorch)"},
        {"--data", CLI_STR, &data, "directory of the MNIST IDX files (default data/mnist)"},
        {"--threads", CLI_INT, &threads, "threads (default: all cores)"},
        {"--json", CLI_FLAG, &json, "end stdout with one JSON line"},
    };
    const int n = (int)(sizeof opts / sizeof opts[0]);
    const char *usage = "mnist eval --model FILE [--arch NAME] [--data DIR] [--threads T] [--json]";
    cli_parse(argc, argv, 2, opts, n, usage);
    if (!model) cli_usage_error(usage, opts, n, "--model is required");
    if (threads < 0) cli_usage_error(usage, opts, n, "--threads must be >= 0");
    threads = cli_threads(threads);
    char format[32];
    file_format(model, format, sizeof format);
    if (!strcmp(format, "int8")) return mnist_eval_int8(model, data, threads, json);

    int dynamic = !strcmp(format, "int8-dynamic"), n_sparse = 0;
    pare_model *m = dynamic ? pare_quant_dynamic_load(model) : pare_prune_load(model, arch);
    if (m && !dynamic) {
        pare_prune_detach(m); /* no training here: masks as plain zeros, no per-forward multiply */
        n_sparse = pare_prune_sparsify(m, NULL, PARE_SPARSE_MIN_DEFAULT);
    }
    if (!m || n_sparse < 0) cli_die(NULL);
    pare_dataset *test = cli_load(data, 0);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_loader_config lc = pare_loader_defaults();
    lc.batch = 256;
    lc.shuffle = 0;
    pare_loader *ld = pare_loader_new(test, NULL, test->n, &lc);
    double loss, acc = pare_evaluate(ctx, m, ld, &loss), ips, lat;
    cli_measure_speed(ctx, m, test, &ips, &lat);

    printf("model      %s (%s)\n", model, m->arch);
    printf("params     %zu\n", pare_model_param_count(m));
    printf("test acc   %.2f%%  (%d images, loss %.4f)\n", 100 * acc, test->n, loss);
    if (n_sparse) printf("sparse     %d layer(s) run through the CSR kernel\n", n_sparse);
    if (dynamic) printf("format     int8-dynamic (activations quantized per batch)\n");
    printf("speed      %.0f img/s at batch 256, %.0f us at batch 1, %d threads\n", ips, lat, threads);
    if (json) {
        cli_json j;
        cli_json_begin(&j, "eval");
        cli_json_str(&j, "arch", m->arch);
        cli_json_num(&j, "test_acc", acc);
        cli_json_int(&j, "params", (long long)pare_model_param_count(m));
        cli_json_int(&j, "size_bytes", cli_file_size(model));
        cli_json_num(&j, "img_per_s", ips);
        cli_json_num(&j, "latency_us_b1", lat);
        cli_json_int(&j, "sparse_layers", n_sparse);
        cli_json_int(&j, "threads", threads);
        cli_json_end(&j, stdout);
    }
    pare_loader_free(ld);
    pare_ctx_free(ctx);
    pare_dataset_free(test);
    pare_model_free(m);
    return 0;
}
