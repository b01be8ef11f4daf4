/* Save/load in safetensors, the architecture JSON and the JSON reader:
 * round trips of every zoo model, byte-for-byte determinism, atomic saves
 * that fail cleanly, files from PyTorch (no metadata), and every kind of bad
 * input rejected with a message that says what is wrong. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nn/json.h"
#include "nn/nn.h"
#include "nn/safetensors.h"
#include "tests/test.h"

/* ---- helpers ------------------------------------------------------------------------ */
typedef struct tmpdir {
    char path[64];
} tmpdir;

static tmpdir make_tmpdir(void)
{
    tmpdir d;
    snprintf(d.path, sizeof d.path, "/tmp/pare_test_st_XXXXXX");
    if (!mkdtemp(d.path)) {
        perror("mkdtemp");
        abort();
    }
    return d;
}

static char *join(const tmpdir *d, const char *name, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s", d->path, name);
    return buf;
}

/* Number of entries in a directory (without . and ..), -1 if it cannot be read. */
static int dir_entries(const char *path)
{
    DIR *dir = opendir(path);
    if (!dir) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(dir));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(dir);
    return n;
}

static void remove_tmpdir(const tmpdir *d)
{
    chmod(d->path, 0700);
    DIR *dir = opendir(d->path);
    if (!dir) return;
    char p[512];
    for (struct dirent *e; (e = readdir(dir));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlink(join(d, e->d_name, p, sizeof p));
    closedir(dir);
    rmdir(d->path);
}

static unsigned char *read_all(const char *path, size_t *len)
{
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = pare_alloc((size_t)n + 1);
    *len = fread(buf, 1, (size_t)n, f);
    fclose(f);
    return buf;
}

static int write_all(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t n = fwrite(buf, 1, len, f);
    return fclose(f) == 0 && n == len ? 0 : -1;
}

static int files_equal(const char *a, const char *b)
{
    size_t na = 0, nb = 0;
    unsigned char *x = read_all(a, &na), *y = read_all(b, &nb);
    int eq = x && y && na == nb && memcmp(x, y, na) == 0;
    pare_free(x);
    pare_free(y);
    return eq;
}

static int error_has(const char *needle)
{
    return strstr(pare_error(), needle) != NULL;
}
#define CHECK_ERROR(needle) CHECKF(error_has(needle), "error \"%s\" should mention \"%s\"", pare_error(), needle)

static pare_model *zoo_built(const char *arch, uint64_t seed)
{
    pare_model *m = pare_model_zoo(arch);
    m->seed = seed;
    if (pare_build(m, 1, 28, 28)) {
        fprintf(stderr, "build %s: %s\n", arch, pare_error());
        abort();
    }
    return m;
}

/* Gives BatchNorm buffers values that differ from their initialization. */
static void perturb_buffers(pare_model *m, uint64_t seed)
{
    pare_rng r;
    pare_rng_seed(&r, seed, PARE_STREAM_TEST);
    for (int i = 0; i < m->n_layers; i++) {
        pare_layer *l = m->layers[i];
        if (l->running_mean) pare_init_uniform(l->running_mean, 0.5f, &r);
        if (l->running_var)
            for (size_t k = 0; k < l->running_var->size; k++) l->running_var->data[k] = pare_rng_range(&r, 0.5f, 2.0f);
        if (l->kind == PARE_BATCHNORM2D) pare_init_uniform(l->bias, 0.3f, &r);
    }
}

/* Same tensor names in the same order, same shapes, same bits. */
static int same_tensors(pare_model *a, pare_model *b)
{
    pare_param pa[64], pb[64];
    int na = pare_model_tensors(a, pa, 64), nb = pare_model_tensors(b, pb, 64);
    if (na != nb || na > 64) return 0;
    for (int i = 0; i < na; i++)
        if (strcmp(pa[i].name, pb[i].name) || !pare_shape_equal(pa[i].t, pb[i].t) ||
            memcmp(pa[i].t->data, pb[i].t->data, pa[i].t->size * sizeof(float)))
            return 0;
    return 1;
}

static int same_arch(const pare_model *a, const pare_model *b)
{
    char ja[8192], jb[8192];
    int na = pare_arch_to_json(a, ja, sizeof ja), nb = pare_arch_to_json(b, jb, sizeof jb);
    return na > 0 && na == nb && (size_t)na < sizeof ja && strcmp(ja, jb) == 0;
}

/* Eval-mode outputs of both models on the same batch, compared bitwise. */
static int same_forward(pare_model *a, pare_model *b)
{
    pare_ctx *ctx = pare_ctx_new(0);
    pare_set_grad_enabled(ctx, 0);
    int shape[4] = {3, a->in_shape[0], a->in_shape[1], a->in_shape[2]};
    pare_tensor *x = pare_ctx_tensor(ctx, a->in_ndim + 1, shape);
    pare_rng r;
    pare_rng_seed(&r, 7, PARE_STREAM_TEST);
    for (size_t i = 0; i < x->size; i++) x->data[i] = pare_rng_uniform(&r);
    pare_model_train(a, 0);
    pare_model_train(b, 0);
    pare_tensor *ya = pare_forward(ctx, a, x), *yb = pare_forward(ctx, b, x);
    int eq = ya->size == yb->size && memcmp(ya->data, yb->data, ya->size * sizeof(float)) == 0;
    pare_ctx_free(ctx);
    return eq;
}

/* A file image from a header string and data bytes (no padding needed to read). */
static unsigned char *st_image(const char *header, const void *data, size_t data_len, size_t *len)
{
    size_t h = strlen(header);
    *len = 8 + h + data_len;
    unsigned char *buf = pare_alloc(*len + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    if (data_len) memcpy(buf + 8 + h, data, data_len);
    return buf;
}

/* Parses a handmade file image; returns 1 if accepted. */
static int st_accepts(const char *header, size_t data_len)
{
    static const unsigned char zeros[4096];
    size_t len;
    unsigned char *buf = st_image(header, zeros, data_len, &len);
    pare_clear_error();
    pare_st_file *f = pare_st_parse(buf, len, "img");
    int ok = f != NULL;
    pare_st_close(f);
    pare_free(buf);
    return ok;
}

#define CHECK_REJECTS(header, data_len, needle)                                                                        \
    do {                                                                                                               \
        CHECKF(!st_accepts(header, data_len), "accepted: %s", header);                                                 \
        CHECK_ERROR(needle);                                                                                           \
    } while (0)

/* The model's tensors as generic writer entries (names point into params). */
static int model_entries(pare_model *m, pare_param *params, pare_st_tensor *t, int max)
{
    int n = pare_model_tensors(m, params, max);
    for (int i = 0; i < n; i++) t[i] = pare_st_f32(params[i].name, params[i].t);
    return n;
}

/* ---- round trips ---------------------------------------------------------------------- */
TEST(st_roundtrip_every_zoo_model)
{
    tmpdir d = make_tmpdir();
    char path[512];
    for (const char *const *name = pare_model_zoo_names(); *name; name++) {
        pare_model *m = zoo_built(*name, 11);
        perturb_buffers(m, 3);
        join(&d, "m.safetensors", path, sizeof path);
        CHECKF(pare_save(m, path, NULL) == 0, "save %s: %s", *name, pare_error());
        pare_model *back = pare_load(path, NULL);
        CHECKF(back != NULL, "load %s: %s", *name, pare_error());
        if (back) {
            CHECKF(strcmp(back->arch, *name) == 0, "arch %s became %s", *name, back->arch);
            CHECKF(same_tensors(m, back), "%s: tensors differ after the round trip", *name);
            CHECKF(same_arch(m, back), "%s: architecture differs after the round trip", *name);
            CHECKF(same_forward(m, back), "%s: outputs differ after the round trip", *name);
        }
        pare_model_free(back);
        pare_model_free(m);
    }
    CHECK(dir_entries(d.path) == 1); /* no temp file left behind */
    remove_tmpdir(&d);
}

TEST(st_save_is_deterministic)
{
    tmpdir d = make_tmpdir();
    char a[512], b[512], c[512];
    join(&d, "a.safetensors", a, sizeof a);
    join(&d, "b.safetensors", b, sizeof b);
    join(&d, "c.safetensors", c, sizeof c);
    pare_model *m = zoo_built("seedcnn-bn", 5);
    perturb_buffers(m, 9);
    const char *meta[] = {"pare.note", "same bytes", NULL};
    CHECK(pare_save(m, a, meta) == 0);
    CHECK(pare_save(m, b, meta) == 0);
    CHECK(files_equal(a, b));
    /* Loading and saving again reproduces the bytes. */
    pare_model *back = pare_load(a, NULL);
    CHECK(back && pare_save(back, c, meta) == 0);
    CHECK(files_equal(a, c));
    /* A model built from the same seed gives the same file. */
    pare_model *twin = zoo_built("seedcnn-bn", 5);
    perturb_buffers(twin, 9);
    CHECK(pare_save(twin, b, meta) == 0);
    CHECK(files_equal(a, b));
    pare_model_free(twin);
    pare_model_free(back);
    pare_model_free(m);
    remove_tmpdir(&d);
}

TEST(st_file_layout_and_metadata)
{
    tmpdir d = make_tmpdir();
    char path[512];
    join(&d, "m.safetensors", path, sizeof path);
    pare_model *m = zoo_built("seedcnn-bn", 1);
    const char *meta[] = {"train.epochs", "3", "note", "quote \" and \\ and \xc3\xa9", NULL};
    CHECK(pare_save(m, path, meta) == 0);
    size_t len = 0;
    unsigned char *buf = read_all(path, &len);
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--) h = h << 8 | buf[i];
    CHECK(h % 8 == 0 && 8 + h < len);
    CHECK(buf[8] == '{' && buf[8 + h - 1] != '\0');
    pare_st_file *f = pare_st_open(path);
    CHECKF(f != NULL, "%s", pare_error());
    CHECK(strcmp(pare_st_meta(f, "pare.format"), "float") == 0);
    CHECK(strcmp(pare_st_meta(f, "pare.version"), PARE_VERSION) == 0);
    CHECK(strcmp(pare_st_meta(f, "train.epochs"), "3") == 0);
    CHECK(strcmp(pare_st_meta(f, "note"), "quote \" and \\ and \xc3\xa9") == 0);
    const char *arch_start = "{\"arch\":\"seedcnn-bn\",\"input\":[1,28,28],\"layers\":[";
    CHECK(strncmp(pare_st_meta(f, "pare.arch"), arch_start, strlen(arch_start)) == 0);
    CHECK(pare_st_meta(f, "missing") == NULL);
    /* PyTorch's state_dict names, in layer order, tiling the data in that order. */
    const char *names[] = {"conv1.weight",     "conv1.bias",      "bn1.weight",       "bn1.bias",
                           "bn1.running_mean", "bn1.running_var", "conv2.weight",     "conv2.bias",
                           "bn2.weight",       "bn2.bias",        "bn2.running_mean", "bn2.running_var",
                           "fc1.weight",       "fc1.bias",        "fc2.weight",       "fc2.bias"};
    CHECK(pare_st_count(f) == 16);
    const unsigned char *expect = NULL;
    for (int i = 0; i < 16 && i < pare_st_count(f); i++) {
        const pare_st_tensor *t = pare_st_at(f, i);
        CHECKF(strcmp(t->name, names[i]) == 0, "tensor %d is %s, expected %s", i, t->name, names[i]);
        CHECK(t->dtype == PARE_ST_F32);
        CHECK(expect == NULL || t->data == expect);
        expect = (const unsigned char *)t->data + t->nbytes;
    }
    const pare_st_tensor *w = pare_st_find(f, "conv2.weight");
    CHECK(w && w->ndim == 4 && w->shape[0] == 64 && w->shape[1] == 32 && w->shape[2] == 3 && w->shape[3] == 3);
    CHECK(w && memcmp(w->data, pare_model_find(m, "conv2")->weight->data, w->nbytes) == 0);
    pare_st_close(f);
    pare_free(buf);
    /* Duplicate metadata keys (including pare's own) are refused before anything is written. */
    const char *dup[] = {"pare.format", "int8", NULL};
    CHECK(pare_save(m, path, dup) == -1);
    CHECK_ERROR("pare.format' appears twice");
    const char *odd[] = {"key", NULL};
    CHECK(pare_save(m, path, odd) == -1);
    CHECK_ERROR("metadata key 'key' has no value");
    pare_model_free(m);
    remove_tmpdir(&d);
}

/* ---- atomic saves -------------------------------------------------------------------- */
TEST(st_save_into_missing_directory_fails_cleanly)
{
    tmpdir d = make_tmpdir();
    char path[512];
    join(&d, "no/such/dir/m.safetensors", path, sizeof path);
    pare_model *m = zoo_built("mlp32", 1);
    pare_clear_error();
    CHECK(pare_save(m, path, NULL) == -1);
    CHECK_ERROR(path);
    CHECK_ERROR(strerror(ENOENT));
    CHECK_ERROR("does the directory exist");
    CHECK(dir_entries(d.path) == 0);
    CHECK(pare_save(m, "", NULL) == -1);
    pare_model_free(m);
    remove_tmpdir(&d);
}

/* A write that fails halfway (here: RLIMIT_FSIZE, as a full disk would) leaves
 * the previous file intact and no temp file behind. */
TEST(st_failed_write_keeps_the_old_file)
{
    tmpdir d = make_tmpdir();
    char path[512], copy[512];
    join(&d, "m.safetensors", path, sizeof path);
    join(&d, "copy", copy, sizeof copy);
    pare_model *old = zoo_built("mlp32", 1), *big = zoo_built("seedcnn", 2);
    CHECK(pare_save(old, path, NULL) == 0);
    size_t len = 0;
    unsigned char *before = read_all(path, &len);
    CHECK(write_all(copy, before, len) == 0);
    struct rlimit saved, lim;
    CHECK(getrlimit(RLIMIT_FSIZE, &saved) == 0);
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = saved;
    lim.rlim_cur = 200000; /* seedcnn needs about 900 kB */
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    pare_clear_error();
    int rc = pare_save(big, path, NULL);
    setrlimit(RLIMIT_FSIZE, &saved);
    signal(SIGXFSZ, prev);
    CHECK(rc == -1);
    CHECK_ERROR(path);
    CHECK_ERROR(strerror(EFBIG));
    CHECK(files_equal(path, copy));
    CHECK(dir_entries(d.path) == 2);
    /* A read-only directory (root ignores permissions, so only as a user). */
    if (geteuid() != 0) {
        CHECK(chmod(d.path, 0500) == 0);
        CHECK(pare_save(big, path, NULL) == -1);
        CHECK_ERROR(strerror(EACCES));
        chmod(d.path, 0700);
        CHECK(files_equal(path, copy));
        CHECK(dir_entries(d.path) == 2);
    }
    /* And a save that succeeds replaces it, keeping its permissions. */
    CHECK(chmod(path, 0640) == 0);
    CHECK(pare_save(big, path, NULL) == 0);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0640);
    pare_model *back = pare_load(path, NULL);
    CHECK(back && same_tensors(big, back));
    pare_model_free(back);
    pare_free(before);
    pare_model_free(old);
    pare_model_free(big);
    remove_tmpdir(&d);
}

