/* pare quantization: quantization parameters, the fixed-point arithmetic of
 * requantization, an integer-only int8 model (pare_qmodel), static
 * post-training quantization (observers through nn's output hooks, then
 * convert) and save/load of int8 models.
 *
 * Rules (the TFLite int8 specification; Jacob et al. 2018):
 *  - real = scale * (q - zero_point).
 *  - Quantize: q = clamp(round_half_away_from_zero(real / scale) + zero_point,
 *    qmin, qmax), the quotient in float. Rounding half away from zero is what
 *    TFLite's reference does (std::round); it is symmetric, so w and -w
 *    quantize to -q and q. One inline function (pare_quantize_round in
 *    autograd/autograd.h) is the rule for conversion and fake-quant alike.
 *  - b-bit signed ranges: asymmetric [-2^(b-1), 2^(b-1)-1]; symmetric uses the
 *    narrow range [-(2^(b-1)-1), 2^(b-1)-1] so that -q always exists (int8
 *    weights lie in [-127, 127]) and zero point 0, so a weight that is exactly
 *    zero (pruned) stays exactly zero.
 *  - Ranges are widened to include 0 so that real 0 (padding, ReLU) is exact;
 *    the asymmetric zero point is round(qmin - min/scale), clamped to the range.
 *  - A range of width 0 (all values 0) gets scale 1: 0 is still exact.
 *  - Weights: symmetric per output channel (axis 0). Activations: asymmetric
 *    per tensor. Bias: int32, scale s_in * s_w[c], zero point 0.
 *  - Requantization: an int32 accumulator times a real multiplier M =
 *    s_in * s_w[c] / s_out is computed as M = m * 2^(shift - 31) with m a
 *    Q0.31 int32 in [2^30, 2^31) and shift in [-31, 30]: for shift > 0 a
 *    left shift (saturating where gemmlowp's would overflow), then
 *    SaturatingRoundingDoublingHighMul (to nearest, ties toward +infinity:
 *    gemmlowp's nudge), then RoundingDivideByPOT (to nearest, ties away from
 *    zero), bit for bit as gemmlowp and TFLite's reference kernels; add
 *    the output zero point, clamp to [act_min, act_max] (a fused ReLU is
 *    act_min = zero point).
 *  - Files: weights of 4 bits or fewer are packed two a byte. */
#ifndef PARE_COMPRESS_QUANT_H
#define PARE_COMPRESS_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "data/data.h"
#include "nn/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- parameters ----------------------------------------------------------- */
typedef struct pare_qparams {
    float scale;
    int32_t zero_point;
    int32_t qmin, qmax;
} pare_qparams;

/* The integer range of a signed b-bit type (2 <= bits <= 8); symmetric gives
 * the narrow range. -1 with pare_error on a bad width. */
int pare_qrange(int bits, int symmetric, int32_t *qmin, int32_t *qmax);
/* Parameters covering [min, max] (widened to include 0). Symmetric: scale =
 * max(|min|, |max|) / qmax, zero point 0. -1 with pare_error on a bad width or
 * a non-finite or inverted range. */
int pare_qparams_choose(float min, float max, int bits, int symmetric, pare_qparams *out);
/* The rule above (pare_quantize_round, autograd/autograd.h); inline so that
 * loops over it vectorize. */
static inline int32_t pare_quantize_value(float x, const pare_qparams *p)
{
    return pare_quantize_round(x, p->scale, p->zero_point, p->qmin, p->qmax, NULL);
}
float pare_dequantize_value(int32_t q, const pare_qparams *p);
/* Per-channel symmetric parameters of a weight [rows, cols] (rows = output
 * channels), one scale a row; q (rows * cols int8) receives the values.
 * -1 with pare_error on a bad width or a non-finite weight. */
int pare_quantize_weight_per_channel(const float *w, int rows, int cols, int bits, int8_t *q, float *scales);
/* The same, or with per_tensor one scale for the whole weight (from its
 * largest magnitude), written to every entry of scales. */
int pare_quantize_weight(const float *w, int rows, int cols, int bits, int per_tensor, int8_t *q, float *scales);
/* The symmetric scale of each row of w (per_tensor: of all of it, written to
 * every row's entry), as pare_quantize_weight chooses it. -1 with pare_error
 * on a bad width or a non-finite weight. */
