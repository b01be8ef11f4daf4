/* Pruning: masks stay zero (weights, momentum, Adam moments) through
 * training; magnitude and random selection, global vs layer-wise; schedule
 * values against the AGP formula; save / load with masks rebuilt from the
 * zeros; structured surgery equals the masked model; bad arguments. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compress/prune.h"
#include "nn/safetensors.h"
#include "tests/test.h"

static void fill_random(pare_tensor *t, uint64_t seed, float lo, float hi)
{
    pare_rng r;
    pare_rng_seed(&r, seed, PARE_STREAM_TEST);
    for (size_t i = 0; i < t->size; i++) t->data[i] = pare_rng_range(&r, lo, hi);
}

static pare_model *mlp(void)
{
    pare_model *m = pare_sequential("t", pare_linear("fc1", 12, 16), pare_relu(), pare_linear("fc2", 16, 4), NULL);
    m->seed = 3;
    pare_build(m, 12, 0, 0);
    return m;
}

/* One training step on a fixed random batch. */
static void train_step(pare_ctx *ctx, pare_model *m, pare_optim *o, uint64_t seed)
{
    pare_mark mk = pare_arena_mark(ctx);
    int xs[2] = {8, 12}, labels[8];
    pare_tensor *x = pare_ctx_tensor(ctx, 2, xs);
    fill_random(x, seed, -1, 1);
    for (int i = 0; i < 8; i++) labels[i] = (int)((seed + (uint64_t)i) % 4);
    pare_tensor *loss = pare_classifier_loss(ctx, m, x, labels, NULL);
    pare_backward(ctx, loss);
    pare_step(o);
    pare_arena_release(ctx, mk);
}

/* Every pruned weight, and its optimizer state, is exactly zero. */
static int pruned_all_zero(pare_optim *o)
{
    static const char *const names[] = {"momentum_buffer", "exp_avg", "exp_avg_sq"};
    int bad = 0, n_state = 0;
    for (int i = 0; i < pare_optim_n_params(o); i++) {
        const pare_param *p = pare_optim_param(o, i);
        pare_tensor *mask = p->is_weight ? pare_prune_mask(p->layer) : NULL;
        if (!mask) continue;
        for (size_t j = 0; j < mask->size; j++) {
            if (mask->data[j] != 0.0f) continue;
            bad += p->t->data[j] != 0.0f;
            for (int s = 0; s < 3; s++) {
                float *st = pare_optim_state(o, i, names[s]);
                if (st) n_state++, bad += st[j] != 0.0f;
            }
        }
    }
    return n_state ? bad : -1; /* -1: no state was checked at all */
}

static void masks_survive(pare_optim *(*make)(pare_model *))
{
    pare_model *m = mlp();
    CHECK(pare_prune_attach(m, NULL) == 0);
    CHECK(pare_prune_select(m, 0.6f, PARE_PRUNE_GLOBAL, PARE_PRUNE_MAGNITUDE, 0) == 0);
    pare_optim *o = make(m);
    pare_ctx *ctx = pare_ctx_new(0);
    float before = m->layers[0]->weight->data[0];
    int zero_kept = 0;
    /* The masks alone (zero gradients) already keep them; apply makes sure. */
    for (int s = 0; s < 6; s++) {
        train_step(ctx, m, o, (uint64_t)s);
        pare_prune_apply(m, o);
        zero_kept += pruned_all_zero(o) == 0;
    }
    CHECK(zero_kept == 6);
    pare_prune_stats st = pare_prune_model_stats(m);
    CHECK(st.total == 12 * 16 + 16 * 4 && st.zeros == (size_t)(0.6 * st.total + 0.5));
    /* Kept weights did train. */
    size_t moved = 0;
    for (size_t j = 0; j < m->layers[0]->weight->size; j++)
        moved += pare_prune_mask(m->layers[0])->data[j] != 0.0f && m->layers[0]->weight->data[j] != 0.0f;
    CHECK(moved > 0);
    (void)before;
    pare_ctx_free(ctx);
    pare_optim_free(o);
    pare_model_free(m);
}

static pare_optim *sgd_momentum(pare_model *m)
{
    pare_optim_config c = pare_optim_defaults(PARE_OPT_SGD, 0.1f);
    c.momentum = 0.9f;
    c.weight_decay = 1e-3f;
    return pare_optim_new(m, &c);
}
static pare_optim *adam(pare_model *m)
{
    return pare_adam(m, 1e-2f);
}
static pare_optim *adamw(pare_model *m)
{
    return pare_adamw(m, 1e-2f, 0.1f);
}

