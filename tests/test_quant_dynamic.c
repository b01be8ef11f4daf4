/* Dynamic quantization: converted Linear and Conv2d layers against a float
 * computation of the same quantized values, both kinds converted when asked
 * (PyTorch leaves Conv2d in float), kinds not asked listed as float, argmax
 * agreement with the float model, bad arguments, save/load and bad files. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compress/quant.h"
#include "nn/safetensors.h"
#include "tests/test.h"

static void fill(pare_rng *r, float *x, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++) x[i] = pare_rng_range(r, lo, hi);
}

/* The batch's parameters as the layer chooses them: asymmetric, from min/max. */
static pare_qparams batch_params(const float *x, size_t n, int bits)
{
    float lo = 0, hi = 0;
    for (size_t i = 0; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
    }
    pare_qparams p;
    pare_qparams_choose(lo, hi, bits, 0, &p);
    return p;
}

/* Runs model m (no grad) on x of the given shape; copies the output. */
static void run(pare_ctx *ctx, pare_model *m, int ndim, const int *shape, const float *x, float *out, size_t n_out)
{
    pare_mark mk = pare_arena_mark(ctx);
    pare_tensor *t = pare_ctx_tensor(ctx, ndim, shape);
    memcpy(t->data, x, t->size * sizeof(float));
    pare_tensor *y = pare_forward(ctx, m, t);
    CHECK(y && y->size == n_out);
    if (y) memcpy(out, y->data, n_out * sizeof(float));
    pare_arena_release(ctx, mk);
}

/* Shapes that reach every block of the kernel (4 x 4, 2 x 4, one row, and
 * the leftover outputs) and input ranges of either sign. */
TEST(dynq_linear_matches_float_of_quantized)
{
    const int shapes[][3] = {{3, 7, 5}, {7, 37, 11}, {1, 300, 3}, {9, 2, 8}, {4, 16, 4}};
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    pare_rng r;
    pare_rng_seed(&r, 11, PARE_STREAM_TEST);
    for (int t = 0; t < 5; t++) {
        int n = shapes[t][0], K = shapes[t][1], O = shapes[t][2];
        pare_model *m = pare_sequential("lin", pare_linear("fc", K, O), NULL);
        m->seed = 3 + (uint64_t)t;
        CHECK(pare_build(m, K, 0, 0) == 0);
        float *x = malloc((size_t)n * K * sizeof *x), *y = malloc((size_t)n * O * sizeof *y),
              *bias = malloc((size_t)O * sizeof *bias);
        fill(&r, x, (size_t)n * K, t == 2 ? -3.0f : -2.0f, t == 2 ? -0.5f : 3.0f);
        memcpy(bias, m->layers[0]->bias->data, (size_t)O * sizeof *bias);
        pare_dq_report rep;
        CHECK(pare_quant_dynamic(m, PARE_LINEAR, 8, &rep) == 1 && rep.n_converted == 1 && rep.n_float == 0);
        CHECK(pare_quant_is_dynamic(m->layers[0]) && !strcmp(m->layers[0]->name, "fc"));
        const float *ws;
        int bits;
        const int8_t *wq = pare_quant_dynamic_weight(m->layers[0], &ws, &bits);
        CHECK(wq && bits == 8);
        run(ctx, m, 2, (int[]){n, K}, x, y, (size_t)n * O);
        pare_qparams p = batch_params(x, (size_t)n * K, 8);
        for (int i = 0; i < n; i++)
            for (int o = 0; o < O; o++) {
                double acc = 0;
                for (int k = 0; k < K; k++)
                    acc += (double)(pare_quantize_value(x[i * K + k], &p) - p.zero_point) * wq[o * K + k];
                double ref = acc * p.scale * ws[o] + bias[o];
                CHECK_NEAR(y[i * O + o], ref, 1e-5 * (1 + fabs(ref)));
            }
        free(x);
        free(y);
        free(bias);
        pare_model_free(m);
    }
    pare_ctx_free(ctx);
}

