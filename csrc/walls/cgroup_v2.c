/*
 * cgroup v2: one unified tree; cfg->base is the delegated directory. The
 * controllers must be enabled in cgroup.subtree_control of base and of
 * every ancestor of the leaf before the leaf gets its interface files.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "walls/cgroup.h"
#include "base/log.h"

static const char *const controllers[] = {"memory", "pids", "cpu"};
#define N_CONTROLLERS (sizeof(controllers) / sizeof(controllers[0]))

/* Whether name is a word of the space-separated list. */
static bool has_word(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)) != NULL; p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\n' || p[n] == '\0'))
            return true;
    return false;
}

static bool enable_controllers(const char *dir)
{
    char available[1024];

    MF_TRY(mf_cg_read(dir, "cgroup.controllers", available, sizeof(available)));
    for (size_t i = 0; i < N_CONTROLLERS; i++) {
        char value[32];
        bool required = i == 0;

        if (!has_word(available, controllers[i])) {
            /* Without memory the memory.max write below reports the error
             * if a limit was asked for. */
            mf_warn("cgroup v2 controller %s not available in %s", controllers[i], dir);
            continue;
        }
        /* One write per controller: one refused controller must not keep
         * the others off. */
        (void)snprintf(value, sizeof(value), "+%s", controllers[i]); /* fits */
        if (mf_cg_write(dir, "cgroup.subtree_control", value, false) < 0) {
            if (required)
                return false;
            mf_warn_last();
        }
    }
    return true;
}

static bool v2_setup(const struct mf_cgroup_config *cfg)
{
    char leaf[PATH_MAX], dir[PATH_MAX];
    char value[64];
    int rc;

    MF_TRY(mf_cg_mkdir(cfg->base, cfg->group));
    MF_TRY(mf_cg_join_path(leaf, cfg->base, cfg->group));
    /* base, then each ancestor of the leaf, top-down: a controller can only
     * be enabled where the parent has enabled it. */
    MF_TRY(mf_cg_join_path(dir, cfg->base, NULL));
    MF_TRY(enable_controllers(dir));
    for (const char *p = cfg->group; (p = strchr(p, '/')) != NULL; p++) {
        char ancestor[PATH_MAX];
        int n = snprintf(ancestor, sizeof(ancestor), "%s/%.*s", cfg->base, (int)(p - cfg->group),
                         cfg->group);
        if (n < 0 || n >= (int)sizeof(ancestor))
            return mf_errx(ENAMETOOLONG, "cgroup path below %s is too long", cfg->base);
        MF_TRY(enable_controllers(ancestor));
    }

    if (cfg->memory_max == 0)
        (void)snprintf(value, sizeof(value), "max"); /* fits */
    else
        (void)snprintf(value, sizeof(value), "%" PRIu64, cfg->memory_max); /* fits */
    rc = mf_cg_write(leaf, "memory.max", value, cfg->memory_max == 0);
    if (rc < 0)
        return false;
    /* Swap only hides memory pressure; absent without swap accounting. */
    if (rc > 0 && mf_cg_write(leaf, "memory.swap.max", "0", true) < 0)
        return false;
    /* Like memory.max: a missing file is an error only if a limit is set. */
    if (cfg->pids_max == 0)
        (void)snprintf(value, sizeof(value), "max"); /* fits */
    else
        (void)snprintf(value, sizeof(value), "%" PRIu64, cfg->pids_max); /* fits */
    if (mf_cg_write(leaf, "pids.max", value, cfg->pids_max == 0) < 0)
        return false;
    if (cfg->cpu_quota_us == 0)
        (void)snprintf(value, sizeof(value), "max %" PRIu64, cfg->cpu_period_us); /* fits */
    else
        (void)snprintf(value, sizeof(value), "%" PRIu64 " %" PRIu64, cfg->cpu_quota_us,
                       cfg->cpu_period_us); /* fits */
    return mf_cg_write(leaf, "cpu.max", value, cfg->cpu_quota_us == 0) >= 0;
}

static bool v2_join(const struct mf_cgroup_config *cfg, pid_t pid)
{
    char leaf[PATH_MAX], value[16];

    MF_TRY(mf_cg_join_path(leaf, cfg->base, cfg->group));
    (void)snprintf(value, sizeof(value), "%d", (int)pid); /* fits */
    return mf_cg_write(leaf, "cgroup.procs", value, false) > 0;
}

static bool v2_remove(const struct mf_cgroup_config *cfg)
{
    return mf_cg_remove_dir(cfg->base, cfg->group, true);
}

static bool v2_stats(const struct mf_cgroup_config *cfg, struct mf_cgroup_stats *out)
{
    char leaf[PATH_MAX];

    MF_TRY(mf_cg_join_path(leaf, cfg->base, cfg->group));
    MF_TRY(mf_cg_read_key(leaf, "memory.events", "oom_kill", &out->oom_kill));
    MF_TRY(mf_cg_read_u64(leaf, "memory.current", &out->memory_current));
    return mf_cg_read_u64_optional(leaf, "pids.current", &out->pids_current, &out->have_pids_current);
}

const struct mf_cgroup_backend mf_cgroup_v2_backend = {
    .setup = v2_setup,
    .join = v2_join,
    .remove = v2_remove,
    .stats = v2_stats,
};
