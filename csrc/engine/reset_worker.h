/*
 * A reset-engine worker: a fork of the sealed host that snapshots itself
 * once, then serves one request after another on its worker channel,
 * rewinding itself to the snapshot after each (rewind.h). A request the
 * host aborts (deadline, CPU budget, cancel) is cut short by
 * MF_ABORT_SIGNAL and rewound in place. Anything that cannot be rewound
 * ends the worker (MF_MSG_WORKER_FAILED, then exit): the host replaces it.
 */
#ifndef MAYFLYD_RESET_WORKER_H
#define MAYFLYD_RESET_WORKER_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

#include "engine/fork_engine.h"
#include "walls/request_limits.h"

/* Sent by the host (sigqueue, the request id as its value) to stop a request. */
#define MF_ABORT_SIGNAL (SIGRTMAX - 1)
/* Exit status of a worker that could not rewind (or snapshot) itself. */
#define MF_WORKER_EXIT_DIRTY 75

struct mf_reset_hooks {
    struct mf_fork_hooks base;    /* handle, and the fork hooks for the worker's own fork */
    void (*prepare)(void *ctx);   /* in a new worker, before its snapshot */
    void (*after_rewind)(void *ctx); /* before each request: reseed what must differ */
};

struct mf_worker_config {
    int chan_fd;                  /* to the host */
    const int *request_fds;       /* the persistent request channels, by front-end loop */
    unsigned n_request_fds;
    const struct mf_reset_hooks *hooks;
    struct mf_limits limits;      /* nofile and memory; the host keeps the CPU budget */
    const void *request_filter;
    size_t request_filter_len;
    bool verify;
};

_Noreturn void mf_reset_worker_main(const struct mf_worker_config *cfg);

#endif /* MAYFLYD_RESET_WORKER_H */
