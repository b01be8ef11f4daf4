/* pare optim: SGD, Adam and AdamW with PyTorch's update rules, learning-rate
 * schedules and gradient clipping. Each parameter's state (momentum buffer,
 * Adam moments) is reachable from outside, so pruning can keep it zero. */
#ifndef PARE_OPTIM_H
#define PARE_OPTIM_H

#include "nn/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pare_optim_kind { PARE_OPT_SGD, PARE_OPT_ADAM, PARE_OPT_ADAMW } pare_optim_kind;

typedef struct pare_optim_config {
    pare_optim_kind kind;
    float lr;
    float momentum, dampening; /* SGD */
    int nesterov;              /* SGD */
    float weight_decay;        /* SGD and Adam: L2 added to the gradient; AdamW: decoupled */
    float beta1, beta2, eps;   /* Adam, AdamW */
} pare_optim_config;

typedef struct pare_optim pare_optim;

/* Defaults as PyTorch's (Adam: betas 0.9, 0.999, eps 1e-8; AdamW: weight_decay 0.01). */
pare_optim_config pare_optim_defaults(pare_optim_kind kind, float lr);
/* Takes the model's trainable parameters at creation; returns NULL with
 * pare_error() set on a bad configuration (lr <= 0, momentum < 0, ...). */
pare_optim *pare_optim_new(pare_model *m, const pare_optim_config *cfg);
pare_optim *pare_sgd(pare_model *m, float lr, float momentum);
pare_optim *pare_adam(pare_model *m, float lr);
pare_optim *pare_adamw(pare_model *m, float lr, float weight_decay);
void pare_optim_free(pare_optim *o);

/* Applies one update from the accumulated gradients, then zeroes them
 * (optimizer.step() followed by optimizer.zero_grad() in PyTorch). */
void pare_step(pare_optim *o);
void pare_zero_grad(pare_optim *o);
float pare_optim_lr(const pare_optim *o);
void pare_optim_set_lr(pare_optim *o, float lr);
long pare_optim_steps(const pare_optim *o);

/* Per-parameter state, by parameter index (the order of pare_model_params)
 * and name: "momentum_buffer" (SGD), "exp_avg", "exp_avg_sq" (Adam/AdamW).
 * NULL if the optimizer has no such state. Same element count as the param. */
int pare_optim_n_params(const pare_optim *o);
const pare_param *pare_optim_param(const pare_optim *o, int index);
float *pare_optim_state(pare_optim *o, int index, const char *name);

/* Scales all gradients so their global L2 norm is at most max_norm; returns
 * the norm before clipping (torch.nn.utils.clip_grad_norm_). */
double pare_clip_grad_norm(pare_optim *o, double max_norm);

/* Learning-rate schedules, as a pure function of the epoch (0-based). */
typedef enum pare_lr_kind { PARE_LR_CONSTANT, PARE_LR_STEP, PARE_LR_COSINE } pare_lr_kind;
typedef struct pare_lr_schedule {
    pare_lr_kind kind;
    float base_lr;
    int step_size;   /* STEP: multiply by gamma every step_size epochs */
    float gamma;
    int total;       /* COSINE: epochs to anneal over (T_max) */
    float min_lr;    /* COSINE: eta_min */
} pare_lr_schedule;
float pare_lr_at(const pare_lr_schedule *s, int epoch);

#ifdef __cplusplus
}
#endif
#endif