TEST(dynq_conv_stride2_pad1_matches_float_of_quantized)
{
    enum { N = 2, C = 3, H = 7, W = 6, O = 4, K = 3, OH = 4, OW = 3 };
    pare_model *m = pare_sequential("conv", pare_conv2d_ex("c", C, O, K, 2, 1, 1), NULL);
    m->seed = 5;
    CHECK(pare_build(m, C, H, W) == 0);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    pare_rng r;
    pare_rng_seed(&r, 12, PARE_STREAM_TEST);
    float x[N * C * H * W], y[N * O * OH * OW], bias[O];
    fill(&r, x, sizeof x / sizeof x[0], 0.5f, 4); /* all positive: the zero point is not 0 and padding must stay 0 */
    memcpy(bias, m->layers[0]->bias->data, sizeof bias);
    CHECK(pare_quant_dynamic(m, PARE_CONV2D, 8, NULL) == 1);
    const float *ws;
    const int8_t *wq = pare_quant_dynamic_weight(m->layers[0], &ws, NULL);
    CHECK(wq != NULL);
    if (!wq) return;
    run(ctx, m, 4, (int[]){N, C, H, W}, x, y, sizeof y / sizeof y[0]);
    pare_qparams p = batch_params(x, sizeof x / sizeof x[0], 8);
    CHECK(p.zero_point == -128);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < O; o++)
            for (int oy = 0; oy < OH; oy++)
                for (int ox = 0; ox < OW; ox++) {
                    double acc = 0;
                    for (int c = 0; c < C; c++)
                        for (int ky = 0; ky < K; ky++)
                            for (int kx = 0; kx < K; kx++) {
                                int iy = oy * 2 - 1 + ky, ix = ox * 2 - 1 + kx;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                int q = pare_quantize_value(x[((n * C + c) * H + iy) * W + ix], &p) - p.zero_point;
                                acc += (double)q * wq[((o * C + c) * K + ky) * K + kx];
                            }
                    double ref = acc * p.scale * ws[o] + bias[o];
                    float got = y[((n * O + o) * OH + oy) * OW + ox];
                    CHECK_NEAR(got, ref, 1e-5 * (1 + fabs(ref)));
                }
    pare_ctx_free(ctx);
    pare_model_free(m);
}

static pare_model *small_cnn(void)
{
    pare_model *m =
        pare_sequential("tiny", pare_conv2d_ex("c1", 1, 6, 3, 1, 1, 1), pare_relu(), pare_maxpool2d(2),
                        pare_conv2d("c2", 6, 5, 3), pare_relu(), pare_flatten(), pare_linear("f1", 5 * 2 * 2, 16),
                        pare_relu(), pare_linear("f2", 16, 10), pare_log_softmax(), NULL);
    m->seed = 7;
    CHECK(pare_build(m, 1, 8, 8) == 0);
    return m;
}

TEST(dynq_converts_conv_and_linear_lists_the_rest)
{
    pare_model *m = small_cnn();
    pare_dq_report rep;
    CHECK(pare_quant_dynamic(m, PARE_CONV2D | PARE_LINEAR, 8, &rep) == 4);
    CHECK(rep.n_converted == 4 && rep.n_float == 0);
    CHECK(!strcmp(rep.converted[0], "c1") && !strcmp(rep.converted[1], "c2") && !strcmp(rep.converted[3], "f2"));
    CHECK(pare_quant_is_dynamic(m->layers[0]) && pare_quant_is_dynamic(m->layers[3]));
    /* converting again changes nothing and says why */
    CHECK(pare_quant_dynamic(m, PARE_CONV2D | PARE_LINEAR, 8, &rep) == 0 && rep.n_float == 4);
    pare_model_free(m);

    m = small_cnn();
    CHECK(pare_quant_dynamic(m, PARE_LINEAR, 8, &rep) == 2);
    CHECK(rep.n_converted == 2 && rep.n_float == 2);
    CHECK(!strcmp(rep.float_layers[0], "c1") && strstr(rep.reason[0], "not requested"));
    CHECK(!strcmp(rep.float_layers[1], "c2") && !pare_quant_is_dynamic(m->layers[0]));
    pare_model_free(m);
}

