/*
 * The reset engine's rewinder: a snapshot of a sealed worker process and
 * the rewind that brings the process back to it after each request
 * (docs/reset-engine.md, "How it works"). Memory: the writable private
 * mappings, tracked with dirty_pages.h; written pages are copied back from
 * the snapshot, which a template process holds (snapshot_template.h),
 * mappings added since are unmapped, brk is reset. Kernel
 * state: fds opened since are closed (and the snapshot's checked and their
 * offsets reset), signal dispositions, pending signals, interval timers,
 * umask and cwd.
 *
 * Order of mf_rewind_restore, with each step's constraint: brk first (the
 * heap's end is part of what the mappings must match); mappings (unmap
 * what the request added: the copy back needs exactly the sealed mappings
 * in place); pages (hot pages copied, then written pages scanned, copied
 * back and re-protected); under verification every tracked page compared;
 * fds; signals (dispositions, timers, alternate stack, pending signals);
 * umask and cwd.
 *
 * The rewinder's own state, its stack and the snapshot live in mappings
 * that are not tracked (clipped out of the ranges it tracks), so the
 * rewind does not rewind itself. Both calls run on that stack with every
 * signal blocked and never call malloc (the heap is what they rewind);
 * the snapshot maps its index (and under verification its one copy) and
 * the template's store, the rewind maps nothing.
 *
 * Not rewound here: the random state (the caller reseeds after each
 * rewind), threads (the request filter forbids them), shared mappings (a
 * writable one makes the snapshot fail: it cannot be rewound).
 */
#ifndef MAYFLYD_REWIND_H
#define MAYFLYD_REWIND_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>
#include <sys/types.h>
#include <ucontext.h>

#include "rewind/dirty_pages.h"
#include "rewind/memory_map.h"
#include "rewind/sigaction_gate.h"
#include "rewind/snapshot_template.h"
#include "rewind/state_gate.h"

#define MF_REWIND_MAX_VMAS 4096
#define MF_REWIND_MAPS_CAP (1024 * 1024)
#define MF_REWIND_MAX_FDS 256
#define MF_REWIND_REGIONS 4096
#define MF_REWIND_STACK_SIZE (256 * 1024)
/* Stack the worker grows before its snapshot, so that ordinary requests
 * stay inside the snapshot's [stack] mapping. */
#define MF_REWIND_STACK_RESERVE (512 * 1024)
/* Reading /proc/self/maps costs 100+ us; most rewinds compare the size of
 * the address space instead (a few us), and every so many the whole text. */
#define MF_REWIND_MAPS_EVERY 64
/* Pages written by each of MF_HOT_LEARN_REWINDS requests (after the first,
 * whose writes include one-time set-up) are "hot": left writable and copied
 * back on every rewind, which costs less than the write-protect fault and
 * the re-protection each would cost. */
#define MF_HOT_LEARN_REWINDS 8
#define MF_HOT_MAX_REGIONS 512
/* Tracked pages whose faster walk in a per-range scan saves what one more
 * PAGEMAP_SCAN call costs (about 0.7 us against 3.1 ns per page-table
 * entry on the reference VM): below this many per tracked range, one
 * joined scan is cheaper than one scan per range. */
#define MF_SCAN_PAGES_PER_CALL 225

struct mf_snapshot_fd {
    int fd;
    dev_t dev;
    ino_t ino;
    off_t offset;   /* -1: not seekable */
    int status_flags; /* F_GETFL */
    int fd_flags;     /* F_GETFD */
    bool regular;     /* a regular file: it can carry locks */
    bool locked;      /* it held a lock at the snapshot (/proc/self/fdinfo) */
};

struct mf_rewinder {
    /* The contexts the worker switches between (reset_worker.c). */
    ucontext_t rest;        /* where the worker waits for its next request */
    ucontext_t entry;       /* the rewinder's own stack, all signals blocked */

    struct mf_dirty_tracker tracker;
    struct mf_template tpl; /* the snapshot's pages: the template process */
    /* Under verification only, a full copy of tracker.ranges[i], which
     * every rewind compares memory (and the template's store) with. */
    uint8_t *copy[MF_DIRTY_MAX_RANGES];
    uint8_t *snapshot;      /* one untracked mapping: the copies, then the template's index */
    size_t snapshot_len;
    size_t snapshot_pages;  /* pages that were present when it was taken */

