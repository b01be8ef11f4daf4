/* int8 models in safetensors: int8 weights (two a byte at 4 bits or fewer),
 * int32 biases, multipliers and shifts, float scales (per channel and per tensor) and integer layer
 * configurations; no float copy of the weights. Loading checks every field
 * and then re-plans the model, so a corrupt or inconsistent file is an
 * error, never a crash. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "compress/quant.h"
#include "nn/safetensors.h"

#define QFORMAT_VERSION 1
enum {
    CFG_KIND,
    CFG_IN_H,
    CFG_IN_W,
    CFG_IN_C,
    CFG_OUT_C,
    CFG_KERNEL,
    CFG_STRIDE,
    CFG_PAD,
    CFG_RELU,
    CFG_IN_ZP,
    CFG_OUT_ZP,
    CFG_ACT_MIN,
    CFG_ACT_MAX,
    CFG_WBITS,
    CFG_N
};
enum { MCFG_VERSION, MCFG_LAYERS, MCFG_IN_C, MCFG_IN_H, MCFG_IN_W, MCFG_IN_ZP, MCFG_N };

/* Names of one layer's tensors, built in a fixed buffer. */
typedef struct names {
    char cfg[32], scales[32], weight[32], bias[32], mult[32], shift[32], wscale[32], lut[32], meta[32];
} names;

static void layer_names(names *n, int i)
{
    /* cppcheck-suppress ctuuninitvar ; *n is written here, not read */
    snprintf(n->cfg, sizeof n->cfg, "layer%d.config", i);
    snprintf(n->scales, sizeof n->scales, "layer%d.scales", i);
    snprintf(n->weight, sizeof n->weight, "layer%d.weight", i);
    snprintf(n->bias, sizeof n->bias, "layer%d.bias", i);
    snprintf(n->mult, sizeof n->mult, "layer%d.multiplier", i);
    snprintf(n->shift, sizeof n->shift, "layer%d.shift", i);
    snprintf(n->wscale, sizeof n->wscale, "layer%d.weight_scale", i);
    snprintf(n->lut, sizeof n->lut, "layer%d.lut", i);
    snprintf(n->meta, sizeof n->meta, "pare.layer%d", i);
}

static int has_weights(const pare_qlayer *l)
{
    return l->kind == PARE_Q_CONV || l->kind == PARE_Q_LINEAR;
}

/* Tensors a layer adds to its config and scales: weights, bias,
 * multipliers, shifts and channel scales; an average pool's one multiplier
 * and shift; a table. */
static int extra_tensors(const pare_qlayer *l)
{
    return has_weights(l) ? 5 : l->kind == PARE_Q_AVGPOOL ? 2 : l->kind == PARE_Q_LUT ? 1 : 0;
}

static size_t weight_count(const pare_qlayer *l)
{
    return (size_t)l->out_c * l->in_c * (l->kind == PARE_Q_CONV ? (size_t)l->kernel * l->kernel : 1);
}

/* Weights of 4 bits or fewer are stored two a byte: element 2i in the low
 * nibble, 2i + 1 in the high one, two's complement; an odd count leaves the
 * last high nibble 0. */
static int packed(const pare_qlayer *l)
{
    return l->weight_bits <= 4;
}

static int32_t wmax(const pare_qlayer *l)
{
    return (1 << (l->weight_bits - 1)) - 1;
}

static int pack4(const pare_qlayer *l, uint8_t *dst)
{
    size_t n = weight_count(l);
    memset(dst, 0, (n + 1) / 2);
    for (size_t i = 0; i < n; i++) {
        if (l->weight[i] < -wmax(l) || l->weight[i] > wmax(l))
            return pare_set_error("int8 layer %s: weight %d does not fit %d bits", l->name, l->weight[i],
                                  l->weight_bits);
        dst[i / 2] |= (uint8_t)((l->weight[i] & 0xF) << (i % 2 ? 4 : 0));
    }
    return 0;
}

static int unpack4(pare_qlayer *l, const uint8_t *src)
{
    size_t n = weight_count(l);
    if (n % 2 && (src[n / 2] >> 4))
        return pare_set_error("int8 layer %s: the padding nibble of the packed weights is not 0", l->name);
    for (size_t i = 0; i < n; i++) {
        int v = (src[i / 2] >> (i % 2 ? 4 : 0)) & 0xF;
        v = v >= 8 ? v - 16 : v;
        if (v < -wmax(l) || v > wmax(l))
            return pare_set_error("int8 layer %s: packed weight %d is outside %d bits", l->name, v, l->weight_bits);
        l->weight[i] = (int8_t)v;
    }
    return 0;
}

