/* Sparse storage: CSR with narrow column indices, a sparse x dense kernel
 * for a Linear layer's forward pass, and a compressed save format.
 *
 * Why CSR with 16-bit columns: the layers here have at most a few thousand
 * inputs, so a column index fits in 2 bytes, and a kept weight costs 6 bytes
 * (4 value + 2 index) against 4 bytes per weight dense: CSR wins above
 * 1/3 sparsity, and at 90% stores 15% of the dense bytes. Row pointers are
 * stored as per-row counts, 16-bit when every row fits. */
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "compress/prune.h"
#include "nn/safetensors.h"

pare_csr *pare_csr_from_dense(const float *w, int rows, int cols)
{
    if (rows <= 0 || cols <= 0) {
        pare_set_error("csr: a %d x %d matrix is not valid", rows, cols);
        return NULL;
    }
    size_t nnz = 0, total = (size_t)rows * (size_t)cols;
    for (size_t i = 0; i < total; i++) nnz += w[i] != 0.0f;
    if (nnz > INT32_MAX) {
        pare_set_error("csr: %zu non-zeros do not fit 32-bit row pointers", nnz);
        return NULL;
    }
    pare_csr *a = pare_calloc(sizeof *a);
    a->rows = rows, a->cols = cols, a->nnz = (int)nnz;
    a->row_ptr = pare_alloc((size_t)(rows + 1) * sizeof *a->row_ptr);
    a->values = pare_alloc((nnz ? nnz : 1) * sizeof *a->values);
    if (cols <= 65536)
        a->col16 = pare_alloc((nnz ? nnz : 1) * sizeof *a->col16);
    else
        a->col32 = pare_alloc((nnz ? nnz : 1) * sizeof *a->col32);
    int k = 0;
    for (int r = 0; r < rows; r++) {
        a->row_ptr[r] = k;
        const float *row = w + (size_t)r * cols;
        for (int c = 0; c < cols; c++) {
            if (row[c] == 0.0f) continue;
            a->values[k] = row[c];
            if (a->col16)
                a->col16[k] = (uint16_t)c;
            else
                a->col32[k] = c;
            k++;
        }
    }
    a->row_ptr[rows] = k;
    return a;
}

void pare_csr_free(pare_csr *a)
{
    if (!a) return;
    pare_free(a->row_ptr);
    pare_free(a->values);
    pare_free(a->col16);
    pare_free(a->col32);
    pare_free(a);
}

void pare_csr_to_dense(const pare_csr *a, float *w)
{
    memset(w, 0, (size_t)a->rows * (size_t)a->cols * sizeof *w);
    for (int r = 0; r < a->rows; r++)
        for (int k = a->row_ptr[r]; k < a->row_ptr[r + 1]; k++)
            w[(size_t)r * a->cols + (a->col16 ? a->col16[k] : (uint32_t)a->col32[k])] = a->values[k];
}

/* One row times one input vector; four partial sums hide the FMA latency.
 * With AVX-512, 16 non-zeros at a time through a gather of x. */
static float row_dot16(const float *v, const uint16_t *c, int n, const float *x)
{
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int k = 0;
#ifdef __AVX512F__
    __m512 acc = _mm512_setzero_ps();
    for (; k + 16 <= n; k += 16) {
        __m512i idx = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(c + k)));
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(v + k), _mm512_i32gather_ps(idx, x, 4), acc);
    }
    s0 = _mm512_reduce_add_ps(acc);
#endif
    for (; k + 4 <= n; k += 4) {
        s0 += v[k] * x[c[k]];
        s1 += v[k + 1] * x[c[k + 1]];
        s2 += v[k + 2] * x[c[k + 2]];
        s3 += v[k + 3] * x[c[k + 3]];
    }
    for (; k < n; k++) s0 += v[k] * x[c[k]];
    return (s0 + s1) + (s2 + s3);
}

