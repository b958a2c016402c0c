/*
 * Minimal root: unshare the mount namespace, build a tmpfs holding only the
 * listed paths (read-only binds) and /dev/{null,zero,random,urandom},
 * pivot_root into it, detach the old root and make the new one read-only.
 * The binds are made as root, so paths below root-only directories (such
 * as a Python under /root) become reachable without opening /root itself.
 */
#define _GNU_SOURCE
#include "walls/mounts.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "base/log.h"

#define OLD_ROOT_NAME ".old-root"

static const char *const device_nodes[] = {"/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"};

static bool join_path(char *out, const char *root, const char *path)
{
    int n = snprintf(out, PATH_MAX, "%s%s", root, path);
    if (n < 0 || n >= PATH_MAX)
        return mf_errx(ENAMETOOLONG, "path %s%s is too long", root, path);
    return true;
}

/* mkdir -p of root + path; only ever walks directories this file created. */
static bool mkdir_under(const char *root, const char *path)
{
    char buf[PATH_MAX];
    size_t root_len = strlen(root);

    MF_TRY(join_path(buf, root, path));
    for (char *p = buf + root_len + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            return mf_err("mkdir(%s, 0755)", buf);
        *p = saved;
        if (saved == '\0')
            return true;
    }
}

/* An empty file as the mount point of a single-file bind. */
static bool create_file_under(const char *root, const char *path)
{
    char buf[PATH_MAX];
    char *slash;
    int fd;

    MF_TRY(join_path(buf, root, path));
    slash = strrchr(buf + strlen(root), '/');
    if (slash != buf + strlen(root)) {
        *slash = '\0';
        MF_TRY(mkdir_under(root, buf + strlen(root)));
        *slash = '/';
    }
    fd = open(buf, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return mf_err("open(%s, O_WRONLY|O_CREAT, 0644)", buf);
    if (close(fd) < 0)
        return mf_err("close(%s)", buf);
    return true;
}

/* Older kernels lack mount_setattr: remount the top mount only, carrying
 * the flags of the source that an unprivileged remount could not clear. */
static bool remount_fallback(const char *target, unsigned long flags)
{
    struct statvfs sv;

    if (statvfs(target, &sv) < 0)
        return mf_err("statvfs(%s)", target);
    if (sv.f_flag & ST_NOSUID)
        flags |= MS_NOSUID;
    if (sv.f_flag & ST_NODEV)
        flags |= MS_NODEV;
    if (sv.f_flag & ST_NOEXEC)
        flags |= MS_NOEXEC;
    if (sv.f_flag & ST_NOATIME)
        flags |= MS_NOATIME;
    if (sv.f_flag & ST_NODIRATIME)
        flags |= MS_NODIRATIME;
    if (sv.f_flag & ST_RELATIME)
        flags |= MS_RELATIME;
    if (sv.f_flag & ST_RDONLY)
        flags |= MS_RDONLY;
    if (mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | flags, NULL) < 0)
        return mf_err("mount(NULL, %s, NULL, MS_BIND|MS_REMOUNT|%#lx)", target, flags);
    return true;
}

/* Sets attributes on the bind at target and every mount below it (a bind
 * of /usr must not leave a writable submount). */
static bool restrict_bind(const char *target, bool read_only, bool allow_dev)
{
    struct mount_attr attr = {.attr_set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC};
    unsigned long fallback = MS_NOSUID;

    if (read_only) {
        /* Read-only trees keep exec (they hold the Python runtime). */
        attr.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID;
        fallback |= MS_RDONLY;
    }
    if (!allow_dev) {
        attr.attr_set |= MOUNT_ATTR_NODEV;
        fallback |= MS_NODEV;
    }
    if (mount_setattr(AT_FDCWD, target, AT_RECURSIVE, &attr, sizeof(attr)) == 0)
        return true;
    if (errno != ENOSYS)
        return mf_err("mount_setattr(%s, AT_RECURSIVE, set=%#llx)", target,
                      (unsigned long long)attr.attr_set);
    if (!read_only)
        fallback |= MS_NOEXEC;
    return remount_fallback(target, fallback);
}

static bool bind_into(const char *root, const char *path, bool is_dir, bool read_only, bool allow_dev)
{
    char target[PATH_MAX];

    MF_TRY(join_path(target, root, path));
    MF_TRY(is_dir ? mkdir_under(root, path) : create_file_under(root, path));
    if (mount(path, target, NULL, MS_BIND | MS_REC, NULL) < 0)
        return mf_err("mount(%s, %s, NULL, MS_BIND|MS_REC)", path, target);
    return restrict_bind(target, read_only, allow_dev);
}

static bool valid_path(const char *path)
{
    if (path[0] != '/')
        return mf_errx(EINVAL, "enter_minimal_root: path '%s' is not absolute", path);
    if (strlen(path) >= PATH_MAX / 2)
        return mf_errx(ENAMETOOLONG, "enter_minimal_root: path '%s' is too long", path);
    for (const char *p = path; (p = strstr(p, "/..")) != NULL; p += 3)
        if (p[3] == '/' || p[3] == '\0')
            return mf_errx(EINVAL, "enter_minimal_root: path '%s' contains '..'", path);
    return true;
}

/* Whether outer is path itself or one of its ancestor directories. */
static bool path_within(const char *path, const char *outer)
{
    size_t n = strlen(outer);
    while (n > 1 && outer[n - 1] == '/')
        n--;
    if (strncmp(path, outer, n) != 0)
        return false;
    return path[n] == '\0' || path[n] == '/' || n == 1;
}

