/* Elementwise kernels and reductions. Reductions accumulate in double over
 * LANES interleaved partial sums combined in a fixed order: the result
 * depends only on the data, and the lanes let the compiler vectorize
 * without reassociating anything. */
#include <math.h>
#include <string.h>

#include "tensor.h"

void pare_vec_fill(float *x, size_t n, float v)
{
    for (size_t i = 0; i < n; i++) x[i] = v;
}

void pare_vec_copy(float *dst, const float *src, size_t n)
{
    memcpy(dst, src, n * sizeof(float));
}

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

#define LANES 8

static double combine(const double *acc)
{
    double s = 0;
    for (int j = 0; j < LANES; j++) s += acc[j];
    return s;
}

double pare_vec_sum(const float *x, size_t n)
{
    double acc[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += x[i + j];
    for (int j = 0; i < n; i++, j++) acc[j] += x[i];
    return combine(acc);
}

double pare_vec_dot(const float *a, const float *b, size_t n)
{
    double acc[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += (double)a[i + j] * b[i + j];
    for (int j = 0; i < n; i++, j++) acc[j] += (double)a[i] * b[i];
    return combine(acc);
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

void pare_log_softmax_rows(const float *x, int rows, int cols, float *out)
{
    for (int i = 0; i < rows; i++) {
        const float *r = x + (size_t)i * cols;
        float m = pare_vec_max(r, (size_t)cols);
        double s = 0;
        for (int k = 0; k < cols; k++) s += exp((double)r[k] - m);
        /* s >= 1: the maximum contributes exp(0) */
        float lse = m + (float)log(s); // cppcheck-suppress invalidFunctionArg
        for (int k = 0; k < cols; k++) out[(size_t)i * cols + k] = r[k] - lse;
    }
}
