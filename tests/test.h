/* A tiny test harness: TEST(name) registers a function; CHECK records a pass
 * or a failure with file and line. The runner prints "N passed, N failed". */
#ifndef PARE_TEST_H
#define PARE_TEST_H
#include <math.h>
#include <stdio.h>

typedef void (*test_fn)(void);
void test_register(const char *name, const char *file, test_fn fn);
void test_check(int ok, const char *file, int line, const char *expr);
void test_checkf(int ok, const char *file, int line, const char *fmt, ...);

#define TEST(name)                                                                                                     \
    static void name(void);                                                                                            \
    __attribute__((constructor)) static void register_##name(void)                                                     \
    {                                                                                                                  \
        test_register(#name, __FILE__, name);                                                                          \
    }                                                                                                                  \
    static void name(void)

#define CHECK(cond)       test_check(!!(cond), __FILE__, __LINE__, #cond)
#define CHECKF(cond, ...) test_checkf(!!(cond), __FILE__, __LINE__, __VA_ARGS__)
#define CHECK_NEAR(a, b, tol)                                                                                          \
    do {                                                                                                               \
        double a_ = (a), b_ = (b);                                                                                     \
        test_checkf(fabs(a_ - b_) <= (tol), __FILE__, __LINE__, "%s = %.9g, expected %s = %.9g (tol %g)", #a, a_, #b,  \
                    b_, (double)(tol));                                                                                \
    } while (0)
#endif
