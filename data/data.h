/* pare data: the IDX reader (MNIST, Fashion-MNIST) and a DataLoader that
 * keeps the dataset as uint8 and normalizes each batch on the fly. */
#ifndef PARE_DATA_H
#define PARE_DATA_H

#include "tensor/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pare_dataset {
    int n, rows, cols;
    int n_classes;   /* 10 for MNIST; labels are checked against it */
    uint8_t *images; /* n * rows * cols, row-major */
    uint8_t *labels; /* n */
} pare_dataset;

/* Parses IDX files held in memory. They validate magic, dimensions and
 * length, never read past len, and return -1 with pare_error() set. */
int pare_idx_parse_images(const uint8_t *buf, size_t len, int *n, int *rows, int *cols, const uint8_t **pixels);
int pare_idx_parse_labels(const uint8_t *buf, size_t len, int *n, const uint8_t **labels);

/* Loads an image file and a label file; checks that the counts agree and
 * that every label is below n_classes. NULL with pare_error() on failure. */
pare_dataset *pare_dataset_load(const char *images_path, const char *labels_path, int n_classes);
/* dir/{train,t10k}-{images-idx3,labels-idx1}-ubyte; the message says to run
 * `make data` when the files are missing. */
pare_dataset *pare_mnist_load(const char *dir, int train);
void pare_dataset_free(pare_dataset *ds);

/* Normalization: (pixel / 255 - mean) / std. MNIST's are the defaults. */
#define PARE_MNIST_MEAN 0.1307f
#define PARE_MNIST_STD  0.3081f

typedef struct pare_loader pare_loader;
typedef struct pare_loader_config {
    int batch;   /* 64 */
    int shuffle; /* reshuffle every epoch with the seeded PRNG */
    uint64_t seed;
    float mean, std;
    int flat; /* 1: batches are [B, rows*cols]; 0: [B, 1, rows, cols] */
} pare_loader_config;
pare_loader_config pare_loader_defaults(void);

/* A loader over the listed sample indices of ds (NULL: the first n samples,
 * or all of them when n <= 0). cfg NULL: the defaults. ds must outlive it.
 * NULL with pare_error() on a bad index or config (batch < 1, std 0). */
pare_loader *pare_loader_new(const pare_dataset *ds, const int *indices, int n, const pare_loader_config *cfg);
void pare_loader_free(pare_loader *ld);
/* Starts epoch `epoch` (0-based): the order is a function of (seed, epoch).
 * pare_loader_new starts epoch 0. */
void pare_loader_start_epoch(pare_loader *ld, int epoch);
typedef struct pare_batch {
    pare_tensor *x; /* in the arena given to next() */
    int *labels;    /* in the arena */
    int n;
} pare_batch;
/* Next batch of the epoch in `arena`; 1 if a batch was produced, 0 at the end
 * (and until the next pare_loader_start_epoch). The last batch may be smaller
 * (PyTorch's drop_last=False). Pixels become ((float)p / 255 - mean) / std.
 * Allocates only from the arena: rewind it after each batch and, after the
 * first epoch, no heap allocation happens. */
int pare_loader_next(pare_loader *ld, pare_arena *arena, pare_batch *out);
int pare_loader_batches(const pare_loader *ld);
int pare_loader_size(const pare_loader *ld);

/* Splits [0, n) into a training part and a validation part of n_val samples
 * held out by a seeded permutation; both parts are listed in ascending order.
 * Arrays are allocated with pare_alloc (free with pare_free); *val_idx is
 * NULL when n_val is 0. -1 with pare_error() unless 0 <= n_val < n. */
int pare_split_indices(int n, int n_val, uint64_t seed, int **train_idx, int *n_train, int **val_idx);

#ifdef __cplusplus
}
#endif
#endif
