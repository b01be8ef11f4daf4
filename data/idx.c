/* The IDX reader (MNIST, Fashion-MNIST): unsigned-byte image files (magic
 * 0x00000803) and label files (0x00000801), big-endian dims.
 *
 * Files are validated from their 16-byte (images) or 8-byte (labels) header
 * and their size before anything is allocated, so a corrupt or hostile header
 * never makes us allocate or read more than the file really holds. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "data/data.h"

#define IDX_IMAGES_MAGIC  0x00000803u
#define IDX_LABELS_MAGIC  0x00000801u
#define IDX_IMAGES_HEADER 16
#define IDX_LABELS_HEADER 8
/* No real IDX dataset comes near this, and it keeps every count within int. */
#define IDX_MAX_BYTES ((uint64_t)INT_MAX)
#define HINT_FETCH    "run `make data` to fetch MNIST, or pass --data DIR pointing to a folder with the IDX files"

typedef struct idx_kind {
    const char *what; /* "image" or "label" */
    uint32_t magic, other_magic;
    int ndims;
    size_t header;
} idx_kind;

static const idx_kind IMAGES = {"image", IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, 3, IDX_IMAGES_HEADER};
static const idx_kind LABELS = {"label", IDX_LABELS_MAGIC, IDX_IMAGES_MAGIC, 1, IDX_LABELS_HEADER};

static const char *const DIM_NAMES[3] = {"a sample count", "a row count", "a column count"};

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static int check_magic(const idx_kind *k, const uint8_t *buf, uint64_t file_len)
{
    if (file_len >= 2 && buf[0] == 0x1f && buf[1] == 0x8b)
        return pare_set_error("IDX %s file is gzip-compressed (starts with bytes 1f 8b): "
                              "gunzip it first (gunzip FILE.gz), or run `make data`",
                              k->what);
    if (file_len < 4)
        return pare_set_error("IDX %s file is truncated: %llu bytes, too short for the 4-byte "
                              "magic number",
                              k->what, (unsigned long long)file_len);
    uint32_t magic = be32(buf);
    if (magic == k->magic) return 0;
    if (magic == k->other_magic)
        return pare_set_error("expected an IDX %s file (magic 0x%08x) but this is an IDX %s file "
                              "(magic 0x%08x): are the image and label paths swapped?",
                              k->what, (unsigned)k->magic, k == &IMAGES ? "label" : "image", (unsigned)magic);
    return pare_set_error("wrong magic number 0x%08x in IDX %s file, expected 0x%08x (unsigned "
                          "bytes, %d dims): this is not an uncompressed MNIST-style IDX %s file",
                          (unsigned)magic, k->what, (unsigned)k->magic, k->ndims, k->what);
}

/* Validates magic, dims and exact length. Only the header is read from buf
 * (avail bytes of it are present); file_len is the size of the whole file. */
static int parse_header(const idx_kind *k, const uint8_t *buf, size_t avail, uint64_t file_len, uint32_t dims[3])
{
    if (check_magic(k, buf, avail < file_len ? avail : file_len) != 0) return -1;
    if (file_len < k->header || avail < k->header)
        return pare_set_error("IDX %s file is truncated: its header needs %zu bytes, the file has "
                              "%llu; re-fetch it (make data)",
                              k->what, k->header, (unsigned long long)file_len);
    uint64_t total = 1;
    for (int i = 0; i < k->ndims; i++) dims[i] = be32(buf + 4 + 4 * i);
    for (int i = 0; i < k->ndims; i++) {
        if (dims[i] == 0)
            return pare_set_error("IDX %s file has %s equal to 0: an empty or corrupt file; "
                                  "re-fetch it (make data)",
                                  k->what, DIM_NAMES[i]);
        total *= dims[i]; /* total <= 2^31 before, dims < 2^32: no overflow */
        if (total > IDX_MAX_BYTES) {
            char shape[64];
            if (k->ndims == 3)
                snprintf(shape, sizeof shape, "%u x %u x %u", (unsigned)dims[0], (unsigned)dims[1], (unsigned)dims[2]);
            else
                snprintf(shape, sizeof shape, "%u", (unsigned)dims[0]);
            return pare_set_error("IDX %s file has absurd dimensions %s (more than %llu bytes): "
                                  "the header is corrupt; re-fetch it (make data)",
                                  k->what, shape, (unsigned long long)IDX_MAX_BYTES);
        }
    }
    uint64_t expected = k->header + total;
    if (file_len < expected)
        return pare_set_error("IDX %s file is truncated: expected %llu bytes (%zu-byte header + "
                              "%llu data bytes), got %llu; re-fetch it (make data)",
                              k->what, (unsigned long long)expected, k->header, (unsigned long long)total,
                              (unsigned long long)file_len);
    if (file_len > expected)
        return pare_set_error("IDX %s file is %llu bytes but its header describes %llu "
                              "(%llu trailing bytes): a corrupt or concatenated file; re-fetch it",
                              k->what, (unsigned long long)file_len, (unsigned long long)expected,
                              (unsigned long long)(file_len - expected));
    return 0;
}

int pare_idx_parse_images(const uint8_t *buf, size_t len, int *n, int *rows, int *cols, const uint8_t **pixels)
{
    uint32_t d[3];
    if (!buf && len) return pare_set_error("pare_idx_parse_images: NULL buffer");
    if (parse_header(&IMAGES, buf, len, len, d) != 0) return -1;
    *n = (int)d[0];
    *rows = (int)d[1];
    *cols = (int)d[2];
    *pixels = buf + IDX_IMAGES_HEADER;
    return 0;
}

