/* mnist prune: prune a saved model (unstructured with a schedule inside
 * training, or structured with surgery), fine-tune, save, and compare it
 * with the starting model in the same run. */
#include <string.h>

#include "compress/prune.h"
#include "examples/mnist.h"

#define MAX_LAYERS 16

typedef struct prune_args {
    const char *model, *arch, *method, *scope, *schedule, *layers, *data, *out, *sparse_out, *criterion;
    float sparsity, lr, momentum;
    int ramp_epochs, prune_every, epochs, batch, val, threads, json, norm;
    uint64_t seed;
} prune_args;

typedef struct measure {
    double test_acc, val_acc, img_per_s, latency_us;
    size_t params, nonzero;
    long size_bytes, sparse_bytes;
    double sparse_img_per_s, sparse_latency_us; /* with the sparse layers (pare_prune_sparsify) */
    int sparse_layers;
    int skip; /* a row that does not apply (gradual schedules prune during training) */
} measure;

typedef struct layer_list {
    int n;
    char names[MAX_LAYERS][PARE_NAME_MAX];
    const char *ptrs[MAX_LAYERS + 1];
} layer_list;

static void check_args(const prune_args *a, const char *usage, const cli_opt *opts, int n)
{
    if (!a->model) cli_usage_error(usage, opts, n, "--model is required");
    if (a->sparsity == -1.0f) cli_usage_error(usage, opts, n, "--sparsity is required");
    if (!(a->sparsity >= 0.0f && a->sparsity < 1.0f))
        cli_usage_error(usage, opts, n, "--sparsity must be in [0, 1) (got %g)", (double)a->sparsity);
    if (strcmp(a->method, "unstructured") && strcmp(a->method, "structured"))
        cli_usage_error(usage, opts, n, "--method must be unstructured or structured (got '%s')", a->method);
    if (strcmp(a->criterion, "magnitude") && strcmp(a->criterion, "random"))
        cli_usage_error(usage, opts, n, "--criterion must be magnitude or random (got '%s')", a->criterion);
    if (!strcmp(a->method, "structured") && strcmp(a->criterion, "magnitude"))
        cli_usage_error(usage, opts, n,
                        "structured pruning ranks units by their norm (--norm); --criterion is for "
                        "unstructured");
    if (strcmp(a->scope, "global") && strcmp(a->scope, "layer"))
        cli_usage_error(usage, opts, n, "--scope must be global or layer (got '%s')", a->scope);
    if (strcmp(a->schedule, "oneshot") && strcmp(a->schedule, "iterative") && strcmp(a->schedule, "agp") &&
        strcmp(a->schedule, "constant"))
        cli_usage_error(usage, opts, n, "--schedule must be oneshot, iterative, agp or constant (got '%s')",
                        a->schedule);
    if (!strcmp(a->method, "structured") && strcmp(a->schedule, "oneshot") && strcmp(a->schedule, "agp") &&
        strcmp(a->schedule, "iterative"))
        cli_usage_error(usage, opts, n, "structured pruning runs oneshot, agp or iterative (then surgery)");
    if (a->epochs < 0 || a->ramp_epochs < 0 || a->epochs + a->ramp_epochs > 64)
        cli_usage_error(usage, opts, n, "--epochs and --ramp-epochs must be >= 0 (at most 64 in all)");
    if (a->prune_every < 1 || a->batch < 1 || a->val < 0 || a->threads < 0)
        cli_usage_error(usage, opts, n, "--prune-every and --batch must be >= 1, --val and --threads >= 0");
    if (!(a->lr > 0)) cli_usage_error(usage, opts, n, "--lr must be > 0");
    if (a->norm != 1 && a->norm != 2) cli_usage_error(usage, opts, n, "--norm must be 1 or 2");
}

/* The --layers list checked against the model, or the default: every Linear
 * and Conv2d (structured: all but the output layer). */
