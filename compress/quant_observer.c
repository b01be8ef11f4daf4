/* Observers: the range of the values a tensor takes, seen batch after
 * batch, from which activation quantization parameters are chosen. */
#include <math.h>

#include "compress/quant.h"

int pare_observer_init(pare_observer *o, const pare_quant_config *cfg)
{
    if (cfg->observer != PARE_OBSERVE_MINMAX && cfg->observer != PARE_OBSERVE_MOVING_AVG)
        return pare_set_error("observer kind %d is not known", (int)cfg->observer);
    if (cfg->observer == PARE_OBSERVE_MOVING_AVG && !(cfg->averaging > 0 && cfg->averaging <= 1))
        return pare_set_error("moving-average constant %g: it must be in (0, 1]", (double)cfg->averaging);
    *o = (pare_observer){0};
    o->kind = cfg->observer;
    o->averaging = cfg->averaging;
    o->min = INFINITY;
    o->max = -INFINITY;
    return 0;
}

void pare_observer_update(pare_observer *o, const float *x, size_t n)
{
    if (n == 0) return;
    float lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
    }
    if (o->kind == PARE_OBSERVE_MOVING_AVG && o->count > 0) {
        o->min += o->averaging * (lo - o->min);
        o->max += o->averaging * (hi - o->max);
    } else if (o->kind == PARE_OBSERVE_MOVING_AVG) {
        o->min = lo; /* the first batch sets them */
        o->max = hi;
    } else {
        o->min = fminf(o->min, lo);
        o->max = fmaxf(o->max, hi);
    }
    o->count += (long long)n;
}

int pare_observer_range(const pare_observer *o, float *min, float *max)
{
    if (o->count == 0) return pare_set_error("the observer has seen no values");
    *min = o->min;
    *max = o->max;
    return 0;
}

void pare_observer_release(pare_observer *o)
{
    (void)o; /* min/max observers own no memory */
}
