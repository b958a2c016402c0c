/*
 * Small helpers both engines' host loops (fork_engine.c, reset_engine.c)
 * and the reset worker use: the monotonic clock, closing without losing
 * the error, and checking what the supervisor passed as a request socket.
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

/* The request fd the supervisor passed must be an AF_UNIX SOCK_SEQPACKET socket. */
bool mf_is_seqpacket_unix(int fd);

#endif /* MAYFLYD_ENGINE_COMMON_H */
