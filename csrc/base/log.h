/*
 * Error reporting for the C helper. A failing function records one line
 * naming the call, its arguments and errno, then returns false;
 * python/py_util.c:raise_last turns that line into the Python exception.
 * Warnings go straight to stderr, which is the tenant's log.
 */
#ifndef MAYFLYD_LOG_H
#define MAYFLYD_LOG_H

#include <stdbool.h>

/* Records "<fmt> failed: <strerror(errno)>"; keeps errno; returns false. */
bool mf_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Records "<fmt>" with an explicit error number (EPROTO for bad frames);
 * sets errno to err; returns false. */
bool mf_errx(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints "mayflyd: <fmt>" to stderr (or hands the text to the sink); keeps errno. */
void mf_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A process that formats its own log lines (the front end) takes the
 * warnings' text; set once, before any thread starts. */
void mf_log_set_sink(void (*sink)(const char *text));
/* Prints the last recorded error to stderr as a warning. */
void mf_warn_last(void);

const char *mf_last_error(void);
int mf_last_errno(void);

/* Propagates a failure: the callee has already recorded what went wrong. */
#define MF_TRY(expr)          \
    do {                      \
        if (!(expr))          \
            return false;     \
    } while (0)

#endif /* MAYFLYD_LOG_H */
