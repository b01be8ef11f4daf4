/* Structured pruning: mask whole output units by their L1 or L2 norm, then
 * cut them out (surgery through nn's pare_layer_resize) together with the
 * matching inputs of the next weight layer. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compress/prune.h"

/* Layers between a pruned layer and the next weight layer must map a zero
 * channel to a zero channel, so that masking and removing are the same:
 * ReLU, Tanh, pooling, Dropout, Flatten, and BatchNorm with its scale and
 * shift zeroed. Returns the next weight layer's index and the input block
 * (H*W behind a Flatten), or -1 with pare_error(). */
static int next_weight_layer(pare_model *m, int i, int *block)
{
    *block = 1;
    const pare_layer_kind pass =
        PARE_RELU | PARE_TANH | PARE_MAXPOOL2D | PARE_AVGPOOL2D | PARE_DROPOUT | PARE_BATCHNORM2D;
    for (int j = i + 1; j < m->n_layers; j++) {
        const pare_layer *n = m->layers[j];
        if (n->kind & (PARE_LINEAR | PARE_CONV2D)) return j;
        if (n->kind == PARE_FLATTEN) {
            if (n->in_ndim == 3) *block = n->in_shape[1] * n->in_shape[2];
            continue;
        }
        if (!(n->kind & pass))
            return pare_set_error("prune: cannot remove units of %s through a %s layer (a zero channel would not "
                                  "stay zero)",
                                  m->layers[i]->name, n->type->type_name);
    }
    return pare_set_error("prune: %s is the output layer: its units are the model's outputs", m->layers[i]->name);
}

static pare_hook *hook_of(pare_layer *l)
{
    return pare_hook_find(&l->weight_hooks, PARE_PRUNE_HOOK);
}

typedef struct unit_score {
    double norm;
    int unit;
} unit_score;

static int by_norm(const void *a, const void *b)
{
    const unit_score *x = a, *y = b;
    if (x->norm != y->norm) return x->norm < y->norm ? -1 : 1;
    return x->unit - y->unit;
}

int pare_prune_units(pare_model *m, const char *name, float fraction, int norm)
{
    if (!m->built) return pare_set_error("prune: model '%s' is not built", m->arch);
    if (!(fraction >= 0.0f && fraction < 1.0f))
        return pare_set_error("prune: sparsity %g is outside [0, 1)", (double)fraction);
    if (norm != 1 && norm != 2) return pare_set_error("prune: norm must be 1 (L1) or 2 (L2), got %d", norm);
    int i = pare_model_index(m, name), block;
    if (i < 0) return pare_set_error("prune: the model has no layer named '%s'", name);
    pare_layer *l = m->layers[i];
    if (!(l->kind & (PARE_LINEAR | PARE_CONV2D)))
        return pare_set_error("prune: layer %s is a %s; only Linear and Conv2d units are pruned", name,
                              l->type->type_name);
    if (next_weight_layer(m, i, &block) < 0) return -1;
    const char *one[] = {name, NULL};
    if (pare_prune_attach(m, one)) return -1;
    pare_hook *h = hook_of(l);
    int units = l->out_features;
    if (!h->user) {
        h->user = pare_tensor_persistent(1, &units, 0);
        pare_vec_fill(((pare_tensor *)h->user)->data, (size_t)units, 1.0f);
    }
    float *unit_mask = ((pare_tensor *)h->user)->data, *mask = h->state[0]->data;
    size_t row = l->weight->size / (size_t)units;
    unit_score *s = pare_alloc((size_t)units * sizeof *s);
    for (int u = 0; u < units; u++) {
        double acc = 0;
        const float *w = l->weight->data + (size_t)u * row, *mk = mask + (size_t)u * row;
        for (size_t j = 0; j < row; j++) {
            double v = (double)w[j] * mk[j];
            acc += norm == 1 ? fabs(v) : v * v;
        }
        s[u].norm = unit_mask[u] == 0.0f ? -1.0 : acc; /* already removed: weakest */
        s[u].unit = u;
    }
    qsort(s, (size_t)units, sizeof *s, by_norm);
    int n_prune = (int)lround((double)fraction * units);
    if (n_prune > units - 1) n_prune = units - 1;
    for (int u = 0; u < units; u++) unit_mask[u] = 1.0f;
    for (int r = 0; r < n_prune; r++) unit_mask[s[r].unit] = 0.0f;
    for (int u = 0; u < units; u++)
        if (unit_mask[u] == 0.0f) memset(mask + (size_t)u * row, 0, row * sizeof *mask);
    pare_free(s);
    pare_prune_apply(m, NULL);
    return 0;
}

/* Removes the masked units of layer i and the matching inputs downstream. */
static int shrink_layer(pare_model *m, int i)
{
    pare_layer *l = m->layers[i];
    pare_hook *h = hook_of(l);
    if (!h || !h->user) return 0;
    const float *unit_mask = ((pare_tensor *)h->user)->data;
    int units = l->out_features, n_keep = 0, block;
    int *keep = pare_alloc((size_t)units * sizeof *keep);
    for (int u = 0; u < units; u++)
        if (unit_mask[u] != 0.0f) keep[n_keep++] = u;
    int next = n_keep == units ? i : next_weight_layer(m, i, &block), rc = 0;
    if (next < 0) rc = -1;
    if (next > i) {
        rc = pare_layer_resize(l, 0, keep, n_keep, 1);
        for (int j = i + 1; !rc && j < next; j++)
            if (m->layers[j]->kind == PARE_BATCHNORM2D) rc = pare_layer_resize(m->layers[j], 0, keep, n_keep, 1);
        if (!rc) rc = pare_layer_resize(m->layers[next], 1, keep, n_keep, block);
        if (!rc) { /* the units are gone; what remains is dense */
            pare_tensor_free(h->user);
            h->user = NULL;
        }
    }
    pare_free(keep);
    return rc;
}

int pare_prune_shrink(pare_model *m)
{
    if (!m->built) return pare_set_error("prune: model '%s' is not built", m->arch);
    for (int i = 0; i < m->n_layers; i++)
        if (shrink_layer(m, i)) return -1;
    int h = m->in_ndim == 3 ? m->in_shape[1] : 0, w = m->in_ndim == 3 ? m->in_shape[2] : 0;
    return pare_build(m, m->in_shape[0], h, w);
}
