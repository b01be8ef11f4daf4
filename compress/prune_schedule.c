/* Pruning schedules: how sparse the model should be at each training step.
 * The training loop calls pare_prune_schedule_step once a step; nothing in
 * nn or optim knows about it. */
#include "compress/prune.h"

int pare_prune_schedule_init(pare_prune_schedule *s, pare_prune_sched_kind kind, float initial, float final, long start,
                             long end, long every)
{
    if (!(initial >= 0.0f && initial < 1.0f) || !(final >= 0.0f && final < 1.0f))
        return pare_set_error("prune schedule: sparsities %g and %g must be in [0, 1)", (double)initial,
                              (double) final);
    if (initial > final)
        return pare_set_error("prune schedule: initial sparsity %g is above the final %g", (double)initial,
                              (double) final);
    if (start < 0 || end < start || every < 1)
        return pare_set_error("prune schedule: steps start %ld, end %ld, every %ld are not valid (0 <= start <= end, "
                              "every >= 1)",
                              start, end, every);
    if (kind != PARE_SCHED_ONESHOT && kind != PARE_SCHED_ITERATIVE && kind != PARE_SCHED_AGP &&
        kind != PARE_SCHED_CONSTANT)
        return pare_set_error("prune schedule: unknown kind %d", (int)kind);
    *s = (pare_prune_schedule){.kind = kind,
                               .initial = initial,
                               .final = final,
                               .start = start,
                               .end = end,
                               .every = every,
                               .scope = PARE_PRUNE_GLOBAL,
                               .criterion = PARE_PRUNE_MAGNITUDE};
    return 0;
}

float pare_prune_sparsity_at(const pare_prune_schedule *s, long t)
{
    if (s->kind == PARE_SCHED_ONESHOT || s->kind == PARE_SCHED_CONSTANT) return t < s->start ? 0.0f : s->final;
    if (t <= s->start) return s->initial;
    if (t >= s->end) return s->final;
    double span = (double)(s->end - s->start);
    if (s->kind == PARE_SCHED_AGP) {
        double r = 1.0 - (double)(t - s->start) / span;
        return (float)(s->final + (s->initial - s->final) * r * r * r);
    }
    /* ITERATIVE: the same share at every update step. */
    long n = (s->end - s->start + s->every - 1) / s->every, k = (t - s->start) / s->every;
    return (float)(s->initial + (s->final - s->initial) * (double)k / (double)n);
}

int pare_prune_is_update(const pare_prune_schedule *s, long t)
{
    if (t < s->start) return 0;
    switch (s->kind) {
    case PARE_SCHED_ONESHOT:
        return t == s->start;
    case PARE_SCHED_CONSTANT:
        return (t - s->start) % s->every == 0;
    default:
        return t <= s->end && ((t - s->start) % s->every == 0 || t == s->end);
    }
}

int pare_prune_schedule_step(pare_prune_schedule *s, pare_model *m, pare_optim *o, long t)
{
    if (pare_prune_is_update(s, t)) {
        float target = pare_prune_sparsity_at(s, t);
        /* Selection only ever adds pruned weights, so a smaller target than
         * now (before start) would be a no-op: skip it. */
        if (target > 0.0f || s->updates == 0) {
            if (s->unit_layers) {
                for (const char *const *n = s->unit_layers; *n; n++)
                    if (pare_prune_units(m, *n, target, s->norm ? s->norm : 1)) return -1;
            } else if (pare_prune_select(m, target, s->scope, s->criterion, s->seed + (uint64_t)s->updates)) {
                return -1;
            }
            s->current = target;
            s->updates++;
        }
    }
    pare_prune_apply(m, o);
    return 0;
}

int pare_prune_on_step(void *user, pare_model *m, pare_optim *o, long step)
{
    return pare_prune_schedule_step(user, m, o, step) ? 1 : 0;
}
