/* safetensors: the generic writer (atomic) and validating reader, and
 * pare_save / pare_load of float models on top of them. The reader treats
 * every byte of a file as hostile: all sizes are checked before use, in
 * 64-bit arithmetic that cannot overflow. */
#include "nn/safetensors.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nn/json.h"

/* ---- dtypes ------------------------------------------------------------------ */
static const struct {
    const char *name;
    size_t size;
} dtypes[PARE_ST_N_DTYPES] = {
    [PARE_ST_BOOL] = {"BOOL", 1},       [PARE_ST_U8] = {"U8", 1},           [PARE_ST_I8] = {"I8", 1},
    [PARE_ST_F8_E5M2] = {"F8_E5M2", 1}, [PARE_ST_F8_E4M3] = {"F8_E4M3", 1}, [PARE_ST_I16] = {"I16", 2},
    [PARE_ST_U16] = {"U16", 2},         [PARE_ST_F16] = {"F16", 2},         [PARE_ST_BF16] = {"BF16", 2},
    [PARE_ST_I32] = {"I32", 4},         [PARE_ST_U32] = {"U32", 4},         [PARE_ST_F32] = {"F32", 4},
    [PARE_ST_F64] = {"F64", 8},         [PARE_ST_I64] = {"I64", 8},         [PARE_ST_U64] = {"U64", 8},
};

const char *pare_st_dtype_name(pare_st_dtype dt)
{
    return (unsigned)dt < PARE_ST_N_DTYPES ? dtypes[dt].name : "?";
}

size_t pare_st_dtype_size(pare_st_dtype dt)
{
    return (unsigned)dt < PARE_ST_N_DTYPES ? dtypes[dt].size : 0;
}

int pare_st_dtype_parse(const char *name, pare_st_dtype *dt)
{
    for (int i = 0; i < PARE_ST_N_DTYPES; i++)
        if (strcmp(dtypes[i].name, name) == 0) {
            *dt = (pare_st_dtype)i;
            return 0;
        }
    return -1;
}

static int little_endian_host(void)
{
    uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    if (b == 1) return 1;
    pare_set_error("safetensors files are little-endian; pare reads and writes them on little-endian hosts only");
    return 0;
}

/* "[64, 32, 3, 3]" for int64 shapes. */
static char *shape64_str(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < len) snprintf(buf + used, len - used, "]");
    return buf;
}

/* Element count times dtype size; -1 (as UINT64_MAX) above `limit`. */
static uint64_t tensor_bytes(int ndim, const int64_t *shape, size_t elem, uint64_t limit)
{
    uint64_t bytes = elem;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return UINT64_MAX;
        if (shape[i] == 0) bytes = 0; /* empty, whatever the other dimensions are */
    }
    for (int i = 0; i < ndim && bytes; i++) {
        uint64_t d = (uint64_t)shape[i];
        if (d && bytes > limit / d) return UINT64_MAX;
        bytes *= d;
    }
    return bytes;
}

pare_st_tensor pare_st_f32(const char *name, const pare_tensor *t)
{
    pare_st_tensor s;
    memset(&s, 0, sizeof s);
    s.name = name;
    s.dtype = PARE_ST_F32;
    s.ndim = t->ndim;
    for (int i = 0; i < t->ndim; i++) s.shape[i] = t->shape[i];
    s.data = t->data;
    s.nbytes = t->size * sizeof(float);
    return s;
}

/* ---- writer ------------------------------------------------------------------------ */
static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Fails if two of the n strings are equal; `kind` names them in the message. */
static int check_unique(const char **names, int n, const char *kind)
{
    if (n < 2) return 0;
    const char **s = pare_alloc((size_t)n * sizeof *s);
    memcpy(s, names, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_str_ptr);
    int rc = 0;
    for (int i = 1; i < n && !rc; i++)
        if (strcmp(s[i - 1], s[i]) == 0) rc = pare_set_error("%s '%s' appears twice", kind, s[i]);
    pare_free(s);
    return rc;
}

