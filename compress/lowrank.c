/* Low-rank factorization: a one-sided Jacobi SVD in double precision and the
 * surgery that splits a Linear or Conv2d layer into two through nn's
 * layer-edit API. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compress/compress.h"

/* ---- SVD ---------------------------------------------------------------------- */
#define SVD_MAX_SWEEPS 60
/* Columns count as orthogonal when |<a,b>| <= TOL * |a| |b|. */
#define SVD_TOL 1e-15

/* One rotation of columns p and q of w (rows x cols, column-major) and of v
 * (cols x cols, column-major) that makes them orthogonal. Returns 1 if it
 * had to rotate. Hestenes' method: the column pair's 2x2 Gram matrix is
 * diagonalized by a Jacobi rotation. */
static int rotate_pair(double *w, double *v, int rows, int cols, int p, int q)
{
    double *a = w + (size_t)p * rows, *b = w + (size_t)q * rows;
    double alpha = 0, beta = 0, gamma = 0;
    for (int i = 0; i < rows; i++) {
        alpha += a[i] * a[i];
        beta += b[i] * b[i];
        gamma += a[i] * b[i];
    }
    if (gamma == 0 || fabs(gamma) <= SVD_TOL * sqrt(alpha * beta)) return 0;
    double zeta = (beta - alpha) / (2 * gamma);
    double t = (zeta >= 0 ? 1.0 : -1.0) / (fabs(zeta) + sqrt(1 + zeta * zeta));
    double c = 1 / sqrt(1 + t * t), s = c * t;
    for (int i = 0; i < rows; i++) {
        double x = a[i], y = b[i];
        a[i] = c * x - s * y;
        b[i] = s * x + c * y;
    }
    double *va = v + (size_t)p * cols, *vb = v + (size_t)q * cols;
    for (int i = 0; i < cols; i++) {
        double x = va[i], y = vb[i];
        va[i] = c * x - s * y;
        vb[i] = s * x + c * y;
    }
    return 1;
}

/* Orthogonalizes the columns of w (rows >= cols), accumulating the rotations
 * in v. -1 if the sweeps do not settle. */
static int jacobi(double *w, double *v, int rows, int cols)
{
    for (int sweep = 0; sweep < SVD_MAX_SWEEPS; sweep++) {
        int rotated = 0;
        for (int p = 0; p < cols - 1; p++)
            for (int q = p + 1; q < cols; q++) rotated |= rotate_pair(w, v, rows, cols, p, q);
        if (!rotated) return 0;
    }
    return pare_set_error("svd: one-sided Jacobi did not converge in %d sweeps", SVD_MAX_SWEEPS);
}

typedef struct sv_index {
    double s;
    int j;
} sv_index;

static int by_value_desc(const void *a, const void *b)
{
    const sv_index *x = a, *y = b;
    return x->s < y->s ? 1 : x->s > y->s ? -1 : x->j - y->j;
}

/* From the orthogonalized columns w and the rotations v (column-major), the
 * sorted factors: left (rows x k) = w_j / |w_j|, right (cols x k) = v_j, row-major. */
static void collect(const double *w, const double *v, int rows, int cols, double *left, double *s, double *right)
{
    sv_index *order = pare_alloc((size_t)cols * sizeof *order);
    for (int j = 0; j < cols; j++) {
        double n2 = 0;
        for (int i = 0; i < rows; i++) n2 += w[(size_t)j * rows + i] * w[(size_t)j * rows + i];
        order[j].s = sqrt(n2);
        order[j].j = j;
    }
    qsort(order, (size_t)cols, sizeof *order, by_value_desc);
    for (int r = 0; r < cols; r++) {
        int j = order[r].j;
        double sv = order[r].s;
        s[r] = sv;
        for (int i = 0; i < rows; i++) left[(size_t)i * cols + r] = sv > 0 ? w[(size_t)j * rows + i] / sv : 0;
        for (int i = 0; i < cols; i++) right[(size_t)i * cols + r] = v[(size_t)j * cols + i];
    }
    pare_free(order);
}

