/* The host's seal in plain C; see host_seal.h. */
#define _GNU_SOURCE
#include "walls/host_seal.h"

#include <dirent.h>
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/log.h"
#include "walls/seccomp.h"

static bool kill_the_rest(void)
{
    if (kill(-1, SIGKILL) < 0 && errno != ESRCH)
        return mf_err("kill(-1, SIGKILL)");
    for (;;) {
        if (waitpid(-1, NULL, 0) >= 0)
            continue;
        if (errno == ECHILD)
            return true;
        if (errno != EINTR)
            return mf_err("waitpid(-1)");
    }
}

/* -1 (and no error) where /proc/self/task cannot be listed. */
static long count_threads(void)
{
    DIR *dir = opendir("/proc/self/task");
    struct dirent *entry;
    long n = 0;

    if (dir == NULL)
        return -1; /* no procfs (no walls): sandbox_host.py counted them before */
    while ((entry = readdir(dir)) != NULL)
        if (entry->d_name[0] != '.')
            n++;
    (void)closedir(dir); /* read only: nothing to lose */
    return n;
}

bool mf_seal_leftovers(bool pid_one)
{
    long threads;

    if (pid_one)
        MF_TRY(kill_the_rest());
    threads = count_threads();
    if (threads > 1)
        return mf_errx(EBUSY, "on_init() left %ld thread(s) running; a host must be single-threaded "
                              "before it serves (a thread would see every request's channel)", threads - 1);
    return true;
}

bool mf_seal_process(void)
{
    static const int timers[] = {ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF};
    const struct itimerval off = {{0, 0}, {0, 0}};
    int dumpable;

    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        return mf_err("prctl(PR_SET_DUMPABLE, 0)");
    if ((dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)) != 0)
        return dumpable < 0 ? mf_err("prctl(PR_GET_DUMPABLE)")
                            : mf_errx(EPERM, "the host is still dumpable (%d) after PR_SET_DUMPABLE 0", dumpable);
    for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++)
        if (setitimer(timers[i], &off, NULL) < 0)
            return mf_err("setitimer(%d, 0)", timers[i]);
    return true;
}

bool mf_seal_signals(struct mf_sealed_signals *saved)
{
    struct sigaction dfl = {.sa_handler = SIG_DFL};

    memset(saved, 0, sizeof(*saved));
    for (int sig = 1; sig < MF_SEAL_NSIG; sig++) {
        struct sigaction *old = &saved->old[sig];
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (sigaction(sig, NULL, old) < 0) {
            if (errno == EINVAL)
                continue; /* one glibc keeps for itself (32, 33) */
            return mf_err("sigaction(%d, NULL)", sig);
        }
        if (!(old->sa_flags & SA_SIGINFO) && (old->sa_handler == SIG_DFL || old->sa_handler == SIG_IGN))
            continue;
        if (sigaction(sig, &dfl, NULL) < 0)
            return mf_err("sigaction(%d, SIG_DFL)", sig);
        saved->taken[sig] = true;
    }
    return true;
}

void mf_unseal_signals(const struct mf_sealed_signals *saved)
{
    for (int sig = 1; sig < MF_SEAL_NSIG; sig++)
        if (saved->taken[sig] && sigaction(sig, &saved->old[sig], NULL) < 0)
            mf_warn("sigaction(%d) back to the program's handler failed: %s", sig, strerror(errno));
}

bool mf_seal_no_new_tasks(uint64_t clone_site)
{
    const uint32_t ip = offsetof(struct seccomp_data, instruction_pointer);
    /* Another architecture's calls pass: the loading filter kills them. */
    struct sock_filter prog[] = {
        /* 0 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 5),
        /* 2 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        /* 3 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 4, 0),
        /* 4 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 8, 0),
        /* 5 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_fork, 7, 0),
        /* 6 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_vfork, 6, 0),
        /* 7 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* 8: a clone, allowed from clone_site only */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ip),
        /* 9 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)clone_site, 0, 3),
        /* 10 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ip + 4),
        /* 11 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)(clone_site >> 32), 0, 1),
        /* 12 */ BPF_STMT(BPF_RET | BPF_K, clone_site != 0 ? SECCOMP_RET_ALLOW : SECCOMP_RET_ERRNO | EPERM),
        /* 13 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
    };
    _Static_assert(sizeof(prog) / sizeof(prog[0]) == 14, "jump offsets count these instructions");
    return mf_seccomp_load(prog, sizeof(prog));
}