    uintptr_t self_start, self_end;  /* this struct, its buffers and stack */
    int maps_fd;
    int statm_fd;
    uint64_t vm_pages_sealed;  /* the first field of statm at the snapshot */
    char *maps_sealed;      /* /proc/self/maps text at the snapshot */
    size_t maps_sealed_len;
    char *maps_now;
    struct mf_vma *vmas_sealed, *vmas_now;
    size_t nvmas_sealed;

    uintptr_t brk;
    struct mf_snapshot_fd fds[MF_REWIND_MAX_FDS];
    size_t nfds;
    struct mf_kernel_sigaction actions[NSIG];
    int reserved_signal;    /* its disposition is the worker's own: not restored */
    /* Set by the sigaction gate's SIGSYS handler when a request changed a
     * disposition; while the gate is loaded (gated) the dispositions are
     * put back only then (and every MF_REWIND_MAPS_EVERY rewinds). */
    volatile sig_atomic_t signals_dirty;
    bool signals_gated;
    unsigned signal_rewinds;
    bool resethand;         /* a sealed handler is SA_RESETHAND: delivery changes it, no call needed */
    /* Set by the state gate's SIGSYS handler (state_gate.h); while it is
     * loaded (state_gated) fds, timers, the alternate stack, umask and cwd
     * are checked and put back only when dirty (and every
     * MF_REWIND_MAPS_EVERY rewinds), and the written pages are found with
     * one scan unless a mapping may have been replaced. */
    struct mf_state_dirty state_dirty;
    bool state_gated;
    bool joined_scan_pays;  /* small tracked memory: one joined scan beats one per range */
    unsigned state_rewinds;  /* full checks (and a full mappings comparison) every MF_REWIND_MAPS_EVERY */
    bool timers_armed;      /* a sealed interval timer runs: put back on every rewind */
    int slack_fd;           /* /proc/self/timerslack_ns: the request filter denies prctl */
    char slack_sealed[24];  /* its text at the snapshot */
    size_t slack_len;
    struct itimerval timers[3];
    stack_t altstack;
    mode_t umask;
    int cwd_fd;
    bool verify;            /* compare every tracked page after each rewind */

    struct mf_dirty_region hot[MF_HOT_MAX_REGIONS]; /* sorted; writable, copied back every rewind */
    size_t hot_range[MF_HOT_MAX_REGIONS];          /* tracker range of each */
    size_t nhot;
    unsigned hot_rewinds;   /* rewinds seen while learning: the first skipped, then learnt from */
    struct mf_dirty_region learning[MF_HOT_MAX_REGIONS]; /* written by every rewind so far */
    size_t nlearning;
    struct mf_dirty_region learnt[MF_HOT_MAX_REGIONS];   /* ... and by this one */
    size_t nlearnt;
    bool learning_overflow; /* too scattered to keep: no hot pages */
    struct mf_dirty_region dirty[MF_REWIND_REGIONS];
    struct mf_dirty_region reprotected[MF_REWIND_REGIONS];
    /* Room for the caller's own state that rewinds must leave alone. */
    uint8_t owner[256] __attribute__((aligned(64)));
    uint8_t stack[] __attribute__((aligned(64)));
};

/* Maps the rewinder (its struct, buffers and stack) in a mapping of its
 * own and opens what it needs; NULL with the error recorded. */
struct mf_rewinder *mf_rewinder_create(bool verify, int reserved_signal);

/* Takes the snapshot. The caller runs on the rewinder's stack with every
 * signal blocked, and the rest context is already saved. What the caller
 * writes to tracked memory after it is rewound like a request's writes. */
bool mf_rewind_snapshot(struct mf_rewinder *rw);

/* From now on a request's disposition changes go through the sigaction
 * gate (loaded by the caller): restore dispositions only when one was
 * changed. No effect when a sealed handler is SA_RESETHAND. */
void mf_rewind_signals_gated(struct mf_rewinder *rw);

/* From now on the state gate (loaded by the caller) reports what a
 * request changed: restore fds and process state only then. */
void mf_rewind_state_gated(struct mf_rewinder *rw);

/* Brings the process back to the snapshot; *pages: pages copied back.
 * false: something could not be rewound; the process must not serve again. */
bool mf_rewind_restore(struct mf_rewinder *rw, size_t *pages);

#endif /* MAYFLYD_REWIND_H */
