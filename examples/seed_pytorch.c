/* The seed's PyTorch snippet, written with pare, line for line as far as C
 * allows. The seed defines SimpleModel and an optimizer but never trains;
 * here it trains on MNIST, is evaluated, then quantized dynamically as the
 * seed does, and evaluated again. Each block quotes the seed line
 * it mirrors.
 *
 *   build/seed_pytorch [--epochs 1] [--data data/mnist] [--threads T] */
#include <stdio.h>
#include <stdlib.h>

#include "compress/quant.h"
#include "examples/cli.h"

/* class SimpleModel(nn.Module):
 *     def __init__(self):
 *         self.conv1 = nn.Conv2d(1, 32, 3)
 *         self.conv2 = nn.Conv2d(32, 64, 3)
 *         self.fc1 = nn.Linear(64 * 6 * 6, 128)
 *         self.fc2 = nn.Linear(128, 10)
 *     def forward(self, x):
 *         x = F.max_pool2d(F.relu(self.conv1(x)), 2)
 *         x = F.max_pool2d(F.relu(self.conv2(x)), 2)
 *         x = x.view(-1, 64 * 6 * 6)   -- then fc1, relu, fc2, log_softmax */
static pare_model *simple_model(int fc1_inputs)
{
    return pare_sequential("seedcnn", pare_conv2d("conv1", 1, 32, 3), pare_relu(), pare_maxpool2d(2),
                           pare_conv2d("conv2", 32, 64, 3), pare_relu(), pare_maxpool2d(2), pare_flatten(),
                           pare_linear("fc1", fc1_inputs, 128), pare_relu(), pare_linear("fc2", 128, 10),
                           pare_log_softmax(), NULL);
}

int main(int argc, char **argv)
{
    int epochs = 1, threads = 0;
    const char *data = "data/mnist";
    cli_opt opts[] = {
        {"--epochs", CLI_INT, &epochs, "training epochs (default 1)"},
        {"--data", CLI_STR, &data, "directory of the MNIST IDX files"},
        {"--threads", CLI_INT, &threads, "threads (default: all cores)"},
    };
    cli_parse(argc, argv, 1, opts, 3, "seed_pytorch [--epochs N] [--data DIR] [--threads T]");
    cli_threads(threads);

    /* model = SimpleModel() -- exactly as the seed wrote it: 28x28 input makes
     * 64x5x5 = 1600 features reach fc1, not 64x6x6 = 2304, and pare says so. */
    pare_model *model = simple_model(64 * 6 * 6);
    if (pare_build(model, 1, 28, 28) != 0) printf("the seed's model as written: %s\n\n", pare_error());
    pare_model_free(model);
    model = simple_model(64 * 5 * 5);
    if (pare_build(model, 1, 28, 28) != 0) cli_die("SimpleModel");
    pare_summary(model, stdout);

    /* optimizer = optim.SGD(model.parameters(), lr=0.01)  (momentum 0.9, the reference protocol) */
    pare_optim *optimizer = pare_sgd(model, 0.01f, 0.9f);
    if (!optimizer) cli_die("optimizer");

    pare_dataset *train = cli_load(data, 1), *test = cli_load(data, 0);
    pare_loader_config lc = pare_loader_defaults(); /* batch 64, shuffled, normalized */
    pare_loader *train_loader = pare_loader_new(train, NULL, train->n, &lc);
    pare_ctx *ctx = pare_ctx_new(0);

    /* The training loop the seed leaves out: for x, y in loader: ... */
    for (int epoch = 0; epoch < epochs; epoch++) {
        pare_loader_start_epoch(train_loader, epoch);
        pare_batch batch;
        double t0 = pare_now(), loss_sum = 0;
        int steps = 0;
        for (;;) {
            pare_mark mark = pare_arena_mark(ctx); /* everything below lives until release */
            if (!pare_loader_next(train_loader, &ctx->arena, &batch)) {
                pare_arena_release(ctx, mark);
                break;
            }
            pare_tensor *output = pare_forward(ctx, model, batch.x);      /* output = model(x) */
            pare_tensor *loss = pare_nll_loss(ctx, output, batch.labels); /* F.nll_loss(output, y) */
            pare_backward(ctx, loss);                                     /* loss.backward() */
            pare_step(optimizer);                                         /* optimizer.step(); zero_grad() */
            loss_sum += loss->data[0];
            steps++;
            pare_arena_release(ctx, mark);
        }
        fprintf(stderr, "epoch %d: mean loss %.4f, %.1f s\n", epoch + 1, loss_sum / steps, pare_now() - t0);
    }

    /* model.eval(); accuracy on the 10,000 test images */
    lc.batch = 256;
    lc.shuffle = 0;
    pare_loader *test_loader = pare_loader_new(test, NULL, test->n, &lc);
    printf("test accuracy after %d epoch(s): %.2f%%\n", epochs, 100 * pare_evaluate(ctx, model, test_loader, NULL));

    /* quantized_model = torch.quantization.quantize_dynamic(model, {nn.Linear, nn.Conv2d}, dtype=torch.qint8)
     * PyTorch 1.13 leaves Conv2d in float here; pare converts both. */
    pare_dq_report report;
    if (pare_quant_dynamic(model, PARE_CONV2D | PARE_LINEAR, 8, &report) < 0) cli_die("quantize_dynamic");
    printf("dynamic int8: %d layer(s) converted (", report.n_converted);
    for (int i = 0; i < report.n_converted; i++) printf("%s%s", i ? ", " : "", report.converted[i]);
    printf("), %d left in float; test accuracy %.2f%%\n", report.n_float,
           100 * pare_evaluate(ctx, model, test_loader, NULL));

    pare_loader_free(test_loader);
    pare_loader_free(train_loader);
    pare_ctx_free(ctx);
    pare_optim_free(optimizer);
    pare_dataset_free(train);
    pare_dataset_free(test);
    pare_model_free(model);
    return 0;
}