TEST(prune_masks_stay_zero_through_sgd_momentum)
{
    masks_survive(sgd_momentum);
}
TEST(prune_masks_stay_zero_through_adam_and_adamw)
{
    masks_survive(adam);
    masks_survive(adamw);
}

/* Without the post-step zeroing, AdamW's decoupled decay would still only
 * shrink a zero weight; but a weight pruned mid-training has live momentum:
 * pare_prune_apply must clear it. */
TEST(prune_select_mid_training_clears_existing_momentum)
{
    pare_model *m = mlp();
    pare_optim *o = sgd_momentum(m);
    pare_ctx *ctx = pare_ctx_new(0);
    for (int s = 0; s < 3; s++) train_step(ctx, m, o, (uint64_t)s);
    CHECK(pare_prune_attach(m, NULL) == 0);
    CHECK(pare_prune_select(m, 0.5f, PARE_PRUNE_LAYER, PARE_PRUNE_MAGNITUDE, 0) == 0);
    pare_prune_apply(m, o);
    CHECK(pruned_all_zero(o) == 0);
    train_step(ctx, m, o, 9);
    pare_prune_apply(m, o);
    CHECK(pruned_all_zero(o) == 0);
    pare_ctx_free(ctx);
    pare_optim_free(o);
    pare_model_free(m);
}

TEST(prune_magnitude_global_vs_layer)
{
    pare_model *m = mlp();
    pare_layer *a = m->layers[0], *b = m->layers[2]; /* 192 and 64 weights */
    fill_random(a->weight, 1, -0.01f, 0.01f);        /* small: global pruning takes these first */
    fill_random(b->weight, 2, 0.5f, 1);
    CHECK(pare_prune_attach(m, NULL) == 0);
    CHECK(pare_prune_select(m, 0.5f, PARE_PRUNE_GLOBAL, PARE_PRUNE_MAGNITUDE, 0) == 0);
    pare_prune_stats sa = pare_prune_layer_stats(a), sb = pare_prune_layer_stats(b);
    CHECKF(sa.zeros == 128 && sb.zeros == 0, "%zu %zu", sa.zeros, sb.zeros); /* 50% of 256 = 128, all from fc1 */
    /* Every pruned |w| is at most every kept one (magnitudes were distinct before). */
    fill_random(a->weight, 1, -0.01f, 0.01f);
    pare_prune_detach(m);
    fill_random(a->weight, 1, -0.01f, 0.01f);
    CHECK(pare_prune_attach(m, NULL) == 0);
    CHECK(pare_prune_select(m, 0.5f, PARE_PRUNE_LAYER, PARE_PRUNE_MAGNITUDE, 0) == 0);
    sa = pare_prune_layer_stats(a), sb = pare_prune_layer_stats(b);
    CHECK(sa.zeros == 96 && sb.zeros == 32);
    float max_pruned = 0, min_kept = 1e9f;
    pare_tensor *orig = pare_tensor_persistent(2, b->weight->shape, 0);
    fill_random(orig, 2, 0.5f, 1);
    for (size_t j = 0; j < orig->size; j++) {
        float v = fabsf(orig->data[j]);
        if (pare_prune_mask(b)->data[j] == 0.0f)
            max_pruned = fmaxf(max_pruned, v);
        else
            min_kept = fminf(min_kept, v);
    }
    CHECK(max_pruned <= min_kept);
    pare_tensor_free(orig);
    /* Raising the sparsity only adds to the masks. */
    pare_tensor *old = pare_tensor_persistent(2, a->weight->shape, 0);
    memcpy(old->data, pare_prune_mask(a)->data, old->size * sizeof(float));
    CHECK(pare_prune_select(m, 0.75f, PARE_PRUNE_LAYER, PARE_PRUNE_MAGNITUDE, 0) == 0);
    int regrown = 0;
    for (size_t j = 0; j < old->size; j++) regrown += old->data[j] == 0.0f && pare_prune_mask(a)->data[j] != 0.0f;
    CHECK(regrown == 0 && pare_prune_layer_stats(a).zeros == 144);
    pare_tensor_free(old);
    pare_model_free(m);
}

