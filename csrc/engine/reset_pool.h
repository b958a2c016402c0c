/*
 * The reset engine's state in the host, shared by its two files only:
 * reset_engine.c (requests: dispatch, deadlines, the loop) and
 * reset_pool.c (the workers: fork, channel, exit, replacement).
 */
#ifndef MAYFLYD_RESET_POOL_H
#define MAYFLYD_RESET_POOL_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "engine/children.h"
#include "engine/reset_engine.h"

/* Delivered to the host when a worker's CPU clock passes the request's budget. */
#define CPU_TIMER_SIGNAL (SIGRTMAX - 2)
#define WORKER_BUF_SIZE (MF_FRAME_HEADER_SIZE + 1024)

enum worker_state { W_STARTING, W_IDLE, W_BUSY, W_GONE };

struct worker {
    pid_t pid;
    int fd;
    enum worker_state state;
    uint64_t req_id;
    uint64_t deadline_ms;
    uint64_t abort_deadline_ms;  /* 0: no abort sent */
    uint32_t flags;              /* enum mf_exit_flags of the request */
    uint32_t nonce;              /* the request's; a REQUEST_DONE must carry it */
    bool doomed;                 /* killed by the host: never dispatched to, messages ignored */
    bool retiring;               /* killed for being idle: not replaced, not reported */
    uint64_t idle_since_ms;
    bool announced;              /* its request channels were sent to the front end */
    int front_ends[MF_MAX_FRONT_LOOPS]; /* the front end's ends of its request channels, kept to send
                                         * to every data channel of that loop; -1: none */
    bool has_timer;
    timer_t cpu_timer;
    char failure[512];           /* what the worker said before exiting */
};

struct pool {
    const struct mf_reset_config *cfg;
    struct mf_children core;
    bool ready_sent;
    bool cpu_timers_work;
    uint64_t grow_after_ms;  /* after a worker failed to start: no new one before this */
    int new_chan;            /* the host's end of a channel being forked: -1 but then */
    const int *new_front;    /* and the front end's ends of its request channels */
    struct worker workers[MF_RESET_MAX_WORKERS];
    unsigned n;              /* slots: min(pool, concurrency); a slot is W_GONE until needed */
    uint8_t buf[WORKER_BUF_SIZE];
};

/* reset_engine.c */
void mf_reset_grow(struct pool *p);
enum mf_step mf_reset_request_ended(struct pool *p, uint64_t req_id, pid_t pid, int wait_status,
                                    uint32_t flags, uint32_t cost_us, uint32_t pages);

/* reset_pool.c */
bool mf_reset_spawn_worker(struct pool *p, unsigned i);
bool mf_reset_close_own_fds(void *pool, const int *keep, size_t n_keep);
/* Sends the front end's ends of worker i's request channels on the data
 * channel in slot (if it serves one of the host's loops). */
enum mf_step mf_reset_announce(struct pool *p, unsigned i, unsigned slot);
/* Kills a worker the host no longer trusts; its exit ends its request,
 * if it had one, and forks the replacement. */
void mf_reset_doom(struct worker *w, const char *why);
void mf_reset_set_timer(struct worker *w, uint32_t cpu_ms);
void mf_reset_abort_request(struct worker *w, uint32_t flag, uint64_t now);
void mf_reset_cpu_timer_fired(void *pool, const struct signalfd_siginfo *si);
enum mf_step mf_reset_handle_worker(struct pool *p, struct worker *w);
enum mf_step mf_reset_worker_exited(void *pool, pid_t pid, int status, const struct rusage *ru);
/* Closes what the workers leave behind once the core reaped them all. */
void mf_reset_release_workers(struct pool *p);

#endif /* MAYFLYD_RESET_POOL_H */
