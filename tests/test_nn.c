/* nn: shape inference and its messages, parameters and FLOPs, hooks, the
 * layer-edit API and structured resize, the classifier loss. */
#include <string.h>

#include "nn/nn.h"
#include "tests/test.h"

static pare_model *seed_model(int fc1_in)
{
    return pare_sequential("seedcnn", pare_conv2d("conv1", 1, 32, 3), pare_relu(), pare_maxpool2d(2),
                           pare_conv2d("conv2", 32, 64, 3), pare_relu(), pare_maxpool2d(2), pare_flatten(),
                           pare_linear("fc1", fc1_in, 128), pare_relu(), pare_linear("fc2", 128, 10),
                           pare_log_softmax(), NULL);
}

static void fill_random(pare_tensor *t, uint64_t seed)
{
    pare_rng r;
    pare_rng_seed(&r, seed, PARE_STREAM_TEST);
    for (size_t i = 0; i < t->size; i++) t->data[i] = pare_rng_range(&r, -1, 1);
}

TEST(build_names_the_layer_and_both_sizes_on_the_seed_mismatch)
{
    pare_model *m = seed_model(64 * 6 * 6);
    CHECK(pare_build(m, 1, 28, 28) == -1);
    const char *e = pare_error();
    CHECKF(strstr(e, "fc1") && strstr(e, "2304") && strstr(e, "1600") && strstr(e, "64x5x5"), "message: %s", e);
    pare_model_free(m);
}

TEST(build_reports_other_mismatches)
{
    pare_model *m = pare_sequential("t", pare_conv2d("c", 3, 4, 3), NULL);
    CHECK(pare_build(m, 1, 8, 8) == -1 && strstr(pare_error(), "expected 3 input channels"));
    pare_model_free(m);
    m = pare_sequential("t", pare_conv2d("c", 1, 4, 5), NULL);
    CHECK(pare_build(m, 1, 4, 4) == -1 && strstr(pare_error(), "does not fit"));
    pare_model_free(m);
    m = pare_sequential("t", pare_conv2d("c", 1, 4, 3), pare_linear("fc", 16, 2), NULL);
    CHECK(pare_build(m, 1, 4, 4) == -1 && strstr(pare_error(), "Flatten"));
    pare_model_free(m);
    m = pare_sequential("t", pare_linear("fc", 4, 2), pare_linear("fc", 2, 2), NULL);
    CHECK(pare_build(m, 4, 0, 0) == -1 && strstr(pare_error(), "two layers are named 'fc'"));
    pare_model_free(m);
    m = pare_sequential("t", pare_linear("", 4, 2), NULL);
    CHECK(pare_build(m, 4, 0, 0) == -1 && strstr(pare_error(), "no name"));
    pare_model_free(m);
    m = pare_sequential("t", pare_dropout(1.5f), NULL);
    CHECK(pare_build(m, 4, 0, 0) == -1 && strstr(pare_error(), "[0, 1)"));
    pare_model_free(m);
}

TEST(seedcnn_parameters_flops_and_shapes)
{
    pare_model *m = pare_model_zoo("seedcnn");
    CHECK(pare_build(m, 1, 28, 28) == 0);
    CHECK(pare_model_param_count(m) == 225034);
    CHECK_NEAR(pare_model_flops(m), 2.0 * (9 * 32 * 676 + 288 * 64 * 121 + 1600 * 128 + 128 * 10), 0.5);
    pare_layer *fl = m->layers[6];
    CHECK(fl->kind == PARE_FLATTEN && fl->out_shape[0] == 1600);
    pare_param p[16];
    int n = pare_model_params(m, p, 16);
    CHECK(n == 8 && !strcmp(p[0].name, "conv1.weight") && !strcmp(p[7].name, "fc2.bias"));
    FILE *f = tmpfile();
    pare_summary(m, f);
    long size = ftell(f);
    CHECK(size > 0);
    pare_model_free(m);
    fclose(f);
}

TEST(zoo_models_build_with_expected_sizes)
{
    const struct {
        const char *name;
        size_t params;
    } want[] = {{"seedcnn", 225034}, {"kerascnn", 225034}, {"seedcnn-bn", 225034 + 2 * (32 + 64)},
                {"lenet5", 431080},  {"lenet300", 266610}, {"mlp64", 50890},
                {"mlp32", 25450}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        pare_model *m = pare_model_zoo(want[i].name);
        CHECK(m && pare_build(m, 1, 28, 28) == 0);
        CHECKF(pare_model_param_count(m) == want[i].params, "%s: %zu params", want[i].name, pare_model_param_count(m));
        pare_model_free(m);
    }
    CHECK(pare_model_zoo("resnet") == NULL && strstr(pare_error(), "unknown architecture"));
}

