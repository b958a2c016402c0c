/* Which requests changed a signal disposition; see sigaction_gate.h. */
#define _GNU_SOURCE
#include "sigaction_gate.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>

#include "log.h"
#include "seccomp.h"

#if !defined(__x86_64__)
#error "the sigaction gate's syscall stub, filter and SIGSYS handler are written for x86_64"
#endif

/* si_code of a seccomp SIGSYS (asm-generic/siginfo.h); glibc 2.36 does not name it. */
#ifndef SYS_SECCOMP
#define SYS_SECCOMP 1
#endif

#define MF_STR2(x) #x
#define MF_STRINGIFY(x) MF_STR2(x)

/* rt_sigaction(2) with the syscall instruction at a known address (the
 * kernel reports the address after it as seccomp_data.instruction_pointer). */
long mf_sigaction_syscall(long sig, long act, long old, long size);
extern const char mf_sigaction_syscall_after[];
__asm__(".text\n"
        ".globl mf_sigaction_syscall\n"
        ".hidden mf_sigaction_syscall\n"
        ".type mf_sigaction_syscall, @function\n"
        "mf_sigaction_syscall:\n"
        "    mov %rcx, %r10\n" /* the fourth argument: rcx in C, r10 in a syscall */
        "    mov $" MF_STRINGIFY(SYS_rt_sigaction) ", %eax\n"
        "    syscall\n"
        ".globl mf_sigaction_syscall_after\n"
        ".hidden mf_sigaction_syscall_after\n"
        "mf_sigaction_syscall_after:\n"
        "    ret\n"
        ".size mf_sigaction_syscall, . - mf_sigaction_syscall\n");

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

#define DATA(field) offsetof(struct seccomp_data, field)
#define LOW(off) (off)
#define HIGH(off) ((off) + 4)

bool mf_sigaction_gate_load(void)
{
    uint64_t ip = (uint64_t)(uintptr_t)mf_sigaction_syscall_after;
    /* Everything but a disposition change from elsewhere passes here; the
     * request filter below decides it. */
    struct sock_filter prog[] = {
        /* 0 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, DATA(arch)),
        /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 10),
        /* 2 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, DATA(nr)),
        /* 3 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_rt_sigaction, 0, 8),
        /* 4: act == NULL (all 64 bits) only reads: allowed */
        /* 4 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, LOW(DATA(args[1]))),
        /* 5 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 2),
        /* 6 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, HIGH(DATA(args[1]))),
        /* 7 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 4, 0),
        /* 8 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, LOW(DATA(instruction_pointer))),
        /* 9 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)ip, 0, 3),
        /* 10 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, HIGH(DATA(instruction_pointer))),
        /* 11 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)(ip >> 32), 0, 1),
        /* 12 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* 13 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
    };
    _Static_assert(sizeof(prog) / sizeof(prog[0]) == 14, "jump offsets count these instructions");
    return mf_seccomp_load(prog, sizeof(prog));
}