TEST(prune_random_criterion_counts_and_differs_from_magnitude)
{
    pare_model *m = mlp();
    CHECK(pare_prune_attach(m, NULL) == 0);
    CHECK(pare_prune_select(m, 0.3f, PARE_PRUNE_GLOBAL, PARE_PRUNE_RANDOM, 7) == 0);
    pare_prune_stats st = pare_prune_model_stats(m);
    CHECK(st.zeros == (size_t)(0.3 * 256 + 0.5));
    /* The smallest-magnitude surviving weight is very likely below some pruned one's original size. */
    pare_model *ref = mlp();
    float max_pruned = 0, min_kept = 1e9f;
    for (size_t j = 0; j < ref->layers[0]->weight->size; j++) {
        float v = fabsf(ref->layers[0]->weight->data[j]);
        if (pare_prune_mask(m->layers[0])->data[j] == 0.0f)
            max_pruned = fmaxf(max_pruned, v);
        else
            min_kept = fminf(min_kept, v);
    }
    CHECK(max_pruned > min_kept);
    pare_model_free(ref);
    pare_model_free(m);
}

TEST(prune_bad_arguments_give_clear_errors)
{
    pare_model *m = mlp();
    const char *bad[] = {"fc1", "conv9", NULL};
    CHECK(pare_prune_attach(m, bad) == -1 && strstr(pare_error(), "conv9"));
    CHECK(pare_prune_mask(m->layers[0]) == NULL); /* nothing attached on error */
    CHECK(pare_prune_select(m, 0.5f, PARE_PRUNE_GLOBAL, PARE_PRUNE_MAGNITUDE, 0) == -1 &&
          strstr(pare_error(), "no layer"));
    CHECK(pare_prune_attach(m, NULL) == 0);
    CHECK(pare_prune_select(m, 1.0f, PARE_PRUNE_GLOBAL, PARE_PRUNE_MAGNITUDE, 0) == -1 &&
          strstr(pare_error(), "outside [0, 1)"));
    CHECK(pare_prune_select(m, -0.1f, PARE_PRUNE_GLOBAL, PARE_PRUNE_MAGNITUDE, 0) == -1);
    CHECK(pare_prune_select(m, NAN, PARE_PRUNE_GLOBAL, PARE_PRUNE_MAGNITUDE, 0) == -1);
    const char *relu[] = {"", NULL};
    CHECK(pare_prune_attach(m, relu) == -1);
    pare_prune_schedule s;
    CHECK(pare_prune_schedule_init(&s, PARE_SCHED_AGP, 0, 1.0f, 0, 10, 1) == -1 && strstr(pare_error(), "[0, 1)"));
    CHECK(pare_prune_schedule_init(&s, PARE_SCHED_AGP, 0.5f, 0.2f, 0, 10, 1) == -1);
    CHECK(pare_prune_schedule_init(&s, PARE_SCHED_AGP, 0, 0.5f, 10, 5, 1) == -1);
    CHECK(pare_prune_schedule_init(&s, PARE_SCHED_AGP, 0, 0.5f, 0, 10, 0) == -1);
    CHECK(pare_prune_units(m, "fc2", 0.5f, 1) == -1 && strstr(pare_error(), "output layer"));
    CHECK(pare_prune_units(m, "nope", 0.5f, 1) == -1 && strstr(pare_error(), "nope"));
    CHECK(pare_prune_units(m, "fc1", 1.5f, 1) == -1 && strstr(pare_error(), "outside"));
    CHECK(pare_prune_units(m, "fc1", 0.5f, 3) == -1 && strstr(pare_error(), "norm"));
    CHECK(pare_prune_restore(m, "fc1,zz") == -1 && strstr(pare_error(), "zz"));
    pare_model_free(m);
    /* A unit behind a Sigmoid would not stay zero: refused. */
    m = pare_sequential("t", pare_linear("a", 4, 4), pare_sigmoid(), pare_linear("b", 4, 2), NULL);
    pare_build(m, 4, 0, 0);
    CHECK(pare_prune_units(m, "a", 0.5f, 1) == -1 && strstr(pare_error(), "Sigmoid"));
    pare_model_free(m);
}

