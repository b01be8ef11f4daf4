/* The tape: contexts, mark/release, node recording and backward(). */
#include <string.h>

#include "autograd/autograd.h"

pare_ctx *pare_ctx_new(size_t arena_bytes)
{
    pare_ctx *ctx = pare_calloc(sizeof *ctx);
    pare_arena_init(&ctx->arena, arena_bytes ? arena_bytes : (size_t)16 << 20);
    ctx->tape_cap = 64;
    ctx->tape = pare_calloc((size_t)ctx->tape_cap * sizeof *ctx->tape);
    ctx->grad_enabled = 1;
    ctx->training = 1;
    return ctx;
}

void pare_ctx_free(pare_ctx *ctx)
{
    if (!ctx) return;
    pare_arena_destroy(&ctx->arena);
    pare_free(ctx->tape);
    pare_free(ctx);
}

pare_mark pare_arena_mark(pare_ctx *ctx)
{
    pare_mark m = {pare_arena_pos_get(&ctx->arena), ctx->tape_len};
    return m;
}

void pare_arena_release(pare_ctx *ctx, pare_mark mark)
{
    pare_arena_rewind(&ctx->arena, mark.pos);
    ctx->tape_len = mark.tape_len;
}

int pare_set_grad_enabled(pare_ctx *ctx, int enabled)
{
    int old = ctx->grad_enabled;
    ctx->grad_enabled = enabled;
    return old;
}

pare_tensor *pare_ctx_tensor(pare_ctx *ctx, int ndim, const int *shape)
{
    return pare_tensor_new(&ctx->arena, ndim, shape);
}

/* The tape grows by doubling during the first step only; nodes are referred
 * to by index, so moving them is safe. */
static void tape_reserve(pare_ctx *ctx)
{
    if (ctx->tape_len < ctx->tape_cap) return;
    int cap = ctx->tape_cap * 2;
    pare_node *t = pare_calloc((size_t)cap * sizeof *t);
    memcpy(t, ctx->tape, (size_t)ctx->tape_len * sizeof *t);
    pare_free(ctx->tape);
    ctx->tape = t;
    ctx->tape_cap = cap;
}

pare_node *pare_record(pare_ctx *ctx, const pare_op *op, pare_tensor *out, int n_in, pare_tensor *const *in)
{
    PARE_CHECK(n_in <= PARE_NODE_MAX_IN, "op %s has %d inputs", op->name, n_in);
    out->requires_grad = 0;
    out->node = -1;
    if (!ctx->grad_enabled) return NULL;
    int any = 0;
    for (int i = 0; i < n_in; i++) any |= pare_wants_grad(in[i]);
    if (!any) return NULL;
    tape_reserve(ctx);
    pare_node *node = &ctx->tape[ctx->tape_len];
    memset(node, 0, sizeof *node);
    node->op = op;
    node->n_in = n_in;
    for (int i = 0; i < n_in; i++) node->in[i] = in[i];
    node->out = out;
    out->node = ctx->tape_len++;
    out->requires_grad = 1;
    return node;
}

float *pare_grad_of(pare_ctx *ctx, pare_tensor *t)
{
    if (!t->grad) {
        t->grad = pare_arena_zalloc(&ctx->arena, t->size * sizeof(float));
        PARE_CHECK(t->grad, "arena full allocating a gradient");
    }
    return t->grad;
}

float *pare_grad_dst(pare_ctx *ctx, pare_tensor *t, int *fresh)
{
    *fresh = t->grad == NULL;
    if (*fresh) {
        t->grad = pare_arena_alloc(&ctx->arena, t->size * sizeof(float));
        PARE_CHECK(t->grad, "arena full allocating a gradient");
    }
    return t->grad;
}

int pare_backward(pare_ctx *ctx, pare_tensor *loss)
{
    if (loss->size != 1) return pare_set_error("backward() needs a scalar loss; got %zu elements", loss->size);
    if (!loss->requires_grad || loss->node < 0)
        return pare_set_error("backward(): the loss does not depend on any tensor that requires grad "
                              "(was it computed in no-grad mode?)");
    /* Gradients of intermediate tensors left by an earlier backward on the same
     * tape must not flow again: start every node output without one. */
    for (int i = 0; i <= loss->node; i++) ctx->tape[i].out->grad = NULL;
    pare_grad_of(ctx, loss)[0] = 1.0f;
    /* A node's output grad is complete once every later node has run. */
    for (int i = loss->node; i >= 0; i--) {
        pare_node *node = &ctx->tape[i];
        if (!node->out->grad) continue; /* does not reach the loss */
        node->op->backward(ctx, node);
    }
    return 0;
}