static float row_dot32(const float *v, const int32_t *c, int n, const float *x)
{
    float s0 = 0, s1 = 0;
    int k = 0;
    for (; k + 2 <= n; k += 2) {
        s0 += v[k] * x[c[k]];
        s1 += v[k + 1] * x[c[k + 1]];
    }
    for (; k < n; k++) s0 += v[k] * x[c[k]];
    return s0 + s1;
}

void pare_csr_linear(const pare_csr *a, const float *x, int n, const float *bias, float *y)
{
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * a->cols;
        float *yi = y + (size_t)i * a->rows;
        for (int r = 0; r < a->rows; r++) {
            int b = a->row_ptr[r], len = a->row_ptr[r + 1] - b;
            float s = a->col16 ? row_dot16(a->values + b, a->col16 + b, len, xi)
                               : row_dot32(a->values + b, a->col32 + b, len, xi);
            yi[r] = bias ? s + bias[r] : s;
        }
    }
}

static inline int col_at(const pare_csr *a, int k)
{
    return a->col16 ? a->col16[k] : a->col32[k];
}

/* One CSR row times B: y[0:p] (+)= sum_k v_k B[c_k, 0:p]. Every non-zero is
 * a contiguous axpy over p, which vectorizes, where the row-dot kernel above
 * gathers; four non-zeros per pass over y cut its loads and stores by 4. The
 * additions run in non-zero order, like the row-dot kernel's scalar path. */
static void row_spmm(const pare_csr *a, int r, const float *B, size_t ldb, int p, float *restrict y)
{
    int k = a->row_ptr[r], end = a->row_ptr[r + 1];
    for (; k + 4 <= end; k += 4) {
        const float *restrict b0 = B + (size_t)col_at(a, k) * ldb, *restrict b1 = B + (size_t)col_at(a, k + 1) * ldb;
        const float *restrict b2 = B + (size_t)col_at(a, k + 2) * ldb, *restrict b3 =
                                                                           B + (size_t)col_at(a, k + 3) * ldb;
        float v0 = a->values[k], v1 = a->values[k + 1], v2 = a->values[k + 2], v3 = a->values[k + 3];
        for (int j = 0; j < p; j++) y[j] = y[j] + v0 * b0[j] + v1 * b1[j] + v2 * b2[j] + v3 * b3[j];
    }
    for (; k < end; k++) {
        const float *restrict b0 = B + (size_t)col_at(a, k) * ldb;
        float v0 = a->values[k];
        for (int j = 0; j < p; j++) y[j] += v0 * b0[j];
    }
}

void pare_csr_spmm(const pare_csr *a, const float *B, size_t ldb, int p, const float *bias, float *Y, size_t ldy)
{
#pragma omp parallel for schedule(static) if ((size_t)a->nnz * (size_t)p > PARE_PARALLEL_MIN)
    for (int r = 0; r < a->rows; r++) {
        float *y = Y + (size_t)r * ldy, b = bias ? bias[r] : 0.0f;
        for (int j = 0; j < p; j++) y[j] = b;
        row_spmm(a, r, B, ldb, p, y);
    }
}

/* Samples per block of the batched Linear: x's block is transposed to
 * [cols, LINEAR_BLOCK] so each non-zero is an axpy over 32 samples. */
#define LINEAR_BLOCK 64

/* dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols. In tiles of 16
 * columns, so the 16 destination rows being written stay in L1 while the
 * source is read a 64-byte line at a time. */
static void transpose(const float *src, size_t lds, int rows, int cols, float *dst, size_t ldd)
{
    for (int c0 = 0; c0 < cols; c0 += 16) {
        int c1 = c0 + 16 < cols ? c0 + 16 : cols;
        for (int r = 0; r < rows; r++)
            for (int c = c0; c < c1; c++) dst[(size_t)c * ldd + r] = src[(size_t)r * lds + c];
    }
}

size_t pare_csr_linear_scratch(const pare_csr *a, int n)
{
    return n < PARE_CSR_BATCHED_MIN ? 0 : (size_t)(a->cols + a->rows) * LINEAR_BLOCK;
}

