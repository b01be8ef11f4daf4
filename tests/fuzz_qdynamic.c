/* libFuzzer target for the int8-dynamic model loader: any input must load
 * or be rejected with a message, never read out of bounds, overflow or
 * abort; a model that loads must run a forward pass (no grad) and save to
 * bytes that load back to the same outputs. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compress/quant.h"
#include "nn/safetensors.h"

/* FLOPs per sample a run may cost here: keeps each input fast. */
#define FUZZ_MAX_FLOPS ((double)(1 << 22))
#define FUZZ_BATCH     2

static int has_error(void)
{
    return strcmp(pare_error(), "no error") != 0;
}

/* The model's output for a fixed input of FUZZ_BATCH samples, copied to
 * *out (pare_alloc); its size, or 0 if the model would cost too much. */
static size_t run(pare_model *m, float **out)
{
    *out = NULL;
    if (!(pare_model_flops(m) <= FUZZ_MAX_FLOPS)) return 0;
    int shape[4] = {FUZZ_BATCH, m->in_shape[0], m->in_shape[1], m->in_shape[2]};
    size_t per = 1;
    for (int d = 0; d < m->in_ndim; d++) per *= (size_t)m->in_shape[d];
    if (per > ((size_t)1 << 16)) return 0;
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    pare_tensor *x = pare_ctx_tensor(ctx, m->in_ndim + 1, shape);
    for (size_t i = 0; i < x->size; i++) x->data[i] = (float)((int)(i * 37 % 101) - 50) / 17;
    pare_tensor *y = pare_forward(ctx, m, x);
    PARE_CHECK(y != NULL, "forward failed: %s", pare_error());
    size_t n = y->size;
    *out = pare_alloc(n * sizeof **out);
    memcpy(*out, y->data, n * sizeof **out);
    pare_ctx_free(ctx);
    return n;
}

/* Saved to bytes and parsed back, the model gives the same outputs. */
static void check_roundtrip(pare_model *m, const float *y, size_t n)
{
    /* tmpfs where there is one: the writer fsyncs, which a disk makes slow */
    char path[64];
    snprintf(path, sizeof path, "%s/pare_fuzz_qdynamic_XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) return;
    close(fd);
    PARE_CHECK(pare_quant_dynamic_save(m, path) == 0, "a loaded model does not save: %s", pare_error());
    pare_model *again = pare_quant_dynamic_load(path);
    unlink(path);
    PARE_CHECK(again != NULL, "a saved model does not load: %s", pare_error());
    float *y2;
    size_t n2 = run(again, &y2);
    PARE_CHECK(n2 == n && (n == 0 || memcmp(y, y2, n * sizeof *y) == 0), "outputs changed in a save/load round trip");
    pare_free(y2);
    pare_model_free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = pare_alloc(size ? size : 1); /* exactly `size` owned bytes */
    if (size) memcpy(buf, data, size);
    pare_clear_error();
    pare_model *m = pare_quant_dynamic_parse(buf, size, "fuzz");
    if (!m) {
        PARE_CHECK(has_error(), "int8-dynamic model rejected without a message");
    } else {
        PARE_CHECK(m->built, "loaded an unbuilt model");
        float *y;
        size_t n = run(m, &y);
        if (n) check_roundtrip(m, y, n);
        pare_free(y);
    }
    pare_model_free(m);
    pare_free(buf);
    return 0;
}
