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
