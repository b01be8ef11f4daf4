/* The architecture as JSON, so a pruned or factorized model rebuilds from its
 * file alone:
 *   {"arch":"seedcnn","input":[1,28,28],"layers":[
 *     {"type":"Conv2d","name":"conv1","in":1,"out":32,"kernel":3,"stride":1,"pad":0,"bias":true},
 *     {"type":"ReLU"}, {"type":"MaxPool2d","kernel":2,"stride":2}, ...]}
 * The reader is strict (every field the writer writes is required, unknown
 * fields are errors) because a typo silently defaulted would build a
 * different model than the one whose weights are in the file. */
#include <limits.h>
#include <math.h>
#include <string.h>

#include "nn/json.h"
#include "nn/nn.h"

/* The fields each layer type has besides "type"; "name" is allowed on all. */
static const struct kind_info {
    pare_layer_kind kind;
    const char *type;
    const char *fields[7];
} kinds[] = {
    {PARE_LINEAR, "Linear", {"name", "in", "out", "bias"}},
    {PARE_CONV2D, "Conv2d", {"name", "in", "out", "kernel", "stride", "pad", "bias"}},
    {PARE_MAXPOOL2D, "MaxPool2d", {"name", "kernel", "stride"}},
    {PARE_AVGPOOL2D, "AvgPool2d", {"name", "kernel", "stride"}},
    {PARE_RELU, "ReLU", {"name"}},
    {PARE_SIGMOID, "Sigmoid", {"name"}},
    {PARE_TANH, "Tanh", {"name"}},
    {PARE_FLATTEN, "Flatten", {"name"}},
    {PARE_DROPOUT, "Dropout", {"name", "p"}},
    {PARE_BATCHNORM2D, "BatchNorm2d", {"name", "features", "eps", "momentum"}},
    {PARE_SOFTMAX, "Softmax", {"name"}},
    {PARE_LOG_SOFTMAX, "LogSoftmax", {"name"}},
};
#define N_KINDS (int)(sizeof kinds / sizeof kinds[0])
#define KNOWN_TYPES                                                                                                    \
    "Linear, Conv2d, MaxPool2d, AvgPool2d, ReLU, Sigmoid, Tanh, Flatten, Dropout, BatchNorm2d, "                       \
    "Softmax, LogSoftmax"

/* Bounds that keep every size computed from the file far from int overflow. */
#define MAX_FEATURES       (1 << 24)
#define MAX_SPATIAL        65535
#define MAX_WINDOW         1024
#define MAX_LAYERS         4096
#define DEFAULT_MAX_PARAMS ((size_t)1 << 28)

static const struct kind_info *kind_of(pare_layer_kind k)
{
    for (int i = 0; i < N_KINDS; i++)
        if (kinds[i].kind == k) return &kinds[i];
    return NULL;
}

/* ---- writer ---------------------------------------------------------------------- */
static void field_int(pare_jw *w, const char *key, long long v)
{
    pare_jw_raw(w, ",");
    pare_jw_str(w, key);
    pare_jw_raw(w, ":");
    pare_jw_int(w, v);
}

static void field_float(pare_jw *w, const char *key, float v)
{
    pare_jw_raw(w, ",");
    pare_jw_str(w, key);
    pare_jw_raw(w, ":");
    pare_jw_float(w, v);
}

static void layer_json(pare_jw *w, const pare_layer *l, const struct kind_info *k)
{
    pare_jw_raw(w, "{\"type\":");
    pare_jw_str(w, k->type);
    if (l->name[0]) {
        pare_jw_raw(w, ",\"name\":");
        pare_jw_str(w, l->name);
    }
    switch (l->kind) {
    case PARE_LINEAR:
    case PARE_CONV2D:
        field_int(w, "in", l->in_features);
        field_int(w, "out", l->out_features);
        if (l->kind == PARE_CONV2D) {
            field_int(w, "kernel", l->kernel);
            field_int(w, "stride", l->stride);
            field_int(w, "pad", l->pad);
        }
        pare_jw_raw(w, l->has_bias ? ",\"bias\":true" : ",\"bias\":false");
        break;
    case PARE_MAXPOOL2D:
    case PARE_AVGPOOL2D:
        field_int(w, "kernel", l->kernel);
        field_int(w, "stride", l->stride);
        break;
    case PARE_DROPOUT:
        field_float(w, "p", l->p);
        break;
    case PARE_BATCHNORM2D:
        field_int(w, "features", l->in_features);
        field_float(w, "eps", l->eps);
        field_float(w, "momentum", l->momentum);
        break;
    default:
        break;
    }
    pare_jw_raw(w, "}");
}