int pare_idx_parse_labels(const uint8_t *buf, size_t len, int *n, const uint8_t **labels)
{
    uint32_t d[3];
    if (!buf && len) return pare_set_error("pare_idx_parse_labels: NULL buffer");
    if (parse_header(&LABELS, buf, len, len, d) != 0) return -1;
    *n = (int)d[0];
    *labels = buf + IDX_LABELS_HEADER;
    return 0;
}

/* ---- files ------------------------------------------------------------------ */

/* Prefixes the current message with the path, so the user knows which file. */
static int error_in(const char *path)
{
    char msg[768];
    snprintf(msg, sizeof msg, "%s", pare_error());
    return pare_set_error("%s: %s", path, msg);
}

static int open_error(const char *path, int err)
{
    char gz[4096];
    FILE *f;
    if (snprintf(gz, sizeof gz, "%s.gz", path) < (int)sizeof gz && (f = fopen(gz, "rb"))) {
        fclose(f);
        return pare_set_error("cannot open %s, but %s exists: gunzip it first (gunzip %s)", path, gz, gz);
    }
    return pare_set_error("cannot open %s: %s; %s", path, strerror(err), HINT_FETCH);
}

/* Size of an open file by seeking; fails on pipes and directories. */
static int file_size(FILE *f, const char *path, uint64_t *size)
{
    long end;
    if (fseek(f, 0, SEEK_END) != 0 || (end = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
        return pare_set_error("%s: cannot determine the file size (%s); pass a regular file", path, strerror(errno));
    *size = (uint64_t)end;
    return 0;
}

static int read_exact(FILE *f, const char *path, uint8_t *dst, size_t bytes)
{
    errno = 0;
    size_t got = fread(dst, 1, bytes, f);
    if (got == bytes) return 0;
    if (ferror(f))
        return pare_set_error("%s: read error after %zu of %zu bytes (%s)", path, got, bytes,
                              errno ? strerror(errno) : "I/O error");
    return pare_set_error("%s: file shrank while reading (%zu of %zu bytes); is another program "
                          "writing it?",
                          path, got, bytes);
}

/* Reads the data part of an IDX file (after its header) into a counted
 * buffer: the dataset keeps 1 byte per value and no copy of the header. */
static uint8_t *read_idx(const idx_kind *k, const char *path, uint32_t dims[3])
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        open_error(path, errno);
        return NULL;
    }
    uint8_t head[IDX_IMAGES_HEADER];
    uint64_t size = 0;
    uint8_t *data = NULL;
    if (file_size(f, path, &size) != 0) goto fail;
    size_t avail = size < k->header ? (size_t)size : k->header;
    if (read_exact(f, path, head, avail) != 0) goto fail;
    if (parse_header(k, head, avail, size, dims) != 0) {
        error_in(path);
        goto fail;
    }
    size_t bytes = (size_t)(size - k->header);
    data = pare_alloc(bytes);
    if (read_exact(f, path, data, bytes) != 0) goto fail;
    if (fgetc(f) != EOF) {
        pare_set_error("%s: file grew while reading; is another program writing it?", path);
        goto fail;
    }
    fclose(f);
    return data;
fail:
    pare_free(data);
    fclose(f);
    return NULL;
}

static int check_labels(const pare_dataset *ds, const char *labels_path)
{
    for (int i = 0; i < ds->n; i++)
        if (ds->labels[i] >= ds->n_classes)
            return pare_set_error("%s: label %d of sample %d is not below n_classes = %d: wrong "
                                  "label file, or the wrong number of classes for this dataset",
                                  labels_path, ds->labels[i], i, ds->n_classes);
    return 0;
}

pare_dataset *pare_dataset_load(const char *images_path, const char *labels_path, int n_classes)
{
    if (!images_path || !labels_path) {
        pare_set_error("pare_dataset_load: NULL path");
        return NULL;
    }
    if (n_classes < 1 || n_classes > 256) {
        pare_set_error("pare_dataset_load: n_classes = %d, must be in [1, 256] for byte labels", n_classes);
        return NULL;
    }
    uint32_t di[3] = {0}, dl[3] = {0};
    pare_dataset *ds = pare_calloc(sizeof *ds);
    ds->n_classes = n_classes;
    if (!(ds->images = read_idx(&IMAGES, images_path, di))) goto fail;
    if (!(ds->labels = read_idx(&LABELS, labels_path, dl))) goto fail;
    if (di[0] != dl[0]) {
        pare_set_error("%s has %u images but %s has %u labels: they must come from the same set "
                       "(train-* with train-*, t10k-* with t10k-*)",
                       images_path, (unsigned)di[0], labels_path, (unsigned)dl[0]);
        goto fail;
    }
    ds->n = (int)di[0];
    ds->rows = (int)di[1];
    ds->cols = (int)di[2];
    if (check_labels(ds, labels_path) != 0) goto fail;
    return ds;
fail:
    pare_dataset_free(ds);
    return NULL;
}

pare_dataset *pare_mnist_load(const char *dir, int train)
{
    const char *set = train ? "train" : "t10k";
    char images[4096], labels[4096];
    if (!dir || !*dir) dir = "data/mnist";
    int a = snprintf(images, sizeof images, "%s/%s-images-idx3-ubyte", dir, set);
    int b = snprintf(labels, sizeof labels, "%s/%s-labels-idx1-ubyte", dir, set);
    if (a < 0 || b < 0 || a >= (int)sizeof images || b >= (int)sizeof labels) {
        pare_set_error("MNIST directory path is too long (%zu characters)", strlen(dir));
        return NULL;
    }
    return pare_dataset_load(images, labels, 10);
}

void pare_dataset_free(pare_dataset *ds)
{
    if (!ds) return;
    pare_free(ds->images);
    pare_free(ds->labels);
    pare_free(ds);
}
