/* pare_fit: the training loop for users who do not want to write it (the
 * counterpart of Keras's fit), with a progress bar and per-step callbacks
 * where a pruning schedule or an observer hooks in; pare_evaluate for test
 * accuracy. The hand-written loop in examples/seed_pytorch.c stays the way
 * to learn what happens inside. */
#ifndef PARE_FIT_H
#define PARE_FIT_H

#include "data/data.h"
#include "optim/optim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pare_epoch_stats {
    int epoch; /* 0-based */
    int steps;
    double loss;     /* mean training loss over the epoch */
    double accuracy; /* training accuracy over the epoch (on the fly, train mode) */
    double seconds;
    double img_per_s;
} pare_epoch_stats;

typedef struct pare_fit_config {
    int epochs;
    int first_epoch;                  /* epoch number to start from (shuffle order, schedule) */
    const pare_lr_schedule *schedule; /* optional: lr per epoch */
    float clip;                       /* > 0: clip the global gradient norm to this */
    int progress;                     /* 0: silent; 1: bar on a terminal, plain lines otherwise */
    const char *label;                /* shown in progress lines, e.g. "train" */
    /* Called after every optimizer step (global step count from 1); return
     * non-zero to stop training. */
    int (*on_step)(void *user, pare_model *m, pare_optim *o, long step);
    /* Called after every epoch; return non-zero to stop (early stopping). */
    int (*on_epoch)(void *user, pare_model *m, const pare_epoch_stats *s);
    void *user;
    /* The loss of one batch, for training with something other than the
     * classifier loss (distillation); NULL: pare_classifier_loss. *scores
     * receives the tensor whose row argmax counts as the prediction. */
    pare_tensor *(*loss)(void *loss_user, pare_ctx *ctx, pare_model *m, const pare_batch *b, pare_tensor **scores);
    void *loss_user;
} pare_fit_config;

pare_fit_config pare_fit_defaults(int epochs);
/* Trains m on every batch of `train` for cfg->epochs epochs. Returns 0, or -1
 * with pare_error() set (for instance a loss that became NaN). *last (if
 * given) receives the last epoch's statistics. */
int pare_fit(pare_ctx *ctx, pare_model *m, pare_optim *o, pare_loader *train, const pare_fit_config *cfg,
             pare_epoch_stats *last);

/* Accuracy (a fraction) of m over every sample of `ld`, in eval mode and
 * without a tape; *mean_loss if given. The model's mode is restored. */
double pare_evaluate(pare_ctx *ctx, pare_model *m, pare_loader *ld, double *mean_loss);

/* Counts correct row argmaxes of scores [N, K] against labels. */
int pare_count_correct(const pare_tensor *scores, const int *labels);

/* Monotonic wall clock in seconds. */
double pare_now(void);

#ifdef __cplusplus
}
#endif
#endif
