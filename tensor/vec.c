/* Elementwise kernels and reductions. Reductions accumulate in double in
 * index order, so their result does not depend on anything but the data. */
#include <string.h>

#include "tensor.h"

void pare_vec_fill(float *x, size_t n, float v)
{
    for (size_t i = 0; i < n; i++) x[i] = v;
}

void pare_vec_copy(float *dst, const float *src, size_t n) { memcpy(dst, src, n * sizeof(float)); }

void pare_vec_add(float *dst, const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++) dst[i] = a[i] + b[i];
}

void pare_vec_acc(float *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

void pare_vec_axpy(float *y, float a, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}

void pare_vec_scale(float *x, float a, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] *= a;
}

double pare_vec_sum(const float *x, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += x[i];
    return s;
}

double pare_vec_dot(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

float pare_vec_max(const float *x, size_t n)
{
    float m = x[0];
    for (size_t i = 1; i < n; i++)
        if (x[i] > m) m = x[i];
    return m;
}

size_t pare_vec_argmax(const float *x, size_t n)
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}
