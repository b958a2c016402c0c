/*
 * The front end's walls. It parses every client's bytes, so it runs with
 * nothing to lose: the supervisor starts it as an unprivileged user with no
 * capabilities, and it confines itself with the supervisor's seccomp filter
 * (--seccomp-fd, built by supervisor/seccomp_policy.py:build_front_filter)
 * once its sockets, fds and mappings exist and before any loop thread starts,
 * so that no request is ever served unfiltered. After that it can create no
 * namespace, trace nothing, open no file and exec nothing.
 */
#ifndef MAYFLYD_FRONT_WALLS_H
#define MAYFLYD_FRONT_WALLS_H

#include <stdbool.h>
#include <stdint.h>

/* --user: becomes uid and gid (no supplementary groups) for good, which
 * leaves no capability; done first, before any fd of its own is open. */
bool mf_front_walls_become(uint32_t uid, uint32_t gid);
/* Root without a filter is refused unless --allow-root (tests, development). */
bool mf_front_walls_check(int seccomp_fd, bool allow_root);
/* Reads the BPF program from seccomp_fd (and closes it), then sets
 * no_new_privs, makes the process not dumpable (no ptrace, no core, /proc
 * files root's) and loads the filter on every thread (TSYNC). */
bool mf_front_walls_enter(int seccomp_fd);

#endif /* MAYFLYD_FRONT_WALLS_H */
