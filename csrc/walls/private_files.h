/*
 * Open files a sandbox inherits from its host get a file description of its
 * own: after fork() parent and child share file offsets (and status flags),
 * so a request reading a file the program opened in on_init() would move
 * the offset the next request starts from.
 */
#ifndef MAYFLYD_PRIVATE_FILES_H
#define MAYFLYD_PRIVATE_FILES_H

#include <stdbool.h>
#include <stddef.h>

/*
 * In the sandbox, before tenant code, for every inherited fd above 2 but
 * the n_keep in keep: a regular file or directory is reopened through /proc/self/fd
 * with its access mode and offset, over the same fd number; a pipe, socket
 * or other kernel object (epoll, eventfd, timerfd) is closed, since every
 * sandbox would share it; devices stay. A file the sandbox may not open
 * itself is closed: never shared (the seal refuses those, below).
 * fds 0-2 (unless kept) get an open file description of their own of the
 * same object, a pipe or /dev/null included, with the host's status flags:
 * a flag or lock a request sets on its stdio is its own.
 */
bool mf_private_files(const int *keep, size_t n_keep);

/*
 * In the host, at the seal: fails (EACCES, naming the fd and its file) if
 * an inherited fd above 2 but keep's is a file a sandbox could not make
 * its own: one in /proc (it names the host: /proc/self/mem is the host's
 * memory) or one the host's identity cannot reopen.
 */
bool mf_private_files_check(const int *keep, size_t n_keep);

#endif /* MAYFLYD_PRIVATE_FILES_H */