static void pick_layers(layer_list *L, pare_model *m, const prune_args *a, const char *usage, const cli_opt *opts,
                        int n)
{
    L->n = 0;
    int structured = !strcmp(a->method, "structured"), last = -1;
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i]->kind & (PARE_LINEAR | PARE_CONV2D)) last = i;
    if (a->layers) {
        for (const char *s = a->layers; *s;) {
            size_t len = strcspn(s, ",");
            if (len == 0 || len >= PARE_NAME_MAX)
                cli_usage_error(usage, opts, n, "--layers: bad name in '%s'", a->layers);
            if (L->n == MAX_LAYERS) cli_usage_error(usage, opts, n, "--layers: at most %d layers", MAX_LAYERS);
            memcpy(L->names[L->n], s, len);
            L->names[L->n][len] = '\0';
            int idx = pare_model_index(m, L->names[L->n]);
            if (idx < 0) cli_usage_error(usage, opts, n, "--layers: the model has no layer named '%s'", L->names[L->n]);
            if (!(m->layers[idx]->kind & (PARE_LINEAR | PARE_CONV2D)))
                cli_usage_error(usage, opts, n, "--layers: %s is a %s; only Linear and Conv2d layers are pruned",
                                L->names[L->n], m->layers[idx]->type->type_name);
            if (structured && idx == last)
                cli_usage_error(usage, opts, n, "--layers: %s is the output layer; its units cannot be removed",
                                L->names[L->n]);
            L->n++;
            s += len + (s[len] == ',');
        }
        if (!L->n) cli_usage_error(usage, opts, n, "--layers is empty");
    } else {
        for (int i = 0; i < m->n_layers && L->n < MAX_LAYERS; i++)
            if ((m->layers[i]->kind & (PARE_LINEAR | PARE_CONV2D)) && !(structured && i == last))
                snprintf(L->names[L->n++], PARE_NAME_MAX, "%s", m->layers[i]->name);
    }
    for (int i = 0; i < L->n; i++) L->ptrs[i] = L->names[i];
    L->ptrs[L->n] = NULL;
}

static size_t count_nonzero(pare_model *m)
{
    size_t nz = 0;
    pare_param p[64];
    int np = pare_model_params(m, p, 64);
    for (int i = 0; i < np && i < 64; i++)
        for (size_t j = 0; j < p[i].t->size; j++) nz += p[i].t->data[j] != 0.0f;
    return nz;
}

static void measure_acc(pare_ctx *ctx, pare_model *m, pare_loader *test, pare_loader *val, measure *out)
{
    out->test_acc = pare_evaluate(ctx, m, test, NULL);
    out->val_acc = val ? pare_evaluate(ctx, m, val, NULL) : -1;
    out->params = pare_model_param_count(m);
    out->nonzero = count_nonzero(m);
}

static pare_optim *make_sgd(pare_model *m, const prune_args *a)
{
    pare_optim *o = pare_sgd(m, a->lr, a->momentum);
    if (!o) cli_die("optimizer");
    return o;
}

static int progress_epoch(void *user, pare_model *m, const pare_epoch_stats *s)
{
    (void)user;
    pare_prune_stats st = pare_prune_model_stats(m);
    fprintf(stderr, "epoch %d: loss %.4f, train %.2f%%, sparsity %.2f%%, %.1f s\n", s->epoch + 1, s->loss,
            100 * s->accuracy, st.total ? 100.0 * (double)st.zeros / (double)st.total : 0.0, s->seconds);
    return 0;
}

static void fine_tune(pare_ctx *ctx, pare_model *m, pare_optim *o, pare_loader *train, int epochs,
                      pare_prune_schedule *sched)
{
    if (epochs <= 0) return;
    pare_fit_config fc = pare_fit_defaults(epochs);
    fc.label = "prune";
    fc.on_step = sched ? pare_prune_on_step : NULL;
    fc.on_epoch = progress_epoch;
    fc.user = sched;
    if (pare_fit(ctx, m, o, train, &fc, NULL)) cli_die("fine-tuning");
}

