/*
 * The walls a host builds around itself: see host_walls.h.
 */
#define _GNU_SOURCE
#include "walls/host_walls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "walls/identity.h"
#include "base/log.h"
#include "walls/mounts.h"
#include "walls/seccomp.h"

#define SKIPPED_LINE_MAX 2048

static bool set_limit(int resource, const char *name, rlim_t value)
{
    struct rlimit lim = {value, value};

    if (setrlimit(resource, &lim) < 0)
        return mf_err("setrlimit(%s, %lu)", name, (unsigned long)value);
    return true;
}

static void warn_skipped(const struct mf_host_walls *w, const bool *skipped)
{
    char line[SKIPPED_LINE_MAX] = "";
    size_t used = 0;

    for (size_t i = 0; i < w->n_paths; i++) {
        int n;

        if (!skipped[i])
            continue;
        n = snprintf(line + used, sizeof(line) - used, "%s%s", used ? ", " : "", w->readonly_paths[i]);
        if (n < 0 || (size_t)n >= sizeof(line) - used)
            break; /* the line is long enough to make the point */
        used += (size_t)n;
    }
    if (used)
        mf_warn("not in the sandbox's view (missing): %s", line);
}

static bool enter_minimal_root(const struct mf_host_walls *w)
{
    bool *skipped = calloc(w->n_paths + 1, sizeof(*skipped));
    bool ok;

    if (skipped == NULL)
        return mf_err("calloc(%zu paths)", w->n_paths);
    ok = mf_enter_minimal_root(w->readonly_paths, w->n_paths, skipped);
    if (ok)
        warn_skipped(w, skipped);
    free(skipped);
    return ok;
}

bool mf_host_walls_build(const struct mf_host_walls *w)
{
    /* A crashing sandbox must not write a core file anywhere. */
    MF_TRY(set_limit(RLIMIT_CORE, "RLIMIT_CORE", 0));
    if (w->root) {
        /* Lowering the score needs CAP_SYS_RESOURCE, so before the identity
         * drop. Some machines deny it even to root; sandboxes still rise to 1000. */
        if (!mf_set_oom_score_adj(MF_HOST_OOM_SCORE_ADJ) && errno != EACCES && errno != EPERM)
            return false;
        /* The tenant's uid is its own: a second cap on processes that holds
         * without a pids cgroup too. */
        MF_TRY(set_limit(RLIMIT_NPROC, "RLIMIT_NPROC", (rlim_t)w->nproc));
    }
    /* In the new pid namespace, so that its procfs shows only the tenant;
     * needs the capabilities the identity drop takes away. */
    if (w->minimal_root)
        MF_TRY(enter_minimal_root(w));
    /* Also sets no_new_privs, which seccomp needs. Only root may set groups. */
    MF_TRY(mf_drop_privileges(w->uid, w->gid, w->root));
    /* Last: the loading filter stays under every sandbox's request filter. */
    if (w->loading_filter != NULL) {
        MF_TRY(mf_seccomp_check(w->filter_len));
        MF_TRY(mf_seccomp_load(w->loading_filter, w->filter_len));
    }
    return true;
}