TEST(dynq_argmax_agrees_with_float)
{
    enum { N = 200 };
    pare_model *m = small_cnn();
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    pare_rng r;
    pare_rng_seed(&r, 13, PARE_STREAM_TEST);
    float *x = malloc(N * 64 * sizeof(float)), yf[N * 10], yq[N * 10];
    /* images with structure: a bright square somewhere, plus noise */
    for (int i = 0; i < N; i++)
        for (int p = 0; p < 64; p++) {
            int cx = i % 5, cy = (i / 5) % 5, px = p % 8, py = p / 8;
            x[i * 64 + p] =
                (px >= cx && px < cx + 3 && py >= cy && py < cy + 3 ? 2.5f : -0.4f) + pare_rng_range(&r, -0.2f, 0.2f);
        }
    int shape[4] = {N, 1, 8, 8};
    run(ctx, m, 4, shape, x, yf, sizeof yf / sizeof yf[0]);
    CHECK(pare_quant_dynamic(m, PARE_CONV2D | PARE_LINEAR, 8, NULL) == 4);
    run(ctx, m, 4, shape, x, yq, sizeof yq / sizeof yq[0]);
    int agree = 0;
    double maxdiff = 0;
    for (int i = 0; i < N; i++) {
        int af = 0, aq = 0;
        for (int c = 1; c < 10; c++) {
            if (yf[i * 10 + c] > yf[i * 10 + af]) af = c;
            if (yq[i * 10 + c] > yq[i * 10 + aq]) aq = c;
            maxdiff = fmax(maxdiff, fabs(yf[i * 10 + c] - yq[i * 10 + c]));
        }
        agree += af == aq;
    }
    CHECKF(agree >= N * 97 / 100, "argmax agrees on %d of %d", agree, N);
    CHECKF(maxdiff < 0.05, "log-probabilities differ by %g", maxdiff);
    /* batch 1 quantizes from that sample's own range: still close */
    float y1[10];
    run(ctx, m, 4, (int[]){1, 1, 8, 8}, x, y1, 10);
    for (int c = 0; c < 10; c++) CHECK_NEAR(y1[c], yf[c], 0.05);
    free(x);
    pare_ctx_free(ctx);
    pare_model_free(m);
}

TEST(dynq_bad_arguments_refused)
{
    pare_model *m = small_cnn();
    CHECK(pare_quant_dynamic(m, PARE_CONV2D | PARE_LINEAR, 1, NULL) == -1 && strstr(pare_error(), "between 2 and 8"));
    CHECK(pare_quant_dynamic(m, PARE_CONV2D | PARE_LINEAR, 9, NULL) == -1);
    CHECK(pare_quant_dynamic(m, 0, 8, NULL) == -1);
    CHECK(pare_quant_dynamic(m, PARE_LINEAR | PARE_RELU, 8, NULL) == -1 && strstr(pare_error(), "PARE_CONV2D"));
    m->layers[8]->weight->data[3] = NAN;
    CHECK(pare_quant_dynamic(m, PARE_CONV2D | PARE_LINEAR, 8, NULL) == -1 && strstr(pare_error(), "f2"));
    for (int i = 0; i < m->n_layers; i++) CHECK(!pare_quant_is_dynamic(m->layers[i])); /* unchanged */
    pare_model_free(m);
    pare_model *u = pare_sequential("unbuilt", pare_linear("a", 2, 2), NULL);
    CHECK(pare_quant_dynamic(u, PARE_LINEAR, 8, NULL) == -1 && strstr(pare_error(), "not built"));
    pare_model_free(u);
    CHECK(pare_quant_dynamic(NULL, PARE_LINEAR, 8, NULL) == -1);
}

static size_t read_all(const char *path, unsigned char **buf)
{
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *buf = malloc((size_t)n);
    size_t got = fread(*buf, 1, (size_t)n, f);
    fclose(f);
    return got;
}

