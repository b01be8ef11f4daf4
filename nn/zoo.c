/* The example architectures, by name. All take a [1, 28, 28] image. */
#include <string.h>

#include "nn/nn.h"

static pare_model *seedcnn(int batchnorm, int softmax_out, const char *arch)
{
    pare_model *m = pare_model_new(arch);
    pare_model_append(m, pare_conv2d("conv1", 1, 32, 3));
    if (batchnorm) pare_model_append(m, pare_batchnorm2d("bn1", 32));
    pare_model_append(m, pare_relu());
    pare_model_append(m, pare_maxpool2d(2));
    pare_model_append(m, pare_conv2d("conv2", 32, 64, 3));
    if (batchnorm) pare_model_append(m, pare_batchnorm2d("bn2", 64));
    pare_model_append(m, pare_relu());
    pare_model_append(m, pare_maxpool2d(2));
    pare_model_append(m, pare_flatten());
    pare_model_append(m, pare_linear("fc1", 64 * 5 * 5, 128));
    pare_model_append(m, pare_relu());
    pare_model_append(m, pare_linear("fc2", 128, 10));
    pare_model_append(m, softmax_out ? pare_softmax() : pare_log_softmax());
    return m;
}

/* Caffe's LeNet-5 as pruned by Han et al. 2015: no activation after the convs. */
static pare_model *lenet5(void)
{
    return pare_sequential("lenet5", pare_conv2d("conv1", 1, 20, 5), pare_maxpool2d(2), pare_conv2d("conv2", 20, 50, 5),
                           pare_maxpool2d(2), pare_flatten(), pare_linear("fc1", 50 * 4 * 4, 500), pare_relu(),
                           pare_linear("fc2", 500, 10), pare_log_softmax(), NULL);
}

static pare_model *lenet300(void)
{
    return pare_sequential("lenet300", pare_flatten(), pare_linear("fc1", 784, 300), pare_relu(),
                           pare_linear("fc2", 300, 100), pare_relu(), pare_linear("fc3", 100, 10), pare_log_softmax(),
                           NULL);
}

static pare_model *mlp(int hidden, const char *arch)
{
    return pare_sequential(arch, pare_flatten(), pare_linear("fc1", 784, hidden), pare_relu(),
                           pare_linear("fc2", hidden, 10), pare_log_softmax(), NULL);
}

static const char *const names[] = {"seedcnn", "seedcnn-bn", "kerascnn", "lenet5", "lenet300", "mlp64", "mlp32", NULL};

const char *const *pare_model_zoo_names(void)
{
    return names;
}

pare_model *pare_model_zoo(const char *arch)
{
    if (!arch) arch = "";
    if (!strcmp(arch, "seedcnn")) return seedcnn(0, 0, arch);
    if (!strcmp(arch, "seedcnn-bn")) return seedcnn(1, 0, arch);
    if (!strcmp(arch, "kerascnn")) return seedcnn(0, 1, arch);
    if (!strcmp(arch, "lenet5")) return lenet5();
    if (!strcmp(arch, "lenet300")) return lenet300();
    if (!strcmp(arch, "mlp64")) return mlp(64, arch);
    if (!strcmp(arch, "mlp32")) return mlp(32, arch);
    pare_set_error("unknown architecture '%s' (known: seedcnn, seedcnn-bn, kerascnn, lenet5, lenet300, mlp64, mlp32)",
                   arch);
    return NULL;
}
