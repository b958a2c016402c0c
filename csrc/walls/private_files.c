#define _GNU_SOURCE
#include "walls/private_files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "base/log.h"

#define MAX_INHERITED 1024
#ifndef PROC_SUPER_MAGIC
#define PROC_SUPER_MAGIC 0x9fa0
#endif

/* Flags that describe how a file was opened rather than what to do to it now. */
#define REOPEN_FLAGS_KEPT (O_ACCMODE | O_APPEND | O_NONBLOCK | O_DIRECT | O_NOATIME | O_SYNC | O_DSYNC)

/* The private copy over the fd number the program holds (dup3 closes the shared one). */
static bool put_in_place(int copy, int fd, int fd_flags)
{
    if (dup3(copy, fd, (fd_flags & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0) {
        mf_err("dup3(%d, %d)", copy, fd);
        (void)close(copy); /* already failing; the dup3 error is the one to report */
        return false;
    }
    if (close(copy) < 0)
        return mf_err("close(fd %d)", copy);
    return true;
}

static bool reopen_private(int fd)
{
    char path[64];
    struct stat st;
    int flags, fd_flags, copy;
    off_t offset;

    if (fstat(fd, &st) < 0)
        return mf_err("fstat(fd %d)", fd);
    /* Devices (/dev/null, /dev/urandom) hold no state a request could leave. */
    if (S_ISCHR(st.st_mode))
        return true;
    /* Pipes, sockets, epoll, eventfd, timerfd: one object shared by every
     * sandbox, with no private copy to make. A request must not see what
     * another wrote into them: close them. */
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
        if (close(fd) < 0)
            return mf_err("close(inherited fd %d)", fd);
        return true;
    }
    if ((flags = fcntl(fd, F_GETFL)) < 0)
        return mf_err("fcntl(fd %d, F_GETFL)", fd);
    if ((fd_flags = fcntl(fd, F_GETFD)) < 0)
        return mf_err("fcntl(fd %d, F_GETFD)", fd);
    if ((offset = lseek(fd, 0, SEEK_CUR)) < 0)
        return mf_err("lseek(fd %d, 0, SEEK_CUR)", fd);
    (void)snprintf(path, sizeof(path), "/proc/self/fd/%d", fd); /* cannot truncate: 64 > len */
    copy = open(path, (flags & REOPEN_FLAGS_KEPT) | O_CLOEXEC);
    /* The seal refused such files (mf_private_files_check); one that gets
     * here anyway is closed: shared, a request could write into the next. */
    if (copy < 0 && (errno == EACCES || errno == EPERM)) {
        if (close(fd) < 0)
            return mf_err("close(fd %d, which the sandbox cannot reopen)", fd);
        return true;
    }
    if (copy < 0)
        return mf_err("open(%s) to make fd %d private", path, fd);
    if (lseek(copy, offset, SEEK_SET) < 0) {
        mf_err("lseek(%s, %lld)", path, (long long)offset);
        (void)close(copy); /* already failing; the lseek error is the one to report */
        return false;
    }
    return put_in_place(copy, fd, fd_flags);
}

/*
 * fds 0-2 are the host's: /dev/null, and its stdout and stderr pipes to the
 * supervisor (which lets the tenant's uid reopen them for writing:
 * host/stdio.py). Each
 * sandbox gets an open file description of its own of the same object, so
 * that the status flags (O_NONBLOCK, O_DIRECT) and the locks a request sets
 * on it are its own, and go with it.
 */
static bool reopen_stdio(int fd)
{
    char path[64];
    struct stat st;
    int flags, fd_flags, copy;

    if (fstat(fd, &st) < 0)
        return errno == EBADF ? true : mf_err("fstat(fd %d)", fd);
    /* A socket cannot be reopened (ENXIO); a file keeps its offset too. */
    if (S_ISSOCK(st.st_mode))
        return true;
    if (S_ISREG(st.st_mode))
        return reopen_private(fd);
    if ((flags = fcntl(fd, F_GETFL)) < 0)
        return mf_err("fcntl(fd %d, F_GETFL)", fd);
    if ((fd_flags = fcntl(fd, F_GETFD)) < 0)
        return mf_err("fcntl(fd %d, F_GETFD)", fd);
    (void)snprintf(path, sizeof(path), "/proc/self/fd/%d", fd); /* cannot truncate: 64 > len */
    /* O_NONBLOCK: a pipe whose reader is gone fails at once (ENXIO) rather
     * than waiting for a reader that will never come. */
    copy = open(path, (flags & O_ACCMODE) | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    /* A pipe the tenant may not open (a daemon that made it with mode
     * 0600), or already without a reader: it stays the host's. */
    if (copy < 0 && (errno == EACCES || errno == EPERM || errno == ENXIO))
        return true;
    if (copy < 0)
        return mf_err("open(%s) to make fd %d private", path, fd);
    /* The host's status flags, O_NONBLOCK as the host has it. */
    if (fcntl(copy, F_SETFL, flags) < 0) {
        mf_err("fcntl(%s, F_SETFL, %#x)", path, (unsigned)flags);
        (void)close(copy); /* already failing; the fcntl error is the one to report */
        return false;
    }
    return put_in_place(copy, fd, fd_flags);
}

static bool kept(const int *keep, size_t n_keep, long fd)
{
    for (size_t i = 0; i < n_keep; i++)
        if (keep[i] == fd)
            return true;
    return false;
}

/* The inherited fds above 2 but keep's, into fds[*n] (at most max). */
static bool inherited_fds(const int *keep, size_t n_keep, int *fds, size_t max, size_t *n)
{
    DIR *dir = opendir("/proc/self/fd");
    struct dirent *entry;

    *n = 0;
    if (dir == NULL) {
        /* No procfs in this sandbox's view (no walls at all): nothing to reopen through. */
        if (errno == ENOENT)
            return true;
        return mf_err("opendir(/proc/self/fd)");
    }
    /* Collect first: reopening while reading the directory would list the copies too. */
    while ((entry = readdir(dir)) != NULL) {
        char *end;
        long fd = strtol(entry->d_name, &end, 10);
        if (*end != '\0' || end == entry->d_name || fd <= 2 || kept(keep, n_keep, fd) || fd == dirfd(dir))
            continue;
        if (*n == max) {
            (void)closedir(dir); /* already failing */
            return mf_errx(EMFILE, "more than %zu inherited fds", max);
        }
        fds[(*n)++] = (int)fd;
    }
    if (closedir(dir) < 0)
        return mf_err("closedir(/proc/self/fd)");
    return true;
}

/* step() on every inherited fd above 2 but keep's; stops at its first failure. */
static bool each_inherited(const int *keep, size_t n_keep, bool (*step)(int fd))
{
    int fds[MAX_INHERITED];
    size_t n;

    MF_TRY(inherited_fds(keep, n_keep, fds, MAX_INHERITED, &n));
    for (size_t i = 0; i < n; i++)
        MF_TRY(step(fds[i]));
    return true;
}

bool mf_private_files(const int *keep, size_t n_keep)
{
    for (int fd = 0; fd <= 2; fd++)
        if (!kept(keep, n_keep, fd))
            MF_TRY(reopen_stdio(fd));
    return each_inherited(keep, n_keep, reopen_private);
}

/* fd's target, for the error message ("?" if it cannot be read). */
static void describe_fd(int fd, char *out, size_t size)
{
    char path[64];
    ssize_t len;

    (void)snprintf(path, sizeof(path), "/proc/self/fd/%d", fd); /* cannot truncate: 64 > len */
    len = readlink(path, out, size - 1);
    if (len < 0)
        len = snprintf(out, size, "?");
    out[len] = '\0';
}

/* Whether a sandbox could reopen fd as mf_private_files does: the host,
 * with the same identity, tries. A file in /proc is refused outright: it
 * names the host (its /proc/self/mem is the host's memory), not the
 * sandbox, and the host could open what no sandbox can. */
static bool check_private(int fd)
{
    char path[64], target[256];
    struct stat st;
    struct statfs fs;
    int copy;

    if (fstat(fd, &st) < 0)
        return mf_err("fstat(fd %d)", fd);
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
        return true; /* devices stay, the rest is closed in every sandbox */
    if (fstatfs(fd, &fs) < 0)
        return mf_err("fstatfs(fd %d)", fd);
    describe_fd(fd, target, sizeof(target));
    if (fs.f_type == PROC_SUPER_MAGIC)
        return mf_errx(EACCES, "on_init() left fd %d open on %s, in /proc: every request would share it "
                               "(and through it the host); close it before on_init() returns", fd, target);
    (void)snprintf(path, sizeof(path), "/proc/self/fd/%d", fd); /* cannot truncate: 64 > len */
    copy = open(path, O_RDONLY | O_CLOEXEC | (S_ISDIR(st.st_mode) ? O_DIRECTORY : 0));
    if (copy < 0 && (errno == EACCES || errno == EPERM))
        return mf_errx(EACCES, "on_init() left fd %d open on %s, which a request cannot reopen as its own: "
                               "every request would share it; close it before on_init() returns", fd, target);
    if (copy < 0)
        return mf_err("open(%s) to check fd %d", path, fd);
    if (close(copy) < 0)
        return mf_err("close(fd %d)", copy);
    return true;
}

bool mf_private_files_check(const int *keep, size_t n_keep)
{
    return each_inherited(keep, n_keep, check_private);
}
