/* The one counted allocation function, and the arena built on it. */
#include <stdlib.h>
#include <string.h>

#include "tensor.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define PARE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PARE_ASAN 1
#endif
#endif
#ifdef PARE_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n)   ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* Counters are atomic so that a parallel region may allocate safely. */
static _Atomic uint64_t n_allocs;
static _Atomic size_t live_bytes;

/* Each block carries its size in a 64-byte header so pare_free can count. */
#define HEADER PARE_ALIGN

void *pare_alloc(size_t bytes)
{
    size_t total = ((bytes + HEADER + PARE_ALIGN - 1) / PARE_ALIGN) * PARE_ALIGN;
    void *p = NULL;
    if (total < bytes || posix_memalign(&p, PARE_ALIGN, total) != 0 || !p)
        pare_fatal(__FILE__, __LINE__, "out of memory allocating %zu bytes", bytes);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    /* First touch of fresh pages is very slow on some machines; huge pages cut it. */
    if (total >= (size_t)4 << 20)
        madvise((void *)(((uintptr_t)p + 4095) & ~(uintptr_t)4095), total - 4096, MADV_HUGEPAGE);
#endif
    *(size_t *)p = total;
    n_allocs++;
    live_bytes += total;
    return (char *)p + HEADER;
}

void *pare_calloc(size_t bytes)
{
    void *p = pare_alloc(bytes);
    memset(p, 0, bytes);
    return p;
}

void pare_free(void *p)
{
    if (!p) return;
    char *base = (char *)p - HEADER;
    live_bytes -= *(size_t *)base;
    free(base);
}

uint64_t pare_alloc_count(void)
{
    return n_allocs;
}
size_t pare_alloc_live_bytes(void)
{
    return live_bytes;
}

/* ---- arena ---------------------------------------------------------------- */

struct pare_arena_block {
    pare_arena_block *next;
    size_t cap, used;
    unsigned char *mem;
    int owned; /* 0 for a caller's buffer */
};

static size_t round_up(size_t n)
{
    return (n + PARE_ALIGN - 1) / PARE_ALIGN * PARE_ALIGN;
}

static pare_arena_block *block_new(size_t cap)
{
    pare_arena_block *b = pare_calloc(sizeof *b);
    b->cap = cap;
    b->mem = pare_alloc(cap);
    b->owned = 1;
    POISON(b->mem, cap);
    return b;
}

void pare_arena_init(pare_arena *a, size_t first_block_bytes)
{
    memset(a, 0, sizeof *a);
    a->block_bytes = first_block_bytes ? round_up(first_block_bytes) : (size_t)1 << 20;
}

void pare_arena_init_fixed(pare_arena *a, void *buf, size_t bytes)
{
    memset(a, 0, sizeof *a);
    /* The block header lives at the start of the caller's buffer. */
    uintptr_t start = ((uintptr_t)buf + PARE_ALIGN - 1) & ~(uintptr_t)(PARE_ALIGN - 1);
    size_t skip = start - (uintptr_t)buf;
    size_t hdr = round_up(sizeof(pare_arena_block));
    PARE_CHECK(bytes > skip + hdr, "fixed arena buffer of %zu bytes is too small", bytes);
    pare_arena_block *b = (pare_arena_block *)start;
    b->next = NULL;
    b->mem = (unsigned char *)start + hdr;
    b->cap = (bytes - skip - hdr) / PARE_ALIGN * PARE_ALIGN;
    b->used = 0;
    b->owned = 0;
    a->first = a->cur = b;
    a->fixed = 1;
}

void pare_arena_destroy(pare_arena *a)
{
    pare_arena_block *b = a->first;
    while (b) {
        pare_arena_block *next = b->next;
        if (b->owned) {
            UNPOISON(b->mem, b->cap);
            pare_free(b->mem);
            pare_free(b);
        }
        b = next;
    }
    memset(a, 0, sizeof *a);
}

/* Finds room after the current block: reuses a following block that is big
 * enough, else links a new one in right after the current block. */
static pare_arena_block *next_block_with_room(pare_arena *a, size_t need)
{
    pare_arena_block *cur = a->cur;
    if (cur && cur->next && cur->next->cap >= need) return cur->next;
    if (a->fixed) return NULL;
    size_t cap = a->block_bytes;
    while (cap < need) cap *= 2;
    a->block_bytes = cap * 2; /* geometric growth keeps the block count small */
    pare_arena_block *b = block_new(cap);
    if (!cur) {
        b->next = a->first;
        a->first = b;
    } else {
        b->next = cur->next;
        cur->next = b;
    }
    return b;
}

void *pare_arena_alloc(pare_arena *a, size_t bytes)
{
    size_t need = round_up(bytes ? bytes : 1);
    pare_arena_block *b = a->cur;
    if (!b || b->cap - b->used < need) {
        b = (!b && a->first && a->first->cap >= need) ? a->first : next_block_with_room(a, need);
        if (!b) return NULL;
        b->used = 0;
        a->cur = b;
    }
    void *p = b->mem + b->used;
    b->used += need;
    a->in_use += need;
    if (a->in_use > a->high_water) a->high_water = a->in_use;
    UNPOISON(p, need);
    return p;
}

void *pare_arena_zalloc(pare_arena *a, size_t bytes)
{
    void *p = pare_arena_alloc(a, bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

void pare_arena_unpoison(const void *p, size_t bytes)
{
    UNPOISON(p, bytes);
}
void pare_arena_poison(const void *p, size_t bytes)
{
    POISON(p, bytes);
}

pare_arena_pos pare_arena_pos_get(const pare_arena *a)
{
    pare_arena_pos pos = {a->cur, a->cur ? a->cur->used : 0, a->in_use};
    return pos;
}

void pare_arena_rewind(pare_arena *a, pare_arena_pos pos)
{
    /* Poison everything handed out since pos, so a use after release is caught under make san. */
    pare_arena_block *b = pos.block ? pos.block : a->first;
    size_t from = pos.block ? pos.used : 0;
    for (; b; b = b->next, from = 0) {
        if (b->used > from) POISON(b->mem + from, b->used - from);
        if (b == a->cur) break;
    }
    if (pos.block) {
        pos.block->used = pos.used;
    } else if (a->first) {
        a->first->used = 0;
    }
    a->cur = pos.block;
    a->in_use = pos.in_use;
}