TEST(initialization_is_seeded_and_bounded)
{
    pare_model *a = pare_model_zoo("mlp32"), *b = pare_model_zoo("mlp32"), *c = pare_model_zoo("mlp32");
    c->seed = 1;
    pare_build(a, 1, 28, 28), pare_build(b, 1, 28, 28), pare_build(c, 1, 28, 28);
    pare_tensor *wa = a->layers[1]->weight;
    CHECK(memcmp(wa->data, b->layers[1]->weight->data, wa->size * 4) == 0);
    CHECK(memcmp(wa->data, c->layers[1]->weight->data, wa->size * 4) != 0);
    float bound = 1.0f / 28.0f, lo = 1, hi = -1;
    for (size_t i = 0; i < wa->size; i++)
        lo = wa->data[i] < lo ? wa->data[i] : lo, hi = wa->data[i] > hi ? wa->data[i] : hi;
    CHECK(lo >= -bound && hi <= bound && lo < -0.9f * bound && hi > 0.9f * bound);
    pare_model_free(a), pare_model_free(b), pare_model_free(c);
}

/* ---- hooks -------------------------------------------------------------------- */
static pare_tensor *mask_apply(pare_ctx *ctx, pare_hook *h, pare_layer *l, pare_tensor *w)
{
    (void)l;
    return pare_f_mul(ctx, w, h->state[0]);
}

TEST(weight_hook_masks_forward_and_backward)
{
    pare_model *m = pare_sequential("t", pare_linear("fc", 3, 2), NULL);
    pare_build(m, 3, 0, 0);
    pare_layer *fc = m->layers[0];
    int ws[2] = {2, 3};
    pare_hook mask = {"mask", mask_apply, NULL, NULL, 1, {"values"}, {pare_tensor_persistent(2, ws, 0)}, NULL};
    const float keep[6] = {1, 0, 1, 0, 1, 1};
    memcpy(mask.state[0]->data, keep, sizeof keep);
    CHECK(pare_hook_add(&fc->weight_hooks, &mask) == 0);
    pare_ctx *ctx = pare_ctx_new(0);
    int xs[2] = {1, 3};
    pare_tensor *x = pare_ctx_tensor(ctx, 2, xs);
    x->data[0] = 1, x->data[1] = 10, x->data[2] = 100;
    pare_tensor *y = pare_forward(ctx, m, x);
    const float *w = fc->weight->data, *b = fc->bias->data;
    CHECK_NEAR(y->data[0], w[0] * 1 + w[2] * 100 + b[0], 1e-4);
    CHECK_NEAR(y->data[1], w[4] * 10 + w[5] * 100 + b[1], 1e-4);
    CHECK(pare_backward(ctx, pare_f_sum(ctx, y)) == 0);
    const float *g = fc->weight->grad;
    CHECK(g[0] == 1 && g[1] == 0 && g[2] == 100 && g[3] == 0 && g[4] == 10 && g[5] == 100);
    /* The model lists the hook's state with its tensors, for saving. */
    pare_param p[8];
    int n = pare_model_tensors(m, p, 8);
    CHECK(n == 3 && !strcmp(p[2].name, "fc.mask.values"));
    pare_ctx_free(ctx);
    pare_tensor_free(mask.state[0]);
    fc->weight_hooks.n = 0; /* the hook lives on this stack frame */
    pare_model_free(m);
}

static pare_tensor *double_output(pare_ctx *ctx, pare_hook *h, pare_layer *l, pare_tensor *t)
{
    (void)h, (void)l;
    return pare_f_scale(ctx, t, 2.0f);
}

TEST(output_and_input_hooks_run_in_order)
{
    pare_model *m = pare_sequential("t", pare_linear("fc", 2, 1), NULL);
    pare_build(m, 2, 0, 0);
    pare_hook twice = {"twice", double_output, NULL, NULL, 0, {NULL}, {NULL}, NULL};
    pare_hook twice_in = twice;
    pare_hook_add(&m->layers[0]->output_hooks, &twice);
    pare_hook_add(&m->input_hooks, &twice_in);
    pare_ctx *ctx = pare_ctx_new(0);
    int xs[2] = {1, 2};
    pare_tensor *x = pare_ctx_tensor(ctx, 2, xs);
    x->data[0] = 1, x->data[1] = 2;
    const float *w = m->layers[0]->weight->data, b = m->layers[0]->bias->data[0];
    CHECK_NEAR(pare_forward(ctx, m, x)->data[0], 2 * (w[0] * 2 + w[1] * 4 + b), 1e-5);
    CHECK(pare_hook_find(&m->input_hooks, "twice") == &twice_in);
    CHECK(pare_hook_remove(&m->input_hooks, "twice") == 0 && m->input_hooks.n == 0);
    CHECK(pare_hook_remove(&m->input_hooks, "twice") == -1);
    m->layers[0]->output_hooks.n = 0;
    pare_ctx_free(ctx);
    pare_model_free(m);
}

