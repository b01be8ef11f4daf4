/* Tensor creation in the arena or in persistent storage. */
#include <string.h>

#include "tensor.h"

size_t pare_shape_size(int ndim, const int *shape)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    return n;
}

static void set_shape(pare_tensor *t, int ndim, const int *shape)
{
    PARE_CHECK(ndim >= 1 && ndim <= PARE_MAX_DIMS, "tensor with %d dims", ndim);
    t->ndim = ndim;
    for (int i = 0; i < PARE_MAX_DIMS; i++) t->shape[i] = i < ndim ? shape[i] : 1;
    for (int i = 0; i < ndim; i++) PARE_CHECK(shape[i] > 0, "tensor dim %d is %d", i, shape[i]);
    t->size = pare_shape_size(ndim, shape);
    t->node = -1;
    t->grad = NULL;
    t->requires_grad = 0;
}

pare_tensor *pare_tensor_new(pare_arena *a, int ndim, const int *shape)
{
    pare_tensor *t = pare_arena_alloc(a, sizeof *t);
    PARE_CHECK(t, "arena full");
    set_shape(t, ndim, shape);
    t->data = pare_arena_alloc(a, t->size * sizeof(float));
    PARE_CHECK(t->data, "arena full allocating %zu floats", t->size);
    return t;
}

pare_tensor *pare_tensor_zeros(pare_arena *a, int ndim, const int *shape)
{
    pare_tensor *t = pare_tensor_new(a, ndim, shape);
    memset(t->data, 0, t->size * sizeof(float));
    return t;
}

pare_tensor *pare_tensor_4d(pare_arena *a, int n, int c, int h, int w)
{
    int s[4] = {n, c, h, w};
    return pare_tensor_new(a, 4, s);
}

pare_tensor *pare_tensor_2d(pare_arena *a, int rows, int cols)
{
    int s[2] = {rows, cols};
    return pare_tensor_new(a, 2, s);
}

pare_tensor *pare_tensor_persistent(int ndim, const int *shape, int with_grad)
{
    pare_tensor *t = pare_calloc(sizeof *t);
    set_shape(t, ndim, shape);
    t->data = pare_calloc(t->size * sizeof(float));
    if (with_grad) {
        t->grad = pare_calloc(t->size * sizeof(float));
        t->requires_grad = 1;
    }
    return t;
}

void pare_tensor_free(pare_tensor *t)
{
    if (!t) return;
    pare_free(t->data);
    pare_free(t->grad);
    pare_free(t);
}

int pare_shape_equal(const pare_tensor *a, const pare_tensor *b)
{
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

char *pare_shape_str(int ndim, const int *shape, char *buf, size_t len)
{
    size_t off = 0;
    off += (size_t)snprintf(buf + off, len - off, "[");
    for (int i = 0; i < ndim && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, i ? ", %d" : "%d", shape[i]);
    if (off < len) snprintf(buf + off, len - off, "]");
    return buf;
}