int pare_svd(const double *a, int m, int n, double *u, double *s, double *v)
{
    if (m < 1 || n < 1) return pare_set_error("svd: sizes must be positive (got %d x %d)", m, n);
    /* Work on the tall one of A and A^T: its columns are the ones rotated. */
    int tall = m >= n, rows = tall ? m : n, cols = tall ? n : m;
    double *w = pare_alloc((size_t)rows * cols * sizeof(double));
    double *rot = pare_alloc((size_t)cols * cols * sizeof(double));
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            /* column-major w: column c, row r at c * rows + r */
            if (tall)
                w[(size_t)j * rows + i] = a[(size_t)i * n + j];
            else
                w[(size_t)i * rows + j] = a[(size_t)i * n + j];
        }
    for (int i = 0; i < cols * cols; i++) rot[i] = i % (cols + 1) == 0;
    int rc = jacobi(w, rot, rows, cols);
    /* A = W V^T when tall; A^T = W V^T otherwise, so A's U and V swap. */
    if (!rc) collect(w, rot, rows, cols, tall ? u : v, s, tall ? v : u);
    pare_free(w);
    pare_free(rot);
    return rc;
}

int pare_rank_for_energy(const double *s, int k, double share)
{
    if (!(share > 0 && share <= 1)) return pare_set_error("energy share must be in (0, 1] (got %g)", share);
    if (k < 1) return pare_set_error("no singular values");
    double total = 0, kept = 0;
    for (int i = 0; i < k; i++) total += s[i] * s[i];
    for (int r = 1; r <= k; r++) {
        kept += s[r - 1] * s[r - 1];
        /* The last rank always qualifies, whatever the rounding of the sums. */
        if (kept >= share * total || r == k) return r;
    }
    return k;
}

/* ---- layer surgery -------------------------------------------------------------- */
/* The layer's weight as a matrix [out, in * k * k], or NULL with the error set. */
static pare_layer *factor_layer(pare_model *m, const char *name, int *rows, int *cols)
{
    if (!m->built) {
        pare_set_error("low rank: model '%s' is not built (call pare_build first)", m->arch);
        return NULL;
    }
    pare_layer *l = name ? pare_model_find(m, name) : NULL;
    if (!l) {
        pare_set_error("low rank: the model '%s' has no layer named '%s'", m->arch, name ? name : "(null)");
        return NULL;
    }
    if (!(l->kind & (PARE_LINEAR | PARE_CONV2D)) || !l->weight) {
        pare_set_error("low rank: layer %s is a %s; only a built Linear or Conv2d can be factorized", l->name,
                       l->type->type_name);
        return NULL;
    }
    *rows = l->weight->shape[0];
    *cols = (int)(l->weight->size / (size_t)*rows);
    return l;
}

int pare_lowrank_max_rank(pare_model *m, const char *name)
{
    int rows, cols;
    if (!factor_layer(m, name, &rows, &cols)) return -1;
    return rows < cols ? rows : cols;
}

size_t pare_lowrank_params(pare_model *m, const char *name, int rank)
{
    int rows, cols;
    pare_layer *l = factor_layer(m, name, &rows, &cols);
    if (!l || rank < 1) return 0;
    return (size_t)rank * (size_t)(rows + cols) + (l->bias ? (size_t)rows : 0);
}

/* SVD of a layer's weight: u rows x k, s k, v cols x k; k = min(rows, cols). */
typedef struct layer_svd {
    int rows, cols, k;
    double *u, *s, *v;
} layer_svd;

static void layer_svd_free(layer_svd *d)
{
    pare_free(d->u);
    pare_free(d->s);
    pare_free(d->v);
}

static int layer_svd_of(const pare_layer *l, int rows, int cols, layer_svd *d)
{
    d->rows = rows;
    d->cols = cols;
    d->k = rows < cols ? rows : cols;
    double *a = pare_alloc((size_t)rows * cols * sizeof(double));
    for (size_t i = 0; i < (size_t)rows * cols; i++) a[i] = l->weight->data[i];
    d->u = pare_alloc((size_t)rows * d->k * sizeof(double));
    d->s = pare_alloc((size_t)d->k * sizeof(double));
    d->v = pare_alloc((size_t)cols * d->k * sizeof(double));
    int rc = pare_svd(a, rows, cols, d->u, d->s, d->v);
    pare_free(a);
    if (rc) layer_svd_free(d);
    return rc;
}

