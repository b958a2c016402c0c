/*
 * Leaf helpers of the engines (children.c, both engines, the reset
 * worker): the monotonic clock, poll timeouts, closing without losing the
 * error, and the check on a request's socket.
 */
#ifndef MAYFLYD_ENGINE_COMMON_H
#define MAYFLYD_ENGINE_COMMON_H

#include <stdbool.h>
#include <stdint.h>

/* CLOCK_MONOTONIC in microseconds; 0 if the clock fails (only metrics use it). */
uint64_t mf_now_us(void);

/* CLOCK_MONOTONIC in milliseconds; false with the error recorded. */
bool mf_now_ms(uint64_t *out);

/* close(fd) for fds with nothing buffered to lose: a failure is a warning. */
void mf_close_or_warn(int fd, const char *what);

/* A poll() timeout in ms from now until next (UINT64_MAX: none). */
int mf_poll_timeout(uint64_t now, uint64_t next);

/* Whether fd (a request's socket, as passed) is AF_UNIX SOCK_SEQPACKET;
 * false with the error recorded (EPROTOTYPE if it is another socket). */
bool mf_is_seqpacket_unix(int fd);

#endif /* MAYFLYD_ENGINE_COMMON_H */
