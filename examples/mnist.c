/* build/mnist: train, evaluate and inspect MNIST models (later: compress them). */
#include <string.h>

#include "examples/mnist.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"train", mnist_train, "train a model from scratch"},
    {"eval", mnist_eval, "test accuracy and speed of a saved model"},
    {"summary", mnist_summary, "layers, shapes, parameters and FLOPs"},
    {"distill", mnist_distill, "train a small student from a saved teacher (knowledge distillation)"},
    {"lowrank", mnist_lowrank, "factorize layers by truncated SVD, then fine-tune"},
    {"prune", mnist_prune, "prune a saved model (unstructured or structured), then fine-tune"},
    {"quantize", mnist_quantize, "static int8 post-training quantization to the integer-only runtime"},
};
#define N_COMMANDS (int)(sizeof commands / sizeof commands[0])

static int usage(FILE *f, int status)
{
    fprintf(f, "usage: mnist COMMAND [options]   (mnist COMMAND --help for its options)\n\ncommands:\n");
    for (int i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
    return status;
}

pare_model *mnist_load_model(const char *path, const char *arch)
{
    pare_model *m = pare_load(path, arch);
    if (!m) cli_die(NULL); /* the message starts with the path */
    return m;
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage(stderr, 2);
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) return usage(stdout, 0);
    for (int i = 0; i < N_COMMANDS; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc, argv);
    fprintf(stderr, "error: unknown command '%s'\n", argv[1]);
    return usage(stderr, 2);
}
