/* pare prune: unstructured and structured pruning, in the same process as
 * training.
 *
 * A pruned layer carries a weight hook named "mask": the forward pass uses
 * weight * mask, so pruned weights get a zero gradient. After every optimizer
 * step pare_prune_apply writes exact zeros into pruned weights and into their
 * optimizer state (momentum buffer, Adam moments), so nothing drifts back.
 * Schedules (one-shot, iterative, AGP, constant) are plain objects the
 * training loop calls once a step (pare_fit's on_step); nn and optim know
 * nothing about them. Structured pruning masks whole output units (filter
 * rows, bias, the following BatchNorm's scale and shift), then surgery
 * (pare_prune_shrink) removes them and the matching inputs of the next
 * weight layer, leaving an ordinary smaller dense model. */
#ifndef PARE_COMPRESS_PRUNE_H
#define PARE_COMPRESS_PRUNE_H

#include "optim/fit.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PARE_PRUNE_HOOK "mask"

/* ---- masks ------------------------------------------------------------------ */
/* Installs an all-ones mask on each named layer (names: NULL-terminated list,
 * or NULL for every Linear and Conv2d). A layer already masked keeps its
 * mask. Unknown names or layers without a weight matrix: -1 with
 * pare_error() naming the layer, and the model is left unchanged. */
int pare_prune_attach(pare_model *m, const char *const *names);
/* The layer's mask (same shape as its weight), or NULL if it has none. */
pare_tensor *pare_prune_mask(pare_layer *l);
/* Multiplies the masks into the weights and removes the hooks. */
void pare_prune_detach(pare_model *m);
/* After an optimizer step (o may be NULL): pruned weights, and their
 * momentum / Adam moments, become exactly zero; for structured masks also
 * the units' bias entries and the following BatchNorm's scale and shift. */
void pare_prune_apply(pare_model *m, pare_optim *o);

/* ---- criteria ----------------------------------------------------------------- */
typedef enum pare_prune_scope { PARE_PRUNE_GLOBAL, PARE_PRUNE_LAYER } pare_prune_scope;
typedef enum pare_prune_criterion { PARE_PRUNE_MAGNITUDE, PARE_PRUNE_RANDOM } pare_prune_criterion;
/* Sets the masks of every masked layer so that a fraction `sparsity` of their
 * weights is pruned: the smallest |w| (or random weights) across all masked
 * layers (GLOBAL) or within each (LAYER). Already-pruned weights count as
 * the smallest, so raising the sparsity only adds to the masks. sparsity in
 * [0, 1) (else -1 with pare_error()); seed is for RANDOM.
 * Then applies the masks (pare_prune_apply without an optimizer). */
int pare_prune_select(pare_model *m, float sparsity, pare_prune_scope scope, pare_prune_criterion crit, uint64_t seed);

/* Pruned / total weights of the masked layers (or of every Linear and
 * Conv2d weight when none is masked: then "pruned" counts exact zeros). */
typedef struct pare_prune_stats {
    size_t total, zeros;
} pare_prune_stats;
pare_prune_stats pare_prune_layer_stats(pare_layer *l);
pare_prune_stats pare_prune_model_stats(pare_model *m);
/* Per-layer table: kept/total weights and sparsity, and the overall line. */
void pare_prune_report(pare_model *m, FILE *out);

/* ---- schedules ------------------------------------------------------------------ */
typedef enum pare_prune_sched_kind {
    PARE_SCHED_ONESHOT,   /* final sparsity once, at step `start` */
    PARE_SCHED_ITERATIVE, /* equal shares every `every` steps from start to end */
    PARE_SCHED_AGP,       /* s_t = s_f + (s_i - s_f)(1 - (t - start)/(end - start))^3 */
    PARE_SCHED_CONSTANT,  /* final sparsity, masks re-selected every `every` steps */
} pare_prune_sched_kind;