static pare_st_tensor entry(const char *name, pare_st_dtype dt, int ndim, const int64_t *shape, const void *data)
{
    pare_st_tensor t;
    memset(&t, 0, sizeof t);
    t.name = name;
    t.dtype = dt;
    t.ndim = ndim;
    for (int d = 0; d < ndim; d++) t.shape[d] = shape[d];
    t.data = data;
    return t;
}

int pare_qmodel_save(const pare_qmodel *qm, const char *path)
{
    int n = qm->n_layers;
    names *nm = pare_alloc((size_t)n * sizeof *nm);
    int32_t *cfg = pare_alloc((size_t)n * CFG_N * sizeof(int32_t));
    float *sc = pare_alloc((size_t)n * 2 * sizeof(float));
    pare_st_tensor *t = pare_alloc((size_t)(n * 7 + 2) * sizeof *t);
    const char **meta = pare_alloc((size_t)(2 * n + 9) * sizeof *meta);
    uint8_t **packs = pare_calloc((size_t)n * sizeof *packs);
    int32_t mcfg[MCFG_N] = {QFORMAT_VERSION, n, qm->in_c, qm->in_h, qm->in_w, qm->in_zp};
    int nt = 0, nmeta = 0, rc = 0;
    int64_t s1[4] = {MCFG_N};
    t[nt++] = entry("model.config", PARE_ST_I32, 1, s1, mcfg);
    s1[0] = 1;
    t[nt++] = entry("model.input_scale", PARE_ST_F32, 1, s1, &qm->in_scale);
    meta[nmeta++] = "pare.format";
    meta[nmeta++] = "int8";
    meta[nmeta++] = "pare.arch";
    meta[nmeta++] = qm->arch;
    for (int i = 0; i < n; i++) {
        const pare_qlayer *l = &qm->layers[i];
        int32_t *c = cfg + (size_t)i * CFG_N;
        int32_t v[CFG_N] = {l->kind, l->in_h, l->in_w,  l->in_c,   l->out_c,   l->kernel,  l->stride,
                            l->pad,  l->relu, l->in_zp, l->out_zp, l->act_min, l->act_max, l->weight_bits};
        memcpy(c, v, sizeof v);
        sc[2 * i] = l->in_scale;
        sc[2 * i + 1] = l->out_scale;
        layer_names(&nm[i], i);
        meta[nmeta++] = nm[i].meta; /* the layer's name, for reports */
        meta[nmeta++] = l->name;
        int64_t shp[4] = {CFG_N};
        t[nt++] = entry(nm[i].cfg, PARE_ST_I32, 1, shp, c);
        shp[0] = 2;
        t[nt++] = entry(nm[i].scales, PARE_ST_F32, 1, shp, sc + 2 * i);
        if (l->kind == PARE_Q_AVGPOOL) {
            shp[0] = 1;
            t[nt++] = entry(nm[i].mult, PARE_ST_I32, 1, shp, l->mult);
            t[nt++] = entry(nm[i].shift, PARE_ST_I32, 1, shp, l->shift);
        }
        if (l->kind == PARE_Q_LUT) {
            shp[0] = 256;
            t[nt++] = entry(nm[i].lut, PARE_ST_I8, 1, shp, l->lut);
        }
        if (!has_weights(l)) continue;
        if (l->weight_bits < 2 || l->weight_bits > 8) {
            rc = pare_set_error("int8 layer %s: weight bits %d (2 to 8)", l->name, l->weight_bits);
            break;
        }
        if (packed(l)) {
            int64_t ps[1] = {(int64_t)(weight_count(l) + 1) / 2};
            packs[i] = pare_alloc((size_t)ps[0]);
            if ((rc = pack4(l, packs[i])) != 0) break;
            t[nt++] = entry(nm[i].weight, PARE_ST_U8, 1, ps, packs[i]);
        } else if (l->kind == PARE_Q_CONV) {
            int64_t ws[4] = {l->out_c, l->kernel, l->kernel, l->in_c};
            t[nt++] = entry(nm[i].weight, PARE_ST_I8, 4, ws, l->weight);
        } else {
            int64_t ws[2] = {l->out_c, l->in_c};
            t[nt++] = entry(nm[i].weight, PARE_ST_I8, 2, ws, l->weight);
        }
        shp[0] = l->out_c;
        t[nt++] = entry(nm[i].bias, PARE_ST_I32, 1, shp, l->bias);
        t[nt++] = entry(nm[i].mult, PARE_ST_I32, 1, shp, l->mult);
        t[nt++] = entry(nm[i].shift, PARE_ST_I32, 1, shp, l->shift);
        t[nt++] = entry(nm[i].wscale, PARE_ST_F32, 1, shp, l->w_scale);
    }
    meta[nmeta] = NULL;
    if (rc == 0) rc = pare_st_write(path, t, nt, meta);
    for (int i = 0; i < n; i++) pare_free(packs[i]);
    pare_free(packs);
    pare_free(meta);
    pare_free(t);
    pare_free(sc);
    pare_free(cfg);
    pare_free(nm);
    return rc;
}