TEST(st_write_file_atomic_and_fresh_permissions)
{
    tmpdir d = make_tmpdir();
    char path[512];
    join(&d, "blob", path, sizeof path);
    mode_t mask = umask(022);
    CHECK(pare_write_file_atomic(path, "hello", 5) == 0);
    umask(mask);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0644 && st.st_size == 5);
    CHECK(pare_write_file_atomic(path, "", 0) == 0);
    CHECK(stat(path, &st) == 0 && st.st_size == 0);
    remove_tmpdir(&d);
}

/* ---- files without pare metadata (PyTorch) ------------------------------------------ */
TEST(st_load_file_without_metadata_needs_arch)
{
    tmpdir d = make_tmpdir();
    char path[512];
    join(&d, "torch.safetensors", path, sizeof path);
    pare_model *m = zoo_built("seedcnn", 21);
    pare_param params[16];
    pare_st_tensor t[16];
    int n = model_entries(m, params, t, 16);
    CHECK(pare_st_write(path, t, n, NULL) == 0);
    pare_clear_error();
    CHECK(pare_load(path, NULL) == NULL);
    CHECK_ERROR("file has no pare metadata: pass --arch NAME");
    pare_model *back = pare_load(path, "seedcnn");
    CHECKF(back != NULL, "%s", pare_error());
    CHECK(back && same_tensors(m, back) && same_forward(m, back));
    pare_model_free(back);
    CHECK(pare_load(path, "lenet9") == NULL);
    CHECK_ERROR("unknown architecture 'lenet9'");
    CHECK(pare_load(path, "mlp64") == NULL); /* a different architecture */
    CHECK_ERROR("tensor 'fc1.weight' has shape [128, 1600] in the file, expected [64, 784]");
    /* What the safetensors package writes from PyTorch: {"format": "pt"} and the BN counters. */
    pare_model *bn = zoo_built("seedcnn-bn", 4);
    perturb_buffers(bn, 4);
    pare_param bp[20];
    pare_st_tensor bt[24];
    n = model_entries(bn, bp, bt, 20);
    int64_t tracked = 938;
    const char *counters[] = {"bn1.num_batches_tracked", "bn2.num_batches_tracked"};
    for (int i = 0; i < 2; i++) {
        memset(&bt[n], 0, sizeof bt[n]);
        bt[n].name = counters[i];
        bt[n].dtype = PARE_ST_I64;
        bt[n].ndim = 0;
        bt[n].data = &tracked;
        n++;
    }
    const char *pt[] = {"format", "pt", NULL};
    CHECK(pare_st_write(path, bt, n, pt) == 0);
    back = pare_load(path, "seedcnn-bn");
    CHECKF(back != NULL, "%s", pare_error());
    CHECK(back && same_tensors(bn, back) && same_forward(bn, back));
    pare_model_free(back);
    pare_model_free(bn);
    pare_model_free(m);
    remove_tmpdir(&d);
}