typedef struct pare_prune_schedule {
    pare_prune_sched_kind kind;
    float initial, final;   /* s_i, s_f in [0, 1) */
    long start, end, every; /* steps, as pare_fit counts them (from 1); end - start = n * every */
    pare_prune_scope scope;
    pare_prune_criterion criterion;
    uint64_t seed;
    float current; /* sparsity of the last selection (read only) */
    int updates;   /* how many selections so far (read only) */
    /* Structured: when set (NULL-terminated layer names), each update masks
     * that fraction of these layers' units (pare_prune_units, by the L1 or
     * L2 norm in `norm`) instead of selecting weights; pare_prune_shrink
     * removes them after training. */
    const char *const *unit_layers;
    int norm;
} pare_prune_schedule;

/* A schedule with scope GLOBAL, criterion MAGNITUDE; -1 with pare_error()
 * for sparsities outside [0, 1), initial > final, start < 0, end < start or
 * every < 1. */
int pare_prune_schedule_init(pare_prune_schedule *s, pare_prune_sched_kind kind, float initial, float final, long start,
                             long end, long every);
/* The target sparsity at step t (before start: initial, except one-shot and
 * constant, which are 0 before start; after end: final). */
float pare_prune_sparsity_at(const pare_prune_schedule *s, long t);
/* Whether step t selects new masks. */
int pare_prune_is_update(const pare_prune_schedule *s, long t);
/* Call once after every optimizer step: selects masks on update steps and
 * always applies them (zeros weights and optimizer state). Returns -1 with
 * pare_error() on failure. */
int pare_prune_schedule_step(pare_prune_schedule *s, pare_model *m, pare_optim *o, long t);
/* Adapter for pare_fit_config.on_step: user is a pare_prune_schedule. On a
 * failure it stops training (pare_fit returns 0; pare_error() says why). */
int pare_prune_on_step(void *user, pare_model *m, pare_optim *o, long step);

/* ---- save / load --------------------------------------------------------------- */
/* Saves an ordinary float model with the masks folded in (exact zeros) and
 * metadata pare.pruned = the masked layers ("conv1,fc1"), plus `metadata`
 * (NULL-terminated pairs). The hooks stay on the model in memory. */
int pare_prune_save(pare_model *m, const char *path, const char *const *metadata);
/* Loads any float model (arch_name as pare_load's), or a file in the
 * compressed sparse format (pare_prune_load_sparse); if it says pare.pruned,
 * the masks of those layers are rebuilt from the exact zeros. */
pare_model *pare_prune_load(const char *path, const char *arch_name);
/* Masks from exact zeros on the named layers (comma-separated, NULL: every
 * Linear and Conv2d). */
int pare_prune_restore(pare_model *m, const char *layers);

/* ---- structured ----------------------------------------------------------------- */
/* Ranks the output units (Conv2d filters, Linear neurons) of layer `name` by
 * the L1 (norm 1) or L2 (norm 2) norm of their weights and masks the weakest
 * round(fraction * units) of them (at least one unit is kept): weight rows,
 * bias entries and the following BatchNorm's scale and shift. The layer must
 * feed another weight layer (through activations, pooling, BatchNorm,
 * Dropout, Flatten). */
int pare_prune_units(pare_model *m, const char *name, float fraction, int norm);
/* Surgery: every layer with masked units loses them, and the next weight
 * layer loses the matching inputs (H*W features per channel behind a
 * Flatten); a BatchNorm in between loses the channels. The result is an
 * ordinary smaller dense model, rebuilt (pare_build); element masks are
 * resized with it. Optimizers of the model must be re-created afterwards. */
int pare_prune_shrink(pare_model *m);

/* ---- sparse storage and kernels ---------------------------------------------- */
/* CSR of a rows x cols float matrix with 16-bit column indices (cols <= 65536)
 * or 32-bit ones otherwise. */
