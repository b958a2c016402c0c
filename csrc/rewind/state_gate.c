/* Which requests changed kernel state the rewind restores; see state_gate.h. */
#define _GNU_SOURCE
#include "rewind/state_gate.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>

#include "base/log.h"
#include "rewind/gate_filter.h"
#include "walls/seccomp.h"

#if !defined(__x86_64__)
#error "the state gate's syscall stub, filter and SIGSYS handler are written for x86_64"
#endif

#ifndef SYS_SECCOMP
#define SYS_SECCOMP 1
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

/* Declared in state_gate.h; the rewinder's own calls and the trapped
 * calls it passes on go through it. */
extern const char mf_state_syscall_after[];
MF_GATE_ANY_STUB(mf_state_syscall);

/* Set before the snapshot: every rewind restores the same value. */
static struct mf_state_dirty *gate_dirty;

void mf_state_gate_prepare(struct mf_state_dirty *dirty)
{
    gate_dirty = dirty;
}

/* The filter, built with labels: a jump names where it goes and the
 * offsets are counted once every instruction is in place. */
enum label { TO_NEXT, TO_FD, TO_FCNTL, TO_IOCTL, TO_MMAP, TO_ALTSTACK, TO_TRAP, TO_ALLOW, N_LABELS };

struct program {
    struct sock_filter insn[256];
    uint8_t jt[256], jf[256]; /* label of each jump's targets */
    size_t n;
    size_t at[N_LABELS];
};

static void emit(struct program *p, struct sock_filter f, enum label jt, enum label jf)
{
    if (p->n < sizeof(p->insn) / sizeof(p->insn[0])) {
        p->insn[p->n] = f;
        p->jt[p->n] = (uint8_t)jt;
        p->jf[p->n] = (uint8_t)jf;
    }
    p->n++;
}

static void place(struct program *p, enum label l)
{
    p->at[l] = p->n;
}

static void load(struct program *p, uint32_t offset)
{
    emit(p, (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offset), TO_NEXT, TO_NEXT);
}

static void jump_if(struct program *p, uint32_t op, uint32_t k, enum label yes, enum label no)
{
    emit(p, (struct sock_filter)BPF_JUMP(BPF_JMP | op | BPF_K, k, 0, 0), yes, no);
}

static void jump(struct program *p, enum label to)
{
    emit(p, (struct sock_filter)BPF_STMT(BPF_JMP | BPF_JA | BPF_K, 0), to, TO_NEXT);
}

static bool resolve(struct program *p)
{
    if (p->n > sizeof(p->insn) / sizeof(p->insn[0]))
        return mf_errx(E2BIG, "state gate filter of %zu instructions", p->n);
    for (size_t i = 0; i < p->n; i++) {
        size_t jt = p->jt[i] == TO_NEXT ? i + 1 : p->at[p->jt[i]];
        size_t jf = p->jf[i] == TO_NEXT ? i + 1 : p->at[p->jf[i]];
        if (jt <= i || jf <= i || jt - i - 1 > 255 || jf - i - 1 > 255)
            return mf_errx(EINVAL, "state gate filter: jump from %zu out of reach", i);
        if (BPF_CLASS(p->insn[i].code) == BPF_JMP && BPF_OP(p->insn[i].code) == BPF_JA)
            p->insn[i].k = (uint32_t)(jt - i - 1);
        else if (BPF_CLASS(p->insn[i].code) == BPF_JMP) {
            p->insn[i].jt = (uint8_t)(jt - i - 1);
            p->insn[i].jf = (uint8_t)(jf - i - 1);
        }
    }
    return true;
}