TEST(dynq_save_load_roundtrip_and_bad_files)
{
    char path[] = "/tmp/pare_dynq_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    pare_model *m = small_cnn();
    CHECK(pare_quant_dynamic(m, PARE_CONV2D, 6, NULL) == 2); /* f1, f2 stay float in the file */
    CHECKF(pare_quant_dynamic_save(m, path) == 0, "%s", pare_error());
    pare_model *l = pare_quant_dynamic_load(path);
    CHECKF(l != NULL, "%s", pare_error());
    if (!l) return;
    CHECK(pare_quant_is_dynamic(l->layers[0]) && pare_quant_is_dynamic(l->layers[3]));
    CHECK(!pare_quant_is_dynamic(l->layers[6]) && l->layers[6]->kind == PARE_LINEAR);
    int bits = 0;
    CHECK(pare_quant_dynamic_weight(l->layers[3], NULL, &bits) && bits == 6);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    pare_rng r;
    pare_rng_seed(&r, 14, PARE_STREAM_TEST);
    float x[5 * 64], y0[50], y1[50];
    fill(&r, x, 5 * 64, -1, 3);
    run(ctx, m, 4, (int[]){5, 1, 8, 8}, x, y0, 50);
    run(ctx, l, 4, (int[]){5, 1, 8, 8}, x, y1, 50);
    CHECK(memcmp(y0, y1, sizeof y0) == 0);
    pare_model_free(l);
    pare_ctx_free(ctx);

    /* corrupt files: every truncation and single-byte flips in the header give an error, never a crash */
    CHECK(pare_quant_dynamic_save(m, path) == 0);
    unsigned char *buf = NULL;
    size_t len = read_all(path, &buf);
    CHECK(len > 64);
    char bad[sizeof path + 8];
    snprintf(bad, sizeof bad, "%s.bad", path);
    int rejected = 0, tries = 0;
    for (size_t cut = 0; cut < len; cut += len / 23 + 1, tries++) {
        FILE *f = fopen(bad, "wb");
        fwrite(buf, 1, cut, f);
        fclose(f);
        pare_model *b = pare_quant_dynamic_load(bad);
        rejected += b == NULL;
        pare_model_free(b);
    }
    CHECK(rejected == tries);
    for (size_t at = 8; at < len; at += 37) {
        unsigned char keep = buf[at];
        buf[at] ^= 0x5A;
        FILE *f = fopen(bad, "wb");
        fwrite(buf, 1, len, f);
        fclose(f);
        pare_model *b = pare_quant_dynamic_load(bad); /* may load (a flipped weight byte) but must not crash */
        pare_model_free(b);
        buf[at] = keep;
    }
    free(buf);
    unlink(bad);
    /* a float model is not a dynamic one */
    pare_model *f = small_cnn();
    CHECK(pare_save(f, path, NULL) == 0);
    CHECK(pare_quant_dynamic_load(path) == NULL && strstr(pare_error(), "int8-dynamic"));
    pare_model_free(f);
    unlink(path);
    pare_model_free(m);
}

/* pare_quant_dynamic_parse reads the same bytes as load does, from memory,
 * and refuses every truncation with a message naming the buffer. */
TEST(dynq_parse_buffer)
{
    char path[] = "/tmp/pare_dynq_parse_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    pare_model *m = small_cnn();
    CHECK(pare_quant_dynamic(m, PARE_CONV2D | PARE_LINEAR, 8, NULL) == 4);
    CHECK(pare_quant_dynamic_save(m, path) == 0);
    unsigned char *buf = NULL;
    size_t len = read_all(path, &buf);
    unlink(path);
    CHECK(len > 64);
    pare_model *p = pare_quant_dynamic_parse(buf, len, "mem");
    CHECKF(p != NULL, "%s", pare_error());
    if (p) {
        pare_ctx *ctx = pare_ctx_new(0);
        pare_set_grad_enabled(ctx, 0);
        pare_rng r;
        pare_rng_seed(&r, 15, PARE_STREAM_TEST);
        float x[3 * 64], y0[30], y1[30];
        fill(&r, x, 3 * 64, -1, 2);
        run(ctx, m, 4, (int[]){3, 1, 8, 8}, x, y0, 30);
        run(ctx, p, 4, (int[]){3, 1, 8, 8}, x, y1, 30);
        CHECK(memcmp(y0, y1, sizeof y0) == 0);
        pare_ctx_free(ctx);
        pare_model_free(p);
    }
    for (size_t cut = 0; cut < len; cut += 17) {
        pare_clear_error();
        pare_model *b = pare_quant_dynamic_parse(buf, cut, "mem");
        CHECK(b == NULL && strstr(pare_error(), "mem"));
        pare_model_free(b);
    }
    free(buf);
    pare_model_free(m);
}

