/*
 * Per-tenant cgroup: one interface, two backends (cgroup_v1.c, cgroup_v2.c)
 * picked in one place (cgroup.c) from cfg->version.
 *
 * Fake trees: interface files are opened without O_CREAT, exactly as on a
 * real cgroupfs. A v2 tree made of plain directories therefore works when
 * every directory from base down to the leaf already exists and holds the
 * files the call touches (cgroup.controllers and cgroup.subtree_control in
 * base and each ancestor of the leaf; memory.max, cgroup.procs, and
 * optionally memory.swap.max, memory.events, memory.current in the leaf;
 * pids.max and cpu.max when those limits are set, pids.current if any).
 */
#ifndef MAYFLYD_CGROUP_H
#define MAYFLYD_CGROUP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct mf_cgroup_config {
    int version;          /* 1 or 2 */
    const char *base;     /* v1: directory of the controller mounts; v2: delegated cgroup2 dir */
    const char *group;    /* relative path below base, e.g. "mayflyd/hello" */
    uint64_t memory_max;  /* bytes, 0 = no limit */
    uint64_t pids_max;    /* tasks, 0 = no limit */
    uint64_t cpu_quota_us;   /* CPU time per period, 0 = no limit */
    uint64_t cpu_period_us;  /* 1000..1000000 (the kernel's bounds) */
};

struct mf_cgroup_stats {
    uint64_t oom_kill;        /* processes killed by the OOM killer in this group */
    uint64_t memory_current;  /* bytes charged now */
    bool have_pids_current;   /* false without the pids controller */
    uint64_t pids_current;    /* tasks in the group now */
};

/* 2 if base is a cgroup2 mount, 1 if base/memory is a cgroup v1 mount, 0
 * if neither; -1 with the error recorded if statfs fails otherwise. */
int mf_cgroup_detect(const char *base);
/* Creates the group (idempotent), enables controllers, sets the limits. */
bool mf_cgroup_setup(const struct mf_cgroup_config *cfg);
/* Moves pid into the group. */
bool mf_cgroup_join(const struct mf_cgroup_config *cfg, pid_t pid);
/* Kills what is left in the group and removes it and its empty parents. */
bool mf_cgroup_remove(const struct mf_cgroup_config *cfg);
bool mf_cgroup_stats(const struct mf_cgroup_config *cfg, struct mf_cgroup_stats *out);

/* --- for the backends only --- */

struct mf_cgroup_backend {
    bool (*setup)(const struct mf_cgroup_config *cfg);
    bool (*join)(const struct mf_cgroup_config *cfg, pid_t pid);
    bool (*remove)(const struct mf_cgroup_config *cfg);
    bool (*stats)(const struct mf_cgroup_config *cfg, struct mf_cgroup_stats *out);
};

extern const struct mf_cgroup_backend mf_cgroup_v1_backend;
extern const struct mf_cgroup_backend mf_cgroup_v2_backend;

/* out = a/b (b may be NULL); out has PATH_MAX bytes. */
bool mf_cg_join_path(char *out, const char *a, const char *b);
/* Writes value to dir/file. Returns 1 written, 0 if the file does not exist
 * (only when optional), -1 on error. */
int mf_cg_write(const char *dir, const char *file, const char *value, bool optional);
/* Reads dir/file into buf (NUL-terminated, truncated to cap - 1). */
bool mf_cg_read(const char *dir, const char *file, char *buf, size_t cap);
/* Reads the number after "key " in a flat-keyed file such as memory.events. */
bool mf_cg_read_key(const char *dir, const char *file, const char *key, uint64_t *out);
/* Reads a file holding one number. */
bool mf_cg_read_u64(const char *dir, const char *file, uint64_t *out);
/* mf_cg_read_u64 of a file that may be missing: *have says whether it was there. */
bool mf_cg_read_u64_optional(const char *dir, const char *file, uint64_t *out, bool *have);
/* mkdir -p of base/group, 0755; base must exist. */
bool mf_cg_mkdir(const char *base, const char *group);
/* rmdir of base/group; if busy, kills its processes (cgroup.kill when
 * use_kill_file and present, else SIGKILL to each pid in cgroup.procs) and
 * retries for about a second. Then removes empty parents up to base. */
bool mf_cg_remove_dir(const char *base, const char *group, bool use_kill_file);

#endif /* MAYFLYD_CGROUP_H */
