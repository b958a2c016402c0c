/*
 * Namespaces of a host: pid, ipc, uts, cgroup and (unless the tenant may
 * use the network) net. The mount namespace is mounts.c's; the user
 * namespace of an unprivileged daemon is userns.c's.
 */
#ifndef MAYFLYD_NS_H
#define MAYFLYD_NS_H

#include <stdbool.h>

enum mf_network {
    MF_NET_NONE,      /* a new net namespace with nothing in it, not even lo */
    MF_NET_LOOPBACK,  /* a new net namespace with lo up */
    MF_NET_FULL,      /* the host's own network namespace */
};

struct mf_ns_hooks {
    void *ctx;
    void (*before_fork)(void *ctx);
    void (*after_fork_parent)(void *ctx);  /* only after a failed fork */
    void (*after_fork_child)(void *ctx);
};

struct mf_ns_config {
    enum mf_network network;
    const char *hostname;
    const struct mf_ns_hooks *hooks;
};

/* "none", "loopback" or "full"; anything else is EINVAL. */
bool mf_network_parse(const char *name, enum mf_network *out);

/*
 * Unshares the namespaces (the pid namespace only if pid: it takes the
 * caller's next child), sets the hostname and brings up lo if asked. The
 * cgroup namespace is rooted at the caller's cgroup: join it first.
 */
bool mf_unshare_namespaces(const struct mf_ns_config *cfg, bool pid);

/*
 * Unshares the namespaces, sets the hostname, brings up lo if asked, then
 * forks. The caller becomes a stub that never returns: it waits for the
 * child and ends the way the child ended. The child is pid 1 of the new
 * pid namespace; it dies with the stub (SIGKILL) and returns true. Returns
 * false (in the one process there is) if a step before the fork fails;
 * the caller may then be left in some of the new namespaces. Needs
 * CAP_SYS_ADMIN (root, or the user namespace of userns.c). Order: after
 * the cgroup join (the cgroup namespace is rooted at the caller's group),
 * before mf_enter_minimal_root (its procfs must be the new pid namespace's).
 */
bool mf_enter_namespaces(const struct mf_ns_config *cfg);

#endif /* MAYFLYD_NS_H */
