#define _GNU_SOURCE /* setresuid, setresgid */
/* The front end's walls; see walls.h. */
#include "front/walls.h"

#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdint.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"

bool mf_front_walls_become(uint32_t uid, uint32_t gid)
{
    if (setgroups(0, NULL) < 0)
        return mf_err("setgroups(0) (for --user %u:%u)", uid, gid);
    if (setresgid(gid, gid, gid) < 0)
        return mf_err("setresgid(%u)", gid);
    if (setresuid(uid, uid, uid) < 0)
        return mf_err("setresuid(%u)", uid);
    /* From root to another uid the kernel clears every capability; check
     * that nothing (a securebit) kept any. */
    if (uid != 0 && (setresuid(0, 0, 0) == 0 || geteuid() == 0))
        return mf_errx(EPERM, "--user %u:%u: the process can become root again", uid, gid);
    return true;
}

bool mf_front_walls_check(int seccomp_fd, bool allow_root)
{
    if (seccomp_fd < 0 && !allow_root && geteuid() == 0)
        return mf_errx(EINVAL, "refusing to run as root without --seccomp-fd: the front end parses every "
                       "client's bytes (start it as an unprivileged user, or pass --allow-root for tests)");
    return true;
}

/* The whole program: a memfd or file of at most BPF_MAXINSNS instructions. */
static bool read_filter(int fd, struct sock_filter *insns, unsigned short *count)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return mf_err("fstat(--seccomp-fd %d)", fd);
    size_t insn = sizeof(struct sock_filter);
    if (st.st_size <= 0 || st.st_size % (off_t)insn != 0 || st.st_size / (off_t)insn > BPF_MAXINSNS)
        return mf_errx(EINVAL, "--seccomp-fd %d: %lld bytes is not a BPF program of 1..%d instructions", fd,
                       (long long)st.st_size, BPF_MAXINSNS);
    size_t len = (size_t)st.st_size, done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)insns + done, len - done, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return mf_err("pread(--seccomp-fd %d, %zu bytes at %zu)", fd, len - done, done);
        if (n == 0)
            return mf_errx(EINVAL, "--seccomp-fd %d: ended at %zu of %zu bytes", fd, done, len);
        done += (size_t)n;
    }
    *count = (unsigned short)(len / insn);
    return true;
}

bool mf_front_walls_enter(int seccomp_fd)
{
    mf_cleanup_fd int fd = seccomp_fd;
    static struct sock_filter insns[BPF_MAXINSNS]; /* 32 KiB: not on the stack */
    unsigned short count = 0;
    MF_TRY(read_filter(fd, insns, &count));
    /* Without no_new_privs an unprivileged process may not load a filter
     * (and a setuid exec could shed it). */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return mf_err("prctl(PR_SET_NO_NEW_PRIVS, 1)");
    /* Not dumpable: another process of the same user cannot ptrace it or
     * read its memory through /proc, and it leaves no core with clients' bytes. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        return mf_err("prctl(PR_SET_DUMPABLE, 0)");
    struct sock_fprog prog = {.len = count, .filter = insns};
    /* TSYNC: every thread, should one exist already (none does today). */
    long err = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
    if (err < 0)
        return mf_err("seccomp(SECCOMP_SET_MODE_FILTER, TSYNC, %u instructions)", count);
    if (err > 0)
        return mf_errx(EBUSY, "seccomp(SECCOMP_SET_MODE_FILTER, TSYNC): thread %ld could not be synchronised", err);
    return true;
}
