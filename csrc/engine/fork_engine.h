/*
 * Fork mode: the sealed host forks one child per request; the child reads
 * its request from the per-request socket, runs the handler, answers and
 * exits. The engine is plain C; the Python parts (fork hooks, the handler)
 * come in as callbacks from py_requests.c.
 */
#ifndef MAYFLYD_FORK_ENGINE_H
#define MAYFLYD_FORK_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "walls/request_limits.h"
#include "wire/proto.h"

/* Sandboxes running at once per host, at most, whatever the concurrency. */
#define MF_FORK_MAX_CHILDREN 4096
/* The supervisor times out first and cancels; the host's deadline is a backstop. */
#define MF_FORK_GRACE_MS 1000

/* Exit statuses of a child that did not get to answer. */
#define MF_CHILD_EXIT_HANDLER 1   /* the handler failed (already reported) */
#define MF_CHILD_EXIT_BAD_REQUEST 65
#define MF_CHILD_EXIT_SETUP 70

struct mf_fork_hooks {
    void *ctx;
    void (*before_fork)(void *ctx);
    void (*after_fork_parent)(void *ctx);
    void (*after_fork_child)(void *ctx);
    /* poll() was interrupted by a signal; false stops serving. */
    bool (*interrupted)(void *ctx);
    /* In the child: fills resp (its memory must stay valid until the child
     * exits), or streams it on fd, the request's channel (resp->streamed).
     * false: the failure is reported, the child exits unanswered. */
    bool (*handle)(void *ctx, int fd, const struct mf_request *req, struct mf_response *resp);
    /* In the stop sandbox (stop_sandbox.h): the program's stop hook; false
     * if it failed (reported). NULL: the program has none. */
    bool (*stop)(void *ctx);
};

struct mf_fork_config {
    int ctrl_fd;                  /* control channel: lifecycle, to the supervisor */
    int oom_fd;                   /* the cgroup's memory events (the caller's); -1: none */
    unsigned concurrency;         /* sandboxes at once (up to MF_FORK_MAX_CHILDREN) */
    unsigned queue;               /* requests waiting beyond them, FIFO (up to MF_MAX_QUEUE) */
    const int *close_in_child;    /* further fds no sandbox may keep */
    size_t n_close_in_child;
    const struct mf_fork_hooks *hooks;
    struct mf_limits limits;      /* set by each sandbox on itself */
    const void *request_filter;   /* seccomp BPF loaded last in each sandbox */
    size_t request_filter_len;    /* 0: no filter */
    uint32_t stop_timeout_ms;     /* the stop sandbox's bound; 0: MF_STOP_DEFAULT_MS */
};

/*
 * Sends READY and serves the data channels the supervisor attaches until
 * the control channel closes or fails, or the supervisor sends SHUTDOWN
 * (returns true; after a SHUTDOWN, runs hooks->stop in the stop sandbox
 * first), or until setup fails or hooks->interrupted says stop (returns
 * false). Every child is killed and reaped before returning.
 */
bool mf_fork_serve(const struct mf_fork_config *cfg);

#endif /* MAYFLYD_FORK_ENGINE_H */
