/* Runs every registered test (optionally only those whose name contains argv[1]). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/test.h"

#define MAX_TESTS 1024
static struct {
    const char *name, *file;
    test_fn fn;
} tests[MAX_TESTS];
static int n_tests, n_pass, n_fail, current_failed;

void test_register(const char *name, const char *file, test_fn fn)
{
    if (n_tests == MAX_TESTS) {
        fprintf(stderr, "too many tests\n");
        exit(2);
    }
    tests[n_tests].name = name;
    tests[n_tests].file = file;
    tests[n_tests].fn = fn;
    n_tests++;
}

void test_checkf(int ok, const char *file, int line, const char *fmt, ...)
{
    if (ok) return;
    current_failed++;
    va_list ap;
    fprintf(stderr, "  FAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void test_check(int ok, const char *file, int line, const char *expr)
{
    test_checkf(ok, file, line, "%s", expr);
}

static int by_file_then_name(const void *a, const void *b)
{
    const char *fa = ((const char *const *)a)[1], *fb = ((const char *const *)b)[1];
    int c = strcmp(fa, fb);
    return c ? c : strcmp(*(const char *const *)a, *(const char *const *)b);
}

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : NULL;
    /* Constructor order is unspecified: sort so runs are reproducible. */
    qsort(tests, (size_t)n_tests, sizeof tests[0], by_file_then_name);
    for (int i = 0; i < n_tests; i++) {
        if (filter && !strstr(tests[i].name, filter) && !strstr(tests[i].file, filter)) continue;
        current_failed = 0;
        tests[i].fn();
        if (current_failed) {
            n_fail++;
            fprintf(stderr, "FAIL %s (%s)\n", tests[i].name, tests[i].file);
        } else {
            n_pass++;
            printf("ok   %s\n", tests[i].name);
        }
        fflush(stdout);
    }
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
