/* im2col and its adjoint col2im, for convolution as one matrix product. */
#include <string.h>

#include "tensor.h"

int pare_conv_out(int in, int k, int stride, int pad)
{
    int span = in + 2 * pad - k;
    if (span < 0 || stride <= 0) return 0;
    return span / stride + 1;
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
                for (int oy = 0; oy < g->oh; oy++) {
                    int iy = oy * g->stride - g->pad + ky;
                    float *d = dst + (size_t)oy * g->ow;
                    if (iy < 0 || iy >= g->h) {
                        memset(d, 0, (size_t)g->ow * sizeof(float));
                        continue;
                    }
                    const float *s = src + (size_t)iy * g->w;
                    if (g->stride == 1 && g->pad == 0) {
                        memcpy(d, s + kx, (size_t)g->ow * sizeof(float));
                        continue;
                    }
                    for (int ox = 0; ox < g->ow; ox++) {
                        int ix = ox * g->stride - g->pad + kx;
                        d[ox] = (ix >= 0 && ix < g->w) ? s[ix] : 0.0f;
                    }
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
                for (int oy = 0; oy < g->oh; oy++) {
                    int iy = oy * g->stride - g->pad + ky;
                    if (iy < 0 || iy >= g->h) continue;
                    const float *s = src + (size_t)oy * g->ow;
                    float *d = dst + (size_t)iy * g->w;
                    for (int ox = 0; ox < g->ow; ox++) {
                        int ix = ox * g->stride - g->pad + kx;
                        if (ix >= 0 && ix < g->w) d[ix] += s[ox];
                    }
                }
            }
}