void pare_csr_linear_into(const pare_csr *a, const float *x, int n, const float *bias, float *y, float *scratch)
{
    if (n < PARE_CSR_BATCHED_MIN) {
        pare_csr_linear(a, x, n, bias, y);
        return;
    }
    float *xt = scratch, *yt = scratch + (size_t)a->cols * LINEAR_BLOCK;
    for (int i0 = 0; i0 < n; i0 += LINEAR_BLOCK) {
        int nb = n - i0 < LINEAR_BLOCK ? n - i0 : LINEAR_BLOCK;
        const float *xb = x + (size_t)i0 * a->cols;
        transpose(xb, (size_t)a->cols, nb, a->cols, xt, LINEAR_BLOCK);
        pare_csr_spmm(a, xt, LINEAR_BLOCK, nb, bias, yt, LINEAR_BLOCK);
        float *yb = y + (size_t)i0 * a->rows;
        transpose(yt, LINEAR_BLOCK, a->rows, nb, yb, (size_t)a->rows);
    }
}

/* Row counts fit 16 bits when no row holds more than 65535 non-zeros. */
static int counts16(const pare_csr *a)
{
    for (int r = 0; r < a->rows; r++)
        if (a->row_ptr[r + 1] - a->row_ptr[r] > 65535) return 0;
    return 1;
}

size_t pare_csr_bytes(const pare_csr *a)
{
    return (size_t)a->nnz * (sizeof(float) + (a->col16 ? 2u : 4u)) + (size_t)a->rows * (counts16(a) ? 2u : 4u);
}

/* ---- the compressed file format ---------------------------------------------------- */
#define MAX_ENTRIES 512

typedef struct writer {
    pare_st_tensor t[MAX_ENTRIES];
    char names[MAX_ENTRIES][140];
    void *owned[MAX_ENTRIES];
    int n, n_owned;
} writer;

static const char *entry_name(writer *w, const char *base, const char *suffix)
{
    snprintf(w->names[w->n], sizeof w->names[0], "%.120s%s", base, suffix);
    return w->names[w->n];
}

static void add_raw(writer *w, const char *base, const char *suffix, pare_st_dtype dt, int64_t count, const void *data)
{
    pare_st_tensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = entry_name(w, base, suffix);
    t->dtype = dt;
    t->ndim = 1;
    t->shape[0] = count;
    t->data = data;
    w->n++;
}

/* A weight as CSR entries, or NULL when dense is no bigger. */
static int add_weight(writer *w, const char *name, const pare_tensor *t)
{
    int rows = t->shape[0], cols = (int)(t->size / (size_t)rows);
    pare_csr *a = pare_csr_from_dense(t->data, rows, cols);
    if (!a) return -1;
    if (pare_csr_bytes(a) >= t->size * sizeof(float) || w->n + 3 > MAX_ENTRIES) {
        pare_csr_free(a);
        w->t[w->n] = pare_st_f32(entry_name(w, name, ""), t);
        w->n++;
        return 0;
    }
    int c16 = counts16(a);
    void *counts = pare_alloc((size_t)rows * (c16 ? 2u : 4u));
    for (int r = 0; r < rows; r++) {
        int32_t c = a->row_ptr[r + 1] - a->row_ptr[r];
        if (c16)
            ((uint16_t *)counts)[r] = (uint16_t)c;
        else
            ((int32_t *)counts)[r] = c;
    }
    add_raw(w, name, ".values", PARE_ST_F32, a->nnz, a->values);
    add_raw(w, name, ".col", a->col16 ? PARE_ST_U16 : PARE_ST_I32, a->nnz,
            a->col16 ? (const void *)a->col16 : (const void *)a->col32);
    add_raw(w, name, ".row_nnz", c16 ? PARE_ST_U16 : PARE_ST_I32, rows, counts);
    /* Keep the arrays alive until the write: the CSR struct is freed, its arrays are not. */
    w->owned[w->n_owned++] = counts;
    w->owned[w->n_owned++] = a->values;
    w->owned[w->n_owned++] = a->col16 ? (void *)a->col16 : (void *)a->col32;
    pare_free(a->row_ptr);
    pare_free(a);
    return 0;
}

