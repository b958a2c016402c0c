/*
 * The sandbox's filesystem view: a private mount namespace whose root is an
 * empty read-only tmpfs holding read-only binds of the listed paths and a
 * few device nodes.
 */
#ifndef MAYFLYD_MOUNTS_H
#define MAYFLYD_MOUNTS_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Enters the minimal root. paths are absolute; each may be a directory or a
 * single file and may sit below directories the caller cannot traverse
 * later. A path that does not exist is skipped and flagged in skipped[i]
 * (which must have n entries); a path inside another listed path is
 * covered by that one's bind and not bound again. "/proc" is special: it is
 * bound writable (nosuid, nodev, noexec) because a sandbox writes its own
 * /proc/self/oom_score_adj. Needs CAP_SYS_ADMIN: run before dropping
 * privileges. On failure the process is left in its new mount namespace.
 */
bool mf_enter_minimal_root(const char *const *paths, size_t n, bool *skipped);

#endif /* MAYFLYD_MOUNTS_H */
