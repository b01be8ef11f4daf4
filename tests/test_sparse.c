/* Sparse inference: the sparse x dense kernels against the reference
 * product, sparse layers (pare_prune_sparsify) against the masked dense
 * model for Linear and Conv2d with stride and padding, the sparsity rule,
 * the compressed file back to sparse inference, and the refusals (training
 * through a sparse layer, saving one as architecture JSON, bad arguments). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "compress/prune.h"
#include "tests/test.h"

static float *random_matrix(int rows, int cols, float density, uint64_t seed)
{
    float *w = pare_alloc((size_t)rows * cols * sizeof *w);
    pare_rng r;
    pare_rng_seed(&r, seed, PARE_STREAM_TEST);
    for (size_t i = 0; i < (size_t)rows * cols; i++) {
        float keep = pare_rng_uniform(&r), v = pare_rng_range(&r, -1, 1);
        w[i] = keep < density ? v : 0.0f;
    }
    return w;
}

/* pare_csr_linear_into (both paths: row dots below PARE_CSR_BATCHED_MIN,
 * transposed blocks from there on, a partial last block) == x W^T + b. */
static void linear_into_matches(int rows, int cols, float density, int batch, uint64_t seed)
{
    float *w = random_matrix(rows, cols, density, seed), *x = random_matrix(batch, cols, 1.0f, seed + 1);
    float *bias = random_matrix(1, rows, 1.0f, seed + 2);
    float *y = pare_alloc((size_t)batch * rows * sizeof *y), *ref = pare_alloc((size_t)batch * rows * sizeof *ref);
    pare_csr *a = pare_csr_from_dense(w, rows, cols);
    float *scratch = pare_alloc((pare_csr_linear_scratch(a, batch) + 1) * sizeof *scratch);
    pare_csr_linear_into(a, x, batch, bias, y, scratch);
    pare_sgemm_reference(0, 1, batch, rows, cols, 1.0f, x, cols, w, cols, 0.0f, ref, rows);
    double worst = 0;
    for (int i = 0; i < batch * rows; i++) worst = fmax(worst, fabs(y[i] - (ref[i] + bias[i % rows])));
    /* Float sums of ~density * cols terms against double ones: the error grows with the row length. */
    double tol = 1e-5 * fmax(1.0, (double)density * cols / 100.0);
    CHECKF(worst <= tol, "%dx%d density %g batch %d: worst %g", rows, cols, (double)density, batch, worst);
    pare_csr_free(a);
    pare_free(w), pare_free(x), pare_free(bias), pare_free(y), pare_free(ref), pare_free(scratch);
}

TEST(sparse_linear_kernel_equals_dense_at_every_batch)
{
    linear_into_matches(128, 1600, 0.1f, 1, 1);
    linear_into_matches(128, 1600, 0.1f, PARE_CSR_BATCHED_MIN, 2);
    linear_into_matches(33, 70, 0.3f, 100, 3);  /* blocks of samples and a partial one */
    linear_into_matches(5, 17, 0.0f, 40, 4);    /* empty: the bias alone */
    linear_into_matches(3, 70000, 0.02f, 9, 5); /* 32-bit column indices */
}

TEST(sparse_spmm_equals_dense_with_strides)
{
    int rows = 19, cols = 23, p = 31;
    size_t ldb = 40, ldy = 35;
    float *w = random_matrix(rows, cols, 0.2f, 7), *b = random_matrix(cols, (int)ldb, 1.0f, 8);
    float *y = pare_alloc((size_t)rows * ldy * sizeof *y), *ref = pare_alloc((size_t)rows * p * sizeof *ref);
    for (size_t i = 0; i < (size_t)rows * ldy; i++) y[i] = 123.0f; /* beyond p: must stay */
    pare_csr *a = pare_csr_from_dense(w, rows, cols);
    pare_csr_spmm(a, b, ldb, p, NULL, y, ldy);
    pare_sgemm_reference(0, 0, rows, p, cols, 1.0f, w, cols, b, (int)ldb, 0.0f, ref, p);
    double worst = 0;
    int untouched = 1;
    for (int r = 0; r < rows; r++) {
        for (int j = 0; j < p; j++) worst = fmax(worst, fabs(y[(size_t)r * ldy + j] - ref[(size_t)r * p + j]));
        for (size_t j = (size_t)p; j < ldy; j++) untouched &= y[(size_t)r * ldy + j] == 123.0f;
    }
    CHECKF(worst <= 1e-5, "worst %g", worst);
    CHECK(untouched);
    pare_csr_free(a);
    pare_free(w), pare_free(b), pare_free(y), pare_free(ref);
}

