/* Quantization parameters and the fixed-point arithmetic of requantization
 * (gemmlowp's, as TFLite uses it). The rules are written in compress/quant.h. */
#include <float.h>
#include <math.h>

#include "compress/quant.h"

int pare_qrange(int bits, int symmetric, int32_t *qmin, int32_t *qmax)
{
    if (bits < 2 || bits > 8) {
        pare_set_error("bit width %d: it must be between 2 and 8", bits);
        return -1; /* spelled out so analyzers see that *qmin, *qmax are set whenever 0 is returned */
    }
    int32_t hi = (1 << (bits - 1)) - 1;
    *qmax = hi;
    /* narrow range when symmetric: -q exists for every q */
    *qmin = symmetric ? -hi : -hi - 1;
    return 0;
}

int pare_qparams_choose(float min, float max, int bits, int symmetric, pare_qparams *out)
{
    if (!isfinite(min) || !isfinite(max) || min > max) {
        pare_set_error("quantization range [%g, %g]: it must be finite with min <= max", (double)min, (double)max);
        return -1; /* spelled out so analyzers see that *out is set whenever 0 is returned */
    }
    if (pare_qrange(bits, symmetric, &out->qmin, &out->qmax)) return -1;
    /* real 0 must be exactly representable (padding, ReLU, pruned weights) */
    if (min > 0) min = 0;
    if (max < 0) max = 0;
    if (symmetric) {
        float a = fmaxf(-min, max);
        out->scale = a > 0 ? a / (float)out->qmax : 1.0f;
        out->zero_point = 0;
        return 0;
    }
    double width = (double)max - (double)min;
    out->scale = width > 0 ? (float)(width / (double)(out->qmax - out->qmin)) : 1.0f;
    if (!(out->scale >= FLT_MIN)) out->scale = FLT_MIN; /* a range too narrow for float */
    double zp = round((double)out->qmin - (double)min / out->scale);
    out->zero_point = (int32_t)fmin(fmax(zp, out->qmin), out->qmax);
    return 0;
}

float pare_dequantize_value(int32_t q, const pare_qparams *p)
{
    return p->scale * (float)(q - p->zero_point);
}

int pare_weight_scales(const float *w, int rows, int cols, int bits, int per_tensor, float *scales)
{
    float all = 0;
    for (int r = 0; r < rows; r++) {
        const float *row = w + (size_t)r * cols;
        float lo = 0, hi = 0;
        for (int c = 0; c < cols; c++) {
            if (!isfinite(row[c])) return pare_set_error("weight row %d holds a non-finite value", r);
            lo = fminf(lo, row[c]);
            hi = fmaxf(hi, row[c]);
        }
        pare_qparams p;
        if (pare_qparams_choose(lo, hi, bits, 1, &p)) return -1;
        scales[r] = p.scale;
        all = fmaxf(all, fmaxf(-lo, hi));
    }
    if (per_tensor) {
        pare_qparams p;
        if (pare_qparams_choose(-all, all, bits, 1, &p)) return -1;
        for (int r = 0; r < rows; r++) scales[r] = p.scale;
    }
    return 0;
}

int pare_quantize_weight(const float *w, int rows, int cols, int bits, int per_tensor, int8_t *q, float *scales)
{
    if (pare_weight_scales(w, rows, cols, bits, per_tensor, scales)) return -1;
    int32_t qmin = 0, qmax = 0;
    pare_qrange(bits, 1, &qmin, &qmax); /* checked by pare_weight_scales */
    for (int r = 0; r < rows; r++) {
        pare_qparams p = {scales[r], 0, qmin, qmax};
        for (int c = 0; c < cols; c++)
            q[(size_t)r * cols + c] = (int8_t)pare_quantize_value(w[(size_t)r * cols + c], &p);
    }
    return 0;
}

int pare_quantize_weight_per_channel(const float *w, int rows, int cols, int bits, int8_t *q, float *scales)
{
    return pare_quantize_weight(w, rows, cols, bits, 0, q, scales);
}

int pare_quantize_multiplier(double real, int32_t *m, int *shift)
{
    if (!isfinite(real) || real < 0 || real >= 1073741824.0)
        return pare_set_error("requantization multiplier %g: it must be finite, in [0, 2^30)", real);
    *m = 0;
    *shift = 0;
    if (real == 0) return 0;
    int e;
    double f = frexp(real, &e); /* real = f * 2^e, f in [0.5, 1) */
    int64_t q = (int64_t)llround(f * 2147483648.0);
    if (q == ((int64_t)1 << 31)) { /* f rounded up to 1 */
        q /= 2;
        e++;
    }
    if (e < -31) return 0; /* every product rounds to 0 */
    *m = (int32_t)q;
    *shift = e;
    return 0;
}
