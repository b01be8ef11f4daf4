/* im2col and its adjoint col2im, for convolution as one matrix product. */
#include <string.h>

#include "tensor.h"

int pare_conv_out(int in, int k, int stride, int pad)
{
    int span = in + 2 * pad - k;
    if (span < 0 || stride <= 0) return 0;
    return span / stride + 1;
}

/* The output columns ox whose input column ox*stride - pad + kx lies inside
 * [0, w): [*lo, *hi). Computing this once per row removes every bounds check
 * from the inner loops. */
static void valid_columns(const pare_conv_geom *g, int kx, int *lo, int *hi)
{
    int first = g->pad - kx, a = 0, b = g->ow;
    if (first > 0) a = (first + g->stride - 1) / g->stride;
    while (b > a && (b - 1) * g->stride - g->pad + kx >= g->w) b--;
    *lo = a;
    *hi = b > a ? b : a;
}

/* Rows are (ci, ky, kx); columns are output positions (oy, ox). Outside the
 * padded image the value is 0. */
void pare_im2col(const pare_conv_geom *g, const float *x, float *col, size_t ldcol)
{
    for (int ci = 0; ci < g->c; ci++)
        for (int ky = 0; ky < g->kh; ky++)
            for (int kx = 0; kx < g->kw; kx++) {
                size_t row = ((size_t)ci * g->kh + ky) * g->kw + kx;
                float *dst = col + row * ldcol;
                const float *src = x + (size_t)ci * g->h * g->w;
                int lo, hi;
                valid_columns(g, kx, &lo, &hi);
                for (int oy = 0; oy < g->oh; oy++) {
                    int iy = oy * g->stride - g->pad + ky;
                    float *d = dst + (size_t)oy * g->ow;
                    if (iy < 0 || iy >= g->h) {
                        memset(d, 0, (size_t)g->ow * sizeof(float));
                        continue;
                    }
                    const float *s = src + (size_t)iy * g->w;
                    int off = kx - g->pad; /* input column of output column 0 */
                    for (int ox = 0; ox < lo; ox++) d[ox] = 0.0f;
                    if (g->stride == 1)
                        memcpy(d + lo, s + lo + off, (size_t)(hi - lo) * sizeof(float));
                    else
                        for (int ox = lo; ox < hi; ox++) d[ox] = s[ox * g->stride + off];
                    for (int ox = hi; ox < g->ow; ox++) d[ox] = 0.0f;
                }
            }
}

/* Each input pixel receives its contributions in a fixed (ci, ky, kx, oy, ox)
 * order, so the result is deterministic. */
void pare_col2im(const pare_conv_geom *g, const float *col, size_t ldcol, float *dx)
{
    for (int ci = 0; ci < g->c; ci++)
        for (int ky = 0; ky < g->kh; ky++)
            for (int kx = 0; kx < g->kw; kx++) {
                size_t row = ((size_t)ci * g->kh + ky) * g->kw + kx;
                const float *src = col + row * ldcol;
                float *dst = dx + (size_t)ci * g->h * g->w;
                int lo, hi;
                valid_columns(g, kx, &lo, &hi);
                for (int oy = 0; oy < g->oh; oy++) {
                    int iy = oy * g->stride - g->pad + ky;
                    if (iy < 0 || iy >= g->h) continue;
                    const float *s = src + (size_t)oy * g->ow;
                    float *d = dst + (size_t)iy * g->w;
                    int off = kx - g->pad;
                    if (g->stride == 1)
                        for (int ox = lo; ox < hi; ox++) d[ox + off] += s[ox];
                    else
                        for (int ox = lo; ox < hi; ox++) d[ox * g->stride + off] += s[ox];
                }
            }
}