/* conv (stride 2, padding 1) -> ReLU -> MaxPool -> conv (padding 1, no bias)
 * -> Flatten -> Linear -> ReLU -> Linear, pruned to 80% layer-wise. */
static pare_model *pruned_cnn(void)
{
    pare_model *m = pare_sequential("t", pare_conv2d_ex("c1", 3, 8, 3, 2, 1, 1), pare_relu(), pare_maxpool2d(2),
                                    pare_conv2d_ex("c2", 8, 6, 3, 1, 1, 0), pare_flatten(),
                                    pare_linear("fc1", 6 * 4 * 4, 32), pare_relu(), pare_linear("fc2", 32, 5), NULL);
    m->seed = 11;
    CHECK(pare_build(m, 3, 16, 16) == 0);
    CHECK(pare_prune_attach(m, NULL) == 0);
    CHECK(pare_prune_select(m, 0.8f, PARE_PRUNE_LAYER, PARE_PRUNE_MAGNITUDE, 0) == 0);
    pare_model_train(m, 0);
    return m;
}

static pare_tensor *batch_of(pare_ctx *ctx, int n, uint64_t seed)
{
    pare_tensor *x = pare_tensor_4d(&ctx->arena, n, 3, 16, 16);
    pare_rng r;
    pare_rng_seed(&r, seed, PARE_STREAM_TEST);
    for (size_t i = 0; i < x->size; i++) x->data[i] = pare_rng_range(&r, -1, 1);
    return x;
}

/* Outputs of two models on the same batch: worst difference, and whether
 * every row's argmax agrees. */
static double compare(pare_ctx *ctx, pare_model *a, pare_model *b, int n, int *same_argmax)
{
    pare_arena_pos pos = pare_arena_pos_get(&ctx->arena);
    pare_tensor *x = batch_of(ctx, n, 100 + (uint64_t)n);
    pare_tensor *ya = pare_forward(ctx, a, x);
    float *keep = pare_alloc(ya->size * sizeof *keep);
    memcpy(keep, ya->data, ya->size * sizeof *keep);
    pare_tensor *yb = pare_forward(ctx, b, x);
    double worst = 0;
    int classes = ya->shape[1];
    *same_argmax = 1;
    for (size_t i = 0; i < yb->size; i++) worst = fmax(worst, fabs(keep[i] - yb->data[i]));
    for (int i = 0; i < n; i++)
        *same_argmax &= pare_vec_argmax(keep + (size_t)i * classes, (size_t)classes) ==
                        pare_vec_argmax(yb->data + (size_t)i * classes, (size_t)classes);
    pare_free(keep);
    pare_arena_rewind(&ctx->arena, pos);
    return worst;
}

TEST(sparse_model_equals_masked_dense_model)
{
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    pare_model *dense = pruned_cnn(), *sparse = pruned_cnn();
    double dense_flops = pare_model_flops(sparse);
    CHECK(pare_prune_sparsify(sparse, NULL, 0.0f) == 2); /* c2, fc1: c1 and fc2 rows are too short to gain */
    CHECK(pare_prune_sparsify(sparse, "c1,c2,fc1,fc2", 0.0f) == 2);
    for (int i = 0; i < sparse->n_layers; i++)
        if (dense->layers[i]->kind & (PARE_LINEAR | PARE_CONV2D)) {
            CHECK(sparse->layers[i]->kind == PARE_CUSTOM && pare_prune_is_sparse(sparse->layers[i]));
            CHECK(!strcmp(sparse->layers[i]->name, dense->layers[i]->name));
        }
    CHECK(!strcmp(sparse->layers[0]->type->type_name, "SparseConv2d"));
    CHECK(!strcmp(sparse->layers[5]->type->type_name, "SparseLinear"));
    CHECK(pare_model_param_count(sparse) == pare_model_param_count(dense));
    CHECKF(pare_model_flops(sparse) < 0.35 * dense_flops, "%g of %g FLOPs", pare_model_flops(sparse), dense_flops);
    const int batches[] = {1, 3, PARE_CSR_BATCHED_MIN, 37};
    for (int k = 0; k < 4; k++) {
        int same;
        double worst = compare(ctx, dense, sparse, batches[k], &same);
        CHECKF(worst <= 1e-5, "batch %d: worst %g", batches[k], worst);
        CHECKF(same, "batch %d: argmax differs", batches[k]);
    }
    pare_model_free(dense);
    pare_model_free(sparse);
    pare_ctx_free(ctx);
}

