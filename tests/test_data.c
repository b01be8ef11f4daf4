/* data/: the IDX reader's rejections and messages, and the DataLoader's
 * values, shapes, seeded order and allocation behaviour. No real MNIST. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/data.h"
#include "tests/test.h"

/* ---- tiny IDX files in a temp dir ------------------------------------------ */

static char tmp_dir[64];

static const char *tmp_make(void)
{
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/pare_test_data_XXXXXX");
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        exit(2);
    }
    return tmp_dir;
}

static void tmp_remove(void)
{
    DIR *d = opendir(tmp_dir);
    if (!d) return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", tmp_dir, e->d_name);
        if (remove(p) != 0) perror(p); /* remove() takes empty directories too */
    }
    closedir(d);
    if (rmdir(tmp_dir) != 0) perror(tmp_dir);
}

static const char *tmp_path(const char *name)
{
    static char p[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", tmp_dir, name);
    return p[k];
}

static const char *write_file(const char *name, const uint8_t *bytes, size_t len)
{
    const char *path = tmp_path(name);
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(bytes, 1, len, f) != len) || fclose(f) != 0) {
        perror(path);
        exit(2);
    }
    return path;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Sample i has pixel 0 equal to i, so a batch tells which samples it holds. */
static uint8_t pixel_of(int i, int j)
{
    return (uint8_t)(j == 0 ? i : (i * 7 + j * 13) % 256);
}

#define MAX_FILE 4096
typedef struct {
    uint8_t b[MAX_FILE];
    size_t len;
} buf;

static buf images_buf(int n, int rows, int cols)
{
    buf f = {{0}, 16 + (size_t)n * rows * cols};
    if (f.len > MAX_FILE) exit(2);
    put32(f.b, 0x803);
    put32(f.b + 4, (uint32_t)n);
    put32(f.b + 8, (uint32_t)rows);
    put32(f.b + 12, (uint32_t)cols);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < rows * cols; j++) f.b[16 + (size_t)i * rows * cols + j] = pixel_of(i, j);
    return f;
}

static buf labels_buf(int n, int n_classes)
{
    buf f = {{0}, 8 + (size_t)n};
    if (f.len > MAX_FILE) exit(2);
    put32(f.b, 0x801);
    put32(f.b + 4, (uint32_t)n);
    for (int i = 0; i < n; i++) f.b[8 + i] = (uint8_t)(i % n_classes);
    return f;
}

enum { N = 37, ROWS = 3, COLS = 4 };

static const char *write_images(const char *name, int n)
{
    buf f = images_buf(n, ROWS, COLS);
    return write_file(name, f.b, f.len);
}
static const char *write_labels(const char *name, int n)
{
    buf f = labels_buf(n, 10);
    return write_file(name, f.b, f.len);
}

static int error_has(const char *a)
{
    return strstr(pare_error(), a) != NULL;
}

/* Loads a broken image file next to good labels: must fail and say `what`. */
static void expect_images_rejected(const uint8_t *bytes, size_t len, const char *what, int line)
{
    const char *img = write_file("bad-images", bytes, len);
    const char *lab = write_labels("labels", N);
    pare_clear_error();
    uint64_t live = pare_alloc_live_bytes();
    pare_dataset *ds = pare_dataset_load(img, lab, 10);
    test_checkf(ds == NULL, __FILE__, line, "bad image file was accepted");
    pare_dataset_free(ds);
    test_checkf(error_has(what) && error_has("bad-images"), __FILE__, line, "message lacks \"%s\" or the path: %s",
                what, pare_error());
    test_checkf(pare_alloc_live_bytes() == live, __FILE__, line, "leak on failure");
    /* The in-memory parser must agree. */
    int n, r, c;
    const uint8_t *px;
    pare_clear_error();
    test_checkf(pare_idx_parse_images(bytes, len, &n, &r, &c, &px) == -1 && error_has(what), __FILE__, line,
                "parser: %s", pare_error());
}

static void expect_labels_rejected(const uint8_t *bytes, size_t len, const char *what, int line)
{
    const char *img = write_images("images", N);
    const char *lab = write_file("bad-labels", bytes, len);
    pare_clear_error();
    pare_dataset *ds = pare_dataset_load(img, lab, 10);
    test_checkf(ds == NULL, __FILE__, line, "bad label file was accepted");
    pare_dataset_free(ds);
    test_checkf(error_has(what) && error_has("bad-labels"), __FILE__, line, "message lacks \"%s\" or the path: %s",
                what, pare_error());
    int n;
    const uint8_t *lb;
    pare_clear_error();
    test_checkf(pare_idx_parse_labels(bytes, len, &n, &lb) == -1 && error_has(what), __FILE__, line, "parser: %s",
                pare_error());
}