/* ---- schedules ---------------------------------------------------------------- */
TEST(prune_schedule_agp_matches_the_formula)
{
    pare_prune_schedule s;
    const long t0 = 100, n = 10, dt = 50;
    const float si = 0.1f, sf = 0.9f;
    CHECK(pare_prune_schedule_init(&s, PARE_SCHED_AGP, si, sf, t0, t0 + n * dt, dt) == 0);
    for (long t = 0; t <= 800; t += 7) {
        double want;
        if (t <= t0)
            want = si;
        else if (t >= t0 + n * dt)
            want = sf;
        else {
            double r = 1.0 - (double)(t - t0) / (double)(n * dt);
            want = sf + (si - sf) * r * r * r;
        }
        CHECK_NEAR(pare_prune_sparsity_at(&s, t), want, 1e-6);
    }
    CHECK_NEAR(pare_prune_sparsity_at(&s, t0 + 5 * dt), sf + (si - sf) * 0.125, 1e-6);
    int updates = 0;
    for (long t = 0; t <= 1000; t++) updates += pare_prune_is_update(&s, t);
    CHECK(updates == n + 1); /* t0, t0 + dt, ..., t0 + n dt */
    CHECK(pare_prune_is_update(&s, t0 + 3 * dt) && !pare_prune_is_update(&s, t0 + 3 * dt + 1));
    /* Iterative: equal shares; one-shot: once; constant: every `every` steps. */
    CHECK(pare_prune_schedule_init(&s, PARE_SCHED_ITERATIVE, 0, 0.8f, 0, 400, 100) == 0);
    CHECK_NEAR(pare_prune_sparsity_at(&s, 100), 0.2, 1e-6);
    CHECK_NEAR(pare_prune_sparsity_at(&s, 250), 0.4, 1e-6);
    CHECK_NEAR(pare_prune_sparsity_at(&s, 400), 0.8, 1e-6);
    CHECK(pare_prune_schedule_init(&s, PARE_SCHED_ONESHOT, 0, 0.7f, 5, 5, 1) == 0);
    CHECK(pare_prune_sparsity_at(&s, 4) == 0.0f && pare_prune_sparsity_at(&s, 5) == 0.7f);
    CHECK(pare_prune_is_update(&s, 5) && !pare_prune_is_update(&s, 6));
    CHECK(pare_prune_schedule_init(&s, PARE_SCHED_CONSTANT, 0, 0.7f, 0, 0, 10) == 0);
    CHECK(pare_prune_is_update(&s, 30) && !pare_prune_is_update(&s, 31) && pare_prune_sparsity_at(&s, 31) == 0.7f);
}

/* The schedule driven by a training loop: at each update the model's
 * sparsity is the schedule's value; in between masks and state stay zero. */
TEST(prune_agp_schedule_inside_training)
{
    pare_model *m = mlp();
    CHECK(pare_prune_attach(m, NULL) == 0);
    pare_optim *o = sgd_momentum(m);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_prune_schedule s;
    CHECK(pare_prune_schedule_init(&s, PARE_SCHED_AGP, 0, 0.9f, 0, 40, 10) == 0);
    int ok_updates = 0, ok_zero = 0;
    for (long t = 1; t <= 50; t++) {
        train_step(ctx, m, o, (uint64_t)t);
        CHECK(pare_prune_schedule_step(&s, m, o, t) == 0);
        ok_zero += pruned_all_zero(o) <= 0; /* -1 before anything is pruned */
        if (pare_prune_is_update(&s, t)) {
            pare_prune_stats st = pare_prune_model_stats(m);
            size_t want = (size_t)((double)pare_prune_sparsity_at(&s, t) * (double)st.total + 0.5);
            ok_updates += st.zeros == want;
        }
    }
    CHECKF(ok_zero == 50 && ok_updates == 4 && s.updates == 4, "%d %d %d", ok_zero, ok_updates, s.updates);
    CHECK_NEAR(s.current, 0.9, 1e-6);
    pare_ctx_free(ctx);
    pare_optim_free(o);
    pare_model_free(m);
}

/* ---- save / load ----------------------------------------------------------------- */
TEST(prune_save_marks_the_file_and_load_rebuilds_masks)
{
    pare_model *m = mlp();
    const char *only[] = {"fc1", NULL};
    CHECK(pare_prune_attach(m, only) == 0);
    CHECK(pare_prune_select(m, 0.75f, PARE_PRUNE_GLOBAL, PARE_PRUNE_MAGNITUDE, 0) == 0);
    char path[] = "/tmp/pare_prune_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    const char *meta[] = {"note", "x", NULL};
    CHECK(pare_prune_save(m, path, meta) == 0);
    CHECK(pare_prune_mask(m->layers[0]) != NULL); /* still masked in memory */
    pare_st_file *f = pare_st_open(path);
    CHECK(f && pare_st_meta(f, "pare.pruned") && !strcmp(pare_st_meta(f, "pare.pruned"), "fc1"));
    CHECK(f && pare_st_find(f, "fc1.mask.values") == NULL && !strcmp(pare_st_meta(f, "note"), "x"));
    pare_st_close(f);
    /* An ordinary model for pare_load... */
    pare_model *plain = pare_load(path, NULL);
    CHECK(plain && pare_prune_mask(plain->layers[0]) == NULL);
    /* ...and masks again for pare_prune_load. */
    pare_model *back = pare_prune_load(path, NULL);
    CHECK(back && pare_prune_mask(back->layers[0]) && !pare_prune_mask(back->layers[2]));
    if (back) {
        CHECK(
            !memcmp(pare_prune_mask(back->layers[0])->data, pare_prune_mask(m->layers[0])->data, 192 * sizeof(float)));
        CHECK(!memcmp(back->layers[0]->weight->data, m->layers[0]->weight->data, 192 * sizeof(float)));
        CHECK(pare_prune_layer_stats(back->layers[0]).zeros == 144); /* 75% of fc1 */
    }
    pare_model_free(plain);
    pare_model_free(back);
    pare_model_free(m);
    unlink(path);
}

