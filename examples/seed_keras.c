/* The seed's Keras snippet, written with pare:
 *
 *   model = Sequential([Conv2D(32, 3, activation='relu', input_shape=(28, 28, 1)), MaxPooling2D(2),
 *                       Conv2D(64, 3, activation='relu'), MaxPooling2D(2), Flatten(),
 *                       Dense(128, activation='relu'), Dense(10, activation='softmax')])
 *   model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
 *   model.fit(x_train, y_train, epochs=...)
 *   model.evaluate(x_test, y_test)
 *   q_aware_model = tensorflow.keras.quantization.quantize_model(model)
 *   q_aware_model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
 *   q_aware_model.fit(x_train, y_train, epochs=1)
 *
 * (quantize_model is tfmot's, tensorflow_model_optimization.quantization.keras;
 * Keras itself has none.) Then the int8 model that QAT trained for is
 * converted and evaluated, as TFLiteConverter would produce it.
 *
 *   build/seed_keras [--epochs 1] [--qat-epochs 1] [--data data/mnist] [--threads T] */
#include <stdio.h>

#include "compress/quant.h"
#include "examples/cli.h"

int main(int argc, char **argv)
{
    int epochs = 1, qat_epochs = 1, threads = 0;
    const char *data = "data/mnist";
    cli_opt opts[] = {
        {"--epochs", CLI_INT, &epochs, "training epochs (default 1)"},
        {"--qat-epochs", CLI_INT, &qat_epochs, "quantization-aware training epochs (default 1; 0 skips QAT)"},
        {"--data", CLI_STR, &data, "directory of the MNIST IDX files"},
        {"--threads", CLI_INT, &threads, "threads (default: all cores)"},
    };
    cli_parse(argc, argv, 1, opts, 4, "seed_keras [--epochs N] [--qat-epochs N] [--data DIR] [--threads T]");
    if (epochs < 0 || qat_epochs < 0) {
        fprintf(stderr, "seed_keras: --epochs and --qat-epochs must be >= 0\n");
        return 2;
    }
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

    if (qat_epochs > 0) {
        /* q_aware_model = quantize_model(model): fake-quant on weights (int8 per
         * channel) and activations (int8 per tensor, moving-average ranges). */
        if (pare_quant_prepare_qat(model, NULL, NULL, 0) < 0) cli_die("quantize_model");
        /* q_aware_model.compile(optimizer='adam', ...): a fresh Adam */
        pare_optim *qat_adam = pare_adam(model, 1e-3f);
        if (!qat_adam) cli_die("optimizer");
        /* q_aware_model.fit(x_train, y_train, epochs=1) */
        fit = pare_fit_defaults(qat_epochs);
        fit.first_epoch = epochs; /* a new shuffle order */
        if (pare_fit(ctx, model, qat_adam, train_loader, &fit, NULL) != 0) cli_die("fit (QAT)");
        printf("quantization-aware model: test accuracy %.2f%% after %d more epoch(s)\n",
               100 * pare_evaluate(ctx, model, test_loader, NULL), qat_epochs);
        /* TFLiteConverter(...).convert(): the integer-only int8 model */
        pare_quant_config cfg = pare_quant_defaults();
        cfg.observer = PARE_OBSERVE_MOVING_AVG;
        pare_qmodel *int8 = pare_quant_convert(model, &cfg);
        if (!int8) cli_die("convert");
        void *scratch = pare_alloc(int8->scratch_bytes);
        double int8_acc = pare_qmodel_evaluate(int8, test, 0, scratch, int8->scratch_bytes);
        if (int8_acc < 0) cli_die("int8 evaluation");
        printf("int8 model: test accuracy %.2f%%\n", 100 * int8_acc);
        pare_free(scratch);
        pare_qmodel_free(int8);
        pare_optim_free(qat_adam);
    }

    pare_loader_free(test_loader);
    pare_loader_free(train_loader);
    pare_ctx_free(ctx);
    pare_optim_free(adam);
    pare_dataset_free(train);
    pare_dataset_free(test);
    pare_model_free(model);
    return 0;
}
