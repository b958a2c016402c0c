/*
 * Privilege phases: the host starts as root (cgroup, namespaces, mount
 * namespace), or as the daemon's own uid with every capability inside a
 * user namespace of its own (userns.c); then mf_drop_privileges() turns it
 * into the tenant's uid/gid with no capabilities and no way back
 * (no_new_privs). Every drop that could fail silently is verified
 * afterwards.
 */
#define _GNU_SOURCE
#include "walls/identity.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "base/log.h"

/*
 * The highest capability this kernel knows. Probed with PR_CAPBSET_READ
 * rather than read from /proc/sys/kernel/cap_last_cap: the minimal root's
 * procfs (subset=pid) has no /proc/sys.
 */
static bool read_cap_last_cap(unsigned long *last)
{
    unsigned long cap = 0;

    while (cap < 64 && prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0)
        cap++;
    if (cap == 64 || (cap < 64 && errno != EINVAL))
        return mf_err("prctl(PR_CAPBSET_READ, %lu)", cap);
    if (cap == 0)
        return mf_errx(EINVAL, "prctl(PR_CAPBSET_READ) knows no capability at all");
    *last = cap - 1;
    return true;
}

/* Needs CAP_SETPCAP, so before the uid change clears the effective set. */
static bool drop_bounding_set(unsigned long last)
{
    for (unsigned long cap = 0; cap <= last; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
            return mf_err("prctl(PR_CAPBSET_DROP, %lu)", cap);
    return true;
}

/* setresuid() away from root already empties the permitted and effective
 * sets; inheritable is left alone, so zero all three explicitly. */
static bool clear_capability_sets(void)
{
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];

    memset(data, 0, sizeof(data));
    if (syscall(SYS_capset, &hdr, data) < 0)
        return mf_err("capset(effective=0, permitted=0, inheritable=0)");
    return true;
}

/* Exactly [gid]. Not checked with set_groups false (setgroups denied in
 * userns.c's namespace): the groups are then whatever they were. */
static bool verify_groups(gid_t gid)
{
    gid_t groups[2];
    int n = getgroups(2, groups);

    if (n < 0 && errno != EINVAL)
        return mf_err("getgroups()");
    if (n != 1 || groups[0] != gid)
        return mf_errx(EPERM, "supplementary groups are not exactly [%u] after setgroups", gid);
    return true;
}

static bool verify_dropped(uid_t uid, gid_t gid, bool set_groups, unsigned long last_cap, int pdeathsig)
{
    uid_t ru, eu, su;
    gid_t rg, eg, sg;
    int sig = 0;
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];

    if (getresuid(&ru, &eu, &su) < 0)
        return mf_err("getresuid()");
    if (ru != uid || eu != uid || su != uid)
        return mf_errx(EPERM, "uid drop did not take: real %u effective %u saved %u, wanted %u",
                       ru, eu, su, uid);
    if (getresgid(&rg, &eg, &sg) < 0)
        return mf_err("getresgid()");
    if (rg != gid || eg != gid || sg != gid)
        return mf_errx(EPERM, "gid drop did not take: real %u effective %u saved %u, wanted %u",
                       rg, eg, sg, gid);
    if (set_groups)
        MF_TRY(verify_groups(gid));
    /* uid 0 as target is refused by the caller, so this must fail. */
    if (setuid(0) == 0)
        return mf_errx(EPERM, "setuid(0) succeeded after the privilege drop");
    if (syscall(SYS_capget, &hdr, data) < 0)
        return mf_err("capget()");
    for (int i = 0; i < _LINUX_CAPABILITY_U32S_3; i++)
        if (data[i].effective || data[i].permitted || data[i].inheritable)
            return mf_errx(EPERM, "capabilities remain after capset: word %d eff %#x perm %#x inh %#x",
                           i, data[i].effective, data[i].permitted, data[i].inheritable);
    for (unsigned long cap = 0; cap <= last_cap; cap++) {
        int in_set = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
        if (in_set < 0)
            return mf_err("prctl(PR_CAPBSET_READ, %lu)", cap);
        if (in_set)
            return mf_errx(EPERM, "capability %lu is still in the bounding set", cap);
    }
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1)
        return mf_errx(EPERM, "no_new_privs is not set");
    if (prctl(PR_GET_PDEATHSIG, &sig, 0, 0, 0) < 0)
        return mf_err("prctl(PR_GET_PDEATHSIG)");
    if (sig != pdeathsig)
        return mf_errx(EPERM, "parent-death signal is %d, was %d before the drop", sig, pdeathsig);
    return true;
}