int pare_lowrank_energy_rank(pare_model *m, const char *name, double share)
{
    int rows, cols;
    pare_layer *l = factor_layer(m, name, &rows, &cols);
    layer_svd d;
    if (!l || layer_svd_of(l, rows, cols, &d)) return -1;
    int r = pare_rank_for_energy(d.s, d.k, share);
    layer_svd_free(&d);
    return r;
}

/* The two replacement layers, parameters filled, so that pare_build keeps
 * them: first = sqrt(S) V^T (r x cols), second = U sqrt(S) (rows x r). */
static void make_factors(const pare_layer *l, const layer_svd *d, int r, pare_layer **first, pare_layer **second)
{
    char n0[PARE_NAME_MAX + 8], n1[PARE_NAME_MAX + 8];
    snprintf(n0, sizeof n0, "%s.0", l->name);
    snprintf(n1, sizeof n1, "%s.1", l->name);
    int conv = l->kind == PARE_CONV2D, k = l->kernel, cin = l->in_features;
    *first = conv ? pare_conv2d_ex(n0, cin, r, k, l->stride, l->pad, 0) : pare_linear_nobias(n0, cin, r);
    *second = conv ? pare_conv2d_ex(n1, r, d->rows, 1, 1, 0, l->bias != NULL)
                   : (l->bias ? pare_linear(n1, r, d->rows) : pare_linear_nobias(n1, r, d->rows));
    int s0[4] = {r, cin, k, k}, s1[4] = {d->rows, r, 1, 1};
    if (!conv) s0[1] = d->cols;
    (*first)->weight = pare_tensor_persistent(conv ? 4 : 2, s0, 1);
    (*second)->weight = pare_tensor_persistent(conv ? 4 : 2, s1, 1);
    for (int j = 0; j < r; j++) {
        double root = sqrt(d->s[j]);
        for (int c = 0; c < d->cols; c++)
            (*first)->weight->data[(size_t)j * d->cols + c] = (float)(root * d->v[(size_t)c * d->k + j]);
        for (int o = 0; o < d->rows; o++)
            (*second)->weight->data[(size_t)o * r + j] = (float)(d->u[(size_t)o * d->k + j] * root);
    }
    if (l->bias) {
        int n = d->rows;
        (*second)->bias = pare_tensor_persistent(1, &n, 1);
        memcpy((*second)->bias->data, l->bias->data, (size_t)n * sizeof(float));
    }
}

static int check_rank(pare_model *m, const pare_layer *l, int rank, int max_rank)
{
    char part[PARE_NAME_MAX + 8];
    for (int i = 0; i < 2; i++) {
        snprintf(part, sizeof part, "%s.%d", l->name, i);
        if (strlen(part) >= PARE_NAME_MAX || pare_model_find(m, part))
            return pare_set_error("low rank: cannot name the factors of %s '%s' (too long, or taken)", l->name, part);
    }
    if (l->weight_hooks.n || l->output_hooks.n)
        return pare_set_error("low rank: layer %s has hooks (masks or fake-quant); factorize before pruning or "
                              "quantizing",
                              l->name);
    if (rank < 1 || rank > max_rank)
        return pare_set_error("low rank: rank %d for layer %s is outside [1, %d]", rank, l->name, max_rank);
    return 0;
}

int pare_lowrank_layer(pare_model *m, const char *name, int rank)
{
    int rows, cols;
    pare_layer *l = factor_layer(m, name, &rows, &cols);
    if (!l || check_rank(m, l, rank, rows < cols ? rows : cols)) return -1;
    int c = m->in_shape[0], h = m->in_ndim == 3 ? m->in_shape[1] : 0, w = m->in_ndim == 3 ? m->in_shape[2] : 0;
    layer_svd d;
    if (layer_svd_of(l, rows, cols, &d)) return -1;
    pare_layer *first, *second;
    make_factors(l, &d, rank, &first, &second);
    layer_svd_free(&d);
    int index = pare_model_index(m, name);
    /* replace frees l; neither call can fail for an index inside the model. */
    pare_model_replace(m, index, first);
    pare_model_insert(m, index + 1, second);
    return pare_build(m, c, h, w);
}
