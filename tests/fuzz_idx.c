/* libFuzzer target for the IDX parsers: any input must be accepted or
 * rejected with a message, never read out of bounds or overflow. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "data/data.h"

/* Touch every byte the parser says is valid, so ASan sees a bad range. */
static unsigned sum_bytes(const uint8_t *p, size_t n)
{
    unsigned s = 0;
    for (size_t i = 0; i < n; i++) s += p[i];
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A private copy, so the parsers see exactly `size` owned bytes. */
    uint8_t *buf = pare_alloc(size);
    if (size) memcpy(buf, data, size);
    int n = 0, rows = 0, cols = 0;
    const uint8_t *px = NULL;
    volatile unsigned sink = 0;
    pare_clear_error();
    if (pare_idx_parse_images(buf, size, &n, &rows, &cols, &px) == 0) {
        PARE_CHECK(n > 0 && rows > 0 && cols > 0, "accepted empty dims");
        size_t bytes = (size_t)n * (size_t)rows * (size_t)cols;
        PARE_CHECK(px == buf + 16 && 16 + bytes == size, "accepted a wrong length");
        sink += sum_bytes(px, bytes);
    } else {
        PARE_CHECK(strcmp(pare_error(), "no error") != 0, "rejected without a message");
    }
    const uint8_t *lb = NULL;
    pare_clear_error();
    if (pare_idx_parse_labels(buf, size, &n, &lb) == 0) {
        PARE_CHECK(n > 0 && lb == buf + 8 && 8 + (size_t)n == size, "accepted a wrong length");
        sink += sum_bytes(lb, (size_t)n);
    } else {
        PARE_CHECK(strcmp(pare_error(), "no error") != 0, "rejected without a message");
    }
    (void)sink;
    pare_free(buf);
    return 0;
}