/* A layer with more inputs per output than the int32 accumulator holds at
 * the width (66,311 at 8 bits) stays float when converting, and a file
 * that has one is refused (here a 4-bit file relabelled 8-bit: its weights
 * are valid 8-bit ones). */
TEST(dynq_refuses_accumulator_overflow)
{
    enum { K = 70000 };
    pare_model *m = pare_sequential("wide", pare_linear("big", K, 2), NULL);
    CHECK(pare_build(m, K, 0, 0) == 0);
    pare_dq_report rep;
    CHECK(pare_quant_dynamic(m, PARE_LINEAR, 8, &rep) == 0 && rep.n_float == 1 && strstr(rep.reason[0], "overflow"));
    CHECK(!pare_quant_is_dynamic(m->layers[0]));
    CHECK(pare_quant_dynamic(m, PARE_LINEAR, 4, &rep) == 1);
    char path[] = "/tmp/pare_dynq_wide_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    CHECK(pare_quant_dynamic_save(m, path) == 0);
    unsigned char *buf = NULL;
    size_t len = read_all(path, &buf);
    unlink(path);
    pare_model *ok = pare_quant_dynamic_parse(buf, len, "wide");
    CHECKF(ok != NULL, "%s", pare_error());
    pare_model_free(ok);
    char *bits = NULL;
    for (size_t i = 0; i + 15 <= len && !bits; i++)
        if (!memcmp(buf + i, "\"pare.bits\":\"4\"", 15)) bits = (char *)buf + i;
    CHECK(bits != NULL);
    if (bits) {
        bits[13] = '8';
        CHECK(pare_quant_dynamic_parse(buf, len, "wide") == NULL && strstr(pare_error(), "overflow"));
    }
    free(buf);
    pare_model_free(m);
}

/* ---- exactness of the kernels -------------------------------------------------
 * The kernels (the VNNI one where the build targets it, the portable one
 * otherwise) give the exact int32 sums, so each output must equal, bit for
 * bit, (float)sum * (s_in * scale[o]) + bias[o] computed here from a naive
 * loop over the quantized values. */

/* The quantized, centred batch (the layer's rule: pare_quantize_value with the batch's parameters). */
static int32_t *centred(const float *x, size_t n, int bits, float *s_in)
{
    pare_qparams p = batch_params(x, n, bits);
    int32_t *q = malloc(n * sizeof *q);
    for (size_t i = 0; i < n; i++) q[i] = pare_quantize_value(x[i], &p) - p.zero_point;
    *s_in = p.scale;
    return q;
}

/* y[n][O] of a converted Linear layer l, naively. */
static void ref_linear(const pare_layer *l, const float *x, int n, float *y)
{
    const float *ws;
    int bits;
    const int8_t *w = pare_quant_dynamic_weight(l, &ws, &bits);
    int O = l->weight->shape[0], K = (int)(l->weight->size / (size_t)O);
    float s_in;
    int32_t *q = centred(x, (size_t)n * K, bits, &s_in);
    for (int i = 0; i < n; i++)
        for (int o = 0; o < O; o++) {
            long long acc = 0;
            for (int k = 0; k < K; k++) acc += (long long)q[(size_t)i * K + k] * w[(size_t)o * K + k];
            CHECK(acc >= INT32_MIN && acc <= INT32_MAX);
            y[(size_t)i * O + o] = (float)(int32_t)acc * (s_in * ws[o]) + (l->bias ? l->bias->data[o] : 0.0f);
        }
    free(q);
}

