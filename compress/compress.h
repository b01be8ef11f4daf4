/* pare compress: model compression in the same process as training; the
 * module's public header. Pruning and quantization have their own headers,
 * compress/prune.h and compress/quant.h, included here. Distillation (a KD loss op, and a training loop with the
 * teacher in no-grad eval mode) and low-rank factorization (one-sided Jacobi SVD, Linear and Conv2d layers split in two
 * through nn's layer-edit API). compress reaches into a model only through what nn offers publicly. */
#ifndef PARE_COMPRESS_H
#define PARE_COMPRESS_H

#include "compress/prune.h"
#include "compress/quant.h"
#include "optim/fit.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- distillation ------------------------------------------------------------
 * Knowledge-distillation loss of Hinton et al. 2015, mean over the batch:
 *   alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)
 * s: student logits [N, K] (gets the gradient); t: teacher logits [N, K], a
 * constant (never receives a gradient). The T^2 keeps the soft term's
 * gradient about as large for any T. alpha = 0 gives pare_cross_entropy
 * bit for bit; alpha in [0, 1], T > 0 (checked: programming errors). */
pare_tensor *pare_kd_loss(pare_ctx *ctx, pare_tensor *student_logits, const pare_tensor *teacher_logits,
                          const int *labels, float temperature, float alpha);

/* A classifier's logits: the forward pass without a final Softmax or
 * LogSoftmax layer. (A log-softmax output is the logits minus a per-row
 * constant, which softmax(./T) would not see either; skipping the layer
 * just keeps the numbers plain.) */
pare_tensor *pare_logits(pare_ctx *ctx, pare_model *m, pare_tensor *x);

typedef struct pare_distill_config {
    int epochs;        /* 3 */
    float temperature; /* 4 */
    float alpha;       /* 0.9; 0 trains the student alone */
    int progress;      /* as pare_fit's */
    const char *label; /* "distill" */
    /* Called after every epoch (stats as pare_fit's, loss = the KD loss);
     * non-zero stops. */
    int (*on_epoch)(void *user, pare_model *student, const pare_epoch_stats *s);
    void *user;
} pare_distill_config;
pare_distill_config pare_distill_defaults(void);

/* Trains `student` with optimizer o on every batch of `train`, the teacher
 * giving soft targets for the same batch: one forward pass in eval mode,
 * without a tape, per batch. The teacher's weights are never written. Both
 * models take the loader's input shape and give the same number of classes.
 * Returns 0, or -1 with pare_error() set (bad config, shape mismatch, a loss
 * that is no longer finite). */
int pare_distill(pare_ctx *ctx, pare_model *student, pare_model *teacher, pare_optim *o, pare_loader *train,
                 const pare_distill_config *cfg, pare_epoch_stats *last);

/* ---- low rank ------------------------------------------------------------------
 * Thin SVD A = U diag(S) V^T of a row-major m x n matrix by one-sided Jacobi
 * rotations in double precision. With k = min(m, n): U is m x k and V is
 * n x k (row-major, orthonormal columns), S holds k singular values sorted
 * descending, all >= 0. A column of U (or V) whose singular value is exactly
 * zero is left zero. Returns 0, or -1 with pare_error() set on bad sizes or
 * if the rotations do not converge. */
int pare_svd(const double *a, int m, int n, double *u, double *s, double *v);

/* The smallest r whose singular values keep at least `share` of the energy
 * (sum of squares) of s[0..k); share in (0, 1]. Returns 1..k, or -1 with
 * pare_error() for a bad share. All-zero values give 1. */
int pare_rank_for_energy(const double *s, int k, double share);

/* Largest rank a Linear or Conv2d layer admits (min of the two sides of its
 * weight seen as a matrix [out, in*k*k]), or -1 with pare_error() when the
 * layer is missing or not a built Linear/Conv2d. */
int pare_lowrank_max_rank(pare_model *m, const char *name);
/* Parameters of the two layers that replace `name` at `rank`, to compare
 * with the layer's own (the command line refuses a rank that saves none). */
size_t pare_lowrank_params(pare_model *m, const char *name, int rank);
/* The rank pare_rank_for_energy picks for the layer's weight, or -1. */
int pare_lowrank_energy_rank(pare_model *m, const char *name, double share);

/* Replaces the built layer `name` by two layers holding a rank-r truncated
 * SVD W ~ (U sqrt(S)) (sqrt(S) V^T):
 *   Linear(n->m)  -> Linear "<name>.0" (n->r, no bias) + Linear "<name>.1" (r->m, bias)
 *   Conv2d(C->O, k, stride, pad) -> Conv2d "<name>.0" (C->r, k, same stride
 *     and padding, no bias) + Conv2d "<name>.1" (r->O, 1x1, bias)
 * then rebuilds the model (other layers keep their parameters). Any
 * 1 <= rank <= pare_lowrank_max_rank is accepted. A layer with hooks is
 * refused (factorize before pruning or quantizing). Returns 0, or -1 with
 * pare_error() set and the model unchanged. */
int pare_lowrank_layer(pare_model *m, const char *name, int rank);

#ifdef __cplusplus
}
#endif
#endif