TEST(st_load_into_is_all_or_nothing)
{
    tmpdir d = make_tmpdir();
    char path[512];
    join(&d, "m.safetensors", path, sizeof path);
    pare_model *src = zoo_built("mlp32", 1), *dst = zoo_built("mlp32", 2);
    pare_param params[8];
    pare_st_tensor t[8];
    int n = model_entries(src, params, t, 8);
    CHECK(n == 4);
    /* Without fc2.bias: nothing may be copied, not even fc1. */
    CHECK(pare_st_write(path, t, n - 1, NULL) == 0);
    pare_model *keep = zoo_built("mlp32", 2);
    CHECK(pare_load_into(dst, path) == -1);
    CHECK_ERROR("tensor 'fc2.bias' (F32 [10]) is missing");
    CHECK(same_tensors(dst, keep));
    CHECK(pare_st_write(path, t, n, NULL) == 0);
    CHECKF(pare_load_into(dst, path) == 0, "%s", pare_error());
    CHECK(same_tensors(dst, src));
    pare_model *unbuilt = pare_model_zoo("mlp32");
    CHECK(pare_load_into(unbuilt, path) == -1);
    CHECK_ERROR("not built");
    pare_model_free(unbuilt);
    pare_model_free(keep);
    pare_model_free(src);
    pare_model_free(dst);
    remove_tmpdir(&d);
}

