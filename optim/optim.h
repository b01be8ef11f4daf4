/* pare optim: SGD, Adam and AdamW with PyTorch's update rules, learning-rate
 * schedules and gradient clipping. Each parameter's state (momentum buffer,
 * Adam moments) is reachable from outside, so pruning can keep it zero.
 *
 * Updates follow torch.optim (1.13, single-tensor path) operation by
 * operation in float, so a pare run and a PyTorch run from the same weights
 * and gradients agree to float rounding (pare never contracts to FMA). They
 * never allocate: all state is one block taken at creation. */
#ifndef PARE_OPTIM_H
#define PARE_OPTIM_H

#include "nn/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pare_optim_kind { PARE_OPT_SGD, PARE_OPT_ADAM, PARE_OPT_ADAMW } pare_optim_kind;

/* Hyperparameters are floats; a value like 0.9f is read as the decimal it
 * was written as (0.9), which is what PyTorch's Python doubles hold. */
typedef struct pare_optim_config {
    pare_optim_kind kind;
    float lr;
    float momentum, dampening; /* SGD */
    int nesterov;              /* SGD: needs momentum > 0 and dampening 0 */
    float weight_decay;        /* SGD and Adam: L2 added to the gradient; AdamW: decoupled */
    float beta1, beta2, eps;   /* Adam, AdamW */
} pare_optim_config;

typedef struct pare_optim pare_optim;

/* Defaults as PyTorch's (Adam: betas 0.9, 0.999, eps 1e-8; AdamW: weight_decay 0.01). */
pare_optim_config pare_optim_defaults(pare_optim_kind kind, float lr);
/* Takes the model's trainable parameters (pare_model_params, in that order)
 * at creation; returns NULL with pare_error() set on a bad configuration
 * (lr <= 0 or not finite, momentum < 0, Nesterov without momentum or with
 * dampening, betas outside [0, 1), eps <= 0, weight_decay < 0) or a model
 * that is not built or has no parameters. Layer surgery that replaces
 * parameter tensors (pare_layer_resize, low-rank split) invalidates the
 * optimizer: free it and create a new one afterwards. */
pare_optim *pare_optim_new(pare_model *m, const pare_optim_config *cfg);
pare_optim *pare_sgd(pare_model *m, float lr, float momentum);
pare_optim *pare_adam(pare_model *m, float lr);
pare_optim *pare_adamw(pare_model *m, float lr, float weight_decay);
void pare_optim_free(pare_optim *o);

/* Applies one update from the accumulated gradients, then zeroes them
 * (optimizer.step() followed by optimizer.zero_grad() in PyTorch). A
 * parameter without a grad buffer is skipped, as PyTorch skips grad None.
 * Bitwise the same for any thread count. */
void pare_step(pare_optim *o);
void pare_zero_grad(pare_optim *o);
float pare_optim_lr(const pare_optim *o);
/* Sets the learning rate for the following steps (from pare_lr_at, say);
 * returns -1 with pare_error() set, and keeps the old rate, unless lr is
 * positive and finite. */
int pare_optim_set_lr(pare_optim *o, float lr);
long pare_optim_steps(const pare_optim *o);

/* Per-parameter state, by parameter index (the order of pare_model_params)
 * and name: "momentum_buffer" (SGD with momentum > 0), "exp_avg",
 * "exp_avg_sq" (Adam/AdamW). NULL for an unknown name, a name this optimizer
 * does not keep, or an index out of range. Same element count as the param;
 * the buffers start at zero and may be written (pruning zeroes entries). */
int pare_optim_n_params(const pare_optim *o);
const pare_param *pare_optim_param(const pare_optim *o, int index);
float *pare_optim_state(pare_optim *o, int index, const char *name);

/* torch.nn.utils.clip_grad_norm_: the global L2 norm of all gradients
 * (summed in double, in parameter order); if max_norm / (norm + 1e-6) < 1,
 * every gradient is multiplied by that factor. Returns the norm before
 * clipping. A non-finite norm is returned with the gradients left alone
 * (the caller decides whether to skip the step). max_norm < 0 or NaN:
 * returns -1 with pare_error() set. */
double pare_clip_grad_norm(pare_optim *o, double max_norm);

/* Learning-rate schedules, as a pure function of the epoch (0-based),
 * with the closed forms of PyTorch's schedulers:
 *   CONSTANT  base_lr
 *   STEP      base_lr * gamma^floor(epoch / step_size)            (StepLR)
 *   COSINE    min_lr + (base_lr - min_lr) * (1 + cos(pi * epoch / total)) / 2
 *             (CosineAnnealingLR; like PyTorch's closed form it rises again
 *             past total, so set total to the number of epochs).
 * A bad schedule (base_lr <= 0, step_size <= 0, gamma <= 0, total <= 0,
 * min_lr < 0, epoch < 0) returns NaN with pare_error() set;
 * pare_optim_set_lr rejects that NaN. */
typedef enum pare_lr_kind { PARE_LR_CONSTANT, PARE_LR_STEP, PARE_LR_COSINE } pare_lr_kind;
typedef struct pare_lr_schedule {
    pare_lr_kind kind;
    float base_lr;
    int step_size; /* STEP: multiply by gamma every step_size epochs */
    float gamma;
    int total;    /* COSINE: epochs to anneal over (T_max) */
    float min_lr; /* COSINE: eta_min */
} pare_lr_schedule;
float pare_lr_at(const pare_lr_schedule *s, int epoch);

#ifdef __cplusplus
}
#endif
#endif
