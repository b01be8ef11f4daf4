/* libFuzzer target for the int8 model loader: any input must load or be
 * rejected with a message, never read out of bounds or overflow; a model
 * that loads must run inside the scratch it planned. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "compress/quant.h"

/* Multiply-adds a run may cost here: keeps each input fast. */
#define FUZZ_MAX_MACS    ((double)(1 << 22))
#define FUZZ_MAX_SCRATCH ((size_t)1 << 22)

static double macs(const pare_qmodel *qm)
{
    double n = 0;
    for (int i = 0; i < qm->n_layers; i++) {
        const pare_qlayer *l = &qm->layers[i];
        double k = l->kind == PARE_Q_FLATTEN ? 1 : l->kind == PARE_Q_LINEAR ? l->in_c : (double)l->kernel * l->kernel;
        if (l->kind == PARE_Q_CONV) k *= l->in_c;
        n += (double)l->out_h * l->out_w * l->out_c * k;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = pare_alloc(size ? size : 1); /* exactly `size` owned bytes */
    if (size) memcpy(buf, data, size);
    pare_clear_error();
    pare_qmodel *qm = pare_qmodel_parse(buf, size, "fuzz");
    if (!qm) {
        PARE_CHECK(strcmp(pare_error(), "no error") != 0, "int8 model rejected without a message");
    } else if (macs(qm) <= FUZZ_MAX_MACS && qm->scratch_bytes <= FUZZ_MAX_SCRATCH) {
        const pare_qlayer *first = &qm->layers[0];
        size_t n_in = (size_t)first->in_h * first->in_w * first->in_c;
        int8_t *x = pare_calloc(n_in), *y = pare_alloc((size_t)qm->n_out);
        void *scratch = pare_alloc(qm->scratch_bytes);
        for (size_t i = 0; i < n_in; i++) x[i] = (int8_t)(i * 37);
        PARE_CHECK(pare_qmodel_forward(qm, x, 1, y, scratch, qm->scratch_bytes) == 0, "forward failed: %s",
                   pare_error());
        pare_free(scratch);
        pare_free(x);
        pare_free(y);
    }
    pare_qmodel_free(qm);
    pare_free(buf);
    return 0;
}