static int count_metadata(const char *const *metadata)
{
    int n = 0;
    if (!metadata) return 0;
    for (; metadata[2 * n]; n++)
        if (!metadata[2 * n + 1]) return pare_set_error("metadata key '%s' has no value", metadata[2 * n]);
    return n;
}

static int check_tensors(const pare_st_tensor *t, int n, uint64_t *total)
{
    *total = 0;
    for (int i = 0; i < n; i++) {
        if (!t[i].name || !t[i].name[0]) return pare_set_error("tensor %d has no name", i);
        if (strcmp(t[i].name, "__metadata__") == 0) return pare_set_error("a tensor cannot be named __metadata__");
        if ((unsigned)t[i].dtype >= PARE_ST_N_DTYPES)
            return pare_set_error("tensor '%s': unknown dtype %d", t[i].name, (int)t[i].dtype);
        if (t[i].ndim < 0 || t[i].ndim > PARE_ST_MAX_DIMS)
            return pare_set_error("tensor '%s': %d dimensions (at most %d)", t[i].name, t[i].ndim, PARE_ST_MAX_DIMS);
        uint64_t bytes = tensor_bytes(t[i].ndim, t[i].shape, dtypes[t[i].dtype].size, (uint64_t)SIZE_MAX / 2);
        if (bytes == UINT64_MAX) return pare_set_error("tensor '%s': invalid or too large shape", t[i].name);
        if (bytes && !t[i].data) return pare_set_error("tensor '%s' has no data", t[i].name);
        *total += bytes;
        if (*total > (uint64_t)SIZE_MAX / 2) return pare_set_error("tensors too large to write");
    }
    const char **names = pare_alloc((size_t)(n ? n : 1) * sizeof *names);
    for (int i = 0; i < n; i++) names[i] = t[i].name;
    int rc = check_unique(names, n, "tensor name");
    pare_free(names);
    return rc;
}

/* The header JSON, padded with spaces to a multiple of 8 bytes. */
static int header_json(const pare_st_tensor *t, int n, const char *const *metadata, pare_jw *w, uint64_t *total)
{
    int n_meta = count_metadata(metadata);
    if (n < 0 || (n > 0 && !t)) return pare_set_error("no tensor list to write (n = %d)", n);
    if (n_meta < 0 || check_tensors(t, n, total)) return -1;
    if (n_meta) {
        const char **keys = pare_alloc((size_t)n_meta * sizeof *keys);
        for (int i = 0; i < n_meta; i++) keys[i] = metadata[2 * i];
        int rc = check_unique(keys, n_meta, "metadata key");
        pare_free(keys);
        if (rc) return -1;
    }
    pare_jw_raw(w, "{");
    if (n_meta) {
        pare_jw_raw(w, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            if (i) pare_jw_raw(w, ",");
            pare_jw_str(w, metadata[2 * i]);
            pare_jw_raw(w, ":");
            pare_jw_str(w, metadata[2 * i + 1]);
        }
        pare_jw_raw(w, "}");
    }
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        uint64_t bytes = tensor_bytes(t[i].ndim, t[i].shape, dtypes[t[i].dtype].size, UINT64_MAX);
        if (i || n_meta) pare_jw_raw(w, ",");
        pare_jw_str(w, t[i].name);
        pare_jw_raw(w, ":{\"dtype\":");
        pare_jw_str(w, dtypes[t[i].dtype].name);
        pare_jw_raw(w, ",\"shape\":[");
        for (int d = 0; d < t[i].ndim; d++) {
            if (d) pare_jw_raw(w, ",");
            pare_jw_int(w, (long long)t[i].shape[d]);
        }
        pare_jw_raw(w, "],\"data_offsets\":[");
        pare_jw_uint(w, offset);
        pare_jw_raw(w, ",");
        pare_jw_uint(w, offset + bytes);
        pare_jw_raw(w, "]}");
        offset += bytes;
    }
    pare_jw_raw(w, "}");
    while (!w->failed && w->len % 8) pare_jw_raw(w, " ");
    return w->failed ? -1 : 0;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

