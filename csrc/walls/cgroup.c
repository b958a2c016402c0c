/* Backend choice, cgroup detection and the file helpers both backends use. */
#define _GNU_SOURCE
#include "walls/cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/magic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"

/* How long a busy group may take to empty after SIGKILL: a daemon stopping
 * 1000 fresh hosts at once on 2 cores saw some take more than 1 s. */
#define REMOVE_POLL_MS 10
#define REMOVE_POLL_ROUNDS 1000

int mf_cgroup_detect(const char *base)
{
    struct statfs sf;
    char mem[PATH_MAX];

    if (statfs(base, &sf) < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return 0;
        mf_err("statfs(%s)", base);
        return -1;
    }
    if (sf.f_type == CGROUP2_SUPER_MAGIC)
        return 2;
    if (!mf_cg_join_path(mem, base, "memory"))
        return -1;
    if (statfs(mem, &sf) < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return 0;
        mf_err("statfs(%s)", mem);
        return -1;
    }
    return sf.f_type == CGROUP_SUPER_MAGIC ? 1 : 0;
}

/* A group is a relative path of plain names: it must stay below base. */
static bool valid_group(const char *group)
{
    const char *p = group;

    if (group[0] == '\0' || group[0] == '/')
        return mf_errx(EINVAL, "cgroup group '%s' must be a non-empty relative path", group);
    while (*p != '\0') {
        size_t n = strcspn(p, "/");
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return mf_errx(EINVAL, "cgroup group '%s' has an empty, '.' or '..' component", group);
        p += n;
        if (*p == '/')
            p++;
    }
    if (p[-1] == '/')
        return mf_errx(EINVAL, "cgroup group '%s' ends with '/'", group);
    return true;
}

static const struct mf_cgroup_backend *backend(const struct mf_cgroup_config *cfg)
{
    if (!valid_group(cfg->group))
        return NULL;
    if (cfg->version == 1)
        return &mf_cgroup_v1_backend;
    if (cfg->version == 2)
        return &mf_cgroup_v2_backend;
    mf_errx(EINVAL, "cgroup version %d: only 1 and 2 exist", cfg->version);
    return NULL;
}

/* The kernel's bounds, checked here so that both backends (and fake trees)
 * refuse the same values before touching anything. */
static bool valid_cpu_limit(const struct mf_cgroup_config *cfg)
{
    if (cfg->cpu_period_us < 1000 || cfg->cpu_period_us > 1000000)
        return mf_errx(EINVAL, "cgroup cpu period %" PRIu64 " us: must be 1000..1000000", cfg->cpu_period_us);
    if (cfg->cpu_quota_us != 0 && cfg->cpu_quota_us < 1000)
        return mf_errx(EINVAL, "cgroup cpu quota %" PRIu64 " us: must be 0 (no limit) or at least 1000",
                       cfg->cpu_quota_us);
    if (cfg->cpu_quota_us > INT64_MAX / 1000)
        return mf_errx(EINVAL, "cgroup cpu quota %" PRIu64 " us is too large", cfg->cpu_quota_us);
    return true;
}

bool mf_cgroup_setup(const struct mf_cgroup_config *cfg)
{
    const struct mf_cgroup_backend *b = backend(cfg);
    return b != NULL && valid_cpu_limit(cfg) && b->setup(cfg);
}

bool mf_cgroup_join(const struct mf_cgroup_config *cfg, pid_t pid)
{
    const struct mf_cgroup_backend *b = backend(cfg);
    if (b != NULL && pid <= 0)
        return mf_errx(EINVAL, "cgroup join: bad pid %d", pid);
    return b != NULL && b->join(cfg, pid);
}

bool mf_cgroup_remove(const struct mf_cgroup_config *cfg)
{
    const struct mf_cgroup_backend *b = backend(cfg);
    return b != NULL && b->remove(cfg);
}

bool mf_cgroup_stats(const struct mf_cgroup_config *cfg, struct mf_cgroup_stats *out)
{
    const struct mf_cgroup_backend *b = backend(cfg);
    memset(out, 0, sizeof(*out));
    return b != NULL && b->stats(cfg, out);
}

bool mf_cg_join_path(char *out, const char *a, const char *b)
{
    int n = b != NULL ? snprintf(out, PATH_MAX, "%s/%s", a, b) : snprintf(out, PATH_MAX, "%s", a);
    if (n < 0 || n >= PATH_MAX)
        return mf_errx(ENAMETOOLONG, "path %s/%s is too long", a, b != NULL ? b : "");
    return true;
}

int mf_cg_write(const char *dir, const char *file, const char *value, bool optional)
{
    char path[PATH_MAX];
    size_t len = strlen(value);
    ssize_t n;
    int fd;

    if (!mf_cg_join_path(path, dir, file))
        return -1;
    /* No O_CREAT: a missing interface file means a missing controller. */
    fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0) {
        if (optional && errno == ENOENT)
            return 0;
        mf_err("open(%s, O_WRONLY|O_TRUNC)", path);
        return -1;
    }
    n = write(fd, value, len);
    if (n < 0 || (size_t)n != len) {
        if (n >= 0)
            errno = EIO;
        mf_err("write(%s, \"%s\")", path, value);
        (void)close(fd); /* the write error is the one to report */
        return -1;
    }
    if (close(fd) < 0) {
        mf_err("close(%s)", path);
        return -1;
    }
    return 1;
}

