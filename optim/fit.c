/* The training loop behind pare_fit, and evaluation. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "optim/fit.h"

double pare_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

pare_fit_config pare_fit_defaults(int epochs)
{
    pare_fit_config c;
    memset(&c, 0, sizeof c);
    c.epochs = epochs;
    c.progress = 1;
    c.label = "train";
    return c;
}

int pare_count_correct(const pare_tensor *scores, const int *labels)
{
    int n = scores->shape[0], k = (int)(scores->size / (size_t)n), correct = 0;
    for (int i = 0; i < n; i++) correct += (int)pare_vec_argmax(scores->data + (size_t)i * k, (size_t)k) == labels[i];
    return correct;
}

/* ---- progress -------------------------------------------------------------- */
typedef struct progress {
    int tty, total, next_line;
    double start;
} progress;

static void progress_show(progress *p, const pare_fit_config *cfg, int epoch, int done, double loss, double acc,
                          long images)
{
    double el = pare_now() - p->start, rate = el > 0 ? images / el : 0;
    double eta = done ? el * (p->total - done) / done : 0;
    if (p->tty) {
        int width = 24, fill = p->total ? width * done / p->total : width;
        char bar[32];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = '\0';
        fprintf(stderr, "\r%s epoch %d/%d [%s] %d/%d loss %.4f acc %.2f%% %.0f img/s ETA %.0fs ", cfg->label, epoch + 1,
                cfg->first_epoch + cfg->epochs, bar, done, p->total, loss, 100 * acc, rate, eta);
        if (done == p->total) fputc('\n', stderr);
    } else if (done >= p->next_line || done == p->total) {
        fprintf(stderr, "%s epoch %d/%d batch %d/%d loss %.4f acc %.2f%% %.0f img/s ETA %.0fs\n", cfg->label, epoch + 1,
                cfg->first_epoch + cfg->epochs, done, p->total, loss, 100 * acc, rate, eta);
        p->next_line += (p->total + 3) / 4;
    }
    fflush(stderr);
}

/* ---- training ------------------------------------------------------------------ */
/* One optimizer step on one batch; returns the loss. */
static float train_step(pare_ctx *ctx, pare_model *m, pare_optim *o, const pare_batch *b, const pare_fit_config *cfg,
                        int *correct)
{
    pare_tensor *scores;
    pare_tensor *loss = cfg->loss ? cfg->loss(cfg->loss_user, ctx, m, b, &scores)
                                  : pare_classifier_loss(ctx, m, b->x, b->labels, &scores);
    *correct = pare_count_correct(scores, b->labels);
    float value = loss->data[0];
    pare_backward(ctx, loss);
    if (cfg->clip > 0) pare_clip_grad_norm(o, cfg->clip);
    pare_step(o);
    return value;
}

static int run_epoch(pare_ctx *ctx, pare_model *m, pare_optim *o, pare_loader *ld, const pare_fit_config *cfg,
                     int epoch, long *step, pare_epoch_stats *st)
{
    progress p = {cfg->progress && isatty(STDERR_FILENO), pare_loader_batches(ld), 0, pare_now()};
    double loss_sum = 0;
    long images = 0, correct = 0;
    pare_batch b;
    pare_loader_start_epoch(ld, epoch);
    memset(st, 0, sizeof *st);
    st->epoch = epoch;
    for (int k = 1;; k++) {
        pare_mark mark = pare_arena_mark(ctx);
        if (!pare_loader_next(ld, &ctx->arena, &b)) {
            pare_arena_release(ctx, mark);
            break;
        }
        int c;
        float loss = train_step(ctx, m, o, &b, cfg, &c);
        pare_arena_release(ctx, mark);
        if (!isfinite(loss))
            return pare_set_error("epoch %d step %d: the loss is %f; lower the learning rate or clip gradients "
                                  "(--clip)",
                                  epoch + 1, k, (double)loss);
        loss_sum += (double)loss * b.n;
        images += b.n;
        correct += c;
        st->steps = k;
        ++*step;
        if (cfg->progress) progress_show(&p, cfg, epoch, k, loss_sum / images, (double)correct / images, images);
        if (cfg->on_step && cfg->on_step(cfg->user, m, o, *step)) break;
    }
    st->seconds = pare_now() - p.start;
    st->loss = images ? loss_sum / images : 0;
    st->accuracy = images ? (double)correct / images : 0;
    st->img_per_s = st->seconds > 0 ? images / st->seconds : 0;
    return 0;
}

int pare_fit(pare_ctx *ctx, pare_model *m, pare_optim *o, pare_loader *train, const pare_fit_config *cfg,
             pare_epoch_stats *last)
{
    if (cfg->epochs < 0) return pare_set_error("epochs must be >= 0 (got %d)", cfg->epochs);
    pare_model_train(m, 1);
    long step = pare_optim_steps(o);
    pare_epoch_stats st;
    memset(&st, 0, sizeof st);
    for (int e = cfg->first_epoch; e < cfg->first_epoch + cfg->epochs; e++) {
        if (cfg->schedule && pare_optim_set_lr(o, pare_lr_at(cfg->schedule, e))) return -1;
        if (run_epoch(ctx, m, o, train, cfg, e, &step, &st)) return -1;
        if (cfg->on_epoch && cfg->on_epoch(cfg->user, m, &st)) break;
    }
    if (last) *last = st;
    return 0;
}

double pare_evaluate(pare_ctx *ctx, pare_model *m, pare_loader *ld, double *mean_loss)
{
    int was_training = m->training, grad = pare_set_grad_enabled(ctx, 0);
    pare_model_train(m, 0);
    pare_loader_start_epoch(ld, 0);
    long n = 0, correct = 0;
    double loss_sum = 0;
    pare_batch b;
    for (;;) {
        pare_mark mark = pare_arena_mark(ctx);
        if (!pare_loader_next(ld, &ctx->arena, &b)) {
            pare_arena_release(ctx, mark);
            break;
        }
        pare_tensor *scores;
        pare_tensor *loss = pare_classifier_loss(ctx, m, b.x, b.labels, &scores);
        loss_sum += (double)loss->data[0] * b.n;
        correct += pare_count_correct(scores, b.labels);
        n += b.n;
        pare_arena_release(ctx, mark);
    }
    pare_model_train(m, was_training);
    pare_set_grad_enabled(ctx, grad);
    if (mean_loss) *mean_loss = n ? loss_sum / n : 0;
    return n ? (double)correct / n : 0;
}