/* y[n][O][oh][ow] of a converted Conv2d layer l on x[n][C][H][W], naively. */
static void ref_conv(const pare_layer *l, const float *x, int n, int H, int W, float *y, int *oh_out, int *ow_out)
{
    const float *ws;
    int bits;
    const int8_t *w = pare_quant_dynamic_weight(l, &ws, &bits);
    int O = l->weight->shape[0], C = l->in_features, kk = l->kernel, st = l->stride, pad = l->pad;
    int oh = (H + 2 * pad - kk) / st + 1, ow = (W + 2 * pad - kk) / st + 1;
    float s_in;
    int32_t *q = centred(x, (size_t)n * C * H * W, bits, &s_in);
    for (int i = 0; i < n; i++)
        for (int o = 0; o < O; o++)
            for (int oy = 0; oy < oh; oy++)
                for (int ox = 0; ox < ow; ox++) {
                    long long acc = 0;
                    for (int c = 0; c < C; c++)
                        for (int ky = 0; ky < kk; ky++)
                            for (int kx = 0; kx < kk; kx++) {
                                int iy = oy * st - pad + ky, ix = ox * st - pad + kx;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                acc += (long long)q[(((size_t)i * C + c) * H + iy) * W + ix] *
                                       w[(((size_t)o * C + c) * kk + ky) * kk + kx];
                            }
                    y[(((size_t)i * O + o) * oh + oy) * ow + ox] =
                        (float)(int32_t)acc * (s_in * ws[o]) + (l->bias ? l->bias->data[o] : 0.0f);
                }
    free(q);
    if (oh_out) *oh_out = oh;
    if (ow_out) *ow_out = ow;
}

/* Inputs that reach the ends of the centred range: all of one sign puts
 * the zero point at an end, so the far end is +-(2^bits - 1). */
static void fill_extreme(pare_rng *r, float *x, size_t n, int kind)
{
    for (size_t i = 0; i < n; i++) {
        float v = pare_rng_range(r, 0.0f, 1.0f);
        if (kind == 0)
            x[i] = 0.25f + 3 * v; /* all positive: up to +255 */
        else if (kind == 1)
            x[i] = -0.25f - 3 * v; /* all negative: down to -255 */
        else
            x[i] = pare_rng_range(r, 0.0f, 1.0f) < 0.5f ? -3 * v : 1 * v; /* mixed */
    }
    if (n) x[pare_rng_below(r, n)] = kind == 1 ? -3.25f : 3.25f;
}

/* Weights that quantize to +-127 in most places (rows of +-1 with a few smaller values). */
static void extreme_weights(pare_rng *r, pare_tensor *w)
{
    for (size_t i = 0; i < w->size; i++) {
        float u = pare_rng_range(r, 0.0f, 1.0f);
        w->data[i] = u < 0.4f ? 1.0f : u < 0.8f ? -1.0f : pare_rng_range(r, -1.0f, 1.0f);
    }
}

static int same_bits(const float *a, const float *b, size_t n, size_t *where)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof a[i]) != 0) {
            *where = i;
            return 0;
        }
    return 1;
}

TEST(dynq_linear_exact_on_ragged_shapes)
{
    /* n, K, O: none a multiple of the blocks (6 rows, 16 outputs, 4 inputs) unless to check that too */
    const int shapes[][3] = {{1, 1, 1},     {5, 3, 17},     {7, 1023, 33}, {13, 2049, 70}, {6, 4, 16},
                             {25, 3001, 5}, {1, 1600, 128}, {2, 5, 65},    {19, 129, 10}};
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    pare_rng r;
    pare_rng_seed(&r, 21, PARE_STREAM_TEST);
    for (int t = 0; t < (int)(sizeof shapes / sizeof shapes[0]); t++) {
        int n = shapes[t][0], K = shapes[t][1], O = shapes[t][2];
        pare_model *m = pare_sequential("lin", pare_linear("fc", K, O), NULL);
        m->seed = 30 + (uint64_t)t;
        CHECK(pare_build(m, K, 0, 0) == 0);
        extreme_weights(&r, m->layers[0]->weight);
        CHECK(pare_quant_dynamic(m, PARE_LINEAR, 8, NULL) == 1);
        float *x = malloc((size_t)n * K * sizeof *x), *y = malloc((size_t)n * O * sizeof *y),
              *want = malloc((size_t)n * O * sizeof *want);
        for (int kind = 0; kind < 3; kind++) {
            fill_extreme(&r, x, (size_t)n * K, kind);
            run(ctx, m, 2, (int[]){n, K}, x, y, (size_t)n * O);
            ref_linear(m->layers[0], x, n, want);
            size_t at = 0;
            int same = same_bits(y, want, (size_t)n * O, &at);
            CHECKF(same, "n %d K %d O %d kind %d: output %zu is %.9g, expected %.9g", n, K, O, kind, at, (double)y[at],
                   (double)want[at]);
        }
        free(x);
        free(y);
        free(want);
        pare_model_free(m);
    }
    pare_ctx_free(ctx);
}

