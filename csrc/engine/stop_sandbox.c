/*
 * The stop sandbox of both engines; see stop_sandbox.h.
 *
 * Runs in the host once serving has ended: no request is left, the data
 * channels are no longer read. The host waits on the signalfd (SIGCHLD)
 * and on the control channel's hang-up, nothing else.
 */
#define _GNU_SOURCE
#include "engine/stop_sandbox.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/log.h"
#include "base/wait_status.h"
#include "engine/engine_common.h"
#include "engine/fork_engine.h"

static _Noreturn void stop_child(const struct mf_children *c, bool setup_ok, const struct mf_limits *limits,
                                 const void *request_filter, size_t request_filter_len)
{
    if (!setup_ok || !mf_children_enter_sandbox(c, limits, request_filter, request_filter_len)) {
        mf_warn("stop sandbox setup: %s", mf_last_error());
        _exit(MF_CHILD_EXIT_SETUP);
    }
    _exit(c->hooks->stop(c->hooks->ctx) ? 0 : MF_CHILD_EXIT_HANDLER);
}

/* Drains the signalfd: SIGCHLD says to look, the rest (a reset worker's
 * CPU timer firing late) means nothing now. */
static void drain_signals(const struct mf_children *c)
{
    struct signalfd_siginfo si;

    while (read(c->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
        ;
}

/* Ends the sandbox early and reaps it. */
static int kill_and_reap(pid_t pid)
{
    int status = 0;

    mf_child_kill(pid);
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            mf_warn("waitpid(%d) failed: %s", pid, strerror(errno));
            break;
        }
    }
    return status;
}

/* Until pid exits, the deadline passes, or the supervisor goes; returns
 * its wait status, and whether the host killed it. */
static int wait_stop(struct mf_children *c, pid_t pid, uint32_t timeout_ms, bool *killed)
{
    uint64_t now = 0, deadline;
    int status = 0;

    *killed = true;
    if (!mf_now_ms(&now)) {
        mf_warn("stop sandbox: %s; killed", mf_last_error());
        return kill_and_reap(pid);
    }
    deadline = now + timeout_ms;
    for (;;) {
        pid_t got = waitpid(pid, &status, WNOHANG);
        if (got == pid) {
            *killed = false;
            return status;
        }
        if (got < 0 && errno != EINTR) {
            mf_warn("waitpid(%d, WNOHANG) failed: %s; the stop sandbox is killed", pid, strerror(errno));
            return kill_and_reap(pid);
        }
        if (!mf_now_ms(&now)) {
            mf_warn("stop sandbox: %s; killed", mf_last_error());
            return kill_and_reap(pid);
        }
        if (now >= deadline) {
            mf_warn("the stop hook ran for over %u ms; killed", timeout_ms);
            return kill_and_reap(pid);
        }
        /* events 0: only the channel's hang-up or error is reported. */
        struct pollfd pfd[2] = {{.fd = c->sigfd, .events = POLLIN}, {.fd = c->ctrl_fd, .events = 0}};
        if (poll(pfd, 2, mf_poll_timeout(now, deadline)) < 0 && errno != EINTR) {
            mf_warn("poll(signalfd %d, control fd %d) failed: %s; the stop sandbox is killed", c->sigfd,
                    c->ctrl_fd, strerror(errno));
            return kill_and_reap(pid);
        }
        /* A supervisor that went away, or killed its host, waits for nothing. */
        if ((pfd[1].revents & (POLLHUP | POLLERR)) != 0)
            return kill_and_reap(pid);
        drain_signals(c);
    }
}

void mf_stop_sandbox_run(struct mf_children *c, const struct mf_limits *limits, const void *request_filter,
                         size_t request_filter_len, uint32_t timeout_ms)
{
    bool setup_ok = false, killed = false;
    char text[64];

    if (!c->shutdown || c->hooks->stop == NULL)
        return;
    if (timeout_ms == 0)
        timeout_ms = MF_STOP_DEFAULT_MS;
    /* The requests end as serving's end always ended them; the hook then
     * runs alone, within the tenant's limits. */
    mf_children_kill_all(c);
    pid_t pid = mf_children_fork(c, NULL, 0, &setup_ok);
    if (pid == 0)
        stop_child(c, setup_ok, limits, request_filter, request_filter_len);
    if (pid < 0) {
        mf_warn("the stop hook cannot run: %s", mf_last_error());
        return;
    }
    int status = wait_stop(c, pid, timeout_ms, &killed);
    mf_children_forget(c, pid);
    /* A hook that raised printed its traceback; a kill was warned about. */
    bool said = killed || (WIFEXITED(status) && (WEXITSTATUS(status) == 0 ||
                                                 WEXITSTATUS(status) == MF_CHILD_EXIT_HANDLER));
    if (!said)
        mf_warn("the stop sandbox %s", mf_describe_wait_status(status, text, sizeof(text)));
}
