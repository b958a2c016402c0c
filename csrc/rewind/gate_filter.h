/*
 * What the pagemap and sigaction gates share: a seccomp filter that lets a
 * call through only from one known `syscall` instruction of the rewinder's
 * (the kernel reports the address after it as
 * seccomp_data.instruction_pointer), and the stub that holds it.
 */
#ifndef MAYFLYD_GATE_FILTER_H
#define MAYFLYD_GATE_FILTER_H

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>

#define MF_GATE_STR2(x) #x
#define MF_GATE_STRINGIFY(x) MF_GATE_STR2(x)

/* A function `name` that makes syscall `nr` with the C arguments as they
 * are (prologue: any register moves), and a label `name_after` just past
 * its `syscall` instruction. */
#define MF_GATE_STUB(name, nr, prologue)                                         \
    __asm__(".text\n"                                                           \
            ".globl " #name "\n"                                                \
            ".hidden " #name "\n"                                               \
            ".type " #name ", @function\n" #name ":\n" prologue                 \
            "    mov $" MF_GATE_STRINGIFY(nr) ", %eax\n"                        \
            "    syscall\n"                                                     \
            ".globl " #name "_after\n"                                          \
            ".hidden " #name "_after\n" #name "_after:\n"                       \
            "    ret\n"                                                         \
            ".size " #name ", . - " #name "\n")

/* A function `name`(nr, a..f) that makes system call nr with a..f (the
 * number in rdi, the arguments shifted down by one register, the fourth
 * in r10, the sixth from the stack), and a label `name_after` just past
 * its `syscall` instruction: a gate that passes on any call it trapped. */
#define MF_GATE_ANY_STUB(name)                                                  \
    __asm__(".text\n"                                                           \
            ".globl " #name "\n"                                                \
            ".hidden " #name "\n"                                               \
            ".type " #name ", @function\n" #name ":\n"                          \
            "    mov %rdi, %rax\n"                                              \
            "    mov %rsi, %rdi\n"                                              \
            "    mov %rdx, %rsi\n"                                              \
            "    mov %rcx, %rdx\n"                                              \
            "    mov %r8, %r10\n"                                               \
            "    mov %r9, %r8\n"                                                \
            "    mov 8(%rsp), %r9\n"                                            \
            "    syscall\n"                                                     \
            ".globl " #name "_after\n"                                          \
            ".hidden " #name "_after\n" #name "_after:\n"                       \
            "    ret\n"                                                         \
            ".size " #name ", . - " #name "\n")
#define MF_GATE_DATA(field) offsetof(struct seccomp_data, field)
#define MF_GATE_LOW(off) (off)
#define MF_GATE_HIGH(off) ((off) + 4)

/* The filter's first four instructions: any call but syscall `number` (or from
 * another architecture, which the request filter kills) goes to the tail's
 * SECCOMP_RET_ALLOW, past the `between` instructions of the filter's own. */
#define MF_GATE_HEAD(number, between)                                                         \
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, MF_GATE_DATA(arch)),                               \
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, (between) + 6),             \
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, MF_GATE_DATA(nr)),                                 \
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (number), 0, (between) + 4)

/* The filter's last six instructions: allow the call if it came from `ip`
 * (a uint64_t), else return `deny`. Earlier jumps that let a call pass go
 * to the fifth (SECCOMP_RET_ALLOW). */
#define MF_GATE_TAIL(ip, deny)                                                                  \
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, MF_GATE_LOW(MF_GATE_DATA(instruction_pointer))),        \
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)(ip), 0, 3),                                  \
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, MF_GATE_HIGH(MF_GATE_DATA(instruction_pointer))),       \
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)((ip) >> 32), 0, 1),                          \
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),                                               \
    BPF_STMT(BPF_RET | BPF_K, (deny))

#endif /* MAYFLYD_GATE_FILTER_H */
