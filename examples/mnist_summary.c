/* mnist summary --arch NAME | --model FILE */
#include "examples/mnist.h"

int mnist_summary(int argc, char **argv)
{
    const char *arch = NULL, *model = NULL;
    cli_opt opts[] = {
        {"--arch", CLI_STR, &arch, "architecture name (seedcnn, seedcnn-bn, kerascnn, lenet5, lenet300, mlp64, mlp32)"},
        {"--model", CLI_STR, &model, "a saved model file"},
    };
    const char *usage = "mnist summary --arch NAME | --model FILE";
    cli_parse(argc, argv, 2, opts, 2, usage);
    if (!arch && !model) cli_usage_error(usage, opts, 2, "give --arch or --model");
    pare_model *m;
    if (model) {
        m = mnist_load_model(model, arch);
    } else {
        m = pare_model_zoo(arch);
        if (!m) cli_usage_error(usage, opts, 2, "%s", pare_error());
        if (pare_build(m, 1, 28, 28)) cli_die(arch);
    }
    pare_summary(m, stdout);
    pare_model_free(m);
    return 0;
}
