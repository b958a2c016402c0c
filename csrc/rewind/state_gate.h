/*
 * Putting back the kernel state a request could change costs a reset
 * worker about 30 system calls per rewind (fstat, fcntl and lseek per
 * snapshot fd, the timers, the alternate stack, umask, cwd), and almost
 * no request changes any of it. The gate tells the rewinder when one did:
 * a filter stacked over the request filter turns into SIGSYS, unless it
 * comes from the gate's own `syscall` instruction:
 *
 * - fds: close() of a snapshot fd, dup2(), dup3(), close_range(), and
 *   fcntl(F_SETFL, F_SETFD) or ioctl(FIONBIO, FIOASYNC, FIOCLEX, FIONCLEX)
 *   on a snapshot fd (status flags belong to the shared open file);
 * - locks: flock() and fcntl(F_SETLK, F_SETLKW, F_OFD_SETLK, F_OFD_SETLKW)
 *   on a snapshot fd (flock and OFD locks belong to the open file, which
 *   the host and every worker share; a request's own files' locks go
 *   with the close at the rewind);
 * - process state: setitimer(), alarm(), sigaltstack() setting a stack,
 *   umask(), chdir(), fchdir();
 * - mappings: munmap(), mremap(), and mmap() with MAP_FIXED or
 *   MAP_FIXED_NOREPLACE: the only calls that can replace a tracked
 *   mapping with one the dirty tracker does not watch at the same size.
 *
 * The worker's SIGSYS handler (sigaction_gate.c) passes the trap here,
 * which sets the matching dirty flag and then makes the call on the
 * request's behalf, so the program sees no difference. The rewinder does
 * the full checks and restores only for a dirty flag (and every so many
 * rewinds anyway), and makes its own such calls through mf_state_syscall.
 *
 * Not covered, so restored on every rewind whatever the flags say: file
 * offsets (read() moves them), pending signals (the kernel queues them
 * without a call), fds opened since (closed with close_range over the
 * gaps). Like the other gates, this holds against Python and libc, not
 * against code that jumps into the gate's stub (docs/reset-engine.md).
 */
#ifndef MAYFLYD_STATE_GATE_H
#define MAYFLYD_STATE_GATE_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

/* What a trapped call marks dirty (untracked memory, set by the handler). */
struct mf_state_dirty {
    volatile sig_atomic_t fds;      /* an fd of the snapshot closed, replaced or its flags set */
    volatile sig_atomic_t process;  /* timers, alternate stack, umask or cwd */
    volatile sig_atomic_t mappings; /* a mapping unmapped, moved or mapped over */
    volatile sig_atomic_t locks;    /* a snapshot fd locked or unlocked */
};

/* More snapshot fds than this and every close() traps (the filter's jumps
 * reach at most 255 instructions). */
#define MF_STATE_GATE_MAX_FDS 64

/* syscall(nr, a..f) through the gate: allowed by its filter; -errno on failure. */
long mf_state_syscall(long nr, long a, long b, long c, long d, long e, long f);

/* Where the handler marks; before the snapshot (which then records it),
 * and dirty must outlive every rewind (untracked memory). */
void mf_state_gate_prepare(struct mf_state_dirty *dirty);

/* Loads the filter for the snapshot's fds (in any order). */
bool mf_state_gate_load(const int *fds, size_t n);

/* From the SIGSYS handler: true if the trapped call was one of the gate's
 * (then made, its result in the context's rax). */
bool mf_state_gate_trap(const siginfo_t *si, void *uctx);

#endif /* MAYFLYD_STATE_GATE_H */