/* ---- the reader ------------------------------------------------------------- */

TEST(data_idx_parse_valid)
{
    buf im = images_buf(N, ROWS, COLS), lb = labels_buf(N, 10);
    int n = 0, r = 0, c = 0, nl = 0;
    const uint8_t *px = NULL, *l = NULL;
    CHECK(pare_idx_parse_images(im.b, im.len, &n, &r, &c, &px) == 0);
    CHECK(n == N && r == ROWS && c == COLS && px == im.b + 16);
    CHECK(pare_idx_parse_labels(lb.b, lb.len, &nl, &l) == 0);
    CHECK(nl == N && l == lb.b + 8 && l[13] == 3);
    CHECK(pare_idx_parse_images(NULL, 0, &n, &r, &c, &px) == -1);
    CHECK(pare_idx_parse_labels(NULL, 0, &n, &l) == -1);
}

TEST(data_load_valid_values)
{
    tmp_make();
    uint64_t live = pare_alloc_live_bytes();
    pare_dataset *ds = pare_dataset_load(write_images("i", N), write_labels("l", N), 10);
    CHECK(ds != NULL);
    if (ds) {
        CHECK(ds->n == N && ds->rows == ROWS && ds->cols == COLS && ds->n_classes == 10);
        int bad = 0;
        for (int i = 0; i < N; i++) {
            for (int j = 0; j < ROWS * COLS; j++) bad += ds->images[i * ROWS * COLS + j] != pixel_of(i, j);
            bad += ds->labels[i] != i % 10;
        }
        CHECK(bad == 0);
        /* 1 byte per value, no header kept. */
        CHECK(pare_alloc_live_bytes() - live <= N * ROWS * COLS + N + 3 * 64 + 3 * 64 + 256);
    }
    pare_dataset_free(ds);
    CHECK(pare_alloc_live_bytes() == live);
    tmp_remove();
}

TEST(data_reject_missing_file)
{
    tmp_make();
    pare_clear_error();
    CHECK(pare_dataset_load(tmp_path("nope-images"), write_labels("l", N), 10) == NULL);
    CHECK(error_has("nope-images") && error_has("make data") && error_has("--data"));
    CHECK(pare_mnist_load(tmp_dir, 1) == NULL);
    CHECK(error_has("train-images-idx3-ubyte") && error_has("make data"));
    CHECK(pare_mnist_load(tmp_dir, 0) == NULL);
    CHECK(error_has("t10k-images-idx3-ubyte") && error_has("make data"));
    /* Only the .gz is there: say to gunzip. */
    uint8_t gz[] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0};
    write_file("train-images-idx3-ubyte.gz", gz, sizeof gz);
    CHECK(pare_mnist_load(tmp_dir, 1) == NULL);
    CHECK(error_has("gunzip"));
    tmp_remove();
}

TEST(data_reject_gzip)
{
    tmp_make();
    uint8_t gz[40] = {0x1f, 0x8b, 0x08, 0x08};
    expect_images_rejected(gz, sizeof gz, "gunzip", __LINE__);
    expect_labels_rejected(gz, sizeof gz, "gunzip", __LINE__);
    expect_images_rejected(gz, 2, "gunzip", __LINE__);
    tmp_remove();
}

TEST(data_reject_wrong_magic)
{
    tmp_make();
    buf im = images_buf(N, ROWS, COLS);
    im.b[3] = 0x04;
    expect_images_rejected(im.b, im.len, "magic", __LINE__);
    im.b[3] = 0x03;
    im.b[0] = 'P'; /* a text or PNG file */
    expect_images_rejected(im.b, im.len, "magic", __LINE__);
    buf lb = labels_buf(N, 10);
    lb.b[2] = 0x0d; /* float labels */
    expect_labels_rejected(lb.b, lb.len, "magic", __LINE__);
    /* Swapped paths: say so. */
    lb = labels_buf(N, 10);
    expect_images_rejected(lb.b, lb.len, "swapped", __LINE__);
    im = images_buf(N, ROWS, COLS);
    expect_labels_rejected(im.b, im.len, "swapped", __LINE__);
    tmp_remove();
}