int pare_st_serialize(const pare_st_tensor *tensors, int n, const char *const *metadata, unsigned char **out,
                      size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (!little_endian_host()) return -1;
    pare_jw w = {0};
    uint64_t total;
    if (header_json(tensors, n, metadata, &w, &total)) {
        pare_jw_free(&w);
        return -1;
    }
    size_t len = 8 + w.len + (size_t)total;
    unsigned char *buf = pare_alloc(len);
    put_le64(buf, w.len);
    memcpy(buf + 8, w.buf, w.len);
    size_t at = 8 + w.len;
    for (int i = 0; i < n; i++) {
        size_t bytes =
            (size_t)tensor_bytes(tensors[i].ndim, tensors[i].shape, dtypes[tensors[i].dtype].size, UINT64_MAX);
        if (bytes) memcpy(buf + at, tensors[i].data, bytes);
        at += bytes;
    }
    pare_jw_free(&w);
    *out = buf;
    *out_len = len;
    return 0;
}

/* ---- atomic files ------------------------------------------------------------------ */
typedef struct atomic_file {
    const char *path;
    char *tmp;
    FILE *fp;
} atomic_file;

/* The message keeps errno from the failing call: cleanup may change it. */
static int os_error(const char *path, const char *doing, int err)
{
    const char *hint = err == ENOENT   ? " (does the directory exist?)"
                       : err == EACCES ? " (is the directory writable?)"
                       : err == ENOSPC ? " (the disk is full)"
                                       : "";
    return pare_set_error("cannot save '%s': %s: %s%s; nothing was written", path, doing, strerror(err), hint);
}

static void atomic_abort(atomic_file *a)
{
    if (a->fp) fclose(a->fp);
    a->fp = NULL;
    if (a->tmp) unlink(a->tmp);
    pare_free(a->tmp);
    a->tmp = NULL;
}

/* A file created by mkstemp is private (0600); the saved model gets the
 * permissions an ordinary fopen would give, or those of the file it replaces. */
static mode_t target_mode(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) return st.st_mode & 07777;
    mode_t mask = umask(0);
    umask(mask);
    return 0666 & ~mask;
}

static int atomic_open(atomic_file *a, const char *path)
{
    memset(a, 0, sizeof *a);
    a->path = path;
    if (!path || !path[0]) return pare_set_error("cannot save: the path is empty");
    size_t n = strlen(path);
    a->tmp = pare_alloc(n + 12);
    memcpy(a->tmp, path, n);
    memcpy(a->tmp + n, ".tmp.XXXXXX", 12);
    int fd = mkstemp(a->tmp);
    if (fd < 0) {
        int err = errno;
        pare_free(a->tmp);
        a->tmp = NULL;
        return os_error(path, "cannot create a temporary file beside it", err);
    }
    if (fchmod(fd, target_mode(path)) != 0 || !(a->fp = fdopen(fd, "wb"))) {
        int err = errno;
        if (!a->fp) close(fd);
        atomic_abort(a);
        return os_error(path, "cannot open the temporary file", err);
    }
    return 0;
}

static int atomic_write(atomic_file *a, const void *p, size_t n)
{
    errno = 0;
    if (n == 0 || fwrite(p, 1, n, a->fp) == n) return 0;
    int err = errno ? errno : EIO;
    atomic_abort(a);
    return os_error(a->path, "write failed", err);
}

/* Makes the rename itself durable; not every file system supports it. */
static void sync_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir;
    if (!slash) {
        dir = pare_alloc(2);
        memcpy(dir, ".", 2);
    } else {
        size_t n = slash == path ? 1 : (size_t)(slash - path);
        dir = pare_alloc(n + 1);
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    pare_free(dir);
}

static int atomic_commit(atomic_file *a)
{
    const char *step = "write failed";
    FILE *fp = a->fp;
    errno = 0;
    if (fflush(a->fp) != 0) goto fail;
    step = "fsync failed";
    if (fsync(fileno(a->fp)) != 0) goto fail;
    step = "close failed";
    a->fp = NULL;
    if (fclose(fp) != 0) goto fail;
    step = "cannot rename the temporary file over it";
    if (rename(a->tmp, a->path) != 0) goto fail;
    pare_free(a->tmp);
    a->tmp = NULL;
    sync_dir(a->path);
    return 0;
fail:;
    int err = errno ? errno : EIO;
    atomic_abort(a);
    return os_error(a->path, step, err);
}