/* ---- edits ------------------------------------------------------------------------ */
TEST(edit_api_insert_remove_replace)
{
    pare_model *m = pare_sequential("t", pare_linear("a", 4, 3), pare_linear("b", 3, 2), NULL);
    CHECK(pare_build(m, 4, 0, 0) == 0);
    CHECK(pare_model_insert(m, 1, pare_relu()) == 0 && m->n_layers == 3 && !m->built);
    CHECK(pare_build(m, 4, 0, 0) == 0 && m->layers[1]->kind == PARE_RELU);
    CHECK(pare_model_replace(m, 2, pare_linear("c", 3, 5)) == 0);
    CHECK(pare_build(m, 4, 0, 0) == 0 && m->layers[2]->out_shape[0] == 5 && pare_model_index(m, "c") == 2);
    CHECK(pare_model_remove(m, 1) == 0 && pare_model_find(m, "a") == m->layers[0]);
    CHECK(pare_model_remove(m, 7) == -1 && strstr(pare_error(), "has 2 layers"));
    CHECK(pare_model_insert(m, -1, NULL) == -1);
    pare_model_free(m);
}

/* Zeroing filters of conv1 (and the matching input channels of conv2) gives
 * the same outputs as removing them. */
TEST(resize_conv_then_linear_matches_masking)
{
    pare_model *m = pare_sequential("t", pare_conv2d("c1", 2, 4, 3), pare_relu(), pare_maxpool2d(2),
                                    pare_conv2d("c2", 4, 3, 1), pare_flatten(), pare_linear("fc", 3 * 4 * 4, 2), NULL);
    CHECK(pare_build(m, 2, 10, 10) == 0);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    int xs[4] = {2, 2, 10, 10};
    pare_tensor *x = pare_ctx_tensor(ctx, 4, xs);
    fill_random(x, 3);
    /* mask: drop filter 1 and 3 of c1, and unit 2 of c2 (which feeds 16 features of fc) */
    pare_layer *c1 = m->layers[0], *c2 = m->layers[3], *fc = m->layers[5];
    for (int f = 1; f < 4; f += 2) {
        memset(c1->weight->data + f * 18, 0, 18 * sizeof(float));
        c1->bias->data[f] = 0;
    }
    memset(c2->weight->data + 2 * 4, 0, 4 * sizeof(float)); /* c2 is 1x1: 4 weights a filter */
    c2->bias->data[2] = 0;
    pare_tensor *masked = pare_forward(ctx, m, x);
    const int keep1[2] = {0, 2}, keep2[2] = {0, 1};
    CHECK(pare_layer_resize(c1, 0, keep1, 2, 1) == 0);
    CHECK(pare_layer_resize(c2, 1, keep1, 2, 1) == 0);
    CHECK(pare_layer_resize(c2, 0, keep2, 2, 1) == 0);
    CHECK(pare_layer_resize(fc, 1, keep2, 2, 16) == 0);
    CHECK(pare_build(m, 2, 10, 10) == 0);
    CHECK(c1->weight->shape[0] == 2 && c2->weight->shape[1] == 2 && fc->weight->shape[1] == 32);
    pare_tensor *shrunk = pare_forward(ctx, m, x);
    double worst = 0;
    for (size_t i = 0; i < masked->size; i++) {
        double d = fabs(masked->data[i] - shrunk->data[i]);
        worst = d > worst ? d : worst;
    }
    CHECK(worst <= 1e-5);
    const int bad[2] = {1, 1};
    CHECK(pare_layer_resize(c1, 0, bad, 2, 1) == -1 && strstr(pare_error(), "increasing"));
    CHECK(pare_layer_resize(m->layers[1], 0, keep1, 2, 1) == -1);
    pare_ctx_free(ctx);
    pare_model_free(m);
}

TEST(classifier_loss_follows_the_last_layer)
{
    pare_model *logsm = pare_model_zoo("seedcnn"), *sm = pare_model_zoo("kerascnn");
    pare_build(logsm, 1, 28, 28), pare_build(sm, 1, 28, 28);
    pare_ctx *ctx = pare_ctx_new(0);
    int xs[4] = {3, 1, 28, 28};
    pare_tensor *x = pare_ctx_tensor(ctx, 4, xs);
    fill_random(x, 4);
    const int labels[3] = {1, 7, 3};
    pare_tensor *s1, *s2;
    float l1 = pare_classifier_loss(ctx, logsm, x, labels, &s1)->data[0];
    float l2 = pare_classifier_loss(ctx, sm, x, labels, &s2)->data[0];
    /* Same weights (same seed, same layers), so the same loss either way. */
    CHECK_NEAR(l1, l2, 1e-5);
    CHECK(s2->shape[1] == 10);
    pare_ctx_free(ctx);
    pare_model_free(logsm), pare_model_free(sm);
}