bool mf_state_gate_load(const int *fds, size_t n)
{
    bool every_close = n > MF_STATE_GATE_MAX_FDS;
    static const int to_trap[] = {SYS_dup2, SYS_dup3, SYS_close_range, SYS_setitimer, SYS_alarm, SYS_umask,
                                  SYS_chdir, SYS_fchdir, SYS_munmap, SYS_mremap};
    static const unsigned ioctls[] = {FIONBIO, FIOASYNC, FIOCLEX, FIONCLEX};
    uint64_t ip = (uint64_t)(uintptr_t)mf_state_syscall_after;
    struct program p = {.n = 0};

    load(&p, MF_GATE_DATA(arch));
    jump_if(&p, BPF_JEQ, AUDIT_ARCH_X86_64, TO_NEXT, TO_ALLOW);
    load(&p, MF_GATE_DATA(nr));
    jump_if(&p, BPF_JEQ, SYS_close, every_close ? TO_TRAP : TO_FD, TO_NEXT);
    jump_if(&p, BPF_JEQ, SYS_flock, every_close ? TO_TRAP : TO_FD, TO_NEXT);
    jump_if(&p, BPF_JEQ, SYS_fcntl, TO_FCNTL, TO_NEXT);
    jump_if(&p, BPF_JEQ, SYS_ioctl, TO_IOCTL, TO_NEXT);
    jump_if(&p, BPF_JEQ, SYS_mmap, TO_MMAP, TO_NEXT);
    jump_if(&p, BPF_JEQ, SYS_sigaltstack, TO_ALTSTACK, TO_NEXT);
    for (size_t i = 0; i < sizeof(to_trap) / sizeof(to_trap[0]); i++)
        jump_if(&p, BPF_JEQ, (uint32_t)to_trap[i], TO_TRAP, TO_NEXT);
    jump(&p, TO_ALLOW);

    place(&p, TO_FCNTL);
    load(&p, MF_GATE_LOW(MF_GATE_DATA(args[1])));
    jump_if(&p, BPF_JEQ, F_SETFL, TO_FD, TO_NEXT);
    jump_if(&p, BPF_JEQ, F_SETLK, TO_FD, TO_NEXT);
    jump_if(&p, BPF_JEQ, F_SETLKW, TO_FD, TO_NEXT);
    jump_if(&p, BPF_JEQ, F_OFD_SETLK, TO_FD, TO_NEXT);
    jump_if(&p, BPF_JEQ, F_OFD_SETLKW, TO_FD, TO_NEXT);
    jump_if(&p, BPF_JEQ, F_SETFD, TO_FD, TO_ALLOW);

    place(&p, TO_IOCTL);
    load(&p, MF_GATE_LOW(MF_GATE_DATA(args[1])));
    for (size_t i = 0; i < sizeof(ioctls) / sizeof(ioctls[0]); i++)
        jump_if(&p, BPF_JEQ, ioctls[i], TO_FD, TO_NEXT);
    jump(&p, TO_ALLOW);

    place(&p, TO_MMAP);
    load(&p, MF_GATE_LOW(MF_GATE_DATA(args[3])));
    jump_if(&p, BPF_JSET, MAP_FIXED | MAP_FIXED_NOREPLACE, TO_TRAP, TO_ALLOW);

    /* Only a new stack (ss != NULL, all 64 bits): a query changes nothing. */
    place(&p, TO_ALTSTACK);
    load(&p, MF_GATE_LOW(MF_GATE_DATA(args[0])));
    jump_if(&p, BPF_JEQ, 0, TO_NEXT, TO_TRAP);
    load(&p, MF_GATE_HIGH(MF_GATE_DATA(args[0])));
    jump_if(&p, BPF_JEQ, 0, TO_ALLOW, TO_TRAP);

    /* The kernel reads an fd argument as 32 bits. */
    place(&p, TO_FD);
    load(&p, MF_GATE_LOW(MF_GATE_DATA(args[0])));
    for (size_t i = 0; i < n && !every_close; i++)
        jump_if(&p, BPF_JEQ, (uint32_t)fds[i], TO_TRAP, TO_NEXT);
    jump(&p, every_close ? TO_TRAP : TO_ALLOW);

    place(&p, TO_TRAP);
    struct sock_filter tail[] = {MF_GATE_TAIL(ip, SECCOMP_RET_TRAP)};
    for (size_t i = 0; i < sizeof(tail) / sizeof(tail[0]); i++) {
        if (i == 4)
            place(&p, TO_ALLOW); /* the tail's SECCOMP_RET_ALLOW */
        emit(&p, tail[i], TO_NEXT, TO_NEXT);
    }
    /* The tail's own jumps are relative already: keep them. */
    size_t tail_at = p.at[TO_TRAP];
    MF_TRY(resolve(&p));
    for (size_t i = 0; i < sizeof(tail) / sizeof(tail[0]); i++)
        p.insn[tail_at + i] = tail[i];
    return mf_seccomp_load(p.insn, p.n * sizeof(p.insn[0]));
}

bool mf_state_gate_trap(const siginfo_t *si, void *uctx)
{
    greg_t *regs = ((ucontext_t *)uctx)->uc_mcontext.gregs;

    if (si->si_code != SYS_SECCOMP || gate_dirty == NULL)
        return false;
    long cmd = (long)regs[REG_RSI];
    bool lock_call = si->si_syscall == SYS_flock ||
                     (si->si_syscall == SYS_fcntl && ((int)cmd == F_SETLK || (int)cmd == F_SETLKW ||
                                                      (int)cmd == F_OFD_SETLK || (int)cmd == F_OFD_SETLKW));
    switch (si->si_syscall) {
    case SYS_flock:
        gate_dirty->locks = 1;
        break;
    case SYS_fcntl:
        if (lock_call)
            gate_dirty->locks = 1;
        else
            gate_dirty->fds = 1;
        break;
    case SYS_close: case SYS_dup2: case SYS_dup3: case SYS_close_range: case SYS_ioctl:
        gate_dirty->fds = 1;
        break;
    case SYS_setitimer: case SYS_alarm: case SYS_sigaltstack: case SYS_umask: case SYS_chdir: case SYS_fchdir:
        gate_dirty->process = 1;
        break;
    case SYS_munmap: case SYS_mremap: case SYS_mmap:
        gate_dirty->mappings = 1;
        break;
    default:
        return false;
    }
    /* Dirty first (above): an abort may cut this handler short after the call. */
    long ret = mf_state_syscall(si->si_syscall, (long)regs[REG_RDI], (long)regs[REG_RSI], (long)regs[REG_RDX],
                                (long)regs[REG_R10], (long)regs[REG_R8], (long)regs[REG_R9]);
    /* The return from this handler puts back the alternate stack saved in
     * its context: the new one must be there. */
    stack_t now;
    if (si->si_syscall == SYS_sigaltstack && ret == 0 &&
        mf_state_syscall(SYS_sigaltstack, 0, (long)(uintptr_t)&now, 0, 0, 0, 0) == 0) {
        now.ss_flags &= SS_DISABLE;
        ((ucontext_t *)uctx)->uc_stack = now;
    }
    regs[REG_RAX] = ret;
    return true;
}