bool mf_drop_privileges(uid_t uid, gid_t gid, bool set_groups)
{
    unsigned long last_cap = 0;
    int pdeathsig = 0;
    pid_t ppid = getppid();

    if (uid == 0 || gid == 0)
        return mf_errx(EINVAL, "drop_privileges(%u, %u): refusing to 'drop' to root", uid, gid);
    MF_TRY(read_cap_last_cap(&last_cap));
    if (prctl(PR_GET_PDEATHSIG, &pdeathsig, 0, 0, 0) < 0)
        return mf_err("prctl(PR_GET_PDEATHSIG)");
    /* Groups and gids before the uid: changing them needs CAP_SETGID. */
    if (set_groups && setgroups(1, &gid) < 0)
        return mf_err("setgroups(1, [%u])", gid);
    if (setresgid(gid, gid, gid) < 0)
        return mf_err("setresgid(%u, %u, %u)", gid, gid, gid);
    /* Before setresuid: needs CAP_SETPCAP. */
    MF_TRY(drop_bounding_set(last_cap));
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
        return mf_err("prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)");
    if (setresuid(uid, uid, uid) < 0)
        return mf_err("setresuid(%u, %u, %u)", uid, uid, uid);
    /* Right after the last change of ids: keep the window short. The
     * kernel clears the parent-death signal whenever the effective ids
     * change, so the drop would silently cut the host loose from its
     * parent. A parent outside our pid namespace (we are pid 1 of ns.c's)
     * reads as ppid 0, before and after: then the few instructions since
     * setresuid stay unchecked. */
    if (pdeathsig != 0)
        MF_TRY(mf_arm_parent_death(pdeathsig, "parent", ppid, -1));
    MF_TRY(clear_capability_sets());
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return mf_err("prctl(PR_SET_NO_NEW_PRIVS, 1)");
    /* Not dumpable: no core files of tenant memory, no ptrace by the same uid. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        return mf_err("prctl(PR_SET_DUMPABLE, 0)");
    return verify_dropped(uid, gid, set_groups, last_cap, pdeathsig);
}

bool mf_arm_parent_death(int signum, const char *who, pid_t expected_ppid, int parent_fd)
{
    struct pollfd pfd = {.fd = parent_fd, .events = POLLIN};
    pid_t ppid;
    int rc;

    if (prctl(PR_SET_PDEATHSIG, (unsigned long)signum, 0, 0, 0) < 0)
        return mf_err("prctl(PR_SET_PDEATHSIG, %d)", signum);
    if (parent_fd >= 0) {
        while ((rc = poll(&pfd, 1, 0)) < 0 && errno == EINTR)
            ;
        if (rc < 0)
            return mf_err("poll(%s's fd %d, timeout 0)", who, parent_fd);
        if (rc > 0)
            return mf_errx(ESRCH, "%s (pid %d) died before the parent-death signal was armed", who,
                           expected_ppid);
        return true;
    }
    ppid = getppid();
    if (ppid != expected_ppid)
        return mf_errx(ESRCH, "%s %d is gone (parent is now %d)", who, expected_ppid, ppid);
    return true;
}

bool mf_set_parent_death_signal(int signum, pid_t expected_ppid)
{
    return mf_arm_parent_death(signum, "parent", expected_ppid, -1);
}

bool mf_set_oom_score_adj(int value)
{
    const char *path = "/proc/self/oom_score_adj";
    char buf[16];
    int len = snprintf(buf, sizeof(buf), "%d", value);
    int dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    bool ok = true;
    int fd;

    if (dumpable < 0)
        return mf_err("prctl(PR_GET_DUMPABLE)");
    /* A non-dumpable process's /proc entries belong to root: become
     * dumpable just for the open, before any tenant code can ptrace us. */
    if (dumpable == 0 && prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
        return mf_err("prctl(PR_SET_DUMPABLE, 1)");
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        ok = mf_err("open(%s, O_WRONLY)", path);
    if (dumpable == 0 && prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
        /* Staying dumpable would be a silent privilege gain: fail hard. */
        ok = mf_err("prctl(PR_SET_DUMPABLE, 0)");
    }
    if (fd < 0)
        return false;
    if (ok && write(fd, buf, (size_t)len) != len)
        ok = mf_err("write(%s, \"%s\")", path, buf);
    if (close(fd) < 0 && ok)
        ok = mf_err("close(%s)", path);
    return ok;
}
