/*
 * Unprivileged mode: a user namespace that maps only our own ids. Inside
 * it we hold every capability, but over nothing the daemon's uid could not
 * already touch; the ids stay what they were, so files keep their owners
 * and drop_privileges() to the same ids verifies as usual.
 */
#define _GNU_SOURCE
#include "walls/userns.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "base/log.h"

/* The kernel takes a map in exactly one write(). */
static bool write_proc_file(const char *path, const char *value)
{
    size_t len = strlen(value);
    ssize_t n;
    int fd = open(path, O_WRONLY | O_CLOEXEC);

    if (fd < 0)
        return mf_err("open(%s, O_WRONLY)", path);
    n = write(fd, value, len);
    if (n < 0 || (size_t)n != len) {
        if (n >= 0)
            errno = EIO;
        mf_err("write(%s, \"%.*s\")", path, (int)strcspn(value, "\n"), value);
        (void)close(fd); /* the write error is the one to report */
        return false;
    }
    if (close(fd) < 0)
        return mf_err("close(%s)", path);
    return true;
}

static bool write_maps(uid_t uid, gid_t gid)
{
    char map[64];

    /* An unprivileged gid_map needs setgroups denied first: otherwise
     * dropping a supplementary group would gain access it denies. */
    MF_TRY(write_proc_file("/proc/self/setgroups", "deny"));
    (void)snprintf(map, sizeof(map), "%u %u 1\n", uid, uid); /* fits */
    MF_TRY(write_proc_file("/proc/self/uid_map", map));
    (void)snprintf(map, sizeof(map), "%u %u 1\n", gid, gid); /* fits */
    return write_proc_file("/proc/self/gid_map", map);
}

bool mf_enter_user_namespace(void)
{
    uid_t uid = geteuid();
    gid_t gid = getegid();
    int dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    bool ok;

    if (dumpable < 0)
        return mf_err("prctl(PR_GET_DUMPABLE)");
    if (unshare(CLONE_NEWUSER) < 0)
        return mf_err("unshare(CLONE_NEWUSER)");
    /* A non-dumpable process's /proc/self files belong to root (e.g. after
     * a setuid()): become dumpable just for the writes. */
    if (dumpable == 0 && prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
        return mf_err("prctl(PR_SET_DUMPABLE, 1)");
    ok = write_maps(uid, gid);
    if (dumpable == 0 && prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
        /* Staying dumpable would be a silent privilege gain: fail hard. */
        ok = mf_err("prctl(PR_SET_DUMPABLE, 0)");
    }
    return ok;
}
