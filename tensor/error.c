/* Error messages a user can act on, and the abort path for programming errors. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "tensor.h"

static _Thread_local char last_error[1024];

const char *pare_error(void)
{
    return last_error[0] ? last_error : "no error";
}

void pare_clear_error(void)
{
    last_error[0] = '\0';
}

int pare_set_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return -1;
}

void pare_fatal(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "pare: internal error at %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}
