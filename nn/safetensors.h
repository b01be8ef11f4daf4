/* safetensors files: a generic writer and a validating reader of named,
 * typed tensors, shared by nn's float models and compress/'s int8 ones.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 *   {"__metadata__": {"key": "value", ...},
 *    "name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...}
 * padded with spaces to a multiple of 8, then the tensor bytes (offsets are
 * relative to the end of the header). The reader accepts exactly what the
 * reference implementation accepts: tensors tile the byte buffer with no gap,
 * overlap or trailing byte, and each one's size is the product of its shape
 * times its dtype size. Only little-endian hosts are supported. */
#ifndef PARE_NN_SAFETENSORS_H
#define PARE_NN_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "nn/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Every dtype the format defines; a file with any of them is read, and the
 * caller decides which it accepts. */
typedef enum pare_st_dtype {
    PARE_ST_BOOL,
    PARE_ST_U8,
    PARE_ST_I8,
    PARE_ST_F8_E5M2,
    PARE_ST_F8_E4M3,
    PARE_ST_I16,
    PARE_ST_U16,
    PARE_ST_F16,
    PARE_ST_BF16,
    PARE_ST_I32,
    PARE_ST_U32,
    PARE_ST_F32,
    PARE_ST_F64,
    PARE_ST_I64,
    PARE_ST_U64,
    PARE_ST_N_DTYPES
} pare_st_dtype;

const char *pare_st_dtype_name(pare_st_dtype dt); /* "F32" */
size_t pare_st_dtype_size(pare_st_dtype dt);      /* bytes per element */
/* -1 if the name is unknown. */
int pare_st_dtype_parse(const char *name, pare_st_dtype *dt);

#define PARE_ST_MAX_DIMS   8
#define PARE_ST_MAX_HEADER ((uint64_t)100 << 20) /* the reference reader's limit */

/* One tensor: what the writer takes, and what the reader returns. `data` in a
 * file being read points into the file's buffer and may be unaligned: copy
 * it with memcpy (or pare_st_read). */
typedef struct pare_st_tensor {
    const char *name;
    pare_st_dtype dtype;
    int ndim;
    int64_t shape[PARE_ST_MAX_DIMS];
    const void *data;
    size_t nbytes; /* set by the reader; the writer computes it from the shape */
} pare_st_tensor;

/* A float tensor of pare's as a writer entry (name is not copied). */
pare_st_tensor pare_st_f32(const char *name, const pare_tensor *t);

/* ---- writing -------------------------------------------------------------------
 * Tensors are laid out in the order given, so the same input gives the same
 * bytes. metadata: NULL-terminated key, value pairs (NULL for none); keys
 * must be unique. Writes atomically: a temp file "<path>.tmp.XXXXXX" in the
 * same directory, checked writes, fsync, rename; on failure the temp file is
 * removed, an existing file at path is left as it was, and pare_error names
 * the path and the OS error. */
int pare_st_write(const char *path, const pare_st_tensor *tensors, int n, const char *const *metadata);
/* The same bytes in memory (*out from pare_alloc; free with pare_free). */
int pare_st_serialize(const pare_st_tensor *tensors, int n, const char *const *metadata, unsigned char **out,
                      size_t *out_len);
/* Writes a buffer to path with the same atomic procedure (for exporters). */
int pare_write_file_atomic(const char *path, const void *data, size_t len);

/* ---- reading -------------------------------------------------------------------- */
typedef struct pare_st_file pare_st_file;

/* Reads and validates a whole file; NULL with pare_error on any problem. */
pare_st_file *pare_st_open(const char *path);
/* Validates a file image in memory. The buffer is borrowed: it must outlive
 * the returned handle. `what` names it in messages (NULL: "buffer"). */
pare_st_file *pare_st_parse(const void *buf, size_t len, const char *what);
void pare_st_close(pare_st_file *f);

/* Tensors in header order. */
int pare_st_count(const pare_st_file *f);
const pare_st_tensor *pare_st_at(const pare_st_file *f, int i);
const pare_st_tensor *pare_st_find(const pare_st_file *f, const char *name); /* NULL if absent */
/* The tensor `name` checked against the dtype and shape the caller expects;
 * NULL with an error naming the tensor and both dtypes or shapes otherwise. */
const pare_st_tensor *pare_st_expect(const pare_st_file *f, const char *name, pare_st_dtype dtype, int ndim,
                                     const int *shape);
/* pare_st_expect, then copies the bytes to dst (ndim * shape * dtype size). */
int pare_st_read(const pare_st_file *f, const char *name, pare_st_dtype dtype, int ndim, const int *shape, void *dst);

/* __metadata__ in header order; pare_st_meta returns NULL for a missing key. */
int pare_st_meta_count(const pare_st_file *f);
const char *pare_st_meta_key(const pare_st_file *f, int i);
const char *pare_st_meta_value(const pare_st_file *f, int i);
const char *pare_st_meta(const pare_st_file *f, const char *key);
/* The name used in messages (the path, or `what`). */
const char *pare_st_source(const pare_st_file *f);

/* ---- models (pare_save / pare_load on an open file) ---------------------- */
/* pare_load from an already validated file. */
pare_model *pare_load_st(const pare_st_file *f, const char *arch_name);
/* pare_load_into from an already validated file: every model tensor must be
 * there as F32 with its shape; a tensor the model does not have is an error,
 * except PyTorch's *.num_batches_tracked. Nothing is copied unless all pass. */
int pare_load_into_st(pare_model *m, const pare_st_file *f);

#ifdef __cplusplus
}
#endif
#endif
