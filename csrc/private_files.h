/*
 * Open files a sandbox inherits from its host get a file description of its
 * own: after fork() parent and child share file offsets (and status flags),
 * so a request reading a file the program opened in on_init() would move
 * the offset the next request starts from.
 */
#ifndef MAYFLYD_PRIVATE_FILES_H
#define MAYFLYD_PRIVATE_FILES_H

#include <stdbool.h>

/*
 * In the sandbox, before tenant code: reopen every inherited regular file
 * (fds above 2, except keep_fd) through /proc/self/fd with its access mode
 * and offset, over the same fd number. Other kinds (pipes, sockets) stay
 * shared: they have no offset to leak; so does a file the sandbox may not
 * open itself (opened by the host's runtime before the identity drop).
 */
bool mf_private_files(int keep_fd);

#endif /* MAYFLYD_PRIVATE_FILES_H */