TEST(dynq_conv_exact_on_ragged_shapes)
{
    /* n, C, O, kernel, stride, pad, H, W, bias */
    const int shapes[][9] = {
        {1, 1, 1, 1, 1, 0, 1, 1, 1},  {3, 1, 32, 3, 1, 0, 28, 28, 1}, {2, 32, 64, 3, 1, 0, 13, 13, 1},
        {2, 3, 5, 3, 2, 1, 7, 6, 0},  {1, 4, 17, 5, 1, 2, 9, 11, 1},  {5, 8, 33, 3, 2, 0, 10, 9, 1},
        {2, 7, 70, 2, 1, 1, 5, 4, 0}, {1, 64, 3, 3, 1, 1, 6, 5, 1},   {17, 2, 6, 3, 1, 1, 4, 4, 1}};
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    pare_rng r;
    pare_rng_seed(&r, 22, PARE_STREAM_TEST);
    for (int t = 0; t < (int)(sizeof shapes / sizeof shapes[0]); t++) {
        const int *s = shapes[t];
        int n = s[0], C = s[1], O = s[2], H = s[6], W = s[7];
        pare_model *m = pare_sequential("conv", pare_conv2d_ex("c", C, O, s[3], s[4], s[5], s[8]), NULL);
        m->seed = 40 + (uint64_t)t;
        CHECK(pare_build(m, C, H, W) == 0);
        extreme_weights(&r, m->layers[0]->weight);
        CHECK(pare_quant_dynamic(m, PARE_CONV2D, 8, NULL) == 1);
        int oh = (H + 2 * s[5] - s[3]) / s[4] + 1, ow = (W + 2 * s[5] - s[3]) / s[4] + 1;
        size_t nx = (size_t)n * C * H * W, ny = (size_t)n * O * oh * ow;
        float *x = malloc(nx * sizeof *x), *y = malloc(ny * sizeof *y), *want = malloc(ny * sizeof *want);
        for (int kind = 0; kind < 3; kind++) {
            fill_extreme(&r, x, nx, kind);
            run(ctx, m, 4, (int[]){n, C, H, W}, x, y, ny);
            ref_conv(m->layers[0], x, n, H, W, want, NULL, NULL);
            size_t at = 0;
            int same = same_bits(y, want, ny, &at);
            CHECKF(same, "shape %d kind %d: output %zu is %.9g, expected %.9g", t, kind, at, (double)y[at],
                   (double)want[at]);
        }
        free(x);
        free(y);
        free(want);
        pare_model_free(m);
    }
    pare_ctx_free(ctx);
}

/* small_cnn without the log-softmax, converted, against the naive layers
 * with ReLU and max pooling written out: the same bits end to end. */