TEST(data_reject_truncated)
{
    tmp_make();
    buf im = images_buf(N, ROWS, COLS);
    size_t full = im.len;
    char want[64];
    snprintf(want, sizeof want, "expected %zu bytes", full);
    expect_images_rejected(im.b, full - 1, want, __LINE__);
    char got[64];
    snprintf(got, sizeof got, "got %zu", full - 5);
    expect_images_rejected(im.b, full - 5, got, __LINE__);
    expect_images_rejected(im.b, 10, "truncated", __LINE__); /* inside the header */
    expect_images_rejected(im.b, 3, "truncated", __LINE__);  /* inside the magic */
    expect_images_rejected(im.b, 0, "truncated", __LINE__);  /* empty */
    buf lb = labels_buf(N, 10);
    expect_labels_rejected(lb.b, lb.len - 1, "truncated", __LINE__);
    expect_labels_rejected(lb.b, 6, "truncated", __LINE__);
    tmp_remove();
}

TEST(data_reject_trailing_bytes)
{
    tmp_make();
    buf im = images_buf(N, ROWS, COLS);
    expect_images_rejected(im.b, im.len + 3, "3 trailing bytes", __LINE__);
    buf lb = labels_buf(N, 10);
    expect_labels_rejected(lb.b, lb.len + 1, "trailing", __LINE__);
    tmp_remove();
}

TEST(data_reject_absurd_dims)
{
    tmp_make();
    buf im = images_buf(2, 2, 2);
    for (int d = 0; d < 3; d++) { /* each dim 0 in turn */
        buf z = im;
        put32(z.b + 4 + 4 * d, 0);
        expect_images_rejected(z.b, z.len, "equal to 0", __LINE__);
    }
    buf lb = labels_buf(0, 10);
    expect_labels_rejected(lb.b, lb.len, "equal to 0", __LINE__);
    /* 2^32-1 cubed overflows 64 bits if multiplied naively. */
    put32(im.b + 4, 0xffffffffu);
    put32(im.b + 8, 0xffffffffu);
    put32(im.b + 12, 0xffffffffu);
    expect_images_rejected(im.b, im.len, "absurd", __LINE__);
    /* 2^16 * 2^8 * 2^7 = 2^31 bytes: just over the cap. */
    put32(im.b + 4, 1u << 16);
    put32(im.b + 8, 1u << 8);
    put32(im.b + 12, 1u << 7);
    expect_images_rejected(im.b, im.len, "absurd", __LINE__);
    /* Under the cap but far larger than the file: truncated, not allocated. */
    put32(im.b + 4, 60000);
    put32(im.b + 8, 28);
    put32(im.b + 12, 28);
    expect_images_rejected(im.b, im.len, "expected 47040016 bytes", __LINE__);
    put32(lb.b + 4, 0x80000000u);
    expect_labels_rejected(lb.b, lb.len, "absurd", __LINE__);
    tmp_remove();
}

TEST(data_reject_not_a_regular_file)
{
    tmp_make();
    const char *sub = tmp_path("subdir");
    CHECK(mkdir(sub, 0700) == 0);
    pare_clear_error();
    CHECK(pare_dataset_load(sub, write_labels("l", N), 10) == NULL);
    CHECK(error_has("subdir"));
    tmp_remove();
}

TEST(data_reject_count_mismatch)
{
    tmp_make();
    pare_clear_error();
    CHECK(pare_dataset_load(write_images("img", N), write_labels("lab", N - 1), 10) == NULL);
    char msg[64];
    snprintf(msg, sizeof msg, "%d images", N);
    CHECK(error_has(msg));
    snprintf(msg, sizeof msg, "%d labels", N - 1);
    CHECK(error_has(msg));
    tmp_remove();
}

TEST(data_reject_label_range)
{
    tmp_make();
    buf lb = labels_buf(N, 10);
    lb.b[8 + 20] = 10;
    const char *img = write_images("img", N), *lab = write_file("lab", lb.b, lb.len);
    pare_clear_error();
    CHECK(pare_dataset_load(img, lab, 10) == NULL);
    CHECK(error_has("label 10 of sample 20") && error_has("n_classes = 10"));
    /* The same file is fine with more classes. */
    pare_dataset *ds = pare_dataset_load(img, lab, 11);
    CHECK(ds != NULL);
    pare_dataset_free(ds);
    CHECK(pare_dataset_load(img, lab, 0) == NULL);
    tmp_remove();
}

