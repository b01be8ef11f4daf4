/* The DataLoader: a seeded order per epoch, batches normalized on the fly from
 * the uint8 dataset into the caller's arena, and the train/validation split. */
#include <math.h>
#include <string.h>

#include "data/data.h"

struct pare_loader {
    const pare_dataset *ds;
    pare_loader_config cfg;
    int n;          /* samples in the loader */
    int *base;      /* the sample indices as given */
    int *order;     /* this epoch's order */
    int pos;        /* next position in order */
    float lut[256]; /* normalized value of each pixel byte */
};

/* Distinct seed mixes so the split, and each epoch, draw unrelated orders. */
#define EPOCH_MIX 0x9E3779B97F4A7C15ull
#define SPLIT_MIX 0x53504C4954564C44ull /* "SPLITVLD" */

pare_loader_config pare_loader_defaults(void)
{
    pare_loader_config c = {64, 1, 0, PARE_MNIST_MEAN, PARE_MNIST_STD, 0};
    return c;
}

static int check_config(const pare_loader_config *c)
{
    if (c->batch < 1) return pare_set_error("batch size %d: it must be at least 1", c->batch);
    if (!isfinite(c->mean) || !isfinite(c->std) || c->std == 0.0f)
        return pare_set_error("normalization mean %g, std %g: both must be finite and std nonzero", (double)c->mean,
                              (double)c->std);
    return 0;
}

static int check_indices(const pare_dataset *ds, const int *indices, int n)
{
    for (int i = 0; i < n; i++)
        if (indices[i] < 0 || indices[i] >= ds->n)
            return pare_set_error("loader index %d at position %d is outside the dataset of %d "
                                  "samples",
                                  indices[i], i, ds->n);
    return 0;
}

/* Computed exactly as (p / 255 - mean) / std in float, once per byte value,
 * so each pixel costs a table lookup and gives the same bits as the formula. */
static void fill_lut(float *lut, float mean, float std)
{
    for (int p = 0; p < 256; p++) lut[p] = ((float)p / 255.0f - mean) / std;
}

pare_loader *pare_loader_new(const pare_dataset *ds, const int *indices, int n, const pare_loader_config *cfg)
{
    pare_loader_config c = cfg ? *cfg : pare_loader_defaults();
    if (!ds) {
        pare_set_error("pare_loader_new: no dataset");
        return NULL;
    }
    if (!indices && (n <= 0 || n > ds->n)) n = ds->n;
    if (n < 1) {
        pare_set_error("pare_loader_new: %d samples; a loader needs at least one", n);
        return NULL;
    }
    if (check_config(&c) != 0 || (indices && check_indices(ds, indices, n) != 0)) return NULL;
    pare_loader *ld = pare_calloc(sizeof *ld);
    ld->ds = ds;
    ld->cfg = c;
    ld->n = n;
    ld->base = pare_alloc((size_t)n * sizeof(int));
    ld->order = pare_alloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) ld->base[i] = indices ? indices[i] : i;
    fill_lut(ld->lut, c.mean, c.std);
    pare_loader_start_epoch(ld, 0);
    return ld;
}

void pare_loader_free(pare_loader *ld)
{
    if (!ld) return;
    pare_free(ld->base);
    pare_free(ld->order);
    pare_free(ld);
}

void pare_loader_start_epoch(pare_loader *ld, int epoch)
{
    memcpy(ld->order, ld->base, (size_t)ld->n * sizeof(int));
    ld->pos = 0;
    if (!ld->cfg.shuffle) return;
    /* Seeded from (seed, epoch) alone: any epoch can be replayed on its own. */
    pare_rng r;
    pare_rng_seed(&r, ld->cfg.seed ^ ((uint64_t)(unsigned)epoch + 1) * EPOCH_MIX, PARE_STREAM_SHUFFLE);
    pare_rng_shuffle(&r, ld->order, ld->n);
}

int pare_loader_next(pare_loader *ld, pare_arena *arena, pare_batch *out)
{
    if (ld->pos >= ld->n) return 0;
    const pare_dataset *ds = ld->ds;
    int b = ld->n - ld->pos < ld->cfg.batch ? ld->n - ld->pos : ld->cfg.batch;
    size_t pix = (size_t)ds->rows * (size_t)ds->cols;
    out->x =
        ld->cfg.flat ? pare_tensor_2d(arena, b, ds->rows * ds->cols) : pare_tensor_4d(arena, b, 1, ds->rows, ds->cols);
    out->labels = pare_arena_alloc(arena, (size_t)b * sizeof(int));
    PARE_CHECK(out->labels, "arena full allocating %d labels", b);
    out->n = b;
    for (int i = 0; i < b; i++) {
        int s = ld->order[ld->pos + i];
        const uint8_t *src = ds->images + (size_t)s * pix;
        float *dst = out->x->data + (size_t)i * pix;
        for (size_t j = 0; j < pix; j++) dst[j] = ld->lut[src[j]];
        out->labels[i] = ds->labels[s];
    }
    ld->pos += b;
    return 1;
}

int pare_loader_batches(const pare_loader *ld)
{
    return (ld->n + ld->cfg.batch - 1) / ld->cfg.batch;
}

int pare_loader_size(const pare_loader *ld)
{
    return ld->n;
}

int pare_split_indices(int n, int n_val, uint64_t seed, int **train_idx, int *n_train, int **val_idx)
{
    if (n < 1) return pare_set_error("cannot split an empty dataset (%d samples)", n);
    if (n_val < 0 || n_val >= n)
        return pare_set_error("validation split of %d samples: it must be in [0, %d) for a "
                              "training set of %d samples; choose a smaller --val",
                              n_val, n, n);
    *n_train = n - n_val;
    *train_idx = pare_alloc((size_t)(n - n_val) * sizeof(int));
    *val_idx = n_val ? pare_alloc((size_t)n_val * sizeof(int)) : NULL;
    if (n_val == 0) {
        for (int i = 0; i < n; i++) (*train_idx)[i] = i;
        return 0;
    }
    int *perm = pare_alloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) perm[i] = i;
    pare_rng r;
    pare_rng_seed(&r, seed ^ SPLIT_MIX, PARE_STREAM_SHUFFLE);
    pare_rng_shuffle(&r, perm, n);
    /* Mark the held-out samples, then list both parts in ascending order so
     * an unshuffled pass over either part reads the dataset in file order. */
    unsigned char *is_val = pare_calloc((size_t)n);
    for (int i = n - n_val; i < n; i++) is_val[perm[i]] = 1;
    int *tr = *train_idx, *va = *val_idx, nt = 0, nv = 0;
    for (int i = 0; i < n; i++) {
        if (is_val[i])
            va[nv++] = i;
        else
            tr[nt++] = i;
    }
    pare_free(is_val);
    pare_free(perm);
    return 0;
}
