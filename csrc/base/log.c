/* Last-error buffer and warnings; see log.h. */
#include "base/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Per thread so that a Python thread calling a helper cannot garble the
 * message another one is about to raise. */
static __thread char last_error[1024];
static __thread int last_errno;

static void record(int err, bool with_strerror, const char *fmt, va_list ap)
{
    int n = vsnprintf(last_error, sizeof(last_error), fmt, ap);
    if (n < 0)
        n = 0;
    if (with_strerror && (size_t)n < sizeof(last_error))
        (void)snprintf(last_error + n, sizeof(last_error) - (size_t)n,
                       " failed: %s", strerror(err)); /* truncation is fine for a message */
    last_errno = err;
}

bool mf_err(const char *fmt, ...)
{
    int err = errno;
    va_list ap;
    va_start(ap, fmt);
    record(err, true, fmt, ap);
    va_end(ap);
    errno = err;
    return false;
}

bool mf_errx(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    record(err, false, fmt, ap);
    va_end(ap);
    errno = err;
    return false;
}

static void (*warning_sink)(const char *text);

void mf_log_set_sink(void (*sink)(const char *text))
{
    warning_sink = sink;
}

void mf_warn(const char *fmt, ...)
{
    int err = errno;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(line, sizeof(line), fmt, ap); /* truncation is fine for a log line */
    va_end(ap);
    /* A lost log line must not change the outcome of the caller. */
    if (warning_sink != NULL)
        warning_sink(line);
    else
        (void)fprintf(stderr, "mayflyd: %s\n", line);
    errno = err;
}

void mf_warn_last(void)
{
    mf_warn("%s", last_error);
}

const char *mf_last_error(void)
{
    return last_error[0] ? last_error : "unknown error";
}

int mf_last_errno(void)
{
    return last_errno;
}
