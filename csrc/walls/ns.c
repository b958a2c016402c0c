/*
 * New namespaces for a host, and the stub left behind in the old ones.
 *
 * unshare(CLONE_NEWPID) moves only the caller's future children, so the
 * caller forks once: the child, pid 1 of the new namespace, goes on to be
 * the host; the caller stays behind as a stub in the supervisor's pid
 * namespace. The stub runs no more Python: it waits for the host and ends
 * the way the host ended (exit code, or the same signal), so the
 * supervisor keeps one child process, its wait status and its kill().
 * The host dies with the stub through its parent-death signal; the race
 * before that signal is armed is closed with a pipe (identity.h's
 * mf_arm_parent_death), because getppid() is 0 in a new pid namespace
 * whatever the stub does.
 */
#define _GNU_SOURCE
#include "walls/ns.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "walls/identity.h"

/* Exit status of a host that found its stub gone, or could not watch it. */
#define HOST_EXIT_ORPHANED 1
/* Exit status of a stub that lost track of its host (cannot happen). */
#define STUB_EXIT_LOST 70

static const char *const network_names[] = {
    [MF_NET_NONE] = "none",
    [MF_NET_LOOPBACK] = "loopback",
    [MF_NET_FULL] = "full",
};

bool mf_network_parse(const char *name, enum mf_network *out)
{
    for (size_t i = 0; i < sizeof(network_names) / sizeof(network_names[0]); i++) {
        if (strcmp(name, network_names[i]) == 0) {
            *out = (enum mf_network)i;
            return true;
        }
    }
    return mf_errx(EINVAL, "network '%s': expected none, loopback or full", name);
}

/* A new net namespace has lo, but down: 127.0.0.1 is unreachable until up. */
static bool loopback_up(void)
{
    struct ifreq ifr;
    bool ok = false;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return mf_err("socket(AF_INET, SOCK_DGRAM)");
    memset(&ifr, 0, sizeof(ifr));
    memcpy(ifr.ifr_name, "lo", sizeof("lo"));
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) {
        mf_err("ioctl(SIOCGIFFLAGS, lo)");
    } else {
        ifr.ifr_flags = (short)(ifr.ifr_flags | IFF_UP);
        if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
            mf_err("ioctl(SIOCSIFFLAGS, lo, IFF_UP)");
        else
            ok = true;
    }
    if (close(fd) < 0 && ok)
        ok = mf_err("close(socket fd %d)", fd);
    return ok;
}

/* Defaults everywhere: a handler Python installed would only set a flag
 * that nobody reads any more (so SIGTERM must kill the stub), and an
 * ignored SIGCHLD would let the kernel reap the host behind our back. */
static void stub_reset_signals(void)
{
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigset_t none;

    for (int sig = 1; sig < NSIG; sig++) {
        /* EINVAL: SIGKILL, SIGSTOP and the C library's reserved signals. */
        if (sigaction(sig, &dfl, NULL) < 0 && errno != EINVAL)
            mf_warn("stub: sigaction(%d, SIG_DFL) failed: %s", sig, strerror(errno));
    }
    if (sigemptyset(&none) < 0 || sigprocmask(SIG_SETMASK, &none, NULL) < 0)
        mf_warn("stub: sigprocmask(SIG_SETMASK, {}) failed: %s", strerror(errno));
}

/* Waits for the host and ends the way it ended. Failures can only be
 * logged: there is no caller left to report to. */
static _Noreturn void stub_main(pid_t host)
{
    int status, sig;

    stub_reset_signals();
    while (waitpid(host, &status, 0) < 0) {
        if (errno != EINTR) {
            mf_warn("stub: waitpid(%d) failed: %s", host, strerror(errno));
            _exit(STUB_EXIT_LOST);
        }
    }
    if (WIFEXITED(status))
        _exit(WEXITSTATUS(status));
    sig = WTERMSIG(status);
    /* The disposition is the default since stub_reset_signals, and the
     * mask empty: a fatal signal ends us here. One whose default is to
     * ignore (the host cannot have died of it) falls through. */
    if (kill(getpid(), sig) < 0)
        mf_warn("stub: kill(%d, %d) failed: %s", getpid(), sig, strerror(errno));
    _exit(128 + sig);
}

/* The host's first steps, before any Python: die with the stub, and
 * notice a stub that died before that was armed. */
static bool host_watch_stub(pid_t stub, int *pipe_rd, int *pipe_wr)
{
    /* Ours would keep the pipe open: only the stub's write end may remain. */
    if (close(mf_steal_fd(pipe_wr)) < 0)
        return mf_err("close(stub pipe write end)");
    MF_TRY(mf_arm_parent_death(SIGKILL, "the stub", stub, *pipe_rd));
    /* Nothing more to learn from it: from now on the signal does the job. */
    if (close(mf_steal_fd(pipe_rd)) < 0)
        return mf_err("close(stub pipe read end)");
    return true;
}

bool mf_unshare_namespaces(const struct mf_ns_config *cfg, bool pid)
{
    int flags = CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP;

    if (pid)
        flags |= CLONE_NEWPID;
    if (cfg->network != MF_NET_FULL)
        flags |= CLONE_NEWNET;
    /* The cgroup namespace is rooted at our cgroup: join it before this. */
    if (unshare(flags) < 0)
        return mf_err("unshare(%sCLONE_NEWIPC|CLONE_NEWUTS|CLONE_NEWCGROUP%s)", pid ? "CLONE_NEWPID|" : "",
                      cfg->network == MF_NET_FULL ? "" : "|CLONE_NEWNET");
    if (sethostname(cfg->hostname, strlen(cfg->hostname)) < 0)
        return mf_err("sethostname(%s)", cfg->hostname);
    if (cfg->network == MF_NET_LOOPBACK)
        MF_TRY(loopback_up());
    return true;
}

bool mf_enter_namespaces(const struct mf_ns_config *cfg)
{
    const struct mf_ns_hooks *hooks = cfg->hooks;
    mf_cleanup_fd int pipe_rd = -1;
    mf_cleanup_fd int pipe_wr = -1;
    pid_t stub = getpid();
    int pipe_fds[2];
    pid_t pid;

    /* The uts and net namespaces are the caller's already: set them up
     * before the fork, so that a failure is raised in the one process there
     * is rather than in a host whose stub waits for it. */
    MF_TRY(mf_unshare_namespaces(cfg, true));
    if (pipe2(pipe_fds, O_CLOEXEC) < 0)
        return mf_err("pipe2(O_CLOEXEC)");
    pipe_rd = pipe_fds[0];
    pipe_wr = pipe_fds[1];

    hooks->before_fork(hooks->ctx);
    pid = fork();
    if (pid > 0) {
        /* The stub runs no Python again, so no after-fork hook. */
        if (close(mf_steal_fd(&pipe_rd)) < 0)
            mf_warn("stub: close(pipe read end) failed: %s", strerror(errno));
        stub_main(pid);
    }
    if (pid < 0) {
        int error = errno;
        hooks->after_fork_parent(hooks->ctx);
        errno = error; /* the fork error is the one to report; the pipe closes on return */
        return mf_err("fork() into the new pid namespace");
    }
    if (!host_watch_stub(stub, &pipe_rd, &pipe_wr)) {
        /* Not back to Python: its at-fork handlers have not run, and
         * without a stub there is nobody to report to. */
        mf_warn_last();
        _exit(HOST_EXIT_ORPHANED);
    }
    hooks->after_fork_child(hooks->ctx);
    return true;
}
