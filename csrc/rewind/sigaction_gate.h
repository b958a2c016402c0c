/*
 * Restoring every signal disposition after every request (60-odd calls)
 * costs a reset worker about 15 us, and almost no request changes one. The gate lets the
 * rewinder know when one did: a filter the worker stacks over the request
 * filter turns every rt_sigaction() that sets a disposition into SIGSYS,
 * unless it comes from the gate's own `syscall` instruction; the worker's
 * SIGSYS handler marks the dispositions dirty and makes the call through
 * the gate on the request's behalf, so signal.signal() works as before.
 * The rewinder restores the dispositions only when they are dirty (and its
 * own restores go through the gate too).
 *
 * A request cannot change SIGSYS or the abort signal (EPERM from the
 * handler); one that blocks SIGSYS and then sets a disposition gets SIGSYS
 * at its default action and its worker is replaced. Like the pagemap gate,
 * this holds against Python, not against code that jumps to arbitrary
 * addresses (ctypes); see docs/reset-engine.md.
 */
#ifndef MAYFLYD_SIGACTION_GATE_H
#define MAYFLYD_SIGACTION_GATE_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

/* The kernel's struct for rt_sigaction on x86_64 (not glibc's): what the
 * rewinder records and puts back, restorer included. */
struct mf_kernel_sigaction {
    uintptr_t handler;
    unsigned long flags;
    uintptr_t restorer;
    uint64_t mask;
};

/* rt_sigaction(sig, act, old) through the gate; 0 or -errno. */
long mf_gated_sigaction(int sig, const struct mf_kernel_sigaction *act, struct mf_kernel_sigaction *old);

/* Installs the SIGSYS handler (before the snapshot, which then records
 * it): it sets *dirty before it changes a disposition, and refuses SIGSYS
 * and `protected_signal`. dirty must outlive every rewind (untracked memory). */
bool mf_sigaction_gate_prepare(volatile sig_atomic_t *dirty, int protected_signal);

/* Loads the filter that sends every other disposition change to SIGSYS. */
bool mf_sigaction_gate_load(void);

#endif /* MAYFLYD_SIGACTION_GATE_H */
