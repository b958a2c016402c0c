/*
 * The zygote's fork of a tenant's host: see zygote_fork.h.
 */
#define _GNU_SOURCE
#include "walls/zygote_fork.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "walls/identity.h"
#include "wire/proto.h"
#include "wire/protocol.h"
#include "walls/userns.h"

#define LOAD_FAILED_MAX 4096

static void no_hook(void *ctx)
{
    (void)ctx;
}

/* Only 0, 1, 2, the host's control channel and its cgroup's memory
 * events: nothing of the zygote's (its channel to the supervisor, other
 * hosts' pidfds) may reach a tenant. */
static bool keep_only_host_fds(const struct mf_zygote_fork_config *cfg)
{
    /* Ascending, so that the gaps between them are what is closed; with
     * no events file, the control channel twice. */
    int oom = cfg->oom_fd >= 0 ? cfg->oom_fd : cfg->ctrl_fd;
    unsigned keep[2] = {(unsigned)cfg->ctrl_fd, (unsigned)oom};
    unsigned from = 3;

    if (keep[0] > keep[1]) {
        keep[0] = (unsigned)oom;
        keep[1] = (unsigned)cfg->ctrl_fd;
    }
    if (dup2(cfg->stdout_fd, STDOUT_FILENO) < 0)
        return mf_err("dup2(%d, stdout)", cfg->stdout_fd);
    if (dup2(cfg->stderr_fd, STDERR_FILENO) < 0)
        return mf_err("dup2(%d, stderr)", cfg->stderr_fd);
    for (size_t i = 0; i < 2; i++) {
        if (keep[i] < from)
            continue; /* the same fd twice */
        if (keep[i] > from && syscall(SYS_close_range, from, keep[i] - 1, 0u) < 0)
            return mf_err("close_range(%u, %u)", from, keep[i] - 1);
        from = keep[i] + 1;
    }
    if (syscall(SYS_close_range, from, ~0u, 0u) < 0)
        return mf_err("close_range(%u, ~0)", from);
    return true;
}

/* The first steps of every child: die with its parent, keep only the
 * host's fds, lead a session of its own. parent_pidfd tells whether the
 * parent died before the signal was armed where getppid() cannot (a
 * parent outside the child's pid namespace reads as 0). */
static bool child_setup(const struct mf_zygote_fork_config *cfg, pid_t parent, int parent_pidfd)
{
    MF_TRY(mf_arm_parent_death(SIGKILL, "the host's parent", parent, parent_pidfd));
    MF_TRY(keep_only_host_fds(cfg));
    if (setsid() < 0)
        return mf_err("setsid()");
    return true;
}

/* The child of a zygote in a user namespace of its own (an unprivileged
 * daemon): the pid namespace must belong to that user namespace, so it is
 * made here, and a stub stays behind in C (ns.c). */
static bool become_host_in_user_namespace(const struct mf_zygote_fork_config *cfg, pid_t parent,
                                          int parent_pidfd)
{
    struct mf_ns_hooks ns_hooks = {cfg->hooks->ctx, no_hook, no_hook, no_hook};
    struct mf_ns_config ns = *cfg->ns;

    MF_TRY(child_setup(cfg, parent, parent_pidfd));
    MF_TRY(mf_enter_user_namespace());
    ns.hooks = &ns_hooks;
    MF_TRY(mf_enter_namespaces(&ns));
    return mf_host_walls_build(cfg->walls);
}

/* The child, pid 1 of its pid namespace already when cfg->ns is set. */
static bool become_host(const struct mf_zygote_fork_config *cfg, pid_t parent, int parent_pidfd)
{
    MF_TRY(child_setup(cfg, parent, parent_pidfd));
    /* Before the namespaces: the cgroup namespace is rooted at this group. */
    if (cfg->cgroup != NULL)
        MF_TRY(mf_cgroup_join(cfg->cgroup, getpid()));
    if (cfg->ns != NULL)
        MF_TRY(mf_unshare_namespaces(cfg->ns, false));
    return mf_host_walls_build(cfg->walls);
}

static _Noreturn void report_and_exit(int ctrl_fd)
{
    char text[LOAD_FAILED_MAX];
    int n = snprintf(text, sizeof(text), "sandbox setup failed: %s", mf_last_error());

    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(text))
        n = (int)sizeof(text) - 1;
    if (!mf_send_packet(ctrl_fd, MF_MSG_LOAD_FAILED, 0, text, (uint32_t)n))
        mf_warn_last();
    _exit(1);
}

