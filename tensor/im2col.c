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
void pare_im2col(const pare_conv_geom *g, const float *restrict x, float *restrict col, size_t ldcol)
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

/* One output row of a stride-1 col2im: d[ix] += s[kx][ix + pad - kx] for
 * every kx whose column exists. The interior, where every kx contributes, runs
 * one pass per kx over the same index range, so each pass re-reads exactly
 * the vectors the previous one stored (store-to-load forwarding works; a
 * destination shifted by kx would stall on every load). Each element still
 * receives its contributions in kx order. */
static void col2im_row_stride1(float *restrict d, const float *const *s, int kw, int pad, int ow, int w)
{
    int lo = kw - 1 - pad, hi = ow - 1 - pad; /* interior, inclusive */
    if (lo < 0) lo = 0;
    if (hi > w - 1) hi = w - 1;
    for (int ix = 0; ix < w; ix++) {
        if (ix >= lo && ix <= hi) {
            ix = hi;
            continue;
        }
        float acc = d[ix]; /* in a register: the same additions in the same order */
        for (int kx = 0; kx < kw; kx++) {
            int ox = ix + pad - kx;
            if (ox >= 0 && ox < ow) acc += s[kx][ox];
        }
        d[ix] = acc;
    }
    for (int kx = 0; kx < kw; kx++) {
        const float *restrict src = s[kx] + pad - kx;
        for (int ix = lo; ix <= hi; ix++) d[ix] += src[ix];
    }
}

/* Each input pixel receives its contributions in a fixed (ci, ky, kx, oy, ox)
 * order, so the result is deterministic. */
void pare_col2im(const pare_conv_geom *g, const float *restrict col, size_t ldcol, float *restrict dx)
{
    if (g->stride == 1 && g->kw <= 16) {
        const float *rows[16];
        for (int ci = 0; ci < g->c; ci++)
            for (int ky = 0; ky < g->kh; ky++)
                for (int oy = 0; oy < g->oh; oy++) {
                    int iy = oy - g->pad + ky;
                    if (iy < 0 || iy >= g->h) continue;
                    for (int kx = 0; kx < g->kw; kx++)
                        rows[kx] = col + (((size_t)ci * g->kh + ky) * g->kw + kx) * ldcol + (size_t)oy * g->ow;
                    col2im_row_stride1(dx + ((size_t)ci * g->h + iy) * g->w, rows, g->kw, g->pad, g->ow, g->w);
                }
        return;
    }
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
                    const float *restrict s = src + (size_t)oy * g->ow;
                    float *restrict d = dst + (size_t)iy * g->w;
                    int off = kx - g->pad;
                    for (int ox = lo; ox < hi; ox++) d[ox * g->stride + off] += s[ox];
                }
            }
}
