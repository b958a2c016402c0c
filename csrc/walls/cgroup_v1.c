/*
 * cgroup v1: one hierarchy per controller under cfg->base (memory, pids,
 * cpu). memory is required; pids and cpu are used when mounted, and
 * required when their limit is set.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "walls/cgroup.h"
#include "base/log.h"

static const char *const controllers[] = {"memory", "pids", "cpu"};
#define N_CONTROLLERS (sizeof(controllers) / sizeof(controllers[0]))

/* Whether base/<ctrl> exists; only "memory" is required to. */
static bool controller_present(const struct mf_cgroup_config *cfg, size_t i, bool *present)
{
    char dir[PATH_MAX];
    struct stat st;

    MF_TRY(mf_cg_join_path(dir, cfg->base, controllers[i]));
    *present = stat(dir, &st) == 0 && S_ISDIR(st.st_mode);
    if (!*present && i == 0)
        return mf_errx(ENOENT, "cgroup v1 memory controller not found at %s", dir);
    return true;
}

static bool leaf_dir(char *out, const struct mf_cgroup_config *cfg, const char *ctrl)
{
    char ctrl_dir[PATH_MAX];
    MF_TRY(mf_cg_join_path(ctrl_dir, cfg->base, ctrl));
    return mf_cg_join_path(out, ctrl_dir, cfg->group);
}

/* memsw must stay >= limit at every moment, so the order of the two
 * writes depends on whether the limit goes up or down: try memsw first,
 * and on EINVAL lower the limit first. Missing memsw (no swap accounting)
 * is fine. */
static bool set_memory_limit(const char *dir, uint64_t memory_max)
{
    char value[32];
    int rc;

    if (memory_max == 0)
        (void)snprintf(value, sizeof(value), "-1"); /* fits */
    else
        (void)snprintf(value, sizeof(value), "%" PRIu64, memory_max); /* fits */
    rc = mf_cg_write(dir, "memory.memsw.limit_in_bytes", value, true);
    if (rc < 0 && errno != EINVAL)
        return false;
    if (mf_cg_write(dir, "memory.limit_in_bytes", value, false) < 0)
        return false;
    if (rc < 0 && mf_cg_write(dir, "memory.memsw.limit_in_bytes", value, true) < 0)
        return false;
    /* Swapping a tenant's pages only hides memory pressure. */
    if (mf_cg_write(dir, "memory.swappiness", "0", true) < 0)
        mf_warn_last();
    return true;
}

static bool set_pids_limit(const char *dir, uint64_t pids_max)
{
    char value[32];

    if (pids_max == 0)
        (void)snprintf(value, sizeof(value), "max"); /* fits */
    else
        (void)snprintf(value, sizeof(value), "%" PRIu64, pids_max); /* fits */
    return mf_cg_write(dir, "pids.max", value, false) > 0;
}

/* Period, then quota (-1: none): the kernel checks a quota against the
 * period in force. */
static bool set_cpu_limit(const char *dir, uint64_t quota_us, uint64_t period_us)
{
    char value[32];

    (void)snprintf(value, sizeof(value), "%" PRIu64, period_us); /* fits */
    if (mf_cg_write(dir, "cpu.cfs_period_us", value, false) < 0)
        return false;
    if (quota_us == 0)
        (void)snprintf(value, sizeof(value), "-1"); /* fits */
    else
        (void)snprintf(value, sizeof(value), "%" PRIu64, quota_us); /* fits */
    return mf_cg_write(dir, "cpu.cfs_quota_us", value, false) > 0;
}

/* Whether the configuration asks controller i for a limit. */
static bool limit_wanted(const struct mf_cgroup_config *cfg, size_t i)
{
    return i == 0 || (i == 1 && cfg->pids_max != 0) || (i == 2 && cfg->cpu_quota_us != 0);
}

static bool v1_setup(const struct mf_cgroup_config *cfg)
{
    for (size_t i = 0; i < N_CONTROLLERS; i++) {
        char ctrl_dir[PATH_MAX], leaf[PATH_MAX];
        bool present;

        MF_TRY(controller_present(cfg, i, &present));
        if (!present && limit_wanted(cfg, i))
            return mf_errx(ENOENT, "cgroup v1 controller %s not mounted under %s, but a limit is set",
                           controllers[i], cfg->base);
        if (!present) {
            mf_warn("cgroup v1 controller %s not mounted under %s; not used", controllers[i], cfg->base);
            continue;
        }
        MF_TRY(mf_cg_join_path(ctrl_dir, cfg->base, controllers[i]));
        MF_TRY(mf_cg_mkdir(ctrl_dir, cfg->group));
        MF_TRY(leaf_dir(leaf, cfg, controllers[i]));
        /* Limits are written also when 0, so that setup lifts an old one. */
        if (i == 0)
            MF_TRY(set_memory_limit(leaf, cfg->memory_max));
        else if (i == 1)
            MF_TRY(set_pids_limit(leaf, cfg->pids_max));
        else
            MF_TRY(set_cpu_limit(leaf, cfg->cpu_quota_us, cfg->cpu_period_us));
    }
    return true;
}

static bool v1_join(const struct mf_cgroup_config *cfg, pid_t pid)
{
    char value[16];

    (void)snprintf(value, sizeof(value), "%d", (int)pid); /* fits */
    for (size_t i = 0; i < N_CONTROLLERS; i++) {
        char leaf[PATH_MAX];
        bool present;

        MF_TRY(controller_present(cfg, i, &present));
        if (!present)
            continue;
        MF_TRY(leaf_dir(leaf, cfg, controllers[i]));
        if (mf_cg_write(leaf, "cgroup.procs", value, false) < 0)
            return false;
    }
    return true;
}

static bool v1_remove(const struct mf_cgroup_config *cfg)
{
    bool ok = true;

    /* Every controller even after a failure: leave as little as possible. */
    for (size_t i = 0; i < N_CONTROLLERS; i++) {
        char ctrl_dir[PATH_MAX];
        bool present;

        if (!controller_present(cfg, i, &present)) {
            ok = false;
            continue;
        }
        if (!present)
            continue;
        if (!mf_cg_join_path(ctrl_dir, cfg->base, controllers[i]) ||
            !mf_cg_remove_dir(ctrl_dir, cfg->group, false)) {
            if (!ok)
                mf_warn_last(); /* keep the earlier error; do not lose this one */
            ok = false;
        }
    }
    return ok;
}

static bool v1_stats(const struct mf_cgroup_config *cfg, struct mf_cgroup_stats *out)
{
    char leaf[PATH_MAX];

    MF_TRY(leaf_dir(leaf, cfg, "memory"));
    /* "oom_kill" in memory.oom_control exists since Linux 4.13. */
    MF_TRY(mf_cg_read_key(leaf, "memory.oom_control", "oom_kill", &out->oom_kill));
    MF_TRY(mf_cg_read_u64(leaf, "memory.usage_in_bytes", &out->memory_current));
    MF_TRY(leaf_dir(leaf, cfg, "pids"));
    return mf_cg_read_u64_optional(leaf, "pids.current", &out->pids_current, &out->have_pids_current);
}

const struct mf_cgroup_backend mf_cgroup_v1_backend = {
    .setup = v1_setup,
    .join = v1_join,
    .remove = v1_remove,
    .stats = v1_stats,
};
