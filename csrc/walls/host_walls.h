/*
 * The walls a host builds around itself, in order, once it is in its
 * namespaces and cgroup and before any tenant code runs: no core files,
 * the OOM score and process cap (root daemon), the minimal read-only root
 * (in namespaces), the identity drop, and last the loading seccomp filter.
 * Both ways of starting a host run this one sequence: a zygote's child in
 * C before its first Python (zygote_fork.c), a fresh host from Python.
 */
#ifndef MAYFLYD_HOST_WALLS_H
#define MAYFLYD_HOST_WALLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Only the supervisor may make a host fall lower than its own sandboxes in
 * the OOM killer's eyes; sandboxes raise themselves to 1000 after fork. */
#define MF_HOST_OOM_SCORE_ADJ (-500)

struct mf_host_walls {
    bool root;                          /* a root daemon: OOM score, process cap, no groups */
    unsigned long nproc;                /* RLIMIT_NPROC, root only; counted per uid */
    uid_t uid;
    gid_t gid;
    bool minimal_root;                  /* in namespaces: enter the read-only root */
    const char *const *readonly_paths;  /* what the root shows */
    size_t n_paths;
    const void *loading_filter;         /* seccomp BPF; NULL: none */
    size_t filter_len;
};

/* Builds every wall; false with the error recorded at the first that fails.
 * Paths missing from the view are named on stderr (the tenant's log). */
bool mf_host_walls_build(const struct mf_host_walls *w);

#endif /* MAYFLYD_HOST_WALLS_H */