/* Unstructured: masks on the chosen layers, the schedule stepped from the
 * training loop. */
static void run_unstructured(pare_ctx *ctx, pare_model *m, const prune_args *a, const layer_list *L, pare_loader *train,
                             pare_loader *test, pare_loader *val, measure *pruned_now)
{
    if (pare_prune_attach(m, L->ptrs)) cli_die("prune");
    long spe = pare_loader_batches(train), ramp = (long)a->ramp_epochs * spe;
    pare_prune_sched_kind kind = !strcmp(a->schedule, "agp")         ? PARE_SCHED_AGP
                                 : !strcmp(a->schedule, "iterative") ? PARE_SCHED_ITERATIVE
                                 : !strcmp(a->schedule, "constant")  ? PARE_SCHED_CONSTANT
                                                                     : PARE_SCHED_ONESHOT;
    int gradual = kind == PARE_SCHED_AGP || kind == PARE_SCHED_ITERATIVE;
    pare_prune_schedule s;
    if (pare_prune_schedule_init(&s, kind, 0.0f, a->sparsity, 0, gradual ? ramp : 0, a->prune_every))
        cli_die("schedule");
    s.scope = !strcmp(a->scope, "layer") ? PARE_PRUNE_LAYER : PARE_PRUNE_GLOBAL;
    s.criterion = !strcmp(a->criterion, "random") ? PARE_PRUNE_RANDOM : PARE_PRUNE_MAGNITUDE;
    s.seed = a->seed;
    if (!gradual && pare_prune_schedule_step(&s, m, NULL, 0)) cli_die("prune");
    measure_acc(ctx, m, test, val, pruned_now);
    pruned_now->skip = gradual;
    pare_optim *o = make_sgd(m, a);
    fine_tune(ctx, m, o, train, (gradual ? a->ramp_epochs : 0) + a->epochs, &s);
    pare_optim_free(o);
}

/* Gradual structured: the share of masked units follows the schedule over
 * --ramp-epochs of training (AGP: fast at first, while the network can still
 * recover), on the full-size model; surgery then happens at the end. */
static void ramp_units(pare_ctx *ctx, pare_model *m, const prune_args *a, const layer_list *L, pare_loader *train)
{
    long spe = pare_loader_batches(train), ramp = (long)a->ramp_epochs * spe;
    pare_prune_schedule s;
    if (pare_prune_schedule_init(&s, !strcmp(a->schedule, "agp") ? PARE_SCHED_AGP : PARE_SCHED_ITERATIVE, 0.0f,
                                 a->sparsity, 0, ramp, a->prune_every))
        cli_die("schedule");
    s.unit_layers = L->ptrs;
    s.norm = a->norm;
    pare_optim *o = make_sgd(m, a);
    fine_tune(ctx, m, o, train, a->ramp_epochs, &s);
    pare_optim_free(o);
    for (int i = 0; i < L->n; i++) /* exactly the final share, whatever the last step was */
        if (pare_prune_units(m, L->names[i], a->sparsity, a->norm)) cli_die("prune");
}

/* Structured: mask the weakest units (at once, or gradually while
 * training), cut them out, fine-tune the smaller model. */
static void run_structured(pare_ctx *ctx, pare_model *m, const prune_args *a, const layer_list *L, pare_loader *train,
                           pare_loader *test, pare_loader *val, measure *pruned_now)
{
    if (strcmp(a->schedule, "oneshot"))
        ramp_units(ctx, m, a, L, train);
    else
        for (int i = 0; i < L->n; i++)
            if (pare_prune_units(m, L->names[i], a->sparsity, a->norm)) cli_die("prune");
    double masked_acc = pare_evaluate(ctx, m, test, NULL);
    if (pare_prune_shrink(m)) cli_die("surgery");
    pare_prune_detach(m); /* what is left is dense */
    measure_acc(ctx, m, test, val, pruned_now);
    fprintf(stderr, "surgery: masked model %.2f%%, shrunken model %.2f%% (they compute the same thing)\n",
            100 * masked_acc, 100 * pruned_now->test_acc);
    pare_optim *o = make_sgd(m, a);
    fine_tune(ctx, m, o, train, a->epochs, NULL);
    pare_optim_free(o);
}

