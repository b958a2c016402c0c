/*
 * The host's seal, the part that is plain C: what on_init() may have left
 * behind that would let tenant code run in the host, or reach it, once
 * the host serves. Called once, after on_init() returns and before the
 * engine starts; python/py_seal.c adds what concerns the interpreter.
 * After the seal the host runs no tenant code at all (docs/design.md,
 * "Tenant code and the sealed host").
 */
#ifndef MAYFLYD_HOST_SEAL_H
#define MAYFLYD_HOST_SEAL_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#define MF_SEAL_NSIG 65 /* signals 1..64 */

/* The dispositions the seal took from the host, given back in each sandbox. */
struct mf_sealed_signals {
    struct sigaction old[MF_SEAL_NSIG];
    bool taken[MF_SEAL_NSIG];
};

/* pid_one (the host is pid 1 of its own pid namespace): every other
 * process in it is a leftover of on_init() and is killed and reaped. Then
 * fails (EBUSY) if a thread is left besides the caller's. */
bool mf_seal_leftovers(bool pid_one);

/* Not dumpable, checked (on_init() may have made it so: a dumpable host's
 * memory is open to its own sandboxes through /proc/<pid>/mem), and no
 * interval timer left running (its signal would interrupt the host). */
bool mf_seal_process(void);

/* Every signal with a handler function (a Python handler is one: CPython's
 * trip function) is set to SIG_DFL in the host, its old disposition kept
 * in saved; the host then runs no handler of the program's. */
bool mf_seal_signals(struct mf_sealed_signals *saved);

/* In a sandbox: the dispositions the seal took back. Warns on failure. */
void mf_unseal_signals(const struct mf_sealed_signals *saved);

/* A reset worker, before the program's after_in_child= callbacks, which
 * run there before the request filter: a filter that refuses every new
 * process and thread (clone, clone3, fork, vfork: EPERM), so that none
 * outlives the callback holding the worker's request channels; but a
 * clone from the instruction that ends at clone_site (0: none), the
 * rewinder's own (its snapshot template). */
bool mf_seal_no_new_tasks(uint64_t clone_site);

#endif /* MAYFLYD_HOST_SEAL_H */
