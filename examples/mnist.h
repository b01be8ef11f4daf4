/* build/mnist: one file per subcommand, so later ones grow without colliding. */
#ifndef PARE_EXAMPLES_MNIST_H
#define PARE_EXAMPLES_MNIST_H

#include "examples/cli.h"

int mnist_train(int argc, char **argv);
int mnist_eval(int argc, char **argv);
int mnist_summary(int argc, char **argv);
int mnist_distill(int argc, char **argv);
int mnist_lowrank(int argc, char **argv);
int mnist_prune(int argc, char **argv);
int mnist_quantize(int argc, char **argv);

/* mnist eval of an int8 file (pare.format "int8"). */
int mnist_eval_int8(const char *path, const char *data, int threads, int json);

/* Loads a model file (with --arch for files without pare metadata); exits on error. */
pare_model *mnist_load_model(const char *path, const char *arch);
#endif