/* Whether another existing listed path already makes paths[i] visible. */
static bool covered(const char *const *paths, size_t n, const bool *skipped, size_t i)
{
    for (size_t j = 0; j < n; j++) {
        if (j == i || skipped[j] || !path_within(paths[i], paths[j]))
            continue;
        /* Of two equal paths the first one is bound. */
        if (!path_within(paths[j], paths[i]) || j < i)
            return true;
    }
    return false;
}

/*
 * A procfs of our own rather than the host's: hidepid=invisible shows only
 * processes of the sandbox's own uid (its host and sibling sandboxes), and
 * subset=pid hides everything that is not a process (/proc/sys, meminfo...).
 * Writable, because a sandbox raises its own oom_score_adj through it.
 */
static bool mount_own_proc(const char *root)
{
    char target[PATH_MAX];

    MF_TRY(mkdir_under(root, "/proc"));
    MF_TRY(join_path(target, root, "/proc"));
    if (mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible,subset=pid") < 0)
        return mf_err("mount(proc, %s, proc, MS_NOSUID|MS_NODEV|MS_NOEXEC, hidepid=invisible,subset=pid)", target);
    return true;
}

static bool populate(const char *root, const char *const *paths, size_t n, bool *skipped)
{
    struct stat st;

    /* Devices first: a listed path may later cover /dev, never the reverse. */
    MF_TRY(mkdir_under(root, "/dev"));
    for (size_t i = 0; i < sizeof(device_nodes) / sizeof(device_nodes[0]); i++)
        MF_TRY(bind_into(root, device_nodes[i], false, false, true));

    for (size_t i = 0; i < n; i++) {
        skipped[i] = false;
        if (stat(paths[i], &st) < 0) {
            if (errno != ENOENT && errno != ENOTDIR)
                return mf_err("stat(%s)", paths[i]);
            skipped[i] = true;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (skipped[i] || covered(paths, n, skipped, i))
            continue;
        /* stat follows symlinks, like the bind will: /lib -> usr/lib becomes
         * a directory /lib holding the same files. */
        if (stat(paths[i], &st) < 0)
            return mf_err("stat(%s)", paths[i]);
        if (strcmp(paths[i], "/proc") == 0)
            MF_TRY(mount_own_proc(root));
        else
            MF_TRY(bind_into(root, paths[i], S_ISDIR(st.st_mode), true, false));
    }
    return true;
}

static bool pivot_into(const char *root)
{
    char old_tmp[PATH_MAX];

    /* pivot_root needs the new root's parent mount not shared (done by the
     * caller) and put_old below the new root. */
    MF_TRY(mkdir_under(root, "/" OLD_ROOT_NAME));
    if (chdir(root) < 0)
        return mf_err("chdir(%s)", root);
    if (syscall(SYS_pivot_root, ".", OLD_ROOT_NAME) < 0)
        return mf_err("pivot_root(%s, %s/%s)", root, root, OLD_ROOT_NAME);
    if (chdir("/") < 0)
        return mf_err("chdir(/) after pivot_root");
    /* The tmpfs no longer sits on its mkdtemp directory: remove the now
     * empty directory from the host's /tmp while we can still reach it. */
    MF_TRY(join_path(old_tmp, "/" OLD_ROOT_NAME, root));
    if (rmdir(old_tmp) < 0)
        mf_warn("rmdir(%s) failed: %s (an empty directory is left behind)", old_tmp, strerror(errno));
    if (umount2("/" OLD_ROOT_NAME, MNT_DETACH) < 0)
        return mf_err("umount2(/%s, MNT_DETACH)", OLD_ROOT_NAME);
    if (rmdir("/" OLD_ROOT_NAME) < 0)
        return mf_err("rmdir(/%s)", OLD_ROOT_NAME);
    /* Last: everything above wrote into the tmpfs. */
    if (mount(NULL, "/", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
              NULL) < 0)
        return mf_err("mount(NULL, /, NULL, MS_BIND|MS_REMOUNT|MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC)");
    return true;
}

bool mf_enter_minimal_root(const char *const *paths, size_t n, bool *skipped)
{
    char root[] = "/tmp/mayflyd-root-XXXXXX";

    for (size_t i = 0; i < n; i++)
        MF_TRY(valid_path(paths[i]));
    if (unshare(CLONE_NEWNS) < 0)
        return mf_err("unshare(CLONE_NEWNS)");
    /* Before any mount: nothing we do may propagate back to the host. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        return mf_err("mount(NULL, /, NULL, MS_REC|MS_PRIVATE)");
    if (mkdtemp(root) == NULL)
        return mf_err("mkdtemp(%s)", root);
    if (mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755") < 0) {
        mf_err("mount(tmpfs, %s, tmpfs, MS_NOSUID|MS_NODEV, size=1m,mode=0755)", root);
        (void)rmdir(root); /* best effort; the mount error is the one to report */
        return false;
    }
    if (!populate(root, paths, n, skipped) || !pivot_into(root)) {
        /* Leave no directory behind in the host's /tmp; the mounts die with
         * our namespace. Both are best effort after the reported error. */
        (void)umount2(root, MNT_DETACH);
        (void)rmdir(root);
        return false;
    }
    return true;
}