static int read_i32(const pare_st_file *f, const char *name, int n, int32_t *dst)
{
    return pare_st_read(f, name, PARE_ST_I32, 1, &n, dst);
}

/* Fields that size arrays are checked before any allocation. */
static int load_config(pare_qlayer *l, const int32_t *c, int i)
{
    if (c[CFG_KIND] < PARE_Q_CONV || c[CFG_KIND] > PARE_Q_LUT)
        return pare_set_error("int8 layer %d: unknown kind %d", i, (int)c[CFG_KIND]);
    for (int k = CFG_IN_H; k <= CFG_PAD; k++)
        if (c[k] < 0 || c[k] > (1 << 14))
            return pare_set_error("int8 layer %d: field %d = %d is out of range", i, k, (int)c[k]);
    int weighted = c[CFG_KIND] == PARE_Q_CONV || c[CFG_KIND] == PARE_Q_LINEAR;
    if (c[CFG_WBITS] < (weighted ? 2 : 0) || c[CFG_WBITS] > 8)
        return pare_set_error("int8 layer %d: weight bits %d", i, (int)c[CFG_WBITS]);
    l->kind = (pare_qkind)c[CFG_KIND];
    l->in_h = c[CFG_IN_H];
    l->in_w = c[CFG_IN_W];
    l->in_c = c[CFG_IN_C];
    l->out_c = c[CFG_OUT_C];
    l->kernel = c[CFG_KERNEL];
    l->stride = c[CFG_STRIDE];
    l->pad = c[CFG_PAD];
    l->relu = c[CFG_RELU] != 0;
    l->in_zp = c[CFG_IN_ZP];
    l->out_zp = c[CFG_OUT_ZP];
    l->act_min = c[CFG_ACT_MIN];
    l->act_max = c[CFG_ACT_MAX];
    l->weight_bits = c[CFG_WBITS];
    if (has_weights(l) && (l->out_c < 1 || l->in_c < 1 || (l->kind == PARE_Q_CONV && l->kernel < 1)))
        return pare_set_error("int8 layer %d: empty weight shape", i);
    return 0;
}

/* Weights, bias, multipliers, shifts and channel scales of a conv/linear layer. */
static int load_arrays(const pare_st_file *f, pare_qlayer *l, const names *nm)
{
    int oc = l->out_c;
    size_t wn = weight_count(l);
    if (wn > ((size_t)1 << 28)) return pare_set_error("int8 layer %s: %zu weights is too many", l->name, wn);
    l->weight = pare_alloc(wn);
    l->bias = pare_alloc((size_t)oc * sizeof(int32_t));
    l->mult = pare_alloc((size_t)oc * sizeof(int32_t));
    l->shift = pare_alloc((size_t)oc * sizeof(int32_t));
    l->w_scale = pare_alloc((size_t)oc * sizeof(float));
    int conv_shape[4] = {oc, l->kernel, l->kernel, l->in_c}, lin_shape[2] = {oc, l->in_c};
    int rc;
    if (packed(l)) {
        int bytes = (int)((wn + 1) / 2);
        const pare_st_tensor *t = pare_st_expect(f, nm->weight, PARE_ST_U8, 1, &bytes);
        uint8_t *tmp = pare_alloc((size_t)bytes);
        if (t) memcpy(tmp, t->data, (size_t)bytes);
        rc = t ? unpack4(l, tmp) : -1;
        pare_free(tmp);
    } else {
        rc = l->kind == PARE_Q_CONV ? pare_st_read(f, nm->weight, PARE_ST_I8, 4, conv_shape, l->weight)
                                    : pare_st_read(f, nm->weight, PARE_ST_I8, 2, lin_shape, l->weight);
    }
    if (rc || read_i32(f, nm->bias, oc, l->bias) || read_i32(f, nm->mult, oc, l->mult) ||
        read_i32(f, nm->shift, oc, l->shift) || pare_st_read(f, nm->wscale, PARE_ST_F32, 1, &oc, l->w_scale))
        return -1;
    for (int c = 0; c < oc; c++)
        if (!(l->w_scale[c] > 0) || !isfinite(l->w_scale[c]))
            return pare_set_error("int8 layer %s: weight scale %d is not a positive number", l->name, c);
    return 0;
}