static void print_row(const char *name, const measure *x, int val)
{
    if (x->skip) return;
    char v[16] = "", size[24] = "-", speed[24] = "-", lat[24] = "-";
    if (val) snprintf(v, sizeof v, "%.2f%%", 100 * x->val_acc);
    if (x->size_bytes >= 0) snprintf(size, sizeof size, "%ld", x->size_bytes);
    if (x->img_per_s > 0) snprintf(speed, sizeof speed, "%.0f", x->img_per_s);
    if (x->latency_us > 0) snprintf(lat, sizeof lat, "%.0f", x->latency_us);
    printf("%-22s %9.2f%% %9s %10zu %10zu %10s %10s %8s\n", name, 100 * x->test_acc, v, x->params, x->nonzero, size,
           speed, lat);
}

static void print_json(const prune_args *a, const measure *base, const measure *after)
{
    cli_json j;
    cli_json_begin(&j, "prune");
    cli_json_str(&j, "method", a->method);
    cli_json_str(&j, "schedule", a->schedule);
    cli_json_num(&j, "sparsity", a->sparsity);
    cli_json_num(&j, "test_acc", after->test_acc);
    cli_json_num(&j, "base_test_acc", base->test_acc);
    if (a->val) {
        cli_json_num(&j, "val_acc", after->val_acc);
        cli_json_num(&j, "base_val_acc", base->val_acc);
    }
    cli_json_int(&j, "params", (long long)after->params);
    cli_json_int(&j, "base_params", (long long)base->params);
    cli_json_int(&j, "nonzero_params", (long long)after->nonzero);
    cli_json_int(&j, "size_bytes", after->size_bytes);
    cli_json_int(&j, "base_size_bytes", base->size_bytes);
    if (a->sparse_out) cli_json_int(&j, "sparse_size_bytes", after->sparse_bytes);
    cli_json_num(&j, "img_per_s", after->img_per_s);
    cli_json_num(&j, "base_img_per_s", base->img_per_s);
    cli_json_num(&j, "latency_us_b1", after->latency_us);
    cli_json_num(&j, "base_latency_us_b1", base->latency_us);
    cli_json_int(&j, "sparse_layers", after->sparse_layers);
    if (after->sparse_layers) {
        cli_json_num(&j, "sparse_img_per_s", after->sparse_img_per_s);
        cli_json_num(&j, "sparse_latency_us_b1", after->sparse_latency_us);
    }
    cli_json_end(&j, stdout);
}