int pare_arch_to_json(const pare_model *m, char *buf, size_t len)
{
    if (m->in_ndim != 1 && m->in_ndim != 3)
        return pare_set_error("model '%s' has no input shape yet (call pare_build)", m->arch);
    pare_jw w = {0};
    pare_jw_raw(&w, "{\"arch\":");
    pare_jw_str(&w, m->arch);
    pare_jw_raw(&w, ",\"input\":[");
    for (int i = 0; i < m->in_ndim; i++) {
        if (i) pare_jw_raw(&w, ",");
        pare_jw_int(&w, m->in_shape[i]);
    }
    pare_jw_raw(&w, "],\"layers\":[");
    for (int i = 0; i < m->n_layers && !w.failed; i++) {
        const struct kind_info *k = kind_of(m->layers[i]->kind);
        if (!k) {
            pare_jw_free(&w);
            return pare_set_error("layer %d (%s) of model '%s' has no architecture JSON (a type defined outside nn)", i,
                                  m->layers[i]->type->type_name, m->arch);
        }
        if (i) pare_jw_raw(&w, ",");
        layer_json(&w, m->layers[i], k);
    }
    pare_jw_raw(&w, "]}");
    if (w.failed || w.len > INT_MAX) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", w.failed ? pare_error() : "too long");
        pare_jw_free(&w);
        return pare_set_error("architecture of model '%s': %s", m->arch, msg);
    }
    if (buf && len) {
        size_t n = w.len < len ? w.len : len - 1;
        memcpy(buf, w.buf, n);
        buf[n] = '\0';
    }
    int n = (int)w.len;
    pare_jw_free(&w);
    return n;
}

/* ---- reader ------------------------------------------------------------------------ */
typedef struct reader {
    char where[96]; /* "layer 3 (Conv2d)" */
} reader;

/* Unknown and repeated fields are errors; `allowed` is NULL-terminated after "type". */
static int check_fields(const reader *r, const pare_json *o, const char *const *allowed, int n_allowed)
{
    unsigned seen = 0;
    for (const pare_json *e = o->first; e; e = e->next) {
        int hit = -1;
        for (int i = 0; i < n_allowed && allowed[i]; i++)
            if (strcmp(e->key, allowed[i]) == 0) hit = i;
        if (hit < 0) return pare_set_error("%s: unknown field '%.40s'", r->where, e->key);
        if (seen & 1u << hit) return pare_set_error("%s: field '%s' appears twice", r->where, e->key);
        seen |= 1u << hit;
    }
    return 0;
}

static const pare_json *need(const reader *r, const pare_json *o, const char *key, pare_json_type type)
{
    const pare_json *v = pare_json_get(o, key);
    if (!v) {
        pare_set_error("%s: missing field '%s'", r->where, key);
        return NULL;
    }
    if (v->type != type) {
        pare_set_error("%s: field '%s' must be %s, found %s", r->where, key, pare_json_type_name(type),
                       pare_json_type_name(v->type));
        return NULL;
    }
    return v;
}

static int get_int(const reader *r, const pare_json *o, const char *key, int lo, int hi, int *out)
{
    const pare_json *v = need(r, o, key, PARE_JSON_NUMBER);
    if (!v) return -1;
    if (!v->is_int || v->i < lo || v->i > hi)
        return pare_set_error("%s: field '%s' must be an integer in [%d, %d]", r->where, key, lo, hi);
    *out = (int)v->i;
    return 0;
}

static int get_float(const reader *r, const pare_json *o, const char *key, float lo, float hi, float *out)
{
    const pare_json *v = need(r, o, key, PARE_JSON_NUMBER);
    if (!v) return -1;
    /* Range first: converting an out-of-range double to float is undefined. */
    if (!(v->num >= lo && v->num <= hi))
        return pare_set_error("%s: field '%s' = %g is outside [%g, %g]", r->where, key, v->num, (double)lo, (double)hi);
    *out = (float)v->num;
    return 0;
}

static int get_bool(const reader *r, const pare_json *o, const char *key, int *out)
{
    const pare_json *v = need(r, o, key, PARE_JSON_BOOL);
    if (!v) return -1;
    *out = v->boolean;
    return 0;
}

static uint64_t sat_mul(uint64_t a, uint64_t b)
{
    return a && b > UINT64_MAX / a ? UINT64_MAX : a * b;
}
static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return b > UINT64_MAX - a ? UINT64_MAX : a + b;
}