/* ---- edited models rebuild from their file alone ----------------------------------- */
TEST(st_pruned_and_factorized_models_rebuild_from_file)
{
    tmpdir d = make_tmpdir();
    char path[512];
    join(&d, "edited.safetensors", path, sizeof path);
    pare_model *m = zoo_built("seedcnn", 8);
    /* Structured pruning: keep 48 of conv2's 64 filters and the matching fc1 inputs (25 = 5x5 each). */
    int keep[48];
    for (int i = 0; i < 48; i++) keep[i] = i + i / 3;
    CHECK(pare_layer_resize(pare_model_find(m, "conv2"), 0, keep, 48, 1) == 0);
    CHECK(pare_layer_resize(pare_model_find(m, "fc1"), 1, keep, 48, 25) == 0);
    /* Low rank: fc2 becomes fc2.0 (no bias, rank 4) and fc2.1. */
    int fc2 = pare_model_index(m, "fc2");
    CHECK(pare_model_replace(m, fc2, pare_linear_nobias("fc2.0", 128, 4)) == 0);
    CHECK(pare_model_insert(m, fc2 + 1, pare_linear("fc2.1", 4, 10)) == 0);
    CHECKF(pare_build(m, 1, 28, 28) == 0, "%s", pare_error());
    CHECK(pare_save(m, path, NULL) == 0);
    pare_model *back = pare_load(path, NULL);
    CHECKF(back != NULL, "%s", pare_error());
    if (back) {
        CHECK(pare_model_find(back, "conv2")->weight->shape[0] == 48);
        CHECK(pare_model_find(back, "fc1")->weight->shape[1] == 48 * 25);
        CHECK(pare_model_find(back, "fc2.0")->bias == NULL);
        CHECK(pare_model_find(back, "fc2.1")->weight->shape[1] == 4);
        CHECK(same_tensors(m, back) && same_arch(m, back) && same_forward(m, back));
    }
    /* The zoo's seedcnn does not fit these weights, and says which tensor and why. */
    pare_model *zoo = zoo_built("seedcnn", 1);
    CHECK(pare_load_into(zoo, path) == -1);
    CHECK_ERROR("tensor 'conv2.weight' has shape [48, 32, 3, 3] in the file, expected [64, 32, 3, 3]");
    pare_model_free(zoo);
    pare_model_free(back);
    pare_model_free(m);
    remove_tmpdir(&d);
}

/* ---- bad files ----------------------------------------------------------------------- */
TEST(st_rejects_truncated_files)
{
    tmpdir d = make_tmpdir();
    char path[512], cut[512];
    join(&d, "m.safetensors", path, sizeof path);
    join(&d, "cut.safetensors", cut, sizeof cut);
    pare_model *m = zoo_built("mlp32", 1);
    CHECK(pare_save(m, path, NULL) == 0);
    size_t len;
    unsigned char *buf = read_all(path, &len);
    CHECK(buf != NULL && len > 8);
    if (!buf || len <= 8) return;
    size_t h = 0;
    for (int i = 7; i >= 0; i--) h = h << 8 | buf[i];
    size_t cuts[] = {0, 4, 8, 8 + h / 2, 8 + h, len - 1};
    const char *why[] = {"too short", "too short", "exceeds", "exceeds", "beyond the", "beyond the"};
    for (int i = 0; i < 6; i++) {
        CHECK(write_all(cut, buf, cuts[i]) == 0);
        pare_clear_error();
        CHECKF(pare_load(cut, NULL) == NULL, "accepted a file cut at %zu", cuts[i]);
        CHECK_ERROR(cut);
        CHECK_ERROR(why[i]);
    }
    /* One byte too many is also refused, as the reference reader does. */
    buf[len] = 0;
    CHECK(write_all(cut, buf, len + 1) == 0);
    CHECK(pare_load(cut, NULL) == NULL);
    CHECK_ERROR("the tensors cover");
    join(&d, "absent", cut, sizeof cut);
    CHECK(pare_load(cut, NULL) == NULL);
    CHECK_ERROR("cannot open");
    CHECK(pare_load(d.path, NULL) == NULL);
    CHECK_ERROR("not a regular file");
    pare_free(buf);
    pare_model_free(m);
    remove_tmpdir(&d);
}