TEST(data_mnist_names)
{
    tmp_make();
    write_images("train-images-idx3-ubyte", N);
    write_labels("train-labels-idx1-ubyte", N);
    write_images("t10k-images-idx3-ubyte", 5);
    write_labels("t10k-labels-idx1-ubyte", 5);
    pare_dataset *tr = pare_mnist_load(tmp_dir, 1), *te = pare_mnist_load(tmp_dir, 0);
    CHECK(tr && tr->n == N && tr->n_classes == 10);
    CHECK(te && te->n == 5);
    pare_dataset_free(tr);
    pare_dataset_free(te);
    tmp_remove();
}

/* ---- the loader ------------------------------------------------------------- */

static pare_dataset *tiny_dataset(void)
{
    tmp_make();
    pare_dataset *ds = pare_dataset_load(write_images("i", N), write_labels("l", N), 10);
    tmp_remove();
    PARE_CHECK(ds, "tiny dataset: %s", pare_error());
    return ds;
}

/* One epoch's sample order, read back from pixel 0 of each batch. */
static int epoch_order(pare_loader *ld, int epoch, int *order, pare_arena *arena)
{
    pare_loader_start_epoch(ld, epoch);
    pare_batch b;
    int k = 0;
    pare_arena_pos pos = pare_arena_pos_get(arena);
    pare_loader_config d = pare_loader_defaults();
    while (pare_loader_next(ld, arena, &b)) {
        size_t per = b.x->size / (size_t)b.n;
        for (int i = 0; i < b.n; i++) {
            float v = b.x->data[(size_t)i * per] * d.std + d.mean;
            order[k++] = (int)(v * 255.0f + 0.5f);
        }
        pare_arena_rewind(arena, pos);
    }
    return k;
}

TEST(data_loader_values_and_shapes)
{
    pare_dataset *ds = tiny_dataset();
    pare_loader_config cfg = pare_loader_defaults();
    cfg.batch = 10;
    cfg.shuffle = 0;
    cfg.mean = 0.25f;
    cfg.std = 0.7f;
    pare_loader *ld = pare_loader_new(ds, NULL, 0, &cfg);
    CHECK(ld && pare_loader_size(ld) == N && pare_loader_batches(ld) == 4);
    pare_arena arena;
    pare_arena_init(&arena, 0);
    pare_batch b;
    int sizes[8], nb = 0, exact = 1, labels_ok = 1, seen = 0;
    while (nb < 8 && pare_loader_next(ld, &arena, &b)) {
        CHECK(b.x->ndim == 4 && b.x->shape[0] == b.n && b.x->shape[1] == 1 && b.x->shape[2] == ROWS &&
              b.x->shape[3] == COLS);
        for (int i = 0; i < b.n; i++, seen++) {
            labels_ok &= b.labels[i] == seen % 10;
            for (int j = 0; j < ROWS * COLS; j++) {
                float want = ((float)pixel_of(seen, j) / 255.0f - 0.25f) / 0.7f;
                exact &= memcmp(&b.x->data[i * ROWS * COLS + j], &want, sizeof want) == 0;
            }
        }
        sizes[nb++] = b.n;
    }
    CHECK(nb == 4 && sizes[0] == 10 && sizes[2] == 10 && sizes[3] == 7);
    CHECK(exact && labels_ok && seen == N);
    CHECK(pare_loader_next(ld, &arena, &b) == 0); /* stays at the end */
    pare_loader_free(ld);

    cfg.flat = 1;
    cfg.batch = 64; /* larger than the dataset: one short batch */
    ld = pare_loader_new(ds, NULL, 0, &cfg);
    CHECK(pare_loader_batches(ld) == 1);
    CHECK(pare_loader_next(ld, &arena, &b) == 1);
    CHECK(b.n == N && b.x->ndim == 2 && b.x->shape[0] == N && b.x->shape[1] == ROWS * COLS);
    CHECK(pare_loader_next(ld, &arena, &b) == 0);
    pare_loader_free(ld);
    pare_arena_destroy(&arena);
    pare_dataset_free(ds);
}

