/*
 * What a wait status says, in words: the one place the C helper turns
 * one into text, so every report of a child's end reads the same.
 */
#ifndef MAYFLYD_WAIT_STATUS_H
#define MAYFLYD_WAIT_STATUS_H

#include <stdbool.h>
#include <stddef.h>

/* "exited with status N" or "killed by signal N (SIGNAME)" into out (cap bytes,
 * truncated if need be); returns out. */
const char *mf_describe_wait_status(int status, char *out, size_t cap);

/* The child was ended by signal sig. */
bool mf_killed_by(int status, int sig);

#endif /* MAYFLYD_WAIT_STATUS_H */
