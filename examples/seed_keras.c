/* The seed's Keras snippet, written with pare:
 *
 *   model = Sequential([Conv2D(32, 3, activation='relu', input_shape=(28, 28, 1)), MaxPooling2D(2),
 *                       Conv2D(64, 3, activation='relu'), MaxPooling2D(2), Flatten(),
 *                       Dense(128, activation='relu'), Dense(10, activation='softmax')])
 *   model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
 *   model.fit(x_train, y_train, epochs=...)
 *   model.evaluate(x_test, y_test)
 *
 *   build/seed_keras [--epochs 1] [--data data/mnist] [--threads T] */
#include <stdio.h>

#include "examples/cli.h"

int main(int argc, char **argv)
{
    int epochs = 1, threads = 0;
    const char *data = "data/mnist";
    cli_opt opts[] = {
        {"--epochs", CLI_INT, &epochs, "training epochs (default 1)"},
        {"--data", CLI_STR, &data, "directory of the MNIST IDX files"},
        {"--threads", CLI_INT, &threads, "threads (default: all cores)"},
    };
    cli_parse(argc, argv, 1, opts, 3, "seed_keras [--epochs N] [--data DIR] [--threads T]");
    cli_threads(threads);

    /* model = Sequential([...]): Keras fuses activation into Conv2D/Dense; pare lists it. */
    pare_model *model = pare_sequential("kerascnn", pare_conv2d("conv1", 1, 32, 3), pare_relu(), pare_maxpool2d(2),
                                        pare_conv2d("conv2", 32, 64, 3), pare_relu(), pare_maxpool2d(2), pare_flatten(),
                                        pare_linear("fc1", 64 * 5 * 5, 128), pare_relu(), pare_linear("fc2", 128, 10),
                                        pare_softmax(), NULL);
    if (pare_build(model, 1, 28, 28) != 0) cli_die("model"); /* input_shape=(28, 28, 1) */

    /* model.compile(optimizer='adam', loss='sparse_categorical_crossentropy'):
     * pare_fit takes the loss from the last layer; on a Softmax output it is
     * the cross-entropy of the logits, as Keras computes it. */
    pare_optim *adam = pare_adam(model, 1e-3f);
    if (!adam) cli_die("optimizer");

    /* model.fit(x_train, y_train, epochs=...) */
    pare_dataset *train = cli_load(data, 1), *test = cli_load(data, 0);
    pare_loader_config lc = pare_loader_defaults();
    pare_loader *train_loader = pare_loader_new(train, NULL, train->n, &lc);
    pare_ctx *ctx = pare_ctx_new(0);
    pare_fit_config fit = pare_fit_defaults(epochs);
    if (pare_fit(ctx, model, adam, train_loader, &fit, NULL) != 0) cli_die("fit");

    /* model.evaluate(x_test, y_test) */
    lc.batch = 256;
    lc.shuffle = 0;
    pare_loader *test_loader = pare_loader_new(test, NULL, test->n, &lc);
    double loss, acc = pare_evaluate(ctx, model, test_loader, &loss);
    printf("test loss %.4f, test accuracy %.2f%% after %d epoch(s)\n", loss, 100 * acc, epochs);

    pare_loader_free(test_loader);
    pare_loader_free(train_loader);
    pare_ctx_free(ctx);
    pare_optim_free(adam);
    pare_dataset_free(train);
    pare_dataset_free(test);
    pare_model_free(model);
    return 0;
}
