/* Which requests changed a signal disposition; see sigaction_gate.h. */
#define _GNU_SOURCE
#include "rewind/sigaction_gate.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <ucontext.h>

#include "rewind/channel_gate.h"
#include "rewind/gate_filter.h"
#include "rewind/state_gate.h"
#include "base/log.h"
#include "walls/seccomp.h"

#if !defined(__x86_64__)
#error "the sigaction gate's syscall stub, filter and SIGSYS handler are written for x86_64"
#endif

/* si_code of a seccomp SIGSYS (asm-generic/siginfo.h); glibc 2.36 does not name it. */
#ifndef SYS_SECCOMP
#define SYS_SECCOMP 1
#endif

/* rt_sigaction(2) from a known address (gate_filter.h); the fourth
 * argument is rcx in C and r10 in a syscall. */
long mf_sigaction_syscall(long sig, long act, long old, long size);
extern const char mf_sigaction_syscall_after[];
MF_GATE_STUB(mf_sigaction_syscall, SYS_rt_sigaction, "    mov %rcx, %r10\n");

long mf_gated_sigaction(int sig, const struct mf_kernel_sigaction *act, struct mf_kernel_sigaction *old)
{
    return mf_sigaction_syscall(sig, (long)(uintptr_t)act, (long)(uintptr_t)old, (long)sizeof(uint64_t));
}

/* Set before the snapshot: every rewind restores the same values. */
static volatile sig_atomic_t *gate_dirty;
static int gate_protected;

static void on_sigsys(int sig, siginfo_t *si, void *uctx)
{
    greg_t *regs = ((ucontext_t *)uctx)->uc_mcontext.gregs;
    (void)sig;
    /* The channel and state gates' traps come here too (one SIGSYS handler). */
    if (mf_channel_gate_trap(si, uctx) || mf_state_gate_trap(si, uctx))
        return;
    /* Only the filter's trap: a SIGSYS sent with kill() interrupted no call. */
    if (si->si_code != SYS_SECCOMP || si->si_syscall != SYS_rt_sigaction)
        return;
    long target = (long)regs[REG_RDI];
    if (target == SIGSYS || target == gate_protected) {
        regs[REG_RAX] = -EPERM;
        return;
    }
    /* Dirty first: an abort may cut this handler short after the call. */
    *gate_dirty = 1;
    regs[REG_RAX] = mf_sigaction_syscall(target, (long)regs[REG_RSI], (long)regs[REG_RDX], (long)regs[REG_R10]);
}

bool mf_sigaction_gate_prepare(volatile sig_atomic_t *dirty, int protected_signal)
{
    struct sigaction action = {.sa_sigaction = on_sigsys, .sa_flags = SA_SIGINFO};

    gate_dirty = dirty;
    gate_protected = protected_signal;
    if (sigemptyset(&action.sa_mask) < 0 || sigaction(SIGSYS, &action, NULL) < 0)
        return mf_err("sigaction(SIGSYS)");
    return true;
}

bool mf_sigaction_gate_load(void)
{
    uint64_t ip = (uint64_t)(uintptr_t)mf_sigaction_syscall_after;
    /* Everything but a disposition change from elsewhere passes here; the
     * request filter below decides it. */
    struct sock_filter prog[] = {
        MF_GATE_HEAD(SYS_rt_sigaction, 4),
        /* act == NULL (all 64 bits) only reads a disposition: allowed. */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, MF_GATE_LOW(MF_GATE_DATA(args[1]))),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 2),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, MF_GATE_HIGH(MF_GATE_DATA(args[1]))),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 4, 0),
        MF_GATE_TAIL(ip, SECCOMP_RET_TRAP),
    };
    _Static_assert(sizeof(prog) / sizeof(prog[0]) == 14, "jump offsets count these instructions");
    return mf_seccomp_load(prog, sizeof(prog));
}
