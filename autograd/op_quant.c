/* Fake quantization: quantize then dequantize in forward, so that training
 * sees the values an int8 model will compute with; the straight-through
 * estimator in backward. */
#include <string.h>

#include "autograd/autograd.h"

/* ---- fake_quant ------------------------------------------------------------
 * Per tensor (channels = 1) or per slice of axis 0 (channels = shape[0], the
 * output channels of a weight), with c the slice of element i:
 *   q = clamp(round(x / s_c) + zp_c, qmin, qmax),  y = s_c * (q - zp_c)
 * (pare_fake_quant_value). Backward, the straight-through estimator (Bengio
 * et al. 2013, as PyTorch's FakeQuantize): round() is taken to have slope 1,
 * so dy passes where round(x / s_c) + zp_c lies in [qmin, qmax] and is 0
 * where the clamp cut the value (outside the clipping range). Whether each
 * element was inside is saved as one byte in forward, so backward does no
 * division. */
static void fake_quant_backward(pare_ctx *ctx, pare_node *n)
{
    const uint8_t *inside = n->saved;
    const float *dy = n->out->grad;
    int fresh;
    float *dx = pare_grad_dst(ctx, n->in[0], &fresh);
    size_t size = n->out->size;
#pragma omp parallel for schedule(static) if (size > PARE_PARALLEL_MIN)
    for (size_t i = 0; i < size; i++) {
        float g = inside[i] ? dy[i] : 0.0f;
        dx[i] = fresh ? g : dx[i] + g;
    }
}
static const pare_op fake_quant_op = {"fake_quant", fake_quant_backward};

/* Branch-free so that it vectorizes: the same values as
 * pare_fake_quant_value, element by element. */
enum { FQ_CHUNK = 4096 };
static void fake_quant_span(const float *restrict x, float *restrict y, uint8_t *restrict inside, size_t n, float s,
                            int32_t zp, int32_t qmin, int32_t qmax)
{
    for (size_t i = 0; i < n; i++) {
        int32_t q = pare_quantize_unclamped(x[i], s, zp, qmin, qmax);
        inside[i] = (uint8_t)((q >= qmin) & (q <= qmax));
        q = q >= qmin ? q : qmin;
        q = q <= qmax ? q : qmax;
        y[i] = s * (float)(q - zp);
    }
}

pare_tensor *pare_f_fake_quant(pare_ctx *ctx, pare_tensor *x, int channels, const float *scale,
                               const int32_t *zero_point, int32_t qmin, int32_t qmax)
{
    PARE_CHECK(channels >= 1 && (channels == 1 || (x->ndim >= 1 && x->shape[0] == channels)),
               "fake_quant: %d channels for a tensor whose dim 0 is %d", channels, x->ndim ? x->shape[0] : 0);
    PARE_CHECK(qmin < qmax, "fake_quant: range [%d, %d]", (int)qmin, (int)qmax);
    for (int c = 0; c < channels; c++)
        PARE_CHECK(scale[c] > 0, "fake_quant: scale %g of channel %d is not positive", (double)scale[c], c);
    pare_tensor *y = pare_ctx_tensor(ctx, x->ndim, x->shape);
    /* always written (one byte an element) so that the loop has no branch */
    uint8_t *inside = pare_arena_alloc(&ctx->arena, x->size ? x->size : 1);
    PARE_CHECK(inside != NULL, "fake_quant: the fixed arena is full");
    size_t per = channels == 1 ? x->size : x->size / (size_t)channels;
    for (int c = 0; c < channels; c++) {
        const float *xd = x->data + (size_t)c * per;
        float *yd = y->data + (size_t)c * per;
        uint8_t *in_c = inside + (size_t)c * per;
#pragma omp parallel for schedule(static) if (per > PARE_PARALLEL_MIN)
        for (size_t at = 0; at < per; at += FQ_CHUNK)
            fake_quant_span(xd + at, yd + at, in_c + at, per - at < FQ_CHUNK ? per - at : FQ_CHUNK, scale[c],
                            zero_point[c], qmin, qmax);
    }
    pare_node *n = pare_record(ctx, &fake_quant_op, y, 1, &x);
    if (n) n->saved = inside;
    return y;
}