/* Builds one layer; *params receives what pare_build will allocate for it. */
static pare_layer *read_layer(const reader *r, const pare_json *o, const struct kind_info *k, uint64_t *params)
{
    int n_fields = 0;
    while (n_fields < 7 && k->fields[n_fields]) n_fields++;
    const char *allowed[8] = {"type"};
    memcpy(allowed + 1, k->fields, (size_t)n_fields * sizeof *allowed);
    if (check_fields(r, o, allowed, n_fields + 1)) return NULL;
    char name[PARE_NAME_MAX] = "";
    const pare_json *nm = pare_json_get(o, "name");
    int weights = k->kind & (PARE_LINEAR | PARE_CONV2D | PARE_BATCHNORM2D);
    if (nm || weights) {
        if (!(nm = need(r, o, "name", PARE_JSON_STRING))) return NULL;
        if (nm->len == 0 || nm->len >= PARE_NAME_MAX) {
            pare_set_error("%s: name must have 1 to %d bytes", r->where, PARE_NAME_MAX - 1);
            return NULL;
        }
        memcpy(name, nm->str, nm->len + 1);
    }
    int in = 0, out = 0, kernel = 0, stride = 0, pad = 0, bias = 0;
    float p = 0, eps = 0, momentum = 0;
    pare_layer *l = NULL;
    *params = 0;
    switch (k->kind) {
    case PARE_LINEAR:
        if (get_int(r, o, "in", 1, MAX_FEATURES, &in) || get_int(r, o, "out", 1, MAX_FEATURES, &out) ||
            get_bool(r, o, "bias", &bias))
            return NULL;
        l = bias ? pare_linear(name, in, out) : pare_linear_nobias(name, in, out);
        *params = sat_add(sat_mul((uint64_t)in, (uint64_t)out), bias ? (uint64_t)out : 0);
        break;
    case PARE_CONV2D:
        if (get_int(r, o, "in", 1, MAX_FEATURES, &in) || get_int(r, o, "out", 1, MAX_FEATURES, &out) ||
            get_int(r, o, "kernel", 1, MAX_WINDOW, &kernel) || get_int(r, o, "stride", 1, MAX_WINDOW, &stride) ||
            get_int(r, o, "pad", 0, MAX_WINDOW, &pad) || get_bool(r, o, "bias", &bias))
            return NULL;
        l = pare_conv2d_ex(name, in, out, kernel, stride, pad, bias);
        *params = sat_add(sat_mul(sat_mul((uint64_t)in, (uint64_t)out), (uint64_t)kernel * (uint64_t)kernel),
                          bias ? (uint64_t)out : 0);
        break;
    case PARE_MAXPOOL2D:
    case PARE_AVGPOOL2D:
        if (get_int(r, o, "kernel", 1, MAX_WINDOW, &kernel) || get_int(r, o, "stride", 1, MAX_WINDOW, &stride))
            return NULL;
        l = k->kind == PARE_MAXPOOL2D ? pare_maxpool2d(kernel) : pare_avgpool2d(kernel);
        l->stride = stride;
        break;
    case PARE_DROPOUT:
        if (get_float(r, o, "p", 0.0f, 0.99999994f, &p)) return NULL;
        l = pare_dropout(p);
        break;
    case PARE_BATCHNORM2D:
        if (get_int(r, o, "features", 1, MAX_FEATURES, &in) || get_float(r, o, "eps", 1e-30f, 1.0f, &eps) ||
            get_float(r, o, "momentum", 0.0f, 1.0f, &momentum))
            return NULL;
        l = pare_batchnorm2d(name, in);
        l->eps = eps;
        l->momentum = momentum;
        *params = 4 * (uint64_t)in;
        break;
    case PARE_RELU:
        l = pare_relu();
        break;
    case PARE_SIGMOID:
        l = pare_sigmoid();
        break;
    case PARE_TANH:
        l = pare_tanh();
        break;
    case PARE_FLATTEN:
        l = pare_flatten();
        break;
    case PARE_SOFTMAX:
        l = pare_softmax();
        break;
    case PARE_LOG_SOFTMAX:
        l = pare_log_softmax();
        break;
    case PARE_CUSTOM: /* not in kinds[]: the reader never gets here */
        break;
    }
    if (l) memcpy(l->name, name, sizeof name);
    return l;
}

