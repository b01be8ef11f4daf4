/* libFuzzer target for the safetensors reader, the model loader behind it
 * and the architecture JSON: any input must be accepted or rejected with a
 * message, never read out of bounds, overflow or allocate without bound. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "nn/json.h"
#include "nn/safetensors.h"

/* Parameters an architecture may declare here: keeps each run fast. */
#define FUZZ_MAX_PARAMS ((size_t)1 << 16)

static int has_error(void)
{
    return strcmp(pare_error(), "no error") != 0;
}

/* Touch every byte the reader says is a tensor, so ASan sees a bad range. */
static unsigned check_file(const pare_st_file *f, const uint8_t *buf, size_t size)
{
    unsigned sum = 0;
    for (int i = 0; i < pare_st_count(f); i++) {
        const pare_st_tensor *t = pare_st_at(f, i);
        const uint8_t *p = t->data;
        PARE_CHECK(p >= buf && t->nbytes <= size && (size_t)(p - buf) <= size - t->nbytes, "tensor out of range");
        PARE_CHECK(pare_st_find(f, t->name) == t, "lookup by name failed");
        for (size_t k = 0; k < t->nbytes; k++) sum += p[k];
    }
    for (int i = 0; i < pare_st_meta_count(f); i++)
        sum += (unsigned)strlen(pare_st_meta_key(f, i)) + (unsigned)strlen(pare_st_meta_value(f, i));
    return sum;
}

/* An architecture that parses must write and parse back to the same text. */
static void check_arch(const char *text, size_t len)
{
    pare_clear_error();
    pare_model *m = pare_arch_parse(text, len, FUZZ_MAX_PARAMS);
    if (!m) {
        PARE_CHECK(has_error(), "architecture rejected without a message");
        return;
    }
    int n = pare_arch_to_json(m, NULL, 0);
    PARE_CHECK(n > 0, "cannot write a parsed architecture: %s", pare_error());
    char *a = pare_alloc((size_t)n + 1), *b = pare_alloc((size_t)n + 1);
    pare_arch_to_json(m, a, (size_t)n + 1);
    pare_model *again = pare_arch_parse(a, (size_t)n, FUZZ_MAX_PARAMS);
    PARE_CHECK(again != NULL, "written architecture does not parse: %s\n%s", pare_error(), a);
    int same = again && pare_arch_to_json(again, b, (size_t)n + 1) == n && memcmp(a, b, (size_t)n) == 0;
    PARE_CHECK(same, "architecture changed in a round trip:\n%s\n%s", a, b);
    pare_model_free(again);
    pare_model_free(m);
    pare_free(a);
    pare_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A private copy, so the reader sees exactly `size` owned bytes. */
    uint8_t *buf = pare_alloc(size ? size : 1);
    if (size) memcpy(buf, data, size);
    volatile unsigned sink = 0;
    pare_clear_error();
    pare_st_file *f = pare_st_parse(buf, size, "fuzz");
    if (f) {
        sink += check_file(f, buf, size);
        const char *arch = pare_st_meta(f, "pare.arch");
        if (arch) check_arch(arch, strlen(arch));
        /* Without pare.arch, try a small zoo model when the file looks like one. */
        pare_clear_error();
        pare_model *m = pare_load_st(f, pare_st_find(f, "fc1.weight") ? "mlp32" : NULL);
        PARE_CHECK(m || has_error(), "load failed without a message");
        PARE_CHECK(!m || m->built, "loaded an unbuilt model");
        pare_model_free(m);
        pare_st_close(f);
    } else {
        PARE_CHECK(has_error(), "file rejected without a message");
    }
    check_arch((const char *)buf, size);
    (void)sink;
    pare_free(buf);
    return 0;
}
