/* tensor: arena, tensors, PRNG, im2col/col2im, vector kernels. */
#include <string.h>

#include "tensor/tensor.h"
#include "tests/test.h"

TEST(arena_reuses_blocks_after_rewind)
{
    pare_arena a;
    pare_arena_init(&a, 1024);
    pare_arena_pos start = pare_arena_pos_get(&a);
    void *first[3];
    for (int i = 0; i < 3; i++) first[i] = pare_arena_alloc(&a, 1000); /* forces new blocks */
    uint64_t allocs = pare_alloc_count();
    for (int round = 0; round < 5; round++) {
        pare_arena_rewind(&a, start);
        for (int i = 0; i < 3; i++) CHECK(pare_arena_alloc(&a, 1000) == first[i]);
    }
    CHECK(pare_alloc_count() == allocs);
    CHECK(a.high_water >= 3000);
    pare_arena_destroy(&a);
}

TEST(arena_pointers_never_move_and_are_aligned)
{
    pare_arena a;
    pare_arena_init(&a, 256);
    float *p = pare_arena_alloc(&a, 100 * sizeof(float));
    for (int i = 0; i < 100; i++) p[i] = (float)i;
    for (int i = 0; i < 50; i++) CHECK(((uintptr_t)pare_arena_alloc(&a, 3000 + i) % PARE_ALIGN) == 0);
    int ok = 1;
    for (int i = 0; i < 100; i++) ok &= p[i] == (float)i;
    CHECK(ok);
    pare_arena_destroy(&a);
}

TEST(arena_nested_marks)
{
    pare_arena a;
    pare_arena_init(&a, 4096);
    pare_arena_pos outer = pare_arena_pos_get(&a);
    char *x = pare_arena_alloc(&a, 100);
    pare_arena_pos inner = pare_arena_pos_get(&a);
    char *y = pare_arena_alloc(&a, 100);
    pare_arena_rewind(&a, inner);
    CHECK(pare_arena_alloc(&a, 100) == y);
    pare_arena_rewind(&a, outer);
    CHECK(pare_arena_alloc(&a, 100) == x);
    pare_arena_destroy(&a);
}

TEST(fixed_arena_never_grows)
{
    static unsigned char buf[4096];
    pare_arena a;
    uint64_t allocs = pare_alloc_count();
    pare_arena_init_fixed(&a, buf, sizeof buf);
    CHECK(pare_arena_alloc(&a, 2000) != NULL);
    CHECK(pare_arena_alloc(&a, 4000) == NULL); /* full: NULL, no malloc */
    CHECK(pare_alloc_count() == allocs);
    pare_arena_destroy(&a);
}

TEST(tensor_shapes)
{
    pare_arena a;
    pare_arena_init(&a, 0);
    pare_tensor *t = pare_tensor_4d(&a, 2, 3, 4, 5);
    CHECK(t->size == 120 && t->ndim == 4 && t->node == -1 && !t->grad);
    char s[64];
    CHECK(!strcmp(pare_shape_str(t->ndim, t->shape, s, sizeof s), "[2, 3, 4, 5]"));
    pare_tensor *z = pare_tensor_zeros(&a, 2, t->shape);
    CHECK(z->size == 6 && z->data[5] == 0.0f && !pare_shape_equal(t, z));
    pare_arena_destroy(&a);
    int shape[2] = {3, 4};
    pare_tensor *p = pare_tensor_persistent(2, shape, 1);
    CHECK(p->requires_grad && p->grad && p->grad[11] == 0.0f);
    pare_tensor_free(p);
}

TEST(rng_is_deterministic_and_streams_differ)
{
    pare_rng a, b, c;
    pare_rng_seed(&a, 42, PARE_STREAM_INIT);
    pare_rng_seed(&b, 42, PARE_STREAM_INIT);
    pare_rng_seed(&c, 42, PARE_STREAM_SHUFFLE);
    int same = 1, differ = 0;
    for (int i = 0; i < 100; i++) {
        uint64_t x = pare_rng_u64(&a), y = pare_rng_u64(&b), z = pare_rng_u64(&c);
        same &= x == y;
        differ += x != z;
    }
    CHECK(same && differ == 100);
}

TEST(rng_distributions)
{
    pare_rng r;
    pare_rng_seed(&r, 7, PARE_STREAM_TEST);
    double sum = 0, sq = 0;
    int in_range = 1, counts[5] = {0};
    const int n = 100000;
    for (int i = 0; i < n; i++) {
        float u = pare_rng_uniform(&r);
        in_range &= u >= 0.0f && u < 1.0f;
        sum += u;
        counts[pare_rng_below(&r, 5)]++;
        float g = pare_rng_normal(&r);
        sq += (double)g * g;
    }
    CHECK(in_range);
    CHECK_NEAR(sum / n, 0.5, 0.01);
    CHECK_NEAR(sq / n, 1.0, 0.03);
    for (int k = 0; k < 5; k++) CHECK_NEAR(counts[k] / (double)n, 0.2, 0.01);
}