TEST(dynq_small_model_exact)
{
    pare_model *m = pare_sequential("tiny", pare_conv2d_ex("c1", 1, 6, 3, 1, 1, 1), pare_relu(), pare_maxpool2d(2),
                                    pare_conv2d("c2", 6, 5, 3), pare_relu(), pare_flatten(),
                                    pare_linear("f1", 5 * 2 * 2, 16), pare_relu(), pare_linear("f2", 16, 10), NULL);
    m->seed = 9;
    CHECK(pare_build(m, 1, 8, 8) == 0);
    CHECK(pare_quant_dynamic(m, PARE_CONV2D | PARE_LINEAR, 8, NULL) == 4);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    pare_rng r;
    pare_rng_seed(&r, 23, PARE_STREAM_TEST);
    const int batches[] = {1, 7, 40};
    for (int b = 0; b < 3; b++) {
        int n = batches[b];
        float *x = malloc((size_t)n * 64 * sizeof *x), *a = malloc((size_t)n * 6 * 64 * sizeof *a),
              *pl = malloc((size_t)n * 6 * 16 * sizeof *pl), *c2 = malloc((size_t)n * 20 * sizeof *c2),
              *f1 = malloc((size_t)n * 16 * sizeof *f1), *want = malloc((size_t)n * 10 * sizeof *want),
              *y = malloc((size_t)n * 10 * sizeof *y);
        fill(&r, x, (size_t)n * 64, -1.5f, 2.5f);
        ref_conv(m->layers[0], x, n, 8, 8, a, NULL, NULL);
        for (size_t i = 0; i < (size_t)n * 6 * 64; i++) a[i] = a[i] > 0 ? a[i] : 0;
        for (int i = 0; i < n * 6; i++)
            for (int py = 0; py < 4; py++)
                for (int px = 0; px < 4; px++) {
                    const float *src = a + (size_t)i * 64 + py * 16 + px * 2;
                    float v = fmaxf(fmaxf(src[0], src[1]), fmaxf(src[8], src[9]));
                    pl[(size_t)i * 16 + py * 4 + px] = v;
                }
        ref_conv(m->layers[3], pl, n, 4, 4, c2, NULL, NULL);
        for (size_t i = 0; i < (size_t)n * 20; i++) c2[i] = c2[i] > 0 ? c2[i] : 0;
        ref_linear(m->layers[6], c2, n, f1);
        for (size_t i = 0; i < (size_t)n * 16; i++) f1[i] = f1[i] > 0 ? f1[i] : 0;
        ref_linear(m->layers[8], f1, n, want);
        run(ctx, m, 4, (int[]){n, 1, 8, 8}, x, y, (size_t)n * 10);
        size_t at = 0;
        int same = same_bits(y, want, (size_t)n * 10, &at);
        CHECKF(same, "batch %d: output %zu is %.9g, expected %.9g", n, at, (double)y[at], (double)want[at]);
        free(x);
        free(a);
        free(pl);
        free(c2);
        free(f1);
        free(want);
        free(y);
    }
    pare_ctx_free(ctx);
    pare_model_free(m);
}

/* The layers split images (conv) and rows (linear) between threads; the
 * outputs do not depend on how many. Batches large enough to go parallel. */
TEST(dynq_same_output_for_1_and_2_threads)
{
    enum { N = 67 };
    pare_model *m = small_cnn();
    CHECK(pare_quant_dynamic(m, PARE_CONV2D | PARE_LINEAR, 8, NULL) == 4);
    pare_model *w = pare_sequential("wide", pare_linear("big", 700, 90), NULL);
    w->seed = 4;
    CHECK(pare_build(w, 700, 0, 0) == 0);
    CHECK(pare_quant_dynamic(w, PARE_LINEAR, 8, NULL) == 1);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    pare_rng r;
    pare_rng_seed(&r, 24, PARE_STREAM_TEST);
    float *x = malloc(N * 700 * sizeof *x), *y1 = malloc(N * 90 * sizeof *y1), *y2 = malloc(N * 90 * sizeof *y2);
    fill(&r, x, N * 700, -2, 3);
    int saved = pare_threads();
    pare_set_threads(1);
    run(ctx, m, 4, (int[]){N, 1, 8, 8}, x, y1, N * 10);
    pare_set_threads(2);
    run(ctx, m, 4, (int[]){N, 1, 8, 8}, x, y2, N * 10);
    CHECK(memcmp(y1, y2, N * 10 * sizeof *y1) == 0);
    pare_set_threads(1);
    run(ctx, w, 2, (int[]){N, 700}, x, y1, N * 90);
    pare_set_threads(2);
    run(ctx, w, 2, (int[]){N, 700}, x, y2, N * 90);
    CHECK(memcmp(y1, y2, N * 90 * sizeof *y1) == 0);
    pare_set_threads(saved);
    free(x);
    free(y1);
    free(y2);
    pare_ctx_free(ctx);
    pare_model_free(w);
    pare_model_free(m);
}