TEST(prune_report_lists_layers_and_total)
{
    pare_model *m = mlp();
    CHECK(pare_prune_attach(m, NULL) == 0);
    CHECK(pare_prune_select(m, 0.5f, PARE_PRUNE_LAYER, PARE_PRUNE_MAGNITUDE, 0) == 0);
    char buf[1024] = "";
    FILE *f = tmpfile();
    pare_prune_report(m, f);
    rewind(f);
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[got] = '\0';
    CHECK(strstr(buf, "fc1") && strstr(buf, "96") && strstr(buf, "192") && strstr(buf, "50.00%"));
    CHECK(strstr(buf, "all") && strstr(buf, "128") && strstr(buf, "256"));
    pare_model_free(m);
}

/* ---- structured surgery ------------------------------------------------------------ */
static void randomize(pare_model *m, uint64_t seed)
{
    for (int i = 0; i < m->n_layers; i++) {
        pare_layer *l = m->layers[i];
        if (l->weight) fill_random(l->weight, seed + 10 * (uint64_t)i, -0.5f, 0.5f);
        if (l->bias) fill_random(l->bias, seed + 10 * (uint64_t)i + 1, -0.5f, 0.5f);
        if (l->running_mean) fill_random(l->running_mean, seed + 10 * (uint64_t)i + 2, -0.3f, 0.3f);
        if (l->running_var) fill_random(l->running_var, seed + 10 * (uint64_t)i + 3, 0.5f, 1.5f);
    }
}

/* Masked outputs == shrunken outputs, and the model did get smaller. */
static void check_surgery(pare_model *m, const char *const *layers, float frac, int c, int h, int w)
{
    m->seed = 1;
    CHECKF(pare_build(m, c, h, w) == 0, "%s", pare_error());
    randomize(m, 5);
    pare_model_train(m, 0);
    size_t before = pare_model_param_count(m);
    for (const char *const *n = layers; *n; n++) CHECK(pare_prune_units(m, *n, frac, 1) == 0);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    int xs[4] = {3, c, h, w};
    pare_tensor *x = pare_ctx_tensor(ctx, h ? 4 : 2, xs);
    fill_random(x, 77, -1, 1);
    pare_tensor *y1 = pare_forward(ctx, m, x);
    size_t n_out = y1->size;
    float *masked = pare_alloc(n_out * sizeof(float));
    memcpy(masked, y1->data, n_out * sizeof(float));
    double scale = 0;
    for (size_t i = 0; i < n_out; i++) scale = fmax(scale, fabs(masked[i]));
    CHECK(pare_prune_shrink(m) == 0);
    CHECK(pare_model_param_count(m) < before);
    pare_tensor *y2 = pare_forward(ctx, m, x);
    CHECK(y2->size == n_out);
    double worst = 0;
    for (size_t i = 0; i < n_out && i < y2->size; i++) worst = fmax(worst, fabs(y2->data[i] - masked[i]));
    CHECKF(worst <= 1e-5 && scale > 1e-3, "worst %g (outputs up to %g)", worst, scale);
    /* Without the hooks it is an ordinary dense model that gives the same. */
    pare_prune_detach(m);
    pare_tensor *y3 = pare_forward(ctx, m, x);
    worst = 0;
    for (size_t i = 0; i < n_out && i < y3->size; i++) worst = fmax(worst, fabs(y3->data[i] - masked[i]));
    CHECK(worst <= 1e-5);
    pare_free(masked);
    pare_ctx_free(ctx);
}

TEST(prune_surgery_conv_to_conv)
{
    pare_model *m = pare_sequential("t", pare_conv2d("c1", 2, 8, 3), pare_relu(), pare_conv2d("c2", 8, 6, 3),
                                    pare_relu(), pare_conv2d("c3", 6, 3, 3), NULL);
    const char *layers[] = {"c1", "c2", NULL};
    check_surgery(m, layers, 0.5f, 2, 9, 9);
    CHECK(m->layers[0]->out_features == 4 && m->layers[2]->in_features == 4 && m->layers[2]->out_features == 3);
    CHECK(m->layers[0]->weight->shape[0] == 4 && m->layers[2]->weight->shape[1] == 4);
    pare_model_free(m);
}