int pare_write_file_atomic(const char *path, const void *data, size_t len)
{
    atomic_file a;
    if (atomic_open(&a, path) || atomic_write(&a, data, len)) return -1;
    return atomic_commit(&a);
}

int pare_st_write(const char *path, const pare_st_tensor *tensors, int n, const char *const *metadata)
{
    if (!little_endian_host()) return -1;
    pare_jw w = {0};
    uint64_t total;
    if (header_json(tensors, n, metadata, &w, &total)) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", pare_error());
        pare_jw_free(&w);
        return pare_set_error("cannot save '%s': %s", path ? path : "", msg);
    }
    unsigned char len8[8];
    put_le64(len8, w.len);
    atomic_file a;
    int rc = atomic_open(&a, path) || atomic_write(&a, len8, 8) || atomic_write(&a, w.buf, w.len);
    for (int i = 0; i < n && !rc; i++) {
        size_t bytes =
            (size_t)tensor_bytes(tensors[i].ndim, tensors[i].shape, dtypes[tensors[i].dtype].size, UINT64_MAX);
        rc = atomic_write(&a, tensors[i].data, bytes);
    }
    pare_jw_free(&w);
    return rc ? -1 : atomic_commit(&a);
}

/* ---- reader ------------------------------------------------------------------------ */
struct pare_st_file {
    unsigned char *owned; /* the file image, when read from a path */
    const unsigned char *data;
    size_t data_len;
    pare_st_tensor *t; /* header order */
    const pare_st_tensor **by_name;
    int n;
    const char **meta; /* key, value, key, value ... */
    int n_meta;
    pare_json_doc doc; /* owns every name and string */
    char source[256];
};

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int
bad(const pare_st_file *f, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return pare_set_error("%s: %s", f->source, msg);
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp((*(const pare_st_tensor *const *)a)->name, (*(const pare_st_tensor *const *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    const pare_st_tensor *x = *(const pare_st_tensor *const *)a, *y = *(const pare_st_tensor *const *)b;
    const unsigned char *xa = x->data, *ya = y->data;
    if (xa != ya) return xa < ya ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static int read_metadata(pare_st_file *f, const pare_json *m)
{
    if (m->type == PARE_JSON_NULL) return 0;
    if (m->type != PARE_JSON_OBJECT)
        return bad(f, "__metadata__ must be an object of strings, found %s", pare_json_type_name(m->type));
    f->meta = pare_alloc((m->len ? m->len : 1) * 2 * sizeof *f->meta);
    for (const pare_json *e = m->first; e; e = e->next) {
        if (e->type != PARE_JSON_STRING)
            return bad(f, "__metadata__ value of '%s' must be a string, found %s", e->key,
                       pare_json_type_name(e->type));
        f->meta[2 * f->n_meta] = e->key;
        f->meta[2 * f->n_meta + 1] = e->str;
        f->n_meta++;
    }
    const char **keys = pare_alloc((size_t)(f->n_meta ? f->n_meta : 1) * sizeof *keys);
    for (int i = 0; i < f->n_meta; i++) keys[i] = f->meta[2 * i];
    int rc = check_unique(keys, f->n_meta, "__metadata__ key");
    pare_free(keys);
    return rc ? bad(f, "%s", pare_error()) : 0;
}

static int read_offsets(pare_st_file *f, pare_st_tensor *t, const pare_json *off)
{
    if (!off || off->type != PARE_JSON_ARRAY || off->len != 2)
        return bad(f, "tensor '%s': data_offsets must be an array [begin, end]", t->name);
    const pare_json *b = off->first, *e = off->first->next;
    if (!b->is_int || !e->is_int || b->i < 0 || e->i < 0)
        return bad(f, "tensor '%s': data_offsets must be non-negative integers", t->name);
    if (e->i < b->i) return bad(f, "tensor '%s': data_offsets end before they begin", t->name);
    if ((uint64_t)e->i > f->data_len)
        return bad(f, "tensor '%s': data ends at byte %lld, beyond the %zu bytes of tensor data (truncated file?)",
                   t->name, (long long)e->i, f->data_len);
    t->data = f->data + b->i;
    t->nbytes = (size_t)(e->i - b->i);
    return 0;
}

static int read_tensor(pare_st_file *f, pare_st_tensor *t, const pare_json *info)
{
    if (info->type != PARE_JSON_OBJECT)
        return bad(f, "tensor '%s': expected an object {dtype, shape, data_offsets}, found %s", t->name,
                   pare_json_type_name(info->type));
    const pare_json *dt = pare_json_get(info, "dtype"), *shape = pare_json_get(info, "shape");
    if (!dt || dt->type != PARE_JSON_STRING) return bad(f, "tensor '%s': dtype is missing or not a string", t->name);
    if (pare_st_dtype_parse(dt->str, &t->dtype)) return bad(f, "tensor '%s': unknown dtype '%.40s'", t->name, dt->str);
    if (!shape || shape->type != PARE_JSON_ARRAY)
        return bad(f, "tensor '%s': shape is missing or not an array", t->name);
    if (shape->len > PARE_ST_MAX_DIMS)
        return bad(f, "tensor '%s' has more than %d dimensions", t->name, PARE_ST_MAX_DIMS);
    t->ndim = (int)shape->len;
    int d = 0;
    for (const pare_json *s = shape->first; s; s = s->next, d++) {
        if (!s->is_int || s->i < 0) return bad(f, "tensor '%s': shape entries must be non-negative integers", t->name);
        t->shape[d] = s->i;
    }
    if (read_offsets(f, t, pare_json_get(info, "data_offsets"))) return -1;
    size_t elem = dtypes[t->dtype].size;
    uint64_t want = tensor_bytes(t->ndim, t->shape, elem, UINT64_MAX - 1);
    if (want != t->nbytes) {
        char s[128];
        shape64_str(t->ndim, t->shape, s, sizeof s);
        if (want == UINT64_MAX)
            return bad(f, "tensor '%s': shape %s of %s needs more bytes than the file holds", t->name, s,
                       dtypes[t->dtype].name);
        return bad(f, "tensor '%s': shape %s of %s needs %llu bytes, data_offsets span %zu", t->name, s,
                   dtypes[t->dtype].name, (unsigned long long)want, t->nbytes);
    }
    return 0;
}

/* Tensors must tile [0, data_len) exactly, as the reference reader demands. */
static int check_layout(pare_st_file *f)
{
    if (f->n == 0) return f->data_len ? bad(f, "%zu bytes of data follow a header with no tensors", f->data_len) : 0;
    const pare_st_tensor **order = pare_alloc((size_t)f->n * sizeof *order);
    for (int i = 0; i < f->n; i++) order[i] = &f->t[i];
    qsort(order, (size_t)f->n, sizeof *order, cmp_tensor_offset);
    size_t expect = 0;
    int rc = 0;
    for (int i = 0; i < f->n && !rc; i++) {
        size_t begin = (size_t)((const unsigned char *)order[i]->data - f->data);
        if (begin != expect)
            rc = bad(f,
                     "tensor '%s' begins at byte %zu, but the data before it ends at byte %zu (tensors must be "
                     "contiguous, without gaps or overlap)",
                     order[i]->name, begin, expect);
        expect = begin + order[i]->nbytes;
    }
    if (!rc && expect != f->data_len)
        rc =
            bad(f, "the tensors cover %zu bytes of data, but the file holds %zu after the header", expect, f->data_len);
    pare_free(order);
    return rc;
}

static int read_header(pare_st_file *f, const pare_json *root)
{
    if (root->type != PARE_JSON_OBJECT)
        return bad(f, "the header must be a JSON object, found %s", pare_json_type_name(root->type));
    f->t = pare_calloc((root->len ? root->len : 1) * sizeof *f->t);
    int seen_meta = 0;
    for (const pare_json *e = root->first; e; e = e->next) {
        if (strcmp(e->key, "__metadata__") == 0) {
            if (seen_meta++) return bad(f, "__metadata__ appears twice in the header");
            if (read_metadata(f, e)) return -1;
            continue;
        }
        pare_st_tensor *t = &f->t[f->n++];
        t->name = e->key;
        if (!t->name[0]) return bad(f, "a tensor has an empty name");
        if (read_tensor(f, t, e)) return -1;
    }
    f->by_name = pare_alloc((size_t)(f->n ? f->n : 1) * sizeof *f->by_name);
    for (int i = 0; i < f->n; i++) f->by_name[i] = &f->t[i];
    qsort(f->by_name, (size_t)f->n, sizeof *f->by_name, cmp_tensor_name);
    for (int i = 1; i < f->n; i++)
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0)
            return bad(f, "tensor '%s' appears twice in the header", f->by_name[i]->name);
    return check_layout(f);
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* Length prefix checks shared by the file and memory readers. */
static int check_prefix(const char *source, const unsigned char *buf, size_t len, uint64_t *header_len)
{
    if (len < 8)
        return pare_set_error("%s: only %zu bytes, too short to be a safetensors file (8-byte header length missing)",
                              source, len);
    uint64_t n = get_le64(buf);
    if (n > PARE_ST_MAX_HEADER)
        return pare_set_error("%s: header length %llu is above the 100 MB limit: not a safetensors file?", source,
                              (unsigned long long)n);
    if (n > len - 8)
        return pare_set_error("%s: header length %llu exceeds the %zu bytes that follow it: the file is truncated "
                              "or not safetensors",
                              source, (unsigned long long)n, len - 8);
    *header_len = n;
    return 0;
}

static pare_st_file *parse(const unsigned char *buf, size_t len, const char *what, unsigned char *owned)
{
    pare_st_file *f = pare_calloc(sizeof *f);
    f->owned = owned;
    snprintf(f->source, sizeof f->source, "%s", what ? what : "buffer");
    uint64_t n = 0;
    if (!little_endian_host() || check_prefix(f->source, buf, len, &n)) goto fail;
    if (n == 0 || buf[8] != '{') {
        bad(f, "the header does not start with '{': not a safetensors file");
        goto fail;
    }
    f->data = buf + 8 + n;
    f->data_len = len - 8 - (size_t)n;
    char what_json[300];
    snprintf(what_json, sizeof what_json, "%s: header", f->source);
    if (pare_json_parse(&f->doc, (const char *)buf + 8, (size_t)n, what_json)) goto fail;
    if (read_header(f, f->doc.root)) goto fail;
    return f;
fail:
    pare_st_close(f);
    return NULL;
}

pare_st_file *pare_st_parse(const void *buf, size_t len, const char *what)
{
    return parse(buf, len, what, NULL);
}

/* Reads the whole file, checking the length prefix before the bulk read. */
pare_st_file *pare_st_open(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        pare_set_error("cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        pare_set_error("cannot read '%s': not a regular file", path);
        fclose(fp);
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    unsigned char head[8];
    uint64_t n = 0;
    size_t got = fread(head, 1, size < 8 ? size : 8, fp);
    if (got != (size < 8 ? size : 8) || check_prefix(path, head, size, &n)) {
        if (got != (size < 8 ? size : 8)) pare_set_error("cannot read '%s': %s", path, strerror(errno ? errno : EIO));
        fclose(fp);
        return NULL;
    }
    unsigned char *buf = pare_alloc(size);
    memcpy(buf, head, 8);
    got = size > 8 ? fread(buf + 8, 1, size - 8, fp) : 0;
    int err = ferror(fp) ? errno : 0;
    fclose(fp);
    if (got != size - 8) {
        pare_free(buf);
        pare_set_error("cannot read '%s': %s", path, err ? strerror(err) : "the file shrank while it was read");
        return NULL;
    }
    return parse(buf, size, path, buf);
}

void pare_st_close(pare_st_file *f)
{
    if (!f) return;
    pare_json_doc_free(&f->doc);
    pare_free(f->t);
    pare_free(f->by_name);
    pare_free(f->meta);
    pare_free(f->owned);
    pare_free(f);
}

int pare_st_count(const pare_st_file *f)
{
    return f->n;
}

const pare_st_tensor *pare_st_at(const pare_st_file *f, int i)
{
    return i >= 0 && i < f->n ? &f->t[i] : NULL;
}

const pare_st_tensor *pare_st_find(const pare_st_file *f, const char *name)
{
    pare_st_tensor key;
    key.name = name;
    const pare_st_tensor *kp = &key;
    const pare_st_tensor **hit = bsearch(&kp, f->by_name, (size_t)f->n, sizeof *f->by_name, cmp_tensor_name);
    return hit ? *hit : NULL;
}

const pare_st_tensor *pare_st_expect(const pare_st_file *f, const char *name, pare_st_dtype dtype, int ndim,
                                     const int *shape)
{
    const pare_st_tensor *t = pare_st_find(f, name);
    char want[128], have[128];
    int64_t s64[PARE_ST_MAX_DIMS];
    for (int i = 0; i < ndim && i < PARE_ST_MAX_DIMS; i++) s64[i] = shape[i];
    shape64_str(ndim, s64, want, sizeof want);
    if (!t) {
        pare_set_error("%s: tensor '%s' (%s %s) is missing", f->source, name, pare_st_dtype_name(dtype), want);
        return NULL;
    }
    if (t->dtype != dtype) {
        pare_set_error("%s: tensor '%s' has dtype %s, expected %s", f->source, name, pare_st_dtype_name(t->dtype),
                       pare_st_dtype_name(dtype));
        return NULL;
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        pare_set_error("%s: tensor '%s' has shape %s in the file, expected %s", f->source, name,
                       shape64_str(t->ndim, t->shape, have, sizeof have), want);
        return NULL;
    }
    return t;
}

int pare_st_read(const pare_st_file *f, const char *name, pare_st_dtype dtype, int ndim, const int *shape, void *dst)
{
    const pare_st_tensor *t = pare_st_expect(f, name, dtype, ndim, shape);
    if (!t) return -1;
    if (t->nbytes) memcpy(dst, t->data, t->nbytes);
    return 0;
}

int pare_st_meta_count(const pare_st_file *f)
{
    return f->n_meta;
}
const char *pare_st_meta_key(const pare_st_file *f, int i)
{
    return i >= 0 && i < f->n_meta ? f->meta[2 * i] : NULL;
}
const char *pare_st_meta_value(const pare_st_file *f, int i)
{
    return i >= 0 && i < f->n_meta ? f->meta[2 * i + 1] : NULL;
}

const char *pare_st_meta(const pare_st_file *f, const char *key)
{
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[2 * i], key) == 0) return f->meta[2 * i + 1];
    return NULL;
}

const char *pare_st_source(const pare_st_file *f)
{
    return f->source;
}

/* ---- models ------------------------------------------------------------------------ */
static pare_param *model_tensors(pare_model *m, int *n)
{
    *n = pare_model_tensors(m, NULL, 0);
    pare_param *p = pare_alloc((size_t)(*n ? *n : 1) * sizeof *p);
    pare_model_tensors(m, p, *n);
    return p;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

int pare_load_into_st(pare_model *m, const pare_st_file *f)
{
    if (!m->built) return pare_set_error("%s: model '%s' is not built (call pare_build first)", f->source, m->arch);
    int n;
    pare_param *p = model_tensors(m, &n);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++)
        if (!pare_st_expect(f, p[i].name, PARE_ST_F32, p[i].t->ndim, p[i].t->shape)) rc = -1;
    const char **names = pare_alloc((size_t)(n ? n : 1) * sizeof *names);
    for (int i = 0; i < n; i++) names[i] = p[i].name;
    qsort(names, (size_t)n, sizeof *names, cmp_str_ptr);
    for (int j = 0; j < f->n && !rc; j++) {
        const char *name = f->t[j].name;
        if (ends_with(name, ".num_batches_tracked")) continue; /* PyTorch's BatchNorm counter */
        if (!bsearch(&name, names, (size_t)n, sizeof *names, cmp_str_ptr))
            rc = pare_set_error("%s: tensor '%s' is not part of model '%s' (a different architecture, or state of a "
                                "hook this model does not have)",
                                f->source, name, m->arch);
    }
    for (int i = 0; i < n && !rc; i++) {
        const pare_st_tensor *t = pare_st_find(f, p[i].name);
        if (t->nbytes) memcpy(p[i].t->data, t->data, t->nbytes);
    }
    pare_free(names);
    pare_free(p);
    return rc;
}

int pare_load_into(pare_model *m, const char *path)
{
    pare_st_file *f = pare_st_open(path);
    if (!f) return -1;
    int rc = pare_load_into_st(m, f);
    pare_st_close(f);
    return rc;
}

static pare_model *model_for_file(const pare_st_file *f, const char *arch_name)
{
    const char *format = pare_st_meta(f, "pare.format"), *arch = pare_st_meta(f, "pare.arch");
    if (format && strcmp(format, "float") != 0) {
        pare_set_error("%s: pare.format is '%.40s'; pare_load reads float models", f->source, format);
        return NULL;
    }
    if (arch) {
        /* Every parameter must be stored as F32, so the file bounds what the architecture may allocate. */
        pare_model *m = pare_arch_parse(arch, strlen(arch), f->data_len / sizeof(float));
        if (!m) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", pare_error());
            pare_set_error("%s: pare.arch: %s", f->source, msg);
        }
        return m;
    }
    if (!arch_name) {
        pare_set_error("%s: file has no pare metadata: pass --arch NAME (seedcnn, seedcnn-bn, kerascnn, lenet5, "
                       "lenet300, mlp64, mlp32)",
                       f->source);
        return NULL;
    }
    pare_model *m = pare_model_zoo(arch_name);
    if (m && pare_build(m, 1, 28, 28)) {
        pare_model_free(m);
        return NULL;
    }
    return m;
}

pare_model *pare_load_st(const pare_st_file *f, const char *arch_name)
{
    pare_model *m = model_for_file(f, arch_name);
    if (m && pare_load_into_st(m, f)) {
        pare_model_free(m);
        return NULL;
    }
    return m;
}

pare_model *pare_load(const char *path, const char *arch_name)
{
    pare_st_file *f = pare_st_open(path);
    if (!f) return NULL;
    pare_model *m = pare_load_st(f, arch_name);
    pare_st_close(f);
    return m;
}

int pare_save(pare_model *m, const char *path, const char *const *metadata)
{
    if (!m->built) return pare_set_error("cannot save '%s': model '%s' is not built (call pare_build)", path, m->arch);
    int n_extra = count_metadata(metadata);
    if (n_extra < 0) return -1;
    int len = pare_arch_to_json(m, NULL, 0);
    if (len < 0) return -1;
    char *arch = pare_alloc((size_t)len + 1);
    pare_arch_to_json(m, arch, (size_t)len + 1);
    const char **meta = pare_alloc((size_t)(2 * n_extra + 7) * sizeof *meta);
    const char *fixed[] = {"pare.format", "float", "pare.version", PARE_VERSION, "pare.arch", arch};
    memcpy(meta, fixed, sizeof fixed);
    if (n_extra) memcpy(meta + 6, metadata, (size_t)(2 * n_extra) * sizeof *meta);
    meta[6 + 2 * n_extra] = NULL;
    int n;
    pare_param *p = model_tensors(m, &n);
    pare_st_tensor *t = pare_alloc((size_t)(n ? n : 1) * sizeof *t);
    for (int i = 0; i < n; i++) t[i] = pare_st_f32(p[i].name, p[i].t);
    int rc = pare_st_write(path, t, n, meta);
    pare_free(t);
    pare_free(p);
    pare_free(meta);
    pare_free(arch);
    return rc;
}