/* fork(), or with sibling a fork whose child is the caller's parent's
 * (CLONE_PARENT; the exit signal is then the caller's own, SIGCHLD).
 * Raw, as glibc has no fork with flags: the child's cached thread id is
 * the caller's, which only a mutex shared with the caller could tell, and
 * glibc (2.34 on) signals its own thread by gettid(). */
static pid_t fork_process(bool sibling)
{
    if (!sibling)
        return fork();
    return (pid_t)syscall(SYS_clone, (unsigned long)(CLONE_PARENT | SIGCHLD), NULL, NULL, NULL, 0ul);
}

/* The zygote's fork, with its next child in a new pid namespace when
 * pid_namespace: the zygote itself made the namespace, and no stub is
 * needed. */
static pid_t fork_child(const struct mf_zygote_fork_config *cfg, bool pid_namespace, int own_pid_ns)
{
    bool sibling = cfg->parent_pidfd >= 0;
    pid_t pid;
    int error;

    if (pid_namespace && unshare(CLONE_NEWPID) < 0) {
        mf_err("unshare(CLONE_NEWPID)");
        return -1;
    }
    cfg->hooks->before_fork(cfg->hooks->ctx);
    pid = fork_process(sibling);
    error = errno;
    if (pid != 0)
        cfg->hooks->after_fork_parent(cfg->hooks->ctx);
    /* Back to the zygote's own pid namespace for its next children; a
     * zygote that cannot would nest every later host: it must not go on. */
    if (pid != 0 && pid_namespace && setns(own_pid_ns, CLONE_NEWPID) < 0) {
        mf_warn("zygote: setns(own pid namespace) failed: %s; exiting", strerror(errno));
        _exit(70);
    }
    errno = error;
    if (pid < 0)
        mf_err("%s of a host", sibling ? "clone(CLONE_PARENT)" : "fork()");
    return pid;
}

pid_t mf_zygote_fork(const struct mf_zygote_fork_config *cfg)
{
    bool pid_namespace = cfg->ns != NULL && !cfg->user_namespace;
    mf_cleanup_fd int own_pid_ns = -1;
    mf_cleanup_fd int own_pidfd = -1;
    pid_t parent = cfg->parent_pidfd >= 0 ? getppid() : getpid();
    int parent_pidfd = cfg->parent_pidfd;
    pid_t pid;

    if (cfg->ctrl_fd < 3 || (cfg->oom_fd >= 0 && cfg->oom_fd < 3) || cfg->stdout_fd < 3 || cfg->stderr_fd < 3) {
        mf_errx(EBADF, "zygote fork: fds %d, %d, %d, %d: each must be 3 or above", cfg->ctrl_fd, cfg->oom_fd,
                cfg->stdout_fd, cfg->stderr_fd);
        return -1;
    }
    if (cfg->ctrl_fd == cfg->oom_fd) {
        mf_errx(EINVAL, "zygote fork: the control channel and the memory events are both fd %d", cfg->ctrl_fd);
        return -1;
    }
    if (cfg->user_namespace && cfg->ns == NULL) {
        mf_errx(EINVAL, "zygote fork: a user namespace comes with the other namespaces");
        return -1;
    }
    if (pid_namespace) {
        own_pid_ns = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
        if (own_pid_ns < 0) {
            mf_err("open(/proc/self/ns/pid)");
            return -1;
        }
    }
    if (parent_pidfd < 0) {
        own_pidfd = (int)syscall(SYS_pidfd_open, parent, 0u);
        if (own_pidfd < 0) {
            mf_err("pidfd_open(zygote %d)", parent);
            return -1;
        }
        parent_pidfd = own_pidfd;
    }
    pid = fork_child(cfg, pid_namespace, own_pid_ns);
    if (pid == 0) {
        /* The child's copies go in keep_only_host_fds; their numbers may
         * be taken again by the time this returns. */
        (void)mf_steal_fd(&own_pidfd);
        (void)mf_steal_fd(&own_pid_ns);
        bool ok = cfg->user_namespace ? become_host_in_user_namespace(cfg, parent, parent_pidfd)
                                      : become_host(cfg, parent, parent_pidfd);
        if (!ok)
            report_and_exit(cfg->ctrl_fd);
        /* Python again, in this process only, and only inside the walls. */
        cfg->hooks->after_fork_child(cfg->hooks->ctx);
        return 0;
    }
    return pid;
}