TEST(prune_surgery_conv_pool_flatten_linear)
{
    pare_model *m = pare_sequential("t", pare_conv2d("c1", 1, 6, 3), pare_relu(), pare_maxpool2d(2),
                                    pare_conv2d("c2", 6, 8, 3), pare_relu(), pare_maxpool2d(2), pare_flatten(),
                                    pare_linear("fc1", 8 * 5 * 5, 10), pare_relu(), pare_linear("fc2", 10, 4), NULL);
    const char *layers[] = {"c2", "fc1", NULL};
    check_surgery(m, layers, 0.5f, 1, 26, 26);
    CHECK(m->layers[3]->out_features == 4 && m->layers[7]->in_features == 4 * 25 && m->layers[7]->out_features == 5);
    pare_model_free(m);
}

TEST(prune_surgery_linear_to_linear)
{
    pare_model *m = pare_sequential("t", pare_linear("a", 7, 9), pare_tanh(), pare_linear("b", 9, 5), pare_relu(),
                                    pare_dropout(0.3f), pare_linear("c", 5, 3), NULL);
    const char *layers[] = {"a", "b", NULL};
    check_surgery(m, layers, 0.7f, 7, 0, 0);
    CHECK(m->layers[0]->out_features == 3 && m->layers[2]->in_features == 3); /* 9 - round(6.3) */
    CHECK(m->layers[2]->out_features == 2 && m->layers[5]->in_features == 2);
    pare_model_free(m);
}

TEST(prune_surgery_through_batchnorm)
{
    pare_model *m = pare_sequential("t", pare_conv2d("c1", 2, 6, 3), pare_batchnorm2d("bn1", 6), pare_relu(),
                                    pare_avgpool2d(2), pare_flatten(), pare_linear("fc", 6 * 3 * 3, 4), NULL);
    const char *layers[] = {"c1", NULL};
    check_surgery(m, layers, 0.5f, 2, 8, 8);
    CHECK(m->layers[1]->out_features == 3 && m->layers[1]->weight->size == 3 && m->layers[1]->running_var->size == 3);
    CHECK(m->layers[5]->in_features == 27);
    pare_model_free(m);
}

/* The unit masks survive training: bias and BatchNorm stay zero too. */
TEST(prune_structured_mask_holds_bias_and_batchnorm_through_training)
{
    pare_model *m = pare_sequential("t", pare_conv2d("c1", 1, 4, 3), pare_batchnorm2d("bn", 4), pare_relu(),
                                    pare_flatten(), pare_linear("fc", 4 * 4 * 4, 3), NULL);
    m->seed = 2;
    CHECK(pare_build(m, 1, 6, 6) == 0);
    CHECK(pare_prune_units(m, "c1", 0.5f, 2) == 0);
    pare_optim *o = pare_adam(m, 1e-2f);
    pare_ctx *ctx = pare_ctx_new(0);
    for (int s = 0; s < 3; s++) {
        pare_mark mk = pare_arena_mark(ctx);
        int xs[4] = {4, 1, 6, 6}, labels[4] = {0, 1, 2, 1};
        pare_tensor *x = pare_ctx_tensor(ctx, 4, xs);
        fill_random(x, (uint64_t)s, -1, 1);
        pare_backward(ctx, pare_classifier_loss(ctx, m, x, labels, NULL));
        pare_step(o);
        pare_prune_apply(m, o);
        pare_arena_release(ctx, mk);
    }
    int zero_units = 0;
    for (int u = 0; u < 4; u++) {
        float *row = m->layers[0]->weight->data + u * 9;
        int all0 = 1;
        for (int j = 0; j < 9; j++) all0 &= row[j] == 0.0f;
        if (!all0) continue;
        zero_units++;
        CHECK(m->layers[0]->bias->data[u] == 0.0f && m->layers[1]->weight->data[u] == 0.0f &&
              m->layers[1]->bias->data[u] == 0.0f);
    }
    CHECK(zero_units == 2);
    pare_ctx_free(ctx);
    pare_optim_free(o);
    pare_model_free(m);
}

/* ---- sparse storage and kernel -------------------------------------------------------- */
static float *random_sparse(int rows, int cols, float density, uint64_t seed)
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