TEST(data_loader_mnist_normalization)
{
    /* The defaults are MNIST's: pixel 0 -> -0.4242..., 255 -> 2.8215... */
    pare_loader_config d = pare_loader_defaults();
    CHECK(d.batch == 64 && d.shuffle == 1 && d.flat == 0);
    CHECK(d.mean == PARE_MNIST_MEAN && d.std == PARE_MNIST_STD);
    pare_dataset *ds = tiny_dataset();
    d.shuffle = 0;
    pare_loader *ld = pare_loader_new(ds, NULL, 0, &d);
    pare_arena arena;
    pare_arena_init(&arena, 0);
    pare_batch b;
    CHECK(pare_loader_next(ld, &arena, &b) == 1);
    CHECK_NEAR(b.x->data[0], -0.1307 / 0.3081, 1e-6); /* sample 0, pixel 0 = 0 */
    CHECK_NEAR(b.x->data[ROWS * COLS], (1 / 255.0 - 0.1307) / 0.3081, 1e-6);
    pare_loader_free(ld);
    pare_arena_destroy(&arena);
    pare_dataset_free(ds);
}

static int is_permutation(const int *o, int n, const int *of, int m)
{
    if (n != m) return 0;
    int count[N] = {0};
    for (int i = 0; i < n; i++) {
        if (o[i] < 0 || o[i] >= N) return 0;
        count[o[i]]++;
    }
    for (int i = 0; i < m; i++)
        if (count[of[i]]-- != 1) return 0;
    return 1;
}

TEST(data_loader_shuffle_deterministic)
{
    pare_dataset *ds = tiny_dataset();
    pare_loader_config cfg = pare_loader_defaults();
    cfg.batch = 8;
    cfg.seed = 1234;
    pare_loader *a = pare_loader_new(ds, NULL, 0, &cfg), *b = pare_loader_new(ds, NULL, 0, &cfg);
    cfg.seed = 1235;
    pare_loader *c = pare_loader_new(ds, NULL, 0, &cfg);
    pare_arena arena;
    pare_arena_init(&arena, 0);
    int all[N], a0[N], a1[N], b1[N], b0[N], c0[N], a0again[N];
    for (int i = 0; i < N; i++) all[i] = i;
    CHECK(epoch_order(a, 0, a0, &arena) == N);
    CHECK(epoch_order(a, 1, a1, &arena) == N);
    /* b visits epochs in another order: the order depends on (seed, epoch) only. */
    CHECK(epoch_order(b, 1, b1, &arena) == N);
    CHECK(epoch_order(b, 0, b0, &arena) == N);
    CHECK(epoch_order(c, 0, c0, &arena) == N);
    CHECK(epoch_order(a, 0, a0again, &arena) == N);
    CHECK(memcmp(a0, b0, sizeof a0) == 0 && memcmp(a1, b1, sizeof a1) == 0);
    CHECK(memcmp(a0, a0again, sizeof a0) == 0);
    CHECK(memcmp(a0, a1, sizeof a0) != 0);
    CHECK(memcmp(a0, c0, sizeof a0) != 0);
    CHECK(memcmp(a0, all, sizeof a0) != 0);
    CHECK(is_permutation(a0, N, all, N) && is_permutation(a1, N, all, N) && is_permutation(c0, N, all, N));
    pare_loader_free(a);
    pare_loader_free(b);
    pare_loader_free(c);
    pare_arena_destroy(&arena);
    pare_dataset_free(ds);
}

TEST(data_loader_subset)
{
    pare_dataset *ds = tiny_dataset();
    int idx[] = {30, 2, 17, 5, 36};
    pare_loader_config cfg = pare_loader_defaults();
    cfg.batch = 2;
    cfg.shuffle = 0;
    pare_loader *ld = pare_loader_new(ds, idx, 5, &cfg);
    pare_arena arena;
    pare_arena_init(&arena, 0);
    int o[N];
    CHECK(pare_loader_batches(ld) == 3);
    CHECK(epoch_order(ld, 0, o, &arena) == 5 && memcmp(o, idx, sizeof idx) == 0);
    pare_loader_free(ld);
    cfg.shuffle = 1;
    ld = pare_loader_new(ds, idx, 5, &cfg);
    CHECK(epoch_order(ld, 3, o, &arena) == 5 && is_permutation(o, 5, idx, 5));
    pare_loader_free(ld);
    /* The first n samples when indices is NULL. */
    ld = pare_loader_new(ds, NULL, 7, &cfg);
    CHECK(pare_loader_size(ld) == 7);
    pare_loader_free(ld);
    pare_arena_destroy(&arena);
    pare_dataset_free(ds);
}

