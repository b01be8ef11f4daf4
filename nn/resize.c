/* Structured surgery on one layer: keep a subset of its output units or its
 * input units. Callers edit neighbours consistently and rebuild the model. */
#include <string.h>

#include "nn/nn.h"

/* Copies the kept slices of dimension `dim` of t into a new persistent tensor.
 * A "unit" on dim is `block` consecutive indices of that dimension. */
static pare_tensor *take(pare_tensor *t, int dim, const int *keep, int n_keep, int block)
{
    if (!t) return NULL;
    int shape[PARE_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    size_t outer = 1, inner = 1;
    for (int i = 0; i < dim; i++) outer *= (size_t)t->shape[i];
    for (int i = dim + 1; i < t->ndim; i++) inner *= (size_t)t->shape[i];
    shape[dim] = n_keep * block;
    pare_tensor *r = pare_tensor_persistent(t->ndim, shape, t->grad != NULL);
    size_t old_dim = (size_t)t->shape[dim], chunk = (size_t)block * inner;
    for (size_t o = 0; o < outer; o++)
        for (int k = 0; k < n_keep; k++) {
            size_t src = (o * old_dim + (size_t)keep[k] * block) * inner;
            size_t dst = (o * (size_t)shape[dim] + (size_t)k * block) * inner;
            memcpy(r->data + dst, t->data + src, chunk * sizeof(float));
            if (t->grad) memcpy(r->grad + dst, t->grad + src, chunk * sizeof(float));
        }
    return r;
}

static void replace(pare_tensor **slot, pare_tensor *t)
{
    pare_tensor_free(*slot);
    *slot = t;
}

static int check_keep(const pare_layer *l, int units, const int *keep, int n_keep)
{
    if (n_keep <= 0) return pare_set_error("layer %s: cannot keep %d units", l->name, n_keep);
    for (int i = 0; i < n_keep; i++) {
        if (keep[i] < 0 || keep[i] >= units)
            return pare_set_error("layer %s: unit %d does not exist (it has %d)", l->name, keep[i], units);
        if (i && keep[i] <= keep[i - 1])
            return pare_set_error("layer %s: kept units must be strictly increasing", l->name);
    }
    return 0;
}

int pare_layer_resize(pare_layer *l, int dim, const int *keep, int n_keep, int block)
{
    if (!(l->kind & (PARE_LINEAR | PARE_CONV2D | PARE_BATCHNORM2D)) || !l->weight)
        return pare_set_error("layer %s (%s) has no parameters to resize", l->name, l->type->type_name);
    if (dim != 0 && dim != 1) return pare_set_error("resize: dim must be 0 (outputs) or 1 (inputs)");
    if (block < 1 || (block > 1 && !(l->kind == PARE_LINEAR && dim == 1)))
        return pare_set_error("resize: a block of %d inputs only applies to a Linear's inputs", block);
    if (l->kind == PARE_BATCHNORM2D) dim = 0; /* a BatchNorm's inputs are its outputs */
    int units = dim == 0 ? l->out_features : l->in_features / block;
    if (check_keep(l, units, keep, n_keep)) return -1;
    replace(&l->weight, take(l->weight, dim, keep, n_keep, block));
    if (dim == 0) {
        replace(&l->bias, take(l->bias, 0, keep, n_keep, 1));
        replace(&l->running_mean, take(l->running_mean, 0, keep, n_keep, 1));
        replace(&l->running_var, take(l->running_var, 0, keep, n_keep, 1));
        l->out_features = n_keep;
        if (l->kind == PARE_BATCHNORM2D) l->in_features = n_keep;
    } else {
        l->in_features = n_keep * block;
    }
    pare_hook_chain *chains[2] = {&l->weight_hooks, &l->output_hooks};
    for (int c = 0; c < 2; c++)
        for (int h = 0; h < chains[c]->n; h++)
            if (chains[c]->hooks[h]->resize)
                chains[c]->hooks[h]->resize(chains[c]->hooks[h], l, dim, keep, n_keep, block);
    return 0;
}