typedef struct pare_csr {
    int rows, cols;
    int nnz;
    int32_t *row_ptr; /* rows + 1 */
    uint16_t *col16;  /* column indices when cols <= 65536 */
    int32_t *col32;   /* otherwise */
    float *values;
} pare_csr;
/* From a dense row-major matrix (exact zeros are dropped). NULL on bad sizes. */
pare_csr *pare_csr_from_dense(const float *w, int rows, int cols);
void pare_csr_free(pare_csr *a);
void pare_csr_to_dense(const pare_csr *a, float *w);
/* y[n, rows] = x[n, cols] * A^T (+ bias if not NULL): a Linear layer's forward. */
void pare_csr_linear(const pare_csr *a, const float *x, int n, const float *bias, float *y);
/* Y[rows, 0:p] = A B[cols, 0:p] (+ bias per row), B and Y with row strides
 * ldb and ldy: a Conv2d's forward on one image's im2col columns (p = output
 * pixels), or a Linear's on a transposed block of samples. */
void pare_csr_spmm(const pare_csr *a, const float *B, size_t ldb, int p, const float *bias, float *Y, size_t ldy);
/* pare_csr_linear for any batch: from PARE_CSR_BATCHED_MIN samples on, blocks
 * of samples are transposed so the product runs as pare_csr_spmm (the
 * per-sample row dots gather, and lose to the dense kernel at large
 * batches); scratch holds pare_csr_linear_scratch(a, n) floats. */
#define PARE_CSR_BATCHED_MIN 8
size_t pare_csr_linear_scratch(const pare_csr *a, int n);
void pare_csr_linear_into(const pare_csr *a, const float *x, int n, const float *bias, float *y, float *scratch);
/* Bytes the CSR takes in the compressed file format (values + indices + row pointers). */
size_t pare_csr_bytes(const pare_csr *a);

/* Sparse inference: every Linear / Conv2d layer (layers: comma-separated
 * names, or NULL for every one with at least PARE_SPARSE_MIN_COLS inputs per
 * output) whose weight is at least min_sparsity zeros is
 * replaced by a SparseLinear / SparseConv2d layer (kind PARE_CUSTOM) whose
 * forward multiplies by the weight's CSR: for a Conv2d, each image's im2col
 * columns times the CSR of the [out, in*k*k] weight. Masks are folded in
 * first. The layers are for inference only: their forward aborts with
 * gradients enabled (fine-tune the masked dense model, then sparsify), and
 * the model no longer saves (save it before, e.g. with
 * pare_prune_save_sparse). Layers with other weight hooks (fake-quant) are
 * skipped. Returns how many layers were replaced, or -1 with pare_error()
 * (unknown names, min_sparsity outside [0, 1]) and the model unchanged.
 * PARE_SPARSE_MIN_DEFAULT is the measured break-even (see bench_sparse). */
/* Measured (bench_sparse, one thread): fc1 1600->128 alone is 0.85x at 80%
 * sparsity and 1.4x (batch 256) / 1.8x (batch 1) at 90%; conv2 (32->64, 3x3)
 * alone 1.1x at 80%, 1.8x at 90%, at both batch sizes. In seedcnn at 90%
 * layer-wise, conv1 (1 input channel: 9 weights per output) made the whole
 * model 23% slower at batch 256 (a dense conv fuses its ReLU and pooling,
 * and there are hardly any multiply-adds to save) while conv2 (288 per
 * output) made it 29% faster: hence the minimum row length. */
#define PARE_SPARSE_MIN_DEFAULT 0.85f
#define PARE_SPARSE_MIN_COLS    64
int pare_prune_sparsify(pare_model *m, const char *layers, float min_sparsity);
/* Whether l is a layer made by pare_prune_sparsify. */
int pare_prune_is_sparse(const pare_layer *l);

/* Compressed save format: pare.format "sparse": each Linear/Conv2d weight
 * whose CSR is smaller than dense is stored as "<name>.values" (F32),
 * "<name>.col" (U16/I32, of the im2col form [out, in*k*k] for a Conv2d) and
 * "<name>.row_ptr" (I32 deltas as U16 when they fit); everything else dense.
 * pare_prune_load_sparse gives back the same dense model, masks rebuilt. */
int pare_prune_save_sparse(pare_model *m, const char *path);
pare_model *pare_prune_load_sparse(const char *path);

#ifdef __cplusplus
}
#endif
#endif