TEST(data_loader_bad_config)
{
    pare_dataset *ds = tiny_dataset();
    pare_loader_config cfg = pare_loader_defaults();
    cfg.batch = 0;
    pare_clear_error();
    CHECK(pare_loader_new(ds, NULL, 0, &cfg) == NULL && error_has("batch"));
    cfg = pare_loader_defaults();
    cfg.std = 0.0f;
    CHECK(pare_loader_new(ds, NULL, 0, &cfg) == NULL && error_has("std"));
    int bad[] = {1, N};
    CHECK(pare_loader_new(ds, bad, 2, NULL) == NULL && error_has("outside"));
    int neg[] = {-1};
    CHECK(pare_loader_new(ds, neg, 1, NULL) == NULL);
    CHECK(pare_loader_new(NULL, NULL, 0, NULL) == NULL);
    pare_dataset_free(ds);
}

TEST(data_loader_no_alloc_after_first_epoch)
{
    pare_dataset *ds = tiny_dataset();
    pare_loader_config cfg = pare_loader_defaults();
    cfg.batch = 5;
    pare_loader *ld = pare_loader_new(ds, NULL, 0, &cfg);
    pare_arena arena;
    pare_arena_init(&arena, 256); /* small blocks, so the arena must grow in epoch 0 */
    int o[N];
    epoch_order(ld, 0, o, &arena);
    uint64_t count = pare_alloc_count();
    for (int e = 1; e < 4; e++) epoch_order(ld, e, o, &arena);
    CHECK(pare_alloc_count() == count);
    pare_loader_free(ld);
    pare_arena_destroy(&arena);
    pare_dataset_free(ds);
}

TEST(data_split_indices)
{
    uint64_t live = pare_alloc_live_bytes();
    int *tr = NULL, *va = NULL, nt = 0;
    const int n = 1000, nv = 100;
    CHECK(pare_split_indices(n, nv, 7, &tr, &nt, &va) == 0);
    CHECK(nt == n - nv);
    static int seen[1000];
    memset(seen, 0, sizeof seen);
    int sorted = 1, inrange = 1;
    for (int i = 0; i < nt; i++) {
        inrange &= tr[i] >= 0 && tr[i] < n;
        if (inrange) seen[tr[i]]++;
        sorted &= i == 0 || tr[i] > tr[i - 1];
    }
    for (int i = 0; i < nv; i++) {
        inrange &= va[i] >= 0 && va[i] < n;
        if (inrange) seen[va[i]]++;
        sorted &= i == 0 || va[i] > va[i - 1];
    }
    int once = 1;
    for (int i = 0; i < n; i++) once &= seen[i] == 1;
    CHECK(inrange && once && sorted);  /* disjoint and complete */
    CHECK(va[nv - 1] - va[0] > n / 2); /* spread out, not a block at the end */
    /* The same seed gives the same split; another seed another one. */
    int *tr2, *va2, nt2, *va3, *tr3, nt3;
    CHECK(pare_split_indices(n, nv, 7, &tr2, &nt2, &va2) == 0);
    CHECK(memcmp(va, va2, nv * sizeof(int)) == 0 && memcmp(tr, tr2, nt * sizeof(int)) == 0);
    CHECK(pare_split_indices(n, nv, 8, &tr3, &nt3, &va3) == 0);
    CHECK(memcmp(va, va3, nv * sizeof(int)) != 0);
    pare_free(tr), pare_free(va), pare_free(tr2), pare_free(va2), pare_free(tr3), pare_free(va3);
    /* n_val = 0: everything trains. */
    CHECK(pare_split_indices(10, 0, 1, &tr, &nt, &va) == 0);
    CHECK(nt == 10 && va == NULL && tr[0] == 0 && tr[9] == 9);
    pare_free(tr);
    pare_clear_error();
    CHECK(pare_split_indices(10, 10, 1, &tr, &nt, &va) == -1 && error_has("--val"));
    CHECK(pare_split_indices(10, -1, 1, &tr, &nt, &va) == -1);
    CHECK(pare_split_indices(0, 0, 1, &tr, &nt, &va) == -1);
    CHECK(pare_alloc_live_bytes() == live);
}