static int read_input(const reader *r, const pare_json *root, int shape[3])
{
    const pare_json *in = need(r, root, "input", PARE_JSON_ARRAY);
    if (!in) return -1;
    if (in->len != 1 && in->len != 3)
        return pare_set_error("architecture: input must be [C, H, W] or [features], found %zu numbers", in->len);
    int i = 0;
    for (const pare_json *e = in->first; e; e = e->next, i++) {
        int hi = in->len == 1 || i == 0 ? MAX_FEATURES : MAX_SPATIAL;
        if (e->type != PARE_JSON_NUMBER || !e->is_int || e->i < 1 || e->i > hi)
            return pare_set_error("architecture: input dimension %d must be an integer in [1, %d]", i, hi);
        shape[i] = (int)e->i;
    }
    return 0;
}

static int read_layers(pare_model *m, const pare_json *layers, size_t max_params)
{
    if (layers->len == 0 || layers->len > MAX_LAYERS)
        return pare_set_error("architecture: 'layers' must hold 1 to %d layers, found %zu", MAX_LAYERS, layers->len);
    uint64_t total = 0;
    int i = 0;
    for (const pare_json *o = layers->first; o; o = o->next, i++) {
        reader r;
        snprintf(r.where, sizeof r.where, "architecture: layer %d", i);
        if (o->type != PARE_JSON_OBJECT)
            return pare_set_error("%s: expected an object, found %s", r.where, pare_json_type_name(o->type));
        const pare_json *type = need(&r, o, "type", PARE_JSON_STRING);
        if (!type) return -1;
        const struct kind_info *k = NULL;
        for (int j = 0; j < N_KINDS && !k; j++)
            if (strcmp(kinds[j].type, type->str) == 0) k = &kinds[j];
        if (!k) return pare_set_error("%s: unknown type '%.40s' (known: " KNOWN_TYPES ")", r.where, type->str);
        snprintf(r.where, sizeof r.where, "architecture: layer %d (%s)", i, k->type);
        uint64_t params;
        pare_layer *l = read_layer(&r, o, k, &params);
        if (!l) return -1;
        pare_model_append(m, l);
        total = sat_add(total, params);
        if (total > max_params)
            return pare_set_error("architecture: layers up to %d declare more than %zu parameters, more than the file "
                                  "can hold",
                                  i, max_params);
    }
    return 0;
}

/* Activations stay within int range (Flatten and Linear count features in int). */
static int check_sizes(const pare_model *m)
{
    for (int i = 0; i < m->n_layers; i++) {
        const pare_layer *l = m->layers[i];
        if (pare_shape_size(l->in_ndim, l->in_shape) > INT_MAX || pare_shape_size(l->out_ndim, l->out_shape) > INT_MAX)
            return pare_set_error("architecture: layer %d (%s): activations of more than %d values per sample", i,
                                  l->type->type_name, INT_MAX);
    }
    return 0;
}

pare_model *pare_arch_parse(const char *json, size_t len, size_t max_params)
{
    pare_json_doc doc;
    if (pare_json_parse(&doc, json, len, "architecture")) return NULL;
    const pare_json *root = doc.root;
    pare_model *m = NULL;
    reader r = {"architecture"};
    static const char *const top[] = {"arch", "input", "layers"};
    int shape[3] = {0, 0, 0};
    const pare_json *arch, *layers;
    if (root->type != PARE_JSON_OBJECT) {
        pare_set_error("architecture: expected a JSON object, found %s", pare_json_type_name(root->type));
        goto fail;
    }
    if (check_fields(&r, root, top, 3) || !(arch = need(&r, root, "arch", PARE_JSON_STRING)) ||
        read_input(&r, root, shape) || !(layers = need(&r, root, "layers", PARE_JSON_ARRAY)))
        goto fail;
    if (arch->len == 0 || arch->len >= PARE_NAME_MAX) {
        pare_set_error("architecture: 'arch' must have 1 to %d bytes", PARE_NAME_MAX - 1);
        goto fail;
    }
    m = pare_model_new(arch->str);
    if (read_layers(m, layers, max_params)) goto fail;
    int flat = pare_json_get(root, "input")->len == 1;
    if ((flat ? pare_build(m, shape[0], 0, 0) : pare_build(m, shape[0], shape[1], shape[2])) || check_sizes(m)) {
        if (strncmp(pare_error(), "architecture", 12) != 0) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", pare_error());
            pare_set_error("architecture: %s", msg);
        }
        goto fail;
    }
    pare_json_doc_free(&doc);
    return m;
fail:
    pare_model_free(m);
    pare_json_doc_free(&doc);
    return NULL;
}

pare_model *pare_arch_from_json(const char *json)
{
    if (!json) {
        pare_set_error("architecture: no JSON given");
        return NULL;
    }
    return pare_arch_parse(json, strlen(json), DEFAULT_MAX_PARAMS);
}