int pare_weight_scales(const float *w, int rows, int cols, int bits, int per_tensor, float *scales);

/* ---- fixed point (gemmlowp / TFLite) ----------------------------------------- */
/* a * b / 2^31 rounded to nearest, ties toward +infinity (gemmlowp's
 * SaturatingRoundingDoublingHighMul), saturating the one overflow case
 * a = b = INT32_MIN to INT32_MAX. Inline: the kernels call these per output. */
static inline int32_t pare_srdhm(int32_t a, int32_t b)
{
    if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX; /* the only overflow: 2^62 * 2 / 2^32 */
    int64_t ab = (int64_t)a * b;
    int64_t nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
    /* C division truncates toward zero: with this nudge, ties go toward +infinity (gemmlowp's rule) */
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

/* x / 2^exponent rounded to nearest, ties away from zero (gemmlowp's
 * RoundingDivideByPOT), 0 <= exponent <= 31. */
/* floor(v / 2^e) without division (a 40-cycle idiv per output otherwise)
 * and without right-shifting a negative number (implementation-defined in C). */
static inline int64_t pare_floor_shift(int64_t v, int e)
{
    return v >= 0 ? (int64_t)((uint64_t)v >> e) : ~(int64_t)((uint64_t)~v >> e);
}
static inline int32_t pare_rdbpot(int32_t x, int exponent)
{
    PARE_CHECK(exponent >= 0 && exponent <= 31, "pare_rdbpot: exponent %d", exponent);
    int64_t mask = ((int64_t)1 << exponent) - 1;
    int64_t v = x;
    int64_t rem = v & mask; /* two's complement low bits: v - floor(v / 2^e) * 2^e */
    int64_t threshold = (mask >> 1) + (v < 0);
    return (int32_t)(pare_floor_shift(v, exponent) + (rem > threshold));
}

/* Splits a real multiplier 0 <= real < 2^30 into a Q0.31 multiplier and a
 * shift: real ~= m * 2^(shift - 31). m = 0, shift = 0 for real 0 or a real so
 * small (< 2^-32) that every product rounds to 0. -1 with pare_error for a
 * negative, non-finite or too large real. */
int pare_quantize_multiplier(double real, int32_t *m, int *shift);
/* x * m * 2^(shift - 31) with the rounding above; a result past int32
 * saturates (where gemmlowp's left shift would overflow). */
static inline int32_t pare_mul_by_quantized_multiplier(int32_t x, int32_t m, int shift)
{
    if (shift <= 0) return pare_rdbpot(pare_srdhm(x, m), -shift);
    /* gemmlowp shifts x left first and overflows for large x; the same
     * rounding done in 64 bits (x * m / 2^(31 - shift), ties toward +inf) is
     * bit-identical whenever gemmlowp's is defined, and saturates otherwise. */
    int e = 31 - shift;
    int64_t v = (int64_t)x * m + ((int64_t)1 << (e - 1));
    int64_t q = pare_floor_shift(v, e);
    if (q > INT32_MAX) return INT32_MAX;
    if (q < INT32_MIN) return INT32_MIN;
    return (int32_t)q;
}

/* ---- the int8 model ---------------------------------------------------------
 * Activations NHWC, weights OHWI (conv) or [out][in] (linear), per sample.
 * Integer only: the reference kernels use no float. */
/* AVGPOOL: the window's sum of (q - in_zp) requantized by mult[0], shift[0]
 * (the real multiplier s_in / (s_out * window)) to its own output
 * parameters. LUT: an elementwise function (Sigmoid, Tanh) as a table of 256
 * outputs indexed by the input + 128, computed at conversion. */
typedef enum pare_qkind {
    PARE_Q_CONV = 1,
    PARE_Q_LINEAR,
    PARE_Q_MAXPOOL,
    PARE_Q_FLATTEN,
    PARE_Q_AVGPOOL,
    PARE_Q_LUT
} pare_qkind;

typedef struct pare_qlayer {
    pare_qkind kind;
    char name[PARE_NAME_MAX];
    int in_h, in_w, in_c; /* input shape (h = w = 1 for a vector) */
    int out_h, out_w, out_c;
    int kernel, stride, pad; /* conv, maxpool */
    int relu;                /* a ReLU was fused (it shows as act_min) */
    int32_t in_zp, out_zp;
    int32_t act_min, act_max; /* output clamp: fused ReLU is act_min = out_zp */
    float in_scale, out_scale;
    /* conv/linear: weight [out_c][kernel][kernel][in_c] or [out_c][in_c] */
    int8_t *weight;
    int32_t *bias;  /* out_c, scale in_scale * w_scale[c] */
    int32_t *mult;  /* out_c Q0.31 multipliers */
    int32_t *shift; /* out_c shifts */
    float *w_scale; /* out_c, kept for inspection and float references */
    int weight_bits;
    int8_t *lut;        /* PARE_Q_LUT: 256 outputs, indexed by the input + 128 */
    size_t work_offset; /* set by pare_qmodel_plan: this layer's area in the scratch */
} pare_qlayer;

#define PARE_QMAX_LAYERS 64
#define PARE_QMAX_NOTES  64
/* A forward call runs its samples in groups of PARE_QGROUP (each kernel
 * call covers a group, so weights are reused across its samples), the
 * groups split between up to PARE_QMAX_THREADS threads (pare_set_threads;
 * only when the call's work exceeds PARE_PARALLEL_MIN). The scratch holds
 * one area per thread the machine has, up to that maximum. Results are the
 * same for every batch size, group and thread count. */
#define PARE_QGROUP       8
#define PARE_QMAX_THREADS 4
typedef struct pare_qmodel {
    char arch[PARE_NAME_MAX];
    int n_layers;
    pare_qlayer layers[PARE_QMAX_LAYERS];
    int in_c, in_h, in_w; /* the float model's input, NCHW */
    float in_scale;       /* the int8 input's parameters */
    int32_t in_zp;
    int n_out; /* outputs per sample */
    float out_scale;
    int32_t out_zp;
    /* The scratch (planned by pare_qmodel_plan): shared_bytes of packed
     * weights, then `threads` areas of thread_bytes, each two activation
     * buffers of act_bytes (a group of PARE_QGROUP samples) and a panel. */
    size_t scratch_bytes; /* per call of pare_qmodel_forward*, any batch and thread count */
    size_t act_bytes;     /* one activation buffer of a group within it */
    size_t shared_bytes, thread_bytes;
    int threads; /* the most threads a call uses: the cores, at most PARE_QMAX_THREADS */
    /* What conversion did with every float layer, for the report:
     * "conv1: Conv2d + ReLU -> int8 conv", "LogSoftmax: dropped (...)". */
    int n_notes;
    char notes[PARE_QMAX_NOTES][128];
} pare_qmodel;

void pare_qmodel_free(pare_qmodel *qm);
/* Fills out_h/out_w/out_c of every layer from the input shape, checks that
 * the chain is consistent, and computes scratch_bytes. -1 with pare_error. */
int pare_qmodel_plan(pare_qmodel *qm);

/* Runs n samples of int8 input (each in_h*in_w*in_c, NHWC) to int8 output
 * (each n_out), on up to pare_threads() threads (at most qm->threads).
 * scratch: at least qm->scratch_bytes bytes, 4-byte aligned (malloc and
 * pare_alloc memory is), one per concurrent call. No allocation. -1 with
 * pare_error if the scratch is short or misaligned. */
int pare_qmodel_forward(const pare_qmodel *qm, const int8_t *in, int n, int8_t *out, void *scratch,
                        size_t scratch_bytes);
/* Float NCHW input (normalized as for the float model) quantized at the
 * entry, float output (dequantized logits). */
int pare_qmodel_forward_float(const pare_qmodel *qm, const float *in, int n, float *out, void *scratch,
                              size_t scratch_bytes);
/* Top-1 accuracy on the first n images of ds (all if n <= 0), pixels
 * normalized with MNIST's mean and std as the float model's loader does,
 * in batches of 256 through the caller's scratch (it allocates two float
 * staging buffers of a batch). -1 with pare_error. */
double pare_qmodel_evaluate(const pare_qmodel *qm, const pare_dataset *ds, int n, void *scratch, size_t scratch_bytes);
/* One layer on one sample with the kernel that runs now (exposed for
 * tests); work holds pare_qlayer_work_bytes(l) bytes, 4-byte aligned (NULL
 * if 0): enough for every kernel. */
void pare_qlayer_run(const pare_qlayer *l, const int8_t *in, int8_t *out, int8_t *work);
size_t pare_qlayer_work_bytes(const pare_qlayer *l);
/* The portable reference kernels, always built: the vector kernels must
 * give the same integers (tests compare them through these entry points). */
void pare_qlayer_run_reference(const pare_qlayer *l, const int8_t *in, int8_t *out, int8_t *work);
/* Kernels for conv and linear: "reference" (portable C, always), "avx2"
 * (x86-64 builds, CPUs with AVX2, checked at run time) and "avx512-vnni"
 * (builds targeting VNNI, e.g. -march=native on such a CPU). By default the
 * best one the machine runs; all give the same integers.
 * pare_qkernel_select forces one by name (NULL or "auto": back to the
 * default); -1 with pare_error if it is unknown or not available here. Not
 * thread-safe: choose before running. */
int pare_qkernel_select(const char *name);
/* The name of the kernel that runs now. */
const char *pare_qkernel_name(void);
/* 1 if conv and linear run on a vector kernel (AVX2 or VNNI), 0 if on the reference. */
int pare_qkernel_fast(void);

/* ---- observers (compress/quant_observer.c) ----------------------------------- */
typedef enum pare_observer_kind {
    PARE_OBSERVE_MINMAX,     /* the extremes of everything seen */
    PARE_OBSERVE_MOVING_AVG, /* per batch extremes, averaged: min += c (batch_min - min); the first batch sets them */
    PARE_OBSERVE_HISTOGRAM,  /* a histogram of everything seen; the range minimizing the expected squared error */
    PARE_OBSERVE_PERCENTILE, /* the same histogram; the range from the (100 - p)th to the pth percentile */
} pare_observer_kind;

/* The histogram (PARE_OBSERVE_HISTOGRAM, PARE_OBSERVE_PERCENTILE) has a
 * fixed number of bins, so its memory stays bounded however much it sees.
 * Its grid is fixed by the first batch: position y(x) = (x - origin) / width0
 * with origin the batch's minimum and width0 its width / (bins - 1). At
 * level e a bin is 2^e units wide, value x falls in floor(y(x) / 2^e), and
 * the histogram holds the bins first .. first + bins - 1. When values fall
 * outside, the level grows to the smallest that spans everything seen and
 * the window moves to start at the minimum's bin; a bin at level e lies
 * wholly inside one bin at level e + 1 (floor(floor(y / 2^e) / 2) =
 * floor(y / 2^(e + 1))), so re-binning merges counts exactly. The counts
 * are then those of binning every value at the final level directly: after
 * the first batch they depend on the values seen, not on how later ones
 * were split into batches or ordered. Non-finite values are not binned. */
typedef struct pare_observer {
    pare_observer_kind kind;
    float averaging; /* c of the moving average */
    float min, max;  /* the extremes seen (min/max, histogram: finite ones only) or their moving average */
    long long count; /* values seen */
    /* histogram kinds only */
    int bits;              /* the activation width the histogram's range is chosen for */
    int bins;              /* number of bins */
    float percentile;      /* p of PARE_OBSERVE_PERCENTILE */
    long long *hist;       /* the bins' counts (pare_alloc; pare_observer_release frees it) */
    long long binned;      /* values in hist: the finite ones */
    long long zeros;       /* values exactly 0 among them (quantized exactly, so they cost no rounding error) */
    double origin, width0; /* the grid: y(x) = (x - origin) / width0 */
    double first;          /* index of hist[0] at the current level */
    int level;             /* e: a bin is 2^e units of width0 */
} pare_observer;

typedef struct pare_quant_config {
    int weight_bits;             /* 8 */
    int act_bits;                /* 8 */
    int per_tensor;              /* 0: weights symmetric per output channel; 1: one scale per weight tensor */
    pare_observer_kind observer; /* PARE_OBSERVE_MINMAX */
    float averaging;             /* 0.01, PyTorch's MovingAverageMinMaxObserver default */
    int hist_bins;               /* 2048: bins of the histogram observers, 16..8192 */
    float percentile;            /* 99.99: p of PARE_OBSERVE_PERCENTILE, in (50, 100] */
} pare_quant_config;

/* An observer of cfg's kind. -1 with pare_error for an unknown kind or a bad
 * constant (the histogram kinds: hist_bins, percentile and act_bits, whose
 * width the histogram's range is chosen for). */
int pare_observer_init(pare_observer *o, const pare_quant_config *cfg);
/* Takes in n values (a batch). */
void pare_observer_update(pare_observer *o, const float *x, size_t n);
/* The range to quantize to (before pare_qparams_choose widens it to hold 0).
 * PARE_OBSERVE_HISTOGRAM: the [lo, hi] among bin edges (and 0) that
 * minimizes the expected squared error of quantizing everything seen to
 * act_bits, asymmetric: step^2 / 12 for each value inside, the squared
 * distance to the range for each one outside (values exactly 0 cost
 * nothing). PARE_OBSERVE_PERCENTILE: the (100 - p)th and pth percentiles,
 * interpolated within their bins. Both lie within the extremes seen.
 * -1 with pare_error if nothing (histogram: nothing finite) was seen. */
int pare_observer_range(const pare_observer *o, float *min, float *max);
/* Frees what the observer owns (it stays initialized-but-empty no more:
 * init again to reuse it). */
void pare_observer_release(pare_observer *o);

/* ---- static post-training quantization -------------------------------------- */
pare_quant_config pare_quant_defaults(void);

/* Installs observers of cfg's kind (NULL: the defaults), hooks named
 * "observer", on the model's input and on the output of every layer.
 * -1 if a chain is full or the averaging constant is not in (0, 1]. */
int pare_quant_prepare(pare_model *m, const pare_quant_config *cfg);
/* Removes them. */
void pare_quant_unprepare(pare_model *m);
/* The observer of a layer's output (layer -1: the model input); NULL if none. */
const pare_observer *pare_quant_observer(pare_model *m, int layer);
/* Runs the first n images of ds in file order (batch 256, no grad, eval
 * mode) through a prepared model. -1 with pare_error. */
int pare_quant_calibrate(pare_ctx *ctx, pare_model *m, const pare_dataset *ds, int n);
/* Converts a calibrated model to int8. NULL with pare_error naming the
 * layer for anything the int8 runtime cannot run. */
pare_qmodel *pare_quant_convert(pare_model *m, const pare_quant_config *cfg);

/* ---- quantization-aware training (compress/quant_qat.c) --------------------
 * pare_quant_prepare_qat, then the ordinary training loop (pare_fit or one's
 * own), then pare_quant_convert with the same config: the int8 model computes
 * with the integers the fake-quant model trained with. */
/* Folds every BatchNorm2d that directly follows a Conv2d into that conv
 * (weights scaled per output channel, bias shifted; a bias is created if the
 * conv had none) with its running statistics, removes the BatchNorm layers
 * and rebuilds shapes. One line per fold goes to notes (may be NULL).
 * Returns the number folded, -1 with pare_error. */
int pare_fold_batchnorm(pare_model *m, char (*notes)[128], int max_notes);
/* The fold itself, without changing the model: w (conv's weight, OIHW, or
 * what its weight hooks made of it) with bn folded in, into w_out and the
 * bias into b_out (out_features each); w_out may be w and b_out conv's bias. */
void pare_fold_batchnorm_values(const pare_layer *conv, const pare_layer *bn, const float *w, float *w_out,
                                float *b_out);
/* Folds BatchNorm, then installs fake-quant: on every Conv2d/Linear weight
 * (symmetric, per channel or cfg->per_tensor, cfg->weight_bits; the last
 * weight hook, after a pruning mask) and on the activations the int8 model
 * requantizes (the input, each Conv2d/Linear output after its ReLU) through
 * observers of cfg's kind that learn the range while the model trains and
 * stay frozen in eval mode (pare_quant_observer finds them). cfg NULL: the
 * defaults with the moving-average observer (c = 0.01), as PyTorch's QAT.
 * Build the optimizer afterwards (folding changes the parameters). Returns
 * the number of BatchNorms folded; -1 with pare_error for a layer the int8
 * runtime cannot run, naming it (the model is then left without hooks). */
int pare_quant_prepare_qat(pare_model *m, const pare_quant_config *cfg, char (*notes)[128], int max_notes);
/* An observer on layer's output (-1: the model input), fake-quantizing it
 * too if fake_quant (see pare_quant_prepare_qat); none is added if one is
 * there. -1 with pare_error. */
int pare_quant_observe_output(pare_model *m, int layer, const pare_quant_config *cfg, int fake_quant);
/* Turns a layer's weight fake-quant off (0) or on; returns whether it was on
 * (0 if the layer has none). Conversion turns it off to read the raw weight. */
int pare_quant_qat_weight_hooks_enable(pare_layer *l, int enabled);
/* Removes every weight fake-quant (pare_quant_unprepare does this too). */
void pare_quant_qat_remove_weight_hooks(pare_model *m);

/* How closely an int8 model follows the float (fake-quant) model it came
 * from, over the first n images of ds (all if n <= 0): images whose argmax
 * agree, the largest logit difference in units of the int8 output scale,
 * and the share of logits within one such step. The float model runs up to
 * its logits (a final (Log)Softmax is skipped), in eval mode, no grad. */
typedef struct pare_quant_agreement_stats {
    int images, same_argmax;
    double max_steps, within_one_step;
} pare_quant_agreement_stats;
int pare_quant_agreement(pare_ctx *ctx, pare_model *m, const pare_qmodel *qm, const pare_dataset *ds, int n,
                         pare_quant_agreement_stats *st);

/* ---- dynamic quantization (compress/quant_dynamic.c) ---------------------
 * Linear and Conv2d layers of a float model replaced in place by layer types
 * of kind PARE_CUSTOM ("DynQuantLinear", "DynQuantConv2d"): weights
 * symmetric per output channel ahead of time (pare_quantize_weight_per_channel),
 * and at run time each layer's input is quantized per batch, asymmetric per
 * tensor, from the batch's own min/max (pare_qparams_choose), multiplied in
 * int32 and dequantized to float: y = s_in * s_w[c] * acc + bias[c]. The
 * model keeps running through pare_forward/pare_evaluate in float between
 * these layers (ReLU, pooling, softmax). Inference only (no-grad). */
#define PARE_DQ_MAX_LIST 64
typedef struct pare_dq_report {
    int n_converted, n_float;
    char converted[PARE_DQ_MAX_LIST][PARE_NAME_MAX];
    char float_layers[PARE_DQ_MAX_LIST][PARE_NAME_MAX];
    char reason[PARE_DQ_MAX_LIST][96]; /* why float_layers[i] stayed in float */
} pare_dq_report;
/* Converts every Linear and Conv2d of a built model whose kind is in `kinds`
 * (PARE_CONV2D | PARE_LINEAR), bits (2..8) for weights and activations. Layers
 * with parameters that are not converted are listed in report (may be NULL)
 * with the reason. Returns the number converted, -1 with pare_error for a bad
 * argument (the model is then unchanged). */
int pare_quant_dynamic(pare_model *m, int kinds, int bits, pare_dq_report *report);
int pare_quant_is_dynamic(const pare_layer *l);
/* A converted layer's int8 weight ([out][in*k*k], row-major as the float
 * weight), per-channel scales and bits; NULL if l is not converted. */
const int8_t *pare_quant_dynamic_weight(const pare_layer *l, const float **scales, int *bits);
/* safetensors with pare.format "int8-dynamic" and pare.arch: int8 weights,
 * float per-channel scales and biases; loading validates every tensor. */
int pare_quant_dynamic_save(pare_model *m, const char *path);
pare_model *pare_quant_dynamic_load(const char *path);
/* From a buffer (for the fuzz target; the buffer is only read during the
 * call); `what` names it in messages (NULL: "buffer"). */
pare_model *pare_quant_dynamic_parse(const void *buf, size_t len, const char *what);

/* ---- save / load ---------------------------------------------------------- */
/* safetensors with pare.format "int8" and pare.arch; no float weights. */
int pare_qmodel_save(const pare_qmodel *qm, const char *path);
pare_qmodel *pare_qmodel_load(const char *path);
/* From a buffer (for the fuzz target); `what` names it in messages. */
pare_qmodel *pare_qmodel_parse(const void *buf, size_t len, const char *what);

#ifdef __cplusplus
}
#endif
#endif
