/*
 * A reset worker's request channels to the front end, and its channel to
 * its host, outlive its requests, so a request could change what a later one sees or sends
 * through them: shut one down, set a socket option (SO_RCVTIMEO, a
 * filter, SO_PEEK_OFF ...), bind or connect it. None of that can be
 * rewound, and none of it is needed to serve. The gate tells the rewinder
 * when a request did it: a filter the worker stacks over the request
 * filter turns every setsockopt(), shutdown(), bind(), connect() and
 * listen() into SIGSYS (unless it comes from the gate's own `syscall`
 * instruction); the worker's SIGSYS handler (sigaction_gate.c) passes it
 * here, which marks the channels dirty if the call's fd is one of them
 * (by device and inode, so a duplicate made with dup() or SCM_RIGHTS
 * counts) and then makes the call on the request's behalf. A dirty
 * channel replaces the worker after the request.
 *
 * Closing a channel or dup2() over it shows in the rewind's fd check
 * (device and inode of every snapshot fd); data a request leaves queued
 * is discarded by the front end before the next request is written, and
 * frames of another request are skipped by the worker. Like the other
 * gates, this holds against Python and libc, not against code that jumps
 * into the gate's stub (docs/reset-engine.md).
 */
#ifndef MAYFLYD_CHANNEL_GATE_H
#define MAYFLYD_CHANNEL_GATE_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

/* Records which sockets are the channels: the worker's own to its host
 * (control_fd) and the request channels (before the snapshot); *dirty
 * must outlive every rewind (untracked memory). */
bool mf_channel_gate_prepare(volatile sig_atomic_t *dirty, int control_fd, const int *fds, size_t n);

/* Loads the filter; a no-op if prepare saw no channel. */
bool mf_channel_gate_load(void);

/* From the SIGSYS handler: true if the trapped call was one of the gate's
 * (then made, its result in the context's rax). */
bool mf_channel_gate_trap(const siginfo_t *si, void *uctx);

#endif /* MAYFLYD_CHANNEL_GATE_H */