TEST(sparse_sparsify_follows_the_threshold_and_the_list)
{
    pare_model *m = pruned_cnn();
    /* 80% pruned everywhere: a 0.9 floor converts nothing, the list picks layers. */
    CHECK(pare_prune_sparsify(m, NULL, 0.9f) == 0);
    CHECK(pare_prune_sparsify(m, "fc1,c2", 0.5f) == 2);
    CHECK(pare_prune_is_sparse(m->layers[3]) && pare_prune_is_sparse(m->layers[5]));
    CHECK(!pare_prune_is_sparse(m->layers[0]) && !pare_prune_is_sparse(m->layers[7]));
    CHECK(pare_prune_mask(m->layers[0]) != NULL);    /* untouched layers keep their masks */
    CHECK(pare_prune_sparsify(m, "fc1", 0.5f) == 0); /* already sparse */
    /* Errors leave the model as it was. */
    CHECK(pare_prune_sparsify(m, "c1,nope", 0.0f) == -1 && strstr(pare_error(), "'nope'"));
    CHECK(!pare_prune_is_sparse(m->layers[0]));
    CHECK(pare_prune_sparsify(m, NULL, 1.5f) == -1 && strstr(pare_error(), "outside [0, 1]"));
    CHECK(pare_prune_sparsify(m, NULL, -0.1f) == -1);
    CHECK(pare_prune_sparsify(m, "", 0.0f) == 0);
    CHECK(pare_prune_sparsify(m, "fc1,,c1", 0.0f) == -1 && strstr(pare_error(), "bad layer list"));
    pare_model_free(m);
}

TEST(sparse_model_does_not_save_as_architecture_json)
{
    pare_model *m = pruned_cnn();
    CHECK(pare_prune_sparsify(m, "fc1", 0.0f) == 1);
    CHECK(pare_arch_to_json(m, NULL, 0) == -1 && strstr(pare_error(), "SparseLinear"));
    CHECK(pare_save(m, "/tmp/pare_sparse_never_written.safetensors", NULL) == -1);
    CHECK(access("/tmp/pare_sparse_never_written.safetensors", F_OK) != 0);
    pare_model_free(m);
}

TEST(sparse_file_loads_back_into_sparse_inference)
{
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    pare_model *dense = pruned_cnn();
    char path[] = "/tmp/pare_sparse_fXXXXXX";
    close(mkstemp(path));
    CHECK(pare_prune_save_sparse(dense, path) == 0);
    pare_model *back = pare_prune_load(path, NULL); /* dispatches on pare.format */
    CHECKF(back != NULL, "%s", pare_error());
    if (back) {
        pare_model_train(back, 0);
        CHECK(pare_prune_mask(back->layers[5]) != NULL);
        CHECK(pare_prune_sparsify(back, NULL, PARE_SPARSE_MIN_DEFAULT) == 0); /* 80% is below break-even */
        CHECK(pare_prune_sparsify(back, "c1,c2,fc1,fc2", 0.5f) == 4);
        int same;
        double worst = compare(ctx, dense, back, 29, &same);
        CHECKF(worst <= 1e-5 && same, "worst %g, argmax %s", worst, same ? "same" : "differs");
    }
    pare_model_free(back);
    pare_model_free(dense);
    pare_ctx_free(ctx);
    unlink(path);
}

/* Gradients through a sparse layer are a programming error: the process
 * aborts with a message that says what to do. Run in a child process. */
TEST(sparse_layer_refuses_to_train)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(3);
        pare_ctx *ctx = pare_ctx_new(0);
        pare_model *m = pruned_cnn();
        pare_prune_sparsify(m, "c1,c2,fc1,fc2", 0.0f);
        pare_model_train(m, 1);
        pare_forward(ctx, m, batch_of(ctx, 2, 1)); /* grad enabled: must abort */
        _exit(0);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECKF(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "child status %d", status);
}