TEST(shuffle_is_a_permutation)
{
    int idx[1000], seen[1000] = {0};
    for (int i = 0; i < 1000; i++) idx[i] = i;
    pare_rng r;
    pare_rng_seed(&r, 3, PARE_STREAM_SHUFFLE);
    pare_rng_shuffle(&r, idx, 1000);
    int moved = 0, ok = 1;
    for (int i = 0; i < 1000; i++) {
        ok &= idx[i] >= 0 && idx[i] < 1000 && !seen[idx[i]];
        seen[idx[i]] = 1;
        moved += idx[i] != i;
    }
    CHECK(ok && moved > 900);
}

TEST(hash_uniform_is_a_pure_function)
{
    CHECK(pare_hash_uniform(1, 2, 3) == pare_hash_uniform(1, 2, 3));
    CHECK(pare_hash_uniform(1, 2, 3) != pare_hash_uniform(1, 2, 4));
    CHECK(pare_hash_uniform(1, 2, 3) != pare_hash_uniform(1, 3, 3));
    double s = 0;
    for (int i = 0; i < 10000; i++) s += pare_hash_uniform(5, 0, (uint64_t)i);
    CHECK_NEAR(s / 10000, 0.5, 0.02);
}

/* ---- im2col ----------------------------------------------------------------- */
static float naive_col(const pare_conv_geom *g, const float *x, int row, int colidx)
{
    int ci = row / (g->kh * g->kw), ky = row / g->kw % g->kh, kx = row % g->kw;
    int oy = colidx / g->ow, ox = colidx % g->ow;
    int iy = oy * g->stride - g->pad + ky, ix = ox * g->stride - g->pad + kx;
    if (iy < 0 || iy >= g->h || ix < 0 || ix >= g->w) return 0.0f;
    return x[((size_t)ci * g->h + iy) * g->w + ix];
}

TEST(im2col_matches_definition_and_col2im_is_its_adjoint)
{
    const int geo[][6] = {
        {1, 5, 5, 3, 1, 0}, {2, 7, 6, 3, 1, 1}, {3, 8, 8, 3, 2, 1}, {2, 9, 7, 2, 3, 2}, {1, 4, 4, 5, 1, 2}};
    pare_rng r;
    pare_rng_seed(&r, 11, PARE_STREAM_TEST);
    for (size_t t = 0; t < sizeof geo / sizeof geo[0]; t++) {
        pare_conv_geom g = {geo[t][0], geo[t][1], geo[t][2], geo[t][3], geo[t][3], geo[t][4], geo[t][5], 0, 0};
        g.oh = pare_conv_out(g.h, g.kh, g.stride, g.pad);
        g.ow = pare_conv_out(g.w, g.kw, g.stride, g.pad);
        size_t nx = (size_t)g.c * g.h * g.w, rows = (size_t)g.c * g.kh * g.kw, cols = (size_t)g.oh * g.ow;
        size_t ld = cols + 3; /* a wider matrix, as when a batch shares it */
        float *x = pare_alloc(nx * 4), *col = pare_alloc(rows * ld * 4), *c2 = pare_alloc(rows * ld * 4);
        float *back = pare_calloc(nx * 4);
        for (size_t i = 0; i < nx; i++) x[i] = pare_rng_range(&r, -1, 1);
        for (size_t i = 0; i < rows * ld; i++) c2[i] = pare_rng_range(&r, -1, 1);
        pare_im2col(&g, x, col, ld);
        int ok = 1;
        for (size_t i = 0; i < rows; i++)
            for (size_t j = 0; j < cols; j++) ok &= col[i * ld + j] == naive_col(&g, x, (int)i, (int)j);
        CHECKF(ok, "im2col geometry %zu", t);
        /* <im2col(x), c> == <x, col2im(c)> */
        pare_col2im(&g, c2, ld, back);
        double lhs = 0, rhs = pare_vec_dot(x, back, nx);
        for (size_t i = 0; i < rows; i++)
            for (size_t j = 0; j < cols; j++) lhs += (double)col[i * ld + j] * c2[i * ld + j];
        CHECK_NEAR(lhs, rhs, 1e-4);
        pare_free(x), pare_free(col), pare_free(c2), pare_free(back);
    }
    CHECK(pare_conv_out(28, 3, 1, 0) == 26 && pare_conv_out(2, 3, 1, 0) == 0 && pare_conv_out(7, 3, 2, 1) == 4);
}

TEST(vector_kernels)
{
    float a[19], b[19], c[19];
    for (int i = 0; i < 19; i++) a[i] = (float)i, b[i] = 2.0f;
    CHECK(pare_vec_sum(a, 19) == 171.0);
    CHECK(pare_vec_dot(a, b, 19) == 342.0);
    pare_vec_add(c, a, b, 19);
    CHECK(c[18] == 20.0f);
    pare_vec_axpy(c, 0.5f, b, 19);
    CHECK(c[0] == 3.0f);
    pare_vec_scale(c, 2.0f, 19);
    CHECK(c[0] == 6.0f);
    a[7] = 100.0f;
    CHECK(pare_vec_max(a, 19) == 100.0f && pare_vec_argmax(a, 19) == 7);
    pare_vec_fill(c, 19, -1.0f);
    pare_vec_acc(c, b, 19);
    CHECK(c[10] == 1.0f);
}

TEST(errors_are_kept_and_cleared)
{
    CHECK(pare_set_error("bad %d", 42) == -1 && !strcmp(pare_error(), "bad 42"));
    pare_clear_error();
    CHECK(!strcmp(pare_error(), "no error"));
}