TEST(st_rejects_bad_headers)
{
    CHECK(st_accepts("{}", 0));
    CHECK(st_accepts("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8));
    CHECK(st_accepts("{\"__metadata__\":{\"k\":\"v\"},\"a\":{\"dtype\":\"I8\",\"shape\":[],\"data_offsets\":[0,1]}}  ",
                     1));
    CHECK(st_accepts("{\"a\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[0,0]},"
                     "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]}}",
                     3));
    /* header length larger than the file */
    {
        size_t len;
        unsigned char *buf = st_image("{}", NULL, 0, &len);
        buf[0] = 200;
        CHECK(pare_st_parse(buf, len, "img") == NULL);
        CHECK_ERROR("header length 200 exceeds");
        buf[0] = 0;
        buf[6] = 1; /* 2^48 */
        CHECK(pare_st_parse(buf, len, "img") == NULL);
        CHECK_ERROR("100 MB limit");
        pare_free(buf);
    }
    CHECK_REJECTS("[]", 0, "does not start with '{'");
    CHECK_REJECTS("{\"a\":1,}", 0, "JSON error at byte 7");
    CHECK_REJECTS("{\"a\" 1}", 0, "':' expected");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "',' or '}' expected");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}x", 8, "unexpected data after");
    CHECK_REJECTS("{\"a\":[]}", 0, "tensor 'a': expected an object");
    CHECK_REJECTS("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype is missing");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype 'F33'");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "shape is missing");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "non-negative integers");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, "non-negative integers");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
                  "more than 8 dimensions");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "data_offsets must be an array");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "data_offsets must be an array");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "end before they begin");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", 8, "data ends at byte 16");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,99999999999999999999]}}", 8,
                  "non-negative integers");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "needs 12 bytes");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
                  "needs more bytes than the file holds");
    /* A zero dimension makes any other one harmless, in either order (as the reference reader does). */
    CHECK(st_accepts("{\"a\":{\"dtype\":\"F32\",\"shape\":[9223372036854775807,0],\"data_offsets\":[0,0]}}", 0));
    CHECK(st_accepts("{\"a\":{\"dtype\":\"F32\",\"shape\":[0,9223372036854775807],\"data_offsets\":[0,0]}}", 0));
    /* layout: gaps, overlaps, trailing bytes, duplicates */
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "begins at byte 4");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                  8, "without gaps or overlap");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "the tensors cover 4 bytes");
    CHECK_REJECTS("{}", 8, "8 bytes of data follow a header with no tensors");
    CHECK_REJECTS("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                  8, "tensor 'a' appears twice");
    CHECK_REJECTS("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "__metadata__ appears twice");
    CHECK_REJECTS("{\"__metadata__\":{\"k\":1}}", 0, "value of 'k' must be a string");
    CHECK_REJECTS("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, "key 'k' appears twice");
    CHECK_REJECTS("{\"__metadata__\":[]}", 0, "must be an object of strings");
    CHECK_REJECTS("{\"\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, "empty name");
}

TEST(st_model_level_errors_name_the_tensor)
{
    tmpdir d = make_tmpdir();
    char path[512];
    join(&d, "m.safetensors", path, sizeof path);
    pare_model *m = zoo_built("seedcnn", 1);
    pare_param params[16];
    pare_st_tensor t[17];
    int n = model_entries(m, params, t, 16);
    /* wrong dtype: conv1.bias stored as I32 */
    pare_st_tensor saved = t[1];
    t[1].dtype = PARE_ST_I32;
    CHECK(pare_st_write(path, t, n, NULL) == 0);
    CHECK(pare_load(path, "seedcnn") == NULL);
    CHECK_ERROR("tensor 'conv1.bias' has dtype I32, expected F32");
    t[1] = saved;
    /* wrong shape: fc1 as 64*6*6 inputs, the seed snippet's mistake */
    static float big[128 * 64 * 6 * 6];
    saved = t[4];
    t[4].shape[1] = 64 * 6 * 6;
    t[4].data = big;
    CHECK(pare_st_write(path, t, n, NULL) == 0);
    CHECK(pare_load(path, "seedcnn") == NULL);
    CHECK_ERROR("tensor 'fc1.weight' has shape [128, 2304] in the file, expected [128, 1600]");
    t[4] = saved;
    /* an unexpected tensor */
    float one = 1;
    memset(&t[n], 0, sizeof t[n]);
    t[n].name = "fc3.weight";
    t[n].dtype = PARE_ST_F32;
    t[n].ndim = 1;
    t[n].shape[0] = 1;
    t[n].data = &one;
    CHECK(pare_st_write(path, t, n + 1, NULL) == 0);
    CHECK(pare_load(path, "seedcnn") == NULL);
    CHECK_ERROR("tensor 'fc3.weight' is not part of model 'seedcnn'");
    /* an unknown layer type in pare.arch */
    const char *meta[] = {
        "pare.arch", "{\"arch\":\"x\",\"input\":[1,28,28],\"layers\":[{\"type\":\"Conv3d\",\"name\":\"c\"}]}", NULL};
    CHECK(pare_st_write(path, t, n, meta) == 0);
    CHECK(pare_load(path, "seedcnn") == NULL);
    CHECK_ERROR(path);
    CHECK_ERROR("pare.arch: architecture: layer 0: unknown type 'Conv3d'");
    /* an int8 model is not for pare_load */
    const char *q[] = {"pare.format", "int8", NULL};
    CHECK(pare_st_write(path, t, n, q) == 0);
    CHECK(pare_load(path, "seedcnn") == NULL);
    CHECK_ERROR("pare.format is 'int8'");
    /* an architecture larger than the file's data cannot make pare allocate it */
    const char *huge[] = {"pare.arch",
                          "{\"arch\":\"x\",\"input\":[784],\"layers\":[{\"type\":\"Linear\",\"name\":\"fc\","
                          "\"in\":784,\"out\":16000000,\"bias\":true}]}",
                          NULL};
    CHECK(pare_st_write(path, t, n, huge) == 0);
    CHECK(pare_load(path, NULL) == NULL);
    CHECK_ERROR("more than the file can hold");
    pare_model_free(m);
    remove_tmpdir(&d);
}

/* ---- the generic API with integer dtypes (int8 models) ----------------------------- */
TEST(st_generic_integer_tensors)
{
    int8_t w[6] = {-127, -1, 0, 1, 2, 127};
    int32_t b[2] = {-100000, 7};
    uint8_t zp = 128;
    pare_st_tensor t[3];
    memset(t, 0, sizeof t);
    t[0] = (pare_st_tensor){.name = "fc.weight", .dtype = PARE_ST_I8, .ndim = 2, .shape = {2, 3}, .data = w};
    t[1] = (pare_st_tensor){.name = "fc.bias", .dtype = PARE_ST_I32, .ndim = 1, .shape = {2}, .data = b};
    t[2] = (pare_st_tensor){.name = "fc.zero_point", .dtype = PARE_ST_U8, .ndim = 0, .data = &zp};
    const char *meta[] = {"pare.format", "int8", NULL};
    unsigned char *img;
    size_t len;
    CHECK(pare_st_serialize(t, 3, meta, &img, &len) == 0);
    pare_st_file *f = pare_st_parse(img, len, "int8 image");
    CHECKF(f != NULL, "%s", pare_error());
    int8_t w2[6];
    int32_t b2[2];
    uint8_t zp2 = 0;
    int ws[2] = {2, 3}, bs[1] = {2};
    CHECK(pare_st_read(f, "fc.weight", PARE_ST_I8, 2, ws, w2) == 0 && memcmp(w, w2, 6) == 0);
    CHECK(pare_st_read(f, "fc.bias", PARE_ST_I32, 1, bs, b2) == 0 && memcmp(b, b2, 8) == 0);
    CHECK(pare_st_read(f, "fc.zero_point", PARE_ST_U8, 0, NULL, &zp2) == 0 && zp2 == 128);
    CHECK(pare_st_expect(f, "fc.weight", PARE_ST_F32, 2, ws) == NULL);
    CHECK_ERROR("int8 image: tensor 'fc.weight' has dtype I8, expected F32");
    int wrong[2] = {3, 2};
    CHECK(pare_st_expect(f, "fc.weight", PARE_ST_I8, 2, wrong) == NULL);
    CHECK_ERROR("has shape [2, 3] in the file, expected [3, 2]");
    CHECK(pare_st_expect(f, "fc.scale", PARE_ST_F32, 1, bs) == NULL);
    CHECK_ERROR("tensor 'fc.scale' (F32 [2]) is missing");
    CHECK(strcmp(pare_st_meta(f, "pare.format"), "int8") == 0 && pare_st_meta_count(f) == 1);
    CHECK(strcmp(pare_st_meta_key(f, 0), "pare.format") == 0 && strcmp(pare_st_meta_value(f, 0), "int8") == 0);
    /* A float loader refuses it with a message, not a crash. */
    CHECK(pare_load_st(f, "mlp32") == NULL);
    CHECK_ERROR("pare.format is 'int8'");
    pare_st_close(f);
    pare_free(img);
    /* Writer-side checks. */
    pare_st_tensor dup[2] = {t[0], t[0]};
    CHECK(pare_st_serialize(dup, 2, NULL, &img, &len) == -1);
    CHECK_ERROR("tensor name 'fc.weight' appears twice");
    pare_st_tensor neg = t[0];
    neg.shape[0] = -1;
    CHECK(pare_st_serialize(&neg, 1, NULL, &img, &len) == -1);
    CHECK_ERROR("invalid or too large shape");
    pare_st_tensor bad_utf8 = t[0];
    bad_utf8.name = "w\xff";
    CHECK(pare_st_serialize(&bad_utf8, 1, NULL, &img, &len) == -1);
    CHECK_ERROR("not valid UTF-8");
    CHECK(pare_st_dtype_size(PARE_ST_BF16) == 2 && strcmp(pare_st_dtype_name(PARE_ST_U64), "U64") == 0);
    pare_st_dtype dt;
    CHECK(pare_st_dtype_parse("I32", &dt) == 0 && dt == PARE_ST_I32 && pare_st_dtype_parse("i32", &dt) == -1);
}

/* ---- architecture JSON ------------------------------------------------------------------ */
static pare_model *every_layer_model(void)
{
    pare_layer *pool = pare_maxpool2d(3);
    pool->stride = 1;
    pare_model *m =
        pare_sequential("every", pare_conv2d_ex("conv1", 3, 8, 3, 2, 1, 0), pare_batchnorm2d("bn1", 8), pare_relu(),
                        pool, pare_conv2d("conv2", 8, 6, 3), pare_tanh(), pare_avgpool2d(2), pare_sigmoid(),
                        pare_dropout(0.25f), pare_flatten(), pare_linear_nobias("fc1.0", 6 * 2 * 2, 5),
                        pare_linear("fc1.1", 5, 7), pare_softmax(), pare_log_softmax(), (pare_layer *)NULL);
    pare_model_find(m, "bn1")->eps = 1e-3f;
    pare_model_find(m, "bn1")->momentum = 0.01f;
    return m;
}

TEST(st_arch_json_every_layer_kind)
{
    pare_model *m = every_layer_model();
    CHECK(pare_arch_to_json(m, NULL, 0) == -1);
    CHECK_ERROR("no input shape yet");
    CHECKF(pare_build(m, 3, 16, 16) == 0, "%s", pare_error());
    int n = pare_arch_to_json(m, NULL, 0);
    CHECK(n > 0);
    char *json = pare_alloc((size_t)n + 1);
    CHECK(pare_arch_to_json(m, json, (size_t)n + 1) == n && strlen(json) == (size_t)n);
    const char *expect =
        "{\"arch\":\"every\",\"input\":[3,16,16],\"layers\":["
        "{\"type\":\"Conv2d\",\"name\":\"conv1\",\"in\":3,\"out\":8,\"kernel\":3,\"stride\":2,\"pad\":1,\"bias\":false}"
        ","
        "{\"type\":\"BatchNorm2d\",\"name\":\"bn1\",\"features\":8,\"eps\":0.001,\"momentum\":0.01},"
        "{\"type\":\"ReLU\"},{\"type\":\"MaxPool2d\",\"kernel\":3,\"stride\":1},"
        "{\"type\":\"Conv2d\",\"name\":\"conv2\",\"in\":8,\"out\":6,\"kernel\":3,\"stride\":1,\"pad\":0,\"bias\":true},"
        "{\"type\":\"Tanh\"},{\"type\":\"AvgPool2d\",\"kernel\":2,\"stride\":2},{\"type\":\"Sigmoid\"},"
        "{\"type\":\"Dropout\",\"p\":0.25},{\"type\":\"Flatten\"},"
        "{\"type\":\"Linear\",\"name\":\"fc1.0\",\"in\":24,\"out\":5,\"bias\":false},"
        "{\"type\":\"Linear\",\"name\":\"fc1.1\",\"in\":5,\"out\":7,\"bias\":true},"
        "{\"type\":\"Softmax\"},{\"type\":\"LogSoftmax\"}]}";
    CHECKF(strcmp(json, expect) == 0, "arch JSON:\n%s\nexpected\n%s", json, expect);
    /* A short buffer gets a truncated, terminated prefix and the full length back. */
    char small[10];
    CHECK(pare_arch_to_json(m, small, sizeof small) == n && strcmp(small, "{\"arch\":\"") == 0);
    pare_model *back = pare_arch_from_json(json);
    CHECKF(back != NULL, "%s", pare_error());
    if (back) {
        CHECK(same_arch(m, back) && back->built && back->n_layers == m->n_layers);
        for (int i = 0; i < m->n_layers; i++) {
            pare_layer *a = m->layers[i], *b = back->layers[i];
            CHECK(a->kind == b->kind && !strcmp(a->name, b->name) && a->in_features == b->in_features &&
                  a->out_features == b->out_features && a->kernel == b->kernel && a->stride == b->stride &&
                  a->pad == b->pad && a->has_bias == b->has_bias && a->p == b->p && a->eps == b->eps &&
                  a->momentum == b->momentum && a->out_ndim == b->out_ndim &&
                  !memcmp(a->out_shape, b->out_shape, sizeof a->out_shape));
        }
    }
    pare_model_free(back);
    /* A flat input round-trips as [features]. */
    pare_model *flat = pare_sequential("flat", pare_linear("fc", 10, 3), (pare_layer *)NULL);
    CHECK(pare_build(flat, 10, 0, 0) == 0);
    char fj[256];
    CHECK(pare_arch_to_json(flat, fj, sizeof fj) > 0 && strstr(fj, "\"input\":[10]"));
    pare_model *fb = pare_arch_from_json(fj);
    CHECK(fb && fb->in_ndim == 1 && fb->in_shape[0] == 10 && same_arch(flat, fb));
    pare_model_free(fb);
    pare_model_free(flat);
    pare_free(json);
    pare_model_free(m);
}

static void arch_rejects(const char *layers, const char *needle)
{
    char json[1024];
    snprintf(json, sizeof json, "{\"arch\":\"t\",\"input\":[1,8,8],\"layers\":[%s]}", layers);
    pare_clear_error();
    pare_model *m = pare_arch_from_json(json);
    CHECKF(m == NULL, "accepted %s", json);
    CHECKF(error_has(needle), "error \"%s\" should mention \"%s\"", pare_error(), needle);
    pare_model_free(m);
}

TEST(st_arch_json_errors)
{
    arch_rejects("{\"type\":\"Conv3d\"}", "layer 0: unknown type 'Conv3d' (known: Linear, Conv2d");
    arch_rejects("{\"name\":\"c\"}", "layer 0: missing field 'type'");
    arch_rejects("{\"type\":\"Conv2d\",\"name\":\"c\",\"in\":1,\"out\":2,\"kernel\":3,\"stride\":1,\"bias\":true}",
                 "layer 0 (Conv2d): missing field 'pad'");
    arch_rejects("{\"type\":\"Conv2d\",\"in\":1,\"out\":2,\"kernel\":3,\"stride\":1,\"pad\":0,\"bias\":true}",
                 "missing field 'name'");
    arch_rejects("{\"type\":\"ReLU\",\"inplace\":true}", "layer 0 (ReLU): unknown field 'inplace'");
    arch_rejects("{\"type\":\"ReLU\",\"type\":\"ReLU\"}", "field 'type' appears twice");
    arch_rejects("{\"type\":\"MaxPool2d\",\"kernel\":0,\"stride\":2}",
                 "field 'kernel' must be an integer in [1, 1024]");
    arch_rejects("{\"type\":\"MaxPool2d\",\"kernel\":\"2\",\"stride\":2}",
                 "field 'kernel' must be a number, found a string");
    arch_rejects("{\"type\":\"MaxPool2d\",\"kernel\":2.0,\"stride\":2}", "must be an integer");
    arch_rejects("{\"type\":\"Dropout\",\"p\":1}", "field 'p' = 1 is outside");
    arch_rejects("{\"type\":\"Dropout\",\"p\":1e300}", "is outside");
    arch_rejects("{\"type\":\"BatchNorm2d\",\"name\":\"bn\",\"features\":1,\"eps\":0,\"momentum\":0.1}", "'eps' = 0");
    arch_rejects("{\"type\":\"Linear\",\"name\":\"fc\",\"in\":64,\"out\":2,\"bias\":1}", "'bias' must be a boolean");
    arch_rejects("{\"type\":\"Linear\",\"name\":\"\",\"in\":64,\"out\":2,\"bias\":true}",
                 "name must have 1 to 47 bytes");
    arch_rejects("3", "layer 0: expected an object, found a number");
    arch_rejects("", "'layers' must hold 1 to 4096 layers");
    /* Shape errors come from pare_build, naming the layer. */
    arch_rejects("{\"type\":\"Flatten\"},{\"type\":\"Linear\",\"name\":\"fc1\",\"in\":65,\"out\":2,\"bias\":true}",
                 "layer fc1 (Linear): expected 65 input features (in_features), received 64");
    arch_rejects("{\"type\":\"Flatten\"},{\"type\":\"Linear\",\"name\":\"fc\",\"in\":64,\"out\":2,\"bias\":true},"
                 "{\"type\":\"Linear\",\"name\":\"fc\",\"in\":2,\"out\":2,\"bias\":true}",
                 "two layers are named 'fc'");
    /* Activations that would overflow an int are refused even when the shapes agree. */
    arch_rejects("{\"type\":\"Conv2d\",\"name\":\"c\",\"in\":1,\"out\":65536,\"kernel\":1,\"stride\":1,\"pad\":"
                 "1024,\"bias\":false}",
                 "more than");
    const char *bad_top[][2] = {
        {"[]", "expected a JSON object, found an array"},
        {"{\"arch\":\"t\",\"input\":[1,8,8]}", "missing field 'layers'"},
        {"{\"arch\":\"t\",\"layers\":[]}", "missing field 'input'"},
        {"{\"arch\":\"t\",\"input\":[1,8],\"layers\":[{\"type\":\"ReLU\"}]}", "input must be [C, H, W] or [features]"},
        {"{\"arch\":\"t\",\"input\":[1,0,8],\"layers\":[{\"type\":\"ReLU\"}]}", "input dimension 1 must be"},
        {"{\"arch\":\"\",\"input\":[1,8,8],\"layers\":[{\"type\":\"ReLU\"}]}", "'arch' must have 1 to 47 bytes"},
        {"{\"arch\":\"t\",\"input\":[1,8,8],\"layers\":[{\"type\":\"ReLU\"}],\"hooks\":[]}", "unknown field 'hooks'"},
        {"{\"arch\":\"t\",\"input\":[1,8,8],\"layers\":[{\"type\":\"ReLU\"}]", "JSON error at byte"},
    };
    for (size_t i = 0; i < sizeof bad_top / sizeof bad_top[0]; i++) {
        CHECKF(pare_arch_from_json(bad_top[i][0]) == NULL, "accepted %s", bad_top[i][0]);
        CHECKF(error_has(bad_top[i][1]), "error \"%s\" should mention \"%s\"", pare_error(), bad_top[i][1]);
    }
    CHECK(pare_arch_from_json(NULL) == NULL);
    /* The parameter bound the loader passes. */
    const char *fc = "{\"arch\":\"t\",\"input\":[10],\"layers\":[{\"type\":\"Linear\",\"name\":\"fc\",\"in\":10,"
                     "\"out\":10,\"bias\":true}]}";
    CHECK(pare_arch_parse(fc, strlen(fc), 109) == NULL);
    CHECK_ERROR("more than 109 parameters");
    pare_model *ok = pare_arch_parse(fc, strlen(fc), 110);
    CHECK(ok != NULL);
    pare_model_free(ok);
}

/* ---- the JSON reader and writer ------------------------------------------------------ */
static int json_ok(const char *text)
{
    pare_json_doc doc;
    int ok = pare_json_parse(&doc, text, strlen(text), "t") == 0;
    if (ok) pare_json_doc_free(&doc);
    return ok;
}

TEST(st_json_reader)
{
    pare_json_doc doc;
    const char *text = " {\"s\":\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\xe2\x82\xac\", \"i\":-42, "
                       "\"f\":2.5e-3, \"big\":123456789012345678901, \"t\":true, \"n\":null, \"a\":[1,[],{}]} ";
    CHECKF(pare_json_parse(&doc, text, strlen(text), "t") == 0, "%s", pare_error());
    const pare_json *s = pare_json_get(doc.root, "s");
    CHECK(s && strcmp(s->str, "a\"b\\c/d\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80\xe2\x82\xac") == 0 && s->len == 21);
    const pare_json *i = pare_json_get(doc.root, "i");
    CHECK(i && i->is_int && i->i == -42 && i->num == -42.0);
    const pare_json *f = pare_json_get(doc.root, "f");
    CHECK(f && !f->is_int && f->num == 2.5e-3);
    const pare_json *big = pare_json_get(doc.root, "big");
    CHECK(big && !big->is_int && big->num > 1.2e20);
    CHECK(pare_json_get(doc.root, "t")->boolean == 1 && pare_json_get(doc.root, "n")->type == PARE_JSON_NULL);
    const pare_json *a = pare_json_get(doc.root, "a");
    CHECK(a && a->len == 3 && a->first->next->type == PARE_JSON_ARRAY && a->first->next->next->len == 0);
    CHECK(pare_json_get(doc.root, "zz") == NULL && pare_json_get(a, "s") == NULL);
    pare_json_doc_free(&doc);

    CHECK(json_ok("0") && json_ok("-0.0e+0") && json_ok("\"\"") && json_ok("[]") && json_ok(" {} "));
    const char *bad[][2] = {
        {"", "unexpected end"},
        {"01", "leading zero"},
        {"1.", "digits expected after '.'"},
        {"1e", "digits expected in exponent"},
        {"-", "invalid number"},
        {".5", "unexpected character"},
        {"NaN", "unexpected character"},
        {"1e999", "out of range"},
        {"[1,]", "unexpected character"},
        {"[1 2]", "',' or ']' expected"},
        {"{\"a\":1,}", "object key"},
        {"{1:2}", "object key"},
        {"tru", "invalid literal"},
        {"nul", "invalid literal"},
        {"\"abc", "unterminated string"},
        {"\"a\\", "unterminated string"},
        {"\"\\x\"", "invalid escape"},
        {"\"\\u12\"", "truncated"},
        {"\"\\u12g4\"", "invalid hex digit"},
        {"\"\\u12", "unterminated string"},
        {"\"\\ud800\"", "unpaired high surrogate"},
        {"\"\\ud800\\u0041\"", "unpaired high surrogate"},
        {"\"\\udc00\"", "unpaired low surrogate"},
        {"\"\\u0000\"", "\\u0000"},
        {"\"a\tb\"", "control character"},
        {"\"\xff\"", "invalid UTF-8"},
        {"\"\xc0\xaf\"", "invalid UTF-8"},
        {"\"\xed\xa0\x80\"", "invalid UTF-8"},
        {"\"\xe2\x82\"", "invalid UTF-8"},
        {"[] []", "unexpected data after"},
        {"// c\n1", "unexpected character"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        CHECKF(!json_ok(bad[k][0]), "accepted '%s'", bad[k][0]);
        CHECKF(error_has(bad[k][1]), "'%s': error \"%s\" should mention \"%s\"", bad[k][0], pare_error(), bad[k][1]);
    }
    /* A NUL byte outside a string is just an unexpected character; the length is what counts. */
    CHECK(pare_json_parse(&doc, "[1]\0", 4, "t") == -1);
    /* Nesting: 64 levels parse, 65 do not. */
    char deep[200];
    for (int depth = 64; depth <= 65; depth++) {
        memset(deep, '[', (size_t)depth);
        memset(deep + depth, ']', (size_t)depth);
        deep[2 * depth] = '\0';
        CHECK(json_ok(deep) == (depth == 64));
    }
    CHECK_ERROR("nesting deeper than 64 levels");
}

TEST(st_json_writer)
{
    pare_jw w = {0};
    pare_jw_raw(&w, "[");
    pare_jw_str(&w, "q\"b\\n\n\x01\x1f\xc3\xa9");
    pare_jw_raw(&w, ",");
    pare_jw_int(&w, -5);
    pare_jw_raw(&w, ",");
    pare_jw_uint(&w, UINT64_MAX);
    const float fl[] = {0.1f, 1e-5f, 0.25f, 3.4028235e38f, 1.4e-45f, -0.0f, 123456789.0f, 1.0f / 3.0f};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++) {
        pare_jw_raw(&w, ",");
        pare_jw_float(&w, fl[i]);
    }
    pare_jw_raw(&w, "]");
    CHECK(!w.failed);
    const char *start = "[\"q\\\"b\\\\n\\n\\u0001\\u001f\xc3\xa9\",-5,18446744073709551615,0.1,1e-05,0.25,";
    CHECKF(strncmp(w.buf, start, strlen(start)) == 0, "writer gave %s", w.buf);
    pare_json_doc doc;
    CHECKF(pare_json_parse(&doc, w.buf, w.len, "w") == 0, "%s: %s", w.buf, pare_error());
    const pare_json *e = doc.root->first;
    CHECK(strcmp(e->str, "q\"b\\n\n\x01\x1f\xc3\xa9") == 0);
    e = e->next->next->next;
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++, e = e->next)
        CHECKF((float)e->num == fl[i], "float %.9g came back as %.9g", (double)fl[i], e->num);
    pare_json_doc_free(&doc);
    pare_jw_float(&w, 1.0f / 0.0f);
    CHECK(w.failed);
    CHECK_ERROR("non-finite");
    pare_jw_free(&w);
    pare_jw_str(&w, "\xe2\x28\xa1");
    CHECK(w.failed);
    CHECK_ERROR("not valid UTF-8");
    pare_jw_free(&w);
}