static void csr_matches_dense(int rows, int cols, float density, int batch, uint64_t seed)
{
    float *w = random_sparse(rows, cols, density, seed), *x = pare_alloc((size_t)batch * cols * sizeof *x);
    float *y = pare_alloc((size_t)batch * rows * sizeof *y), *ref = pare_alloc((size_t)batch * rows * sizeof *ref);
    float *back = pare_alloc((size_t)rows * cols * sizeof *back), *bias = pare_alloc((size_t)rows * sizeof *bias);
    pare_rng r;
    pare_rng_seed(&r, seed + 1, PARE_STREAM_TEST);
    for (int i = 0; i < batch * cols; i++) x[i] = pare_rng_range(&r, -1, 1);
    for (int i = 0; i < rows; i++) bias[i] = pare_rng_range(&r, -1, 1);
    pare_csr *a = pare_csr_from_dense(w, rows, cols);
    CHECK(a && (cols <= 65536 ? a->col16 != NULL : a->col32 != NULL));
    size_t nnz = 0;
    for (size_t i = 0; i < (size_t)rows * cols; i++) nnz += w[i] != 0.0f;
    CHECK(a && (size_t)a->nnz == nnz);
    pare_csr_to_dense(a, back);
    CHECK(!memcmp(back, w, (size_t)rows * cols * sizeof *w));
    pare_csr_linear(a, x, batch, bias, y);
    pare_sgemm_reference(0, 1, batch, rows, cols, 1.0f, x, cols, w, cols, 0.0f, ref, rows);
    double worst = 0;
    for (int i = 0; i < batch * rows; i++) worst = fmax(worst, fabs(y[i] - (ref[i] + bias[i % rows])));
    CHECKF(worst <= 1e-4, "%dx%d density %g batch %d: worst %g", rows, cols, (double)density, batch, worst);
    pare_csr_free(a);
    pare_free(w), pare_free(x), pare_free(y), pare_free(ref), pare_free(back), pare_free(bias);
}

TEST(prune_csr_kernel_equals_dense_kernel)
{
    csr_matches_dense(128, 1600, 0.1f, 1, 1);
    csr_matches_dense(128, 1600, 0.1f, 5, 2);
    csr_matches_dense(10, 37, 0.5f, 3, 3);    /* rows shorter than a vector */
    csr_matches_dense(7, 33, 0.0f, 2, 4);     /* empty */
    csr_matches_dense(9, 100, 1.0f, 2, 5);    /* dense */
    csr_matches_dense(3, 70000, 0.05f, 2, 6); /* 32-bit column indices */
    CHECK(pare_csr_from_dense(NULL, 0, 5) == NULL && strstr(pare_error(), "0 x 5"));
}

TEST(prune_sparse_file_is_small_and_loads_back_the_same)
{
    pare_model *m = pare_sequential("t", pare_conv2d("c1", 1, 8, 3), pare_relu(), pare_maxpool2d(2), pare_flatten(),
                                    pare_linear("fc1", 8 * 5 * 5, 64), pare_relu(), pare_linear("fc2", 64, 4), NULL);
    m->seed = 4;
    CHECK(pare_build(m, 1, 12, 12) == 0);
    CHECK(pare_prune_attach(m, NULL) == 0);
    CHECK(pare_prune_select(m, 0.9f, PARE_PRUNE_GLOBAL, PARE_PRUNE_MAGNITUDE, 0) == 0);
    char dense[] = "/tmp/pare_prune_dXXXXXX", sparse[] = "/tmp/pare_prune_sXXXXXX";
    close(mkstemp(dense));
    close(mkstemp(sparse));
    CHECK(pare_prune_save(m, dense, NULL) == 0 && pare_prune_save_sparse(m, sparse) == 0);
    FILE *fd = fopen(dense, "rb"), *fs = fopen(sparse, "rb");
    long bd = -1, bs = -1;
    if (fd && fs) {
        fseek(fd, 0, SEEK_END), fseek(fs, 0, SEEK_END);
        bd = ftell(fd), bs = ftell(fs);
    }
    if (fd) fclose(fd);
    if (fs) fclose(fs);
    CHECKF(bs > 0 && bs * 4 < bd, "dense %ld B, sparse %ld B", bd, bs);
    pare_model *back = pare_prune_load_sparse(sparse);
    CHECKF(back != NULL, "%s", pare_error());
    if (back) {
        for (int i = 0; i < m->n_layers; i++) {
            pare_layer *a = m->layers[i], *b = back->layers[i];
            if (a->weight) CHECK(!memcmp(a->weight->data, b->weight->data, a->weight->size * sizeof(float)));
            if (a->bias) CHECK(!memcmp(a->bias->data, b->bias->data, a->bias->size * sizeof(float)));
            if (a->weight) CHECK(pare_prune_mask(b) != NULL); /* masks rebuilt from the zeros */
        }
    }
    /* The wrong reader for each file says so. */
    CHECK(pare_prune_load_sparse(dense) == NULL && strstr(pare_error(), "not a sparse"));
    CHECK(pare_load(sparse, NULL) == NULL && strstr(pare_error(), "sparse"));
    pare_model_free(back);
    pare_model_free(m);
    unlink(dense);
    unlink(sparse);
}

