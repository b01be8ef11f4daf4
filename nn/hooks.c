/* Hook chains: ordered transforms of a weight, an output or the input. */
#include <string.h>

#include "nn/nn.h"

int pare_hook_add(pare_hook_chain *chain, pare_hook *hook)
{
    if (chain->n == PARE_MAX_HOOKS)
        return pare_set_error("hook '%s': the chain already holds %d hooks", hook->name, PARE_MAX_HOOKS);
    chain->hooks[chain->n++] = hook;
    return 0;
}

pare_hook *pare_hook_find(pare_hook_chain *chain, const char *name)
{
    for (int i = 0; i < chain->n; i++)
        if (strcmp(chain->hooks[i]->name, name) == 0) return chain->hooks[i];
    return NULL;
}

int pare_hook_remove(pare_hook_chain *chain, const char *name)
{
    for (int i = 0; i < chain->n; i++) {
        pare_hook *h = chain->hooks[i];
        if (strcmp(h->name, name) != 0) continue;
        memmove(&chain->hooks[i], &chain->hooks[i + 1], (size_t)(chain->n - i - 1) * sizeof h);
        chain->n--;
        if (h->destroy) h->destroy(h);
        return 0;
    }
    return pare_set_error("no hook named '%s'", name);
}

pare_tensor *pare_hook_run(pare_ctx *ctx, pare_hook_chain *chain, pare_layer *layer, pare_tensor *t)
{
    for (int i = 0; i < chain->n; i++) t = chain->hooks[i]->apply(ctx, chain->hooks[i], layer, t);
    return t;
}

void pare_hook_chain_clear(pare_hook_chain *chain)
{
    for (int i = 0; i < chain->n; i++)
        if (chain->hooks[i]->destroy) chain->hooks[i]->destroy(chain->hooks[i]);
    chain->n = 0;
}
