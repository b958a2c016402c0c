/*
 * The front end's side of the metrics area (wire/front_metrics.h): each
 * loop counts its answers into its own record of the tenant's slot. No
 * lock: a record has one writer (its loop), which loads and stores with
 * relaxed atomics so the supervisor never reads a torn counter.
 * Every function takes NULL (no area, or a slot out of range) and then
 * does nothing, so callers need no check.
 */
#ifndef MAYFLYD_FRONT_METRICS_H
#define MAYFLYD_FRONT_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "wire/front_metrics.h"

/* Maps the area and checks the head the supervisor wrote (magic, version,
 * record size, at least `threads` threads, the file's size); zeroes every
 * in_flight gauge (what a previous front end had in flight is gone). The
 * fd is closed. Call once, before the loops start. */
bool mf_metrics_open(int fd, unsigned threads);
/* The record of loop `thread` for `slot`; NULL if no area is open or either is out of range. */
struct mf_metrics_record *mf_metrics_record(unsigned thread, uint32_t slot);

/* One answer written: its status, the time since its head arrived, whether
 * the program chose the status, and whether it is the daemon's refusal for
 * a limit (408/413/431: counted as an error). */
void mf_metrics_answered(struct mf_metrics_record *r, int status, uint64_t duration_us, bool by_program,
                         bool limit_refusal);
void mf_metrics_limit(struct mf_metrics_record *r, enum mf_metrics_limit which);
/* A sandbox's CHILD_EXIT: its cost, and (reset engine only) the pages rewound. */
void mf_metrics_sandbox(struct mf_metrics_record *r, uint32_t cost_us, uint32_t pages, bool reset);
/* Requests of this slot in flight on this loop: +1 when one is routed, -1 when it is answered. */
void mf_metrics_in_flight(struct mf_metrics_record *r, int delta);

#endif /* MAYFLYD_FRONT_METRICS_H */
