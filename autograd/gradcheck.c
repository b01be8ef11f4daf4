/* Finite-difference check of backward(): f = sum(fn(inputs) * r) for a fixed
 * random r, so every output element's gradient path is exercised. */
#include <math.h>
#include <string.h>

#include "autograd/autograd.h"

static double weighted_sum(const pare_tensor *y, const float *r)
{
    double s = 0;
    for (size_t i = 0; i < y->size; i++) s += (double)y->data[i] * r[i];
    return s;
}

static double eval_f(pare_ctx *ctx, pare_gradcheck_fn fn, pare_tensor **inputs, void *user, const float *r)
{
    pare_mark m = pare_arena_mark(ctx);
    int old = pare_set_grad_enabled(ctx, 0);
    double f = weighted_sum(fn(ctx, inputs, user), r);
    pare_set_grad_enabled(ctx, old);
    pare_arena_release(ctx, m);
    return f;
}

pare_gradcheck_result pare_gradcheck(pare_gradcheck_fn fn, pare_tensor **inputs, int n_inputs, void *user, double eps,
                                     double atol, double rtol)
{
    pare_gradcheck_result res = {0, 0, -1, -1, 0, 0};
    pare_ctx *ctx = pare_ctx_new(0);
    pare_rng rng;
    pare_rng_seed(&rng, 1234, PARE_STREAM_TEST);

    /* Analytic gradients. */
    for (int i = 0; i < n_inputs; i++)
        if (inputs[i]->grad) memset(inputs[i]->grad, 0, inputs[i]->size * sizeof(float));
    pare_tensor *y = fn(ctx, inputs, user);
    pare_tensor *r = pare_ctx_tensor(ctx, y->ndim, y->shape);
    for (size_t i = 0; i < r->size; i++) r->data[i] = pare_rng_range(&rng, -1.0f, 1.0f);
    pare_tensor *f = pare_f_sum(ctx, pare_f_mul(ctx, y, r));
    PARE_CHECK(pare_backward(ctx, f) == 0, "gradcheck: %s", pare_error());
    float *rw = r->data; /* stays valid: nothing below rewinds past it */

    /* Central differences, one element at a time. */
    for (int i = 0; i < n_inputs; i++) {
        pare_tensor *x = inputs[i];
        if (!x->requires_grad) continue;
        for (size_t j = 0; j < x->size; j++) {
            float saved = x->data[j];
            x->data[j] = saved + (float)eps;
            double fp = eval_f(ctx, fn, inputs, user, rw);
            x->data[j] = saved - (float)eps;
            double fm = eval_f(ctx, fn, inputs, user, rw);
            x->data[j] = saved;
            double numeric = (fp - fm) / (2 * eps), analytic = x->grad[j];
            double err = fabs(analytic - numeric);
            double ratio = err / (atol + rtol * fabs(numeric));
            if (err > res.max_abs_err) res.max_abs_err = err;
            if (ratio > res.worst_ratio) {
                res.worst_ratio = ratio;
                res.worst_input = i;
                res.worst_index = (int)j;
                res.analytic = analytic;
                res.numeric = numeric;
            }
        }
    }
    pare_ctx_free(ctx);
    return res;
}