static int load_layer(const pare_st_file *f, pare_qmodel *qm, int i)
{
    pare_qlayer *l = &qm->layers[i];
    names nm;
    layer_names(&nm, i);
    int32_t c[CFG_N];
    float sc[2];
    int two = 2;
    if (read_i32(f, nm.cfg, CFG_N, c) || pare_st_read(f, nm.scales, PARE_ST_F32, 1, &two, sc)) return -1;
    if (load_config(l, c, i)) return -1;
    l->in_scale = sc[0];
    l->out_scale = sc[1];
    const char *name = pare_st_meta(f, nm.meta);
    snprintf(l->name, sizeof l->name, "%s", name ? name : "");
    if (l->kind == PARE_Q_AVGPOOL) {
        l->mult = pare_alloc(sizeof(int32_t));
        l->shift = pare_alloc(sizeof(int32_t));
        return read_i32(f, nm.mult, 1, l->mult) || read_i32(f, nm.shift, 1, l->shift) ? -1 : 0;
    }
    if (l->kind == PARE_Q_LUT) {
        int n = 256;
        l->lut = pare_alloc(256);
        return pare_st_read(f, nm.lut, PARE_ST_I8, 1, &n, l->lut);
    }
    return has_weights(l) ? load_arrays(f, l, &nm) : 0;
}

/* Every tensor in the file must be one the model reads. */
static int count_expected(const pare_qmodel *qm)
{
    int n = 2;
    for (int i = 0; i < qm->n_layers; i++) n += 2 + extra_tensors(&qm->layers[i]);
    return n;
}

static pare_qmodel *from_file(const pare_st_file *f)
{
    const char *fmt = pare_st_meta(f, "pare.format");
    if (!fmt || strcmp(fmt, "int8") != 0) {
        pare_set_error("%s: not an int8 model (pare.format is %s)", pare_st_source(f), fmt ? fmt : "missing");
        return NULL;
    }
    int32_t mc[MCFG_N];
    if (read_i32(f, "model.config", MCFG_N, mc)) return NULL;
    if (mc[MCFG_VERSION] != QFORMAT_VERSION || mc[MCFG_LAYERS] < 1 || mc[MCFG_LAYERS] > PARE_QMAX_LAYERS) {
        pare_set_error("%s: int8 format version %d with %d layers is not supported", pare_st_source(f),
                       (int)mc[MCFG_VERSION], (int)mc[MCFG_LAYERS]);
        return NULL;
    }
    pare_qmodel *qm = pare_calloc(sizeof *qm);
    const char *arch = pare_st_meta(f, "pare.arch");
    snprintf(qm->arch, sizeof qm->arch, "%s", arch ? arch : "");
    qm->n_layers = mc[MCFG_LAYERS];
    qm->in_c = mc[MCFG_IN_C];
    qm->in_h = mc[MCFG_IN_H];
    qm->in_w = mc[MCFG_IN_W];
    qm->in_zp = mc[MCFG_IN_ZP];
    int one = 1, bad_shape = qm->in_c < 1 || qm->in_h < 0 || qm->in_w < 0 || qm->in_h > (1 << 14) ||
                             qm->in_w > (1 << 14) || (qm->in_h == 0) != (qm->in_w == 0);
    if (bad_shape)
        pare_set_error("%s: input shape %dx%dx%d is not valid", pare_st_source(f), qm->in_c, qm->in_h, qm->in_w);
    if (bad_shape || pare_st_read(f, "model.input_scale", PARE_ST_F32, 1, &one, &qm->in_scale)) goto fail;
    for (int i = 0; i < qm->n_layers; i++)
        if (load_layer(f, qm, i)) goto fail;
    if (pare_st_count(f) != count_expected(qm)) {
        pare_set_error("%s: %d tensors, an int8 model of these layers has %d", pare_st_source(f), pare_st_count(f),
                       count_expected(qm));
        goto fail;
    }
    if (pare_qmodel_plan(qm)) goto fail;
    return qm;
fail:
    pare_qmodel_free(qm);
    return NULL;
}

pare_qmodel *pare_qmodel_parse(const void *buf, size_t len, const char *what)
{
    pare_st_file *f = pare_st_parse(buf, len, what);
    if (!f) return NULL;
    pare_qmodel *qm = from_file(f);
    pare_st_close(f);
    return qm;
}

pare_qmodel *pare_qmodel_load(const char *path)
{
    pare_st_file *f = pare_st_open(path);
    if (!f) return NULL;
    pare_qmodel *qm = from_file(f);
    pare_st_close(f);
    return qm;
}