/* The tensors of one layer, each as (name, tensor, is a prunable weight). */
static int layer_tensors(pare_layer *l, const char *names[4], pare_tensor *ts[4], int *sparse_ok)
{
    static const char *const keys[4] = {"weight", "bias", "running_mean", "running_var"};
    pare_tensor *all[4] = {l->weight, l->bias, l->running_mean, l->running_var};
    int n = 0;
    for (int i = 0; i < 4; i++)
        if (all[i]) {
            names[n] = keys[i];
            sparse_ok[n] = i == 0 && (l->kind & (PARE_LINEAR | PARE_CONV2D));
            ts[n++] = all[i];
        }
    return n;
}

int pare_prune_save_sparse(pare_model *m, const char *path)
{
    if (!m->built) return pare_set_error("cannot save '%s': model '%s' is not built", path, m->arch);
    pare_prune_apply(m, NULL);
    writer *w = pare_calloc(sizeof *w);
    int rc = 0;
    for (int i = 0; i < m->n_layers && !rc; i++) {
        pare_layer *l = m->layers[i];
        const char *keys[4];
        pare_tensor *ts[4];
        int ok[4], n = layer_tensors(l, keys, ts, ok);
        for (int k = 0; k < n && !rc; k++) {
            char name[128];
            snprintf(name, sizeof name, "%.47s.%s", l->name, keys[k]);
            if (w->n + 3 > MAX_ENTRIES)
                rc = pare_set_error("sparse save: the model has too many tensors");
            else if (ok[k])
                rc = add_weight(w, name, ts[k]);
            else {
                w->t[w->n] = pare_st_f32(entry_name(w, name, ""), ts[k]);
                w->n++;
            }
        }
    }
    int len = rc ? -1 : pare_arch_to_json(m, NULL, 0);
    if (len < 0) rc = -1;
    if (!rc) {
        char *arch = pare_alloc((size_t)len + 1), pruned[4096] = "";
        pare_arch_to_json(m, arch, (size_t)len + 1);
        for (int i = 0; i < m->n_layers; i++)
            if (pare_prune_mask(m->layers[i]))
                snprintf(pruned + strlen(pruned), sizeof pruned - strlen(pruned), "%s%s", pruned[0] ? "," : "",
                         m->layers[i]->name);
        const char *meta[] = {"pare.format", "sparse", "pare.arch", arch, "pare.pruned", pruned, NULL};
        if (!pruned[0]) meta[4] = NULL;
        rc = pare_st_write(path, w->t, w->n, meta);
        pare_free(arch);
    }
    for (int i = 0; i < w->n_owned; i++) pare_free(w->owned[i]);
    pare_free(w);
    return rc;
}

/* Reads "<name>.values/.col/.row_nnz" into the dense tensor t, checking
 * every count and index against t's shape. */