bool mf_cg_read(const char *dir, const char *file, char *buf, size_t cap)
{
    char path[PATH_MAX];
    size_t got = 0;
    int fd;

    MF_TRY(mf_cg_join_path(path, dir, file));
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mf_err("open(%s, O_RDONLY)", path);
    while (got + 1 < cap) {
        ssize_t n = read(fd, buf + got, cap - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            mf_err("read(%s)", path);
            (void)close(fd); /* the read error is the one to report */
            return false;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    if (close(fd) < 0)
        return mf_err("close(%s)", path);
    return true;
}

bool mf_cg_read_key(const char *dir, const char *file, const char *key, uint64_t *out)
{
    char buf[4096];
    size_t klen = strlen(key);

    MF_TRY(mf_cg_read(dir, file, buf, sizeof(buf)));
    for (char *line = buf; line != NULL && *line != '\0';) {
        char *next = strchr(line, '\n');
        if (strncmp(line, key, klen) == 0 && line[klen] == ' ') {
            char *end;
            errno = 0;
            *out = strtoull(line + klen + 1, &end, 10);
            if (errno != 0 || end == line + klen + 1)
                return mf_errx(EINVAL, "%s/%s: bad value for '%s'", dir, file, key);
            return true;
        }
        line = next != NULL ? next + 1 : NULL;
    }
    return mf_errx(ENOENT, "%s/%s: no '%s' line", dir, file, key);
}

bool mf_cg_read_u64(const char *dir, const char *file, uint64_t *out)
{
    char buf[64];
    char *end;

    MF_TRY(mf_cg_read(dir, file, buf, sizeof(buf)));
    errno = 0;
    *out = strtoull(buf, &end, 10);
    if (errno != 0 || end == buf)
        return mf_errx(EINVAL, "%s/%s: '%s' is not a number", dir, file, buf);
    return true;
}

bool mf_cg_read_u64_optional(const char *dir, const char *file, uint64_t *out, bool *have)
{
    *have = mf_cg_read_u64(dir, file, out);
    return *have || errno == ENOENT;
}

bool mf_cg_mkdir(const char *base, const char *group)
{
    char path[PATH_MAX];
    size_t base_len = strlen(base);

    MF_TRY(mf_cg_join_path(path, base, group));
    for (char *p = path + base_len + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            return mf_err("mkdir(%s, 0755)", path);
        *p = saved;
        if (saved == '\0')
            return true;
    }
}

/* SIGKILL to every pid in dir/cgroup.procs. */
static bool kill_listed(const char *dir)
{
    char path[PATH_MAX];
    FILE *f;
    int pid;

    MF_TRY(mf_cg_join_path(path, dir, "cgroup.procs"));
    f = fopen(path, "re");
    if (f == NULL)
        return mf_err("fopen(%s, r)", path);
    while (fscanf(f, "%d", &pid) == 1)
        if (pid > 0 && kill(pid, SIGKILL) < 0 && errno != ESRCH) {
            mf_err("kill(%d, SIGKILL) in %s", pid, dir);
            (void)fclose(f); /* read-only stream; the kill error is the one to report */
            return false;
        }
    if (fclose(f) != 0)
        return mf_err("fclose(%s)", path);
    return true;
}

static bool rmdir_busy(const char *dir, bool use_kill_file)
{
    const struct timespec pause = {.tv_sec = 0, .tv_nsec = REMOVE_POLL_MS * 1000000L};
    int have_kill_file = 0;

    if (use_kill_file) {
        have_kill_file = mf_cg_write(dir, "cgroup.kill", "1", true);
        if (have_kill_file < 0)
            return false;
    }
    for (int round = 0; round < REMOVE_POLL_ROUNDS; round++) {
        /* Without cgroup.kill a process may fork between our read and our
         * kill: kill again every round. */
        if (!have_kill_file)
            MF_TRY(kill_listed(dir));
        (void)nanosleep(&pause, NULL); /* an early wake-up only shortens one round */
        if (rmdir(dir) == 0 || errno == ENOENT)
            return true;
        if (errno != EBUSY)
            return mf_err("rmdir(%s)", dir);
    }
    errno = EBUSY;
    return mf_err("rmdir(%s) after killing its processes for %d ms", dir,
                  REMOVE_POLL_MS * REMOVE_POLL_ROUNDS);
}

bool mf_cg_remove_dir(const char *base, const char *group, bool use_kill_file)
{
    char path[PATH_MAX];
    size_t base_len = strlen(base);

    MF_TRY(mf_cg_join_path(path, base, group));
    if (rmdir(path) < 0 && errno != ENOENT) {
        if (errno != EBUSY)
            return mf_err("rmdir(%s)", path);
        MF_TRY(rmdir_busy(path, use_kill_file));
    }
    /* Parents shared with other groups stay: busy or not empty is fine. */
    for (char *slash = strrchr(path, '/'); slash != NULL && (size_t)(slash - path) > base_len;
         slash = strrchr(path, '/')) {
        *slash = '\0';
        if (rmdir(path) < 0) {
            if (errno == ENOTEMPTY || errno == EBUSY || errno == EEXIST)
                break;
            if (errno != ENOENT)
                return mf_err("rmdir(%s)", path);
        }
    }
    return true;
}
