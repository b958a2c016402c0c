/*
 * The zygote's fork of a tenant's host. Every step between the fork and
 * the host's first Python runs here, in C. Given its parent's pidfd, the
 * zygote forks the host as its sibling (CLONE_PARENT): the host is the
 * supervisor's child, dies with the supervisor (its parent-death signal)
 * and outlives the zygote. The zygote unshares the pid
 * namespace itself, so that its child is pid 1 there and no stub is left
 * behind: a stub, a copy of the zygote, would hold its own copy of every
 * page that the zygote and the host write afterwards. Only in a user
 * namespace (an unprivileged daemon) does the child make the pid namespace
 * and leave a stub, in C (ns.c).
 */
#ifndef MAYFLYD_ZYGOTE_FORK_H
#define MAYFLYD_ZYGOTE_FORK_H

#include <stdbool.h>
#include <sys/types.h>

#include "walls/cgroup.h"
#include "walls/host_walls.h"
#include "walls/ns.h"

struct mf_zygote_fork_config {
    int ctrl_fd;        /* the host's control channel: kept; a failure is reported on it */
    int oom_fd;         /* the tenant cgroup's memory events, opened by the zygote: kept; -1: none */
    int stdout_fd;      /* becomes 1 */
    int stderr_fd;      /* becomes 2 */
    /* The caller's parent, whose child the host becomes and with which it
     * dies; -1: the caller itself (the host is its child). */
    int parent_pidfd;
    bool user_namespace;                   /* an unprivileged daemon's: entered first */
    const struct mf_cgroup_config *cgroup; /* joined before the namespaces; NULL: none */
    const struct mf_ns_config *ns;         /* NULL: no namespaces */
    const struct mf_host_walls *walls;     /* built last, before the host's first Python */
    /* Around the zygote's fork; after_fork_child runs in the host alone. */
    const struct mf_ns_hooks *hooks;
};

/*
 * Forks. In the zygote: returns the child's pid, or -1 with the error
 * recorded. In the host: returns 0, with stdout and stderr in place, every
 * other fd but ctrl_fd and oom_fd closed, a session of its own, in the cgroup,
 * (with ns) as pid 1 of new namespaces, and inside its walls. A step that fails in between is
 * sent to the supervisor as LOAD_FAILED on ctrl_fd, and the child exits 1.
 */
pid_t mf_zygote_fork(const struct mf_zygote_fork_config *cfg);

#endif /* MAYFLYD_ZYGOTE_FORK_H */