static int read_csr(const pare_st_file *f, const char *name, pare_tensor *t, int *used)
{
    char key[160];
    int rows = t->shape[0], cols = (int)(t->size / (size_t)rows);
    snprintf(key, sizeof key, "%s.values", name);
    const pare_st_tensor *v = pare_st_find(f, key);
    snprintf(key, sizeof key, "%s.col", name);
    const pare_st_tensor *c = pare_st_find(f, key);
    snprintf(key, sizeof key, "%s.row_nnz", name);
    const pare_st_tensor *r = pare_st_find(f, key);
    if (!v || !c || !r) return pare_set_error("%s: tensor %s is missing", pare_st_source(f), name);
    int64_t nnz = v->ndim == 1 ? v->shape[0] : -1;
    int cw = c->dtype == PARE_ST_U16 ? 2 : c->dtype == PARE_ST_I32 ? 4 : 0;
    int rw = r->dtype == PARE_ST_U16 ? 2 : r->dtype == PARE_ST_I32 ? 4 : 0;
    if (v->dtype != PARE_ST_F32 || nnz < 0 || nnz > (int64_t)t->size || c->ndim != 1 || c->shape[0] != nnz || !cw ||
        r->ndim != 1 || r->shape[0] != rows || !rw)
        return pare_set_error("%s: the sparse tensor %s does not match its %d x %d shape", pare_st_source(f), name,
                              rows, cols);
    memset(t->data, 0, t->size * sizeof(float));
    const unsigned char *vb = v->data, *cb = c->data, *rb = r->data;
    int64_t k = 0;
    for (int row = 0; row < rows; row++) {
        int32_t count;
        if (rw == 2) {
            uint16_t u;
            memcpy(&u, rb + 2 * (size_t)row, 2);
            count = u;
        } else
            memcpy(&count, rb + 4 * (size_t)row, 4);
        if (count < 0 || count > cols || k + count > nnz)
            return pare_set_error("%s: %s row %d claims %d non-zeros", pare_st_source(f), name, row, (int)count);
        for (int32_t j = 0; j < count; j++, k++) {
            int32_t col;
            if (cw == 2) {
                uint16_t u;
                memcpy(&u, cb + 2 * (size_t)k, 2);
                col = u;
            } else
                memcpy(&col, cb + 4 * (size_t)k, 4);
            if (col < 0 || col >= cols)
                return pare_set_error("%s: %s row %d has column %d of %d", pare_st_source(f), name, row, (int)col,
                                      cols);
            memcpy(&t->data[(size_t)row * cols + col], vb + 4 * (size_t)k, 4);
        }
    }
    if (k != nnz)
        return pare_set_error("%s: %s has %lld values but its rows hold %lld", pare_st_source(f), name, (long long)nnz,
                              (long long)k);
    *used += 3;
    return 0;
}

static int read_tensors(const pare_st_file *f, pare_model *m)
{
    int used = 0;
    for (int i = 0; i < m->n_layers; i++) {
        pare_layer *l = m->layers[i];
        const char *keys[4];
        pare_tensor *ts[4];
        int ok[4], n = layer_tensors(l, keys, ts, ok);
        for (int k = 0; k < n; k++) {
            char name[128];
            snprintf(name, sizeof name, "%.47s.%s", l->name, keys[k]);
            if (pare_st_find(f, name)) {
                if (pare_st_read(f, name, PARE_ST_F32, ts[k]->ndim, ts[k]->shape, ts[k]->data)) return -1;
                used++;
            } else if (!ok[k]) {
                return pare_set_error("%s: tensor %s is missing", pare_st_source(f), name);
            } else if (read_csr(f, name, ts[k], &used)) {
                return -1;
            }
        }
    }
    if (used != pare_st_count(f))
        return pare_set_error("%s: %d tensors are not part of the model", pare_st_source(f), pare_st_count(f) - used);
    return 0;
}

pare_model *pare_prune_load_sparse(const char *path)
{
    pare_st_file *f = pare_st_open(path);
    if (!f) return NULL;
    const char *format = pare_st_meta(f, "pare.format"), *arch = pare_st_meta(f, "pare.arch");
    const char *pruned = pare_st_meta(f, "pare.pruned");
    pare_model *m = NULL;
    if (!format || strcmp(format, "sparse") != 0 || !arch) {
        pare_set_error("%s: not a sparse pare model (pare.format '%.40s')", path, format ? format : "");
    } else if ((m = pare_arch_from_json(arch)) != NULL) {
        if (read_tensors(f, m) || (pruned && pruned[0] && pare_prune_restore(m, pruned))) {
            pare_model_free(m);
            m = NULL;
        }
    }
    pare_st_close(f);
    return m;
}
