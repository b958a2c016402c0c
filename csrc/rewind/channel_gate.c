/* Which requests touched their worker's request channels; see channel_gate.h. */
#define _GNU_SOURCE
#include "rewind/channel_gate.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <ucontext.h>

#include "base/log.h"
#include "rewind/gate_filter.h"
#include "walls/seccomp.h"
#include "wire/protocol.h"

#if !defined(__x86_64__)
#error "the channel gate's syscall stub, filter and SIGSYS handler are written for x86_64"
#endif

#ifndef SYS_SECCOMP
#define SYS_SECCOMP 1
#endif

/* The trapped calls it passes on go through it (gate_filter.h). */
long mf_channel_syscall(long nr, long a, long b, long c, long d, long e, long f);
extern const char mf_channel_syscall_after[];
MF_GATE_ANY_STUB(mf_channel_syscall);

/* Set before the snapshot: every rewind restores the same values. */
static struct {
    dev_t dev;
    ino_t ino;
} channels[MF_MAX_FRONT_LOOPS + 1];
static size_t n_channels;
static volatile sig_atomic_t *gate_dirty;

static bool gated(long nr)
{
    return nr == SYS_setsockopt || nr == SYS_shutdown || nr == SYS_bind || nr == SYS_connect ||
           nr == SYS_listen;
}

static bool record(size_t i, int fd)
{
    struct stat st;

    if (fstat(fd, &st) < 0)
        return mf_err("fstat(channel %d)", fd);
    channels[i].dev = st.st_dev;
    channels[i].ino = st.st_ino;
    return true;
}

bool mf_channel_gate_prepare(volatile sig_atomic_t *dirty, int control_fd, const int *fds, size_t n)
{
    if (n > MF_MAX_FRONT_LOOPS)
        return mf_errx(EINVAL, "%zu request channels, at most %d", n, MF_MAX_FRONT_LOOPS);
    MF_TRY(record(0, control_fd));
    for (size_t i = 0; i < n; i++)
        MF_TRY(record(i + 1, fds[i]));
    n_channels = n + 1;
    gate_dirty = dirty;
    return true;
}

bool mf_channel_gate_trap(const siginfo_t *si, void *uctx)
{
    greg_t *regs = ((ucontext_t *)uctx)->uc_mcontext.gregs;
    struct stat st;

    if (si->si_code != SYS_SECCOMP || !gated(si->si_syscall) || gate_dirty == NULL)
        return false;
    /* Dirty first: an abort may cut this handler short after the call. */
    if (fstat((int)regs[REG_RDI], &st) == 0 && S_ISSOCK(st.st_mode))
        for (size_t i = 0; i < n_channels; i++)
            if (channels[i].dev == st.st_dev && channels[i].ino == st.st_ino)
                *gate_dirty = 1;
    regs[REG_RAX] = mf_channel_syscall(si->si_syscall, (long)regs[REG_RDI], (long)regs[REG_RSI],
                                       (long)regs[REG_RDX], (long)regs[REG_R10], (long)regs[REG_R8],
                                       (long)regs[REG_R9]);
    return true;
}

bool mf_channel_gate_load(void)
{
    uint64_t ip = (uint64_t)(uintptr_t)mf_channel_syscall_after;

    if (n_channels == 0)
        return true;
    /* Jumps count the instructions between: the tail starts at 9, its
     * SECCOMP_RET_ALLOW is at 13. */
    struct sock_filter prog[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, MF_GATE_DATA(arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 11),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, MF_GATE_DATA(nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_setsockopt, 5, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_shutdown, 4, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_bind, 3, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_connect, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_listen, 1, 0),
        BPF_STMT(BPF_JMP | BPF_JA | BPF_K, 4),
        MF_GATE_TAIL(ip, SECCOMP_RET_TRAP),
    };
    _Static_assert(sizeof(prog) / sizeof(prog[0]) == 15, "jump offsets count these instructions");
    return mf_seccomp_load(prog, sizeof(prog));
}