/* A sparse file whose column index points outside the matrix is refused. */
TEST(prune_sparse_file_with_bad_indices_is_refused)
{
    pare_model *m = pare_sequential("t", pare_linear("fc", 40, 8), NULL);
    m->seed = 1;
    CHECK(pare_build(m, 40, 0, 0) == 0);
    CHECK(pare_prune_attach(m, NULL) == 0 &&
          pare_prune_select(m, 0.8f, PARE_PRUNE_GLOBAL, PARE_PRUNE_MAGNITUDE, 0) == 0);
    char path[] = "/tmp/pare_prune_bXXXXXX";
    close(mkstemp(path));
    CHECK(pare_prune_save_sparse(m, path) == 0);
    pare_st_file *f = pare_st_open(path);
    CHECK(f != NULL);
    if (f) {
        /* Rewrite the file with column 0 replaced by 40 (one past the end). */
        int n = pare_st_count(f);
        pare_st_tensor t[8];
        uint16_t cols[64];
        for (int i = 0; i < n && i < 8; i++) {
            t[i] = *pare_st_at(f, i);
            if (strstr(t[i].name, ".col")) {
                memcpy(cols, t[i].data, t[i].nbytes < sizeof cols ? t[i].nbytes : sizeof cols);
                cols[0] = 40;
                t[i].data = cols;
            }
        }
        const char *meta[] = {"pare.format", "sparse", "pare.arch", pare_st_meta(f, "pare.arch"), NULL};
        CHECK(pare_st_write(path, t, n, meta) == 0);
        pare_st_close(f);
        CHECK(pare_prune_load_sparse(path) == NULL && strstr(pare_error(), "column 40"));
    }
    pare_model_free(m);
    unlink(path);
}

/* Masked units of a layer: rows of its weight that are all zero. */
static int zero_units(const pare_layer *l)
{
    int units = l->out_features, n = 0;
    size_t row = l->weight->size / (size_t)units;
    for (int u = 0; u < units; u++) {
        int zero = 1;
        for (size_t j = 0; j < row; j++) zero &= l->weight->data[(size_t)u * row + j] == 0.0f;
        n += zero;
    }
    return n;
}

/* A gradual structured schedule masks round(s_t * units) units of each
 * listed layer at every update, never un-masks one, and surgery at the end
 * leaves the final share. */
TEST(prune_structured_agp_schedule_grows_unit_masks)
{
    pare_model *m = pare_sequential("t", pare_conv2d("c1", 2, 8, 3), pare_relu(), pare_maxpool2d(2), pare_flatten(),
                                    pare_linear("fc1", 8 * 3 * 3, 12), pare_relu(), pare_linear("fc2", 12, 3), NULL);
    m->seed = 9;
    CHECK(pare_build(m, 2, 8, 8) == 0);
    const char *layers[] = {"c1", "fc1", NULL};
    pare_prune_schedule s;
    CHECK(pare_prune_schedule_init(&s, PARE_SCHED_AGP, 0.0f, 0.5f, 0, 10, 2) == 0);
    s.unit_layers = layers;
    s.norm = 2;
    float *before = NULL;
    for (long t = 0; t <= 12; t++) {
        CHECK(pare_prune_schedule_step(&s, m, NULL, t) == 0);
        float target = pare_prune_sparsity_at(&s, t - (t % 2 && t < 10 ? 1 : 0));
        pare_layer *c1 = m->layers[0], *fc1 = m->layers[4];
        CHECKF(zero_units(c1) == (int)lround(target * 8) && zero_units(fc1) == (int)lround(target * 12),
               "step %ld: %d and %d units masked, schedule %g", t, zero_units(c1), zero_units(fc1), (double)target);
        if (before) /* a masked unit stays masked */
            for (size_t i = 0; i < c1->weight->size; i++) CHECK(!(before[i] == 0.0f && c1->weight->data[i] != 0.0f));
        pare_free(before);
        before = pare_alloc(c1->weight->size * sizeof *before);
        memcpy(before, c1->weight->data, c1->weight->size * sizeof *before);
    }
    pare_free(before);
    CHECK(pare_prune_shrink(m) == 0);
    CHECK(m->layers[0]->out_features == 4 && m->layers[4]->out_features == 6 && m->layers[4]->in_features == 4 * 9);
    pare_model_free(m);
}