int mnist_prune(int argc, char **argv)
{
    prune_args a = {NULL,  NULL,  "unstructured", "global", "oneshot", NULL, "data/mnist", NULL, NULL, "magnitude",
                    -1.0f, 0.01f, 0.9f,           2,        100,       1,    64,           0,    0,    0,
                    1,     0};
    cli_opt opts[] = {
        {"--model", CLI_STR, &a.model, "the model to prune (safetensors)"},
        {"--arch", CLI_STR, &a.arch, "architecture, for a file without pare metadata"},
        {"--method", CLI_STR, &a.method, "unstructured | structured (default unstructured)"},
        {"--scope", CLI_STR, &a.scope, "global | layer: rank weights across layers or within each (default global)"},
        {"--criterion", CLI_STR, &a.criterion, "unstructured: magnitude | random (baseline) (default magnitude)"},
        {"--sparsity", CLI_FLOAT, &a.sparsity, "fraction of weights (structured: of units) to remove, in [0, 1)"},
        {"--layers", CLI_STR, &a.layers, "comma-separated layers (default: every Linear and Conv2d)"},
        {"--schedule", CLI_STR, &a.schedule, "oneshot | iterative | agp | constant (default oneshot)"},
        {"--ramp-epochs", CLI_INT, &a.ramp_epochs, "agp / iterative: epochs of ramp before --epochs (default 2)"},
        {"--prune-every", CLI_INT, &a.prune_every, "agp / iterative / constant: steps between mask updates (100)"},
        {"--norm", CLI_INT, &a.norm, "structured: rank units by L1 (1) or L2 (2) norm (default 1)"},
        {"--epochs", CLI_INT, &a.epochs, "fine-tune epochs at the final mask (default 1)"},
        {"--lr", CLI_FLOAT, &a.lr, "SGD learning rate (default 0.01)"},
        {"--momentum", CLI_FLOAT, &a.momentum, "SGD momentum (default 0.9)"},
        {"--batch", CLI_INT, &a.batch, "batch size (default 64)"},
        {"--val", CLI_INT, &a.val, "hold out this many training images for validation (default 0)"},
        {"--seed", CLI_U64, &a.seed, "seed for shuffling and random pruning (default 0)"},
        {"--threads", CLI_INT, &a.threads, "threads (default: all cores)"},
        {"--data", CLI_STR, &a.data, "directory of the MNIST IDX files (default data/mnist)"},
        {"--out", CLI_STR, &a.out, "save the pruned model here (an ordinary float model, pare.pruned)"},
        {"--sparse-out", CLI_STR, &a.sparse_out, "also save it in the compressed sparse format (CSR)"},
        {"--json", CLI_FLAG, &a.json, "end stdout with one JSON line"},
    };
    const int n = (int)(sizeof opts / sizeof opts[0]);
    const char *usage = "mnist prune --model FILE --sparsity S [options]";
    cli_parse(argc, argv, 2, opts, n, usage);
    check_args(&a, usage, opts, n);
    int threads = cli_threads(a.threads);

    pare_model *m = pare_prune_load(a.model, a.arch);
    if (!m) cli_die(NULL);
    pare_model *base = mnist_load_model(a.model, a.arch);
    layer_list L;
    pick_layers(&L, m, &a, usage, opts, n);

    pare_dataset *train = cli_load(a.data, 1), *test = cli_load(a.data, 0);
    if (a.val >= train->n) cli_usage_error(usage, opts, n, "--val %d leaves no training images", a.val);
    int *train_idx, *val_idx, n_train;
    if (pare_split_indices(train->n, a.val, a.seed, &train_idx, &n_train, &val_idx)) cli_die("--val");
    pare_loader_config lc = pare_loader_defaults();
    lc.batch = a.batch;
    lc.seed = a.seed;
    pare_loader *train_ld = pare_loader_new(train, train_idx, n_train, &lc);
    lc.batch = 256;
    lc.shuffle = 0;
    pare_loader *test_ld = pare_loader_new(test, NULL, test->n, &lc);
    pare_loader *val_ld = a.val ? pare_loader_new(train, val_idx, a.val, &lc) : NULL;
    pare_ctx *ctx = pare_ctx_new(0);
    ctx->seed = a.seed;

    measure mb = {0}, now = {0}, after = {0}, sparse_row = {0};
    measure_acc(ctx, base, test_ld, val_ld, &mb);
    mb.size_bytes = cli_file_size(a.model);
    now.size_bytes = after.size_bytes = -1;
    fprintf(stderr, "pruning %s (%s, %.0f%%) on %d images, %d threads\n", a.model, a.method, 100 * a.sparsity, n_train,
            threads);
    if (!strcmp(a.method, "structured"))
        run_structured(ctx, m, &a, &L, train_ld, test_ld, val_ld, &now);
    else
        run_unstructured(ctx, m, &a, &L, train_ld, test_ld, val_ld, &now);
    measure_acc(ctx, m, test_ld, val_ld, &after);
    printf("\nper-layer sparsity (weights):\n");
    pare_prune_report(m, stdout);
    if (a.out) {
        const char *meta[] = {"pare.prune_method", a.method, NULL};
        if (pare_prune_save(m, a.out, meta)) cli_die("saving");
        after.size_bytes = cli_file_size(a.out);
    }
    if (a.sparse_out) {
        if (pare_prune_save_sparse(m, a.sparse_out)) cli_die("saving");
        after.sparse_bytes = cli_file_size(a.sparse_out);
        printf("\nsparse file %s: %ld bytes (%.1f%% of the dense model file)\n", a.sparse_out, after.sparse_bytes,
               mb.size_bytes > 0 ? 100.0 * (double)after.sparse_bytes / (double)mb.size_bytes : 0.0);
    }
    /* Speed of both models in the same run, back to back; the masks are
     * folded first so the pruned model runs as the plain model it saves as. */
    pare_prune_detach(m);
    cli_measure_speed(ctx, base, test, &mb.img_per_s, &mb.latency_us);
    cli_measure_speed(ctx, m, test, &after.img_per_s, &after.latency_us);
    /* Then the layers sparse enough to gain run through the CSR kernel. */
    after.sparse_layers = pare_prune_sparsify(m, NULL, PARE_SPARSE_MIN_DEFAULT);
    if (after.sparse_layers < 0) cli_die("sparsify");
    if (after.sparse_layers) {
        cli_measure_speed(ctx, m, test, &after.sparse_img_per_s, &after.sparse_latency_us);
        measure_acc(ctx, m, test_ld, val_ld, &sparse_row); /* the same outputs within float rounding: check */
        sparse_row.img_per_s = after.sparse_img_per_s;
        sparse_row.latency_us = after.sparse_latency_us;
        sparse_row.size_bytes = a.sparse_out ? after.sparse_bytes : -1;
    }

    printf("\n%-22s %10s %9s %10s %10s %10s %10s %8s\n", "model", "test_acc", a.val ? "val_acc" : "", "params",
           "nonzero", "bytes", "img/s", "us b1");
    print_row("base", &mb, a.val);
    print_row("pruned, no fine-tune", &now, a.val);
    print_row("pruned + fine-tune", &after, a.val);
    if (after.sparse_layers) print_row("  with sparse kernels", &sparse_row, a.val);
    printf("speed-up at batch 256: %.2fx; batch-1 latency %.0f us (base %.0f us)\n",
           mb.img_per_s > 0 ? after.img_per_s / mb.img_per_s : 0, after.latency_us, mb.latency_us);
    if (after.sparse_layers)
        printf("sparse kernels (%d layer(s) at >= %.0f%% sparsity): %.2fx at batch 256, batch-1 latency %.0f us "
               "(%.2fx)\n",
               after.sparse_layers, 100.0 * PARE_SPARSE_MIN_DEFAULT,
               mb.img_per_s > 0 ? after.sparse_img_per_s / mb.img_per_s : 0, after.sparse_latency_us,
               after.sparse_latency_us > 0 ? mb.latency_us / after.sparse_latency_us : 0);
    else
        printf("sparse kernels: no layer is %.0f%% sparse, where the CSR kernel starts to win\n",
               100.0 * PARE_SPARSE_MIN_DEFAULT);
    if (a.json) print_json(&a, &mb, &after);

    pare_ctx_free(ctx);
    pare_loader_free(train_ld);
    pare_loader_free(test_ld);
    pare_loader_free(val_ld);
    pare_free(train_idx);
    pare_free(val_idx);
    pare_dataset_free(train);
    pare_dataset_free(test);
    pare_model_free(base);
    pare_model_free(m);
    return 0;
}
