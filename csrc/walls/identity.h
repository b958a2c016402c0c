/*
 * Process identity: the uid/gid drop with all capabilities gone, the parent
 * death signal and the OOM score.
 */
#ifndef MAYFLYD_IDENTITY_H
#define MAYFLYD_IDENTITY_H

#include <stdbool.h>
#include <sys/types.h>

/* Becomes uid/gid with no supplementary groups (set_groups false: left as
 * they are, for a user namespace where setgroups is denied), no
 * capabilities (bounding, ambient, effective, permitted, inheritable),
 * no_new_privs and not dumpable, then verifies that each step took. A
 * parent-death signal survives (the kernel clears it on the uid change; it
 * is armed again). Must run last among the privileged setup steps. */
bool mf_drop_privileges(uid_t uid, gid_t gid, bool set_groups);

/*
 * Arms signum for when the parent dies, then checks that the parent did
 * not die before it was armed (we would then have been reparented, and no
 * signal would ever come). The check: parent_fd, if >= 0, is a pidfd of
 * the parent or the read end of a pipe whose only write end the parent
 * holds, readable or hung up once it is gone; that is the way when the
 * parent is outside our pid namespace, where getppid() reads 0. Otherwise
 * getppid() must be expected_ppid. who names the parent in the error
 * ("the zygote").
 */
bool mf_arm_parent_death(int signum, const char *who, pid_t expected_ppid, int parent_fd);

/* mf_arm_parent_death with getppid(), for the Python bindings. */
bool mf_set_parent_death_signal(int signum, pid_t expected_ppid);

/* Writes value to /proc/self/oom_score_adj. Works for a non-dumpable
 * process too (it briefly becomes dumpable to own its /proc entry). */
bool mf_set_oom_score_adj(int value);

#endif /* MAYFLYD_IDENTITY_H */
