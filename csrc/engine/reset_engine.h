/*
 * Reset mode, the host's side: the sealed host forks workers
 * (reset_worker.h), one at start and more, up to the pool's size, when
 * requests wait; it dispatches each request to an idle one. The host keeps each
 * request's deadline and CPU budget (a timer on the worker's CPU clock,
 * which the worker cannot touch) and aborts an overrunning request with
 * MF_ABORT_SIGNAL; a worker that does not come back from an abort, dies,
 * or cannot rewind is killed and replaced by a fresh fork of the host,
 * which never serves a request itself.
 */
#ifndef MAYFLYD_RESET_ENGINE_H
#define MAYFLYD_RESET_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/reset_worker.h"
#include "wire/protocol.h"

#define MF_RESET_MAX_WORKERS MF_MAX_WORKER_SLOTS
/* How long an aborted request may take to rewind before its worker is killed. */
#define MF_RESET_ABORT_GRACE_MS 500
/* After a worker failed to start, how long before the pool tries again. */
#define MF_RESET_GROW_BACKOFF_MS 1000

struct mf_reset_config {
    int ctrl_fd;                  /* as in struct mf_fork_config */
    int oom_fd;
    unsigned concurrency;         /* busy workers at most: the pool is min(pool_size, concurrency) */
    unsigned queue;               /* as in struct mf_fork_config */
    const int *close_in_child;
    size_t n_close_in_child;
    const struct mf_reset_hooks *hooks;
    struct mf_limits limits;
    const void *request_filter;
    size_t request_filter_len;
    unsigned pool_size;
    unsigned front_loops;         /* request channels per worker: one per front-end loop */
    uint32_t idle_ms;  /* a worker idle this long exits, down to none; 0: never */
    bool verify;
    uint32_t stop_timeout_ms;     /* as in struct mf_fork_config */
};

/* As mf_fork_serve: READY once every worker has its snapshot (LOAD_FAILED
 * and true if one cannot take it), then serves until SHUTDOWN or EOF on
 * the control channel; after a SHUTDOWN, the workers killed, the stop
 * sandbox is a fresh fork of the host, like a fork-engine request. An
 * idle tenant's workers retire after idle_ms, each taking its snapshot's
 * memory with it; the next request forks one again. */
bool mf_reset_serve(const struct mf_reset_config *cfg);

#endif /* MAYFLYD_RESET_ENGINE_H */
