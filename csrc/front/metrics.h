/*
 * The front end's metrics (in shared memory, wire/front_metrics.h): a
 * placeholder with the agreed API whose functions do nothing, so that the
 * loops count their answers through it already; the area comes in its own
 * change. Every function takes NULL (no area, or a slot out of range).
 */
#ifndef MAYFLYD_FRONT_METRICS_H
#define MAYFLYD_FRONT_METRICS_H

#include <stdbool.h>
#include <stdint.h>

enum mf_metrics_limit {
    MF_METRICS_LIMIT_MAX_BODY = 0,
    MF_METRICS_LIMIT_REQUEST_TIMEOUT = 1, /* request_timeout_ms */
    MF_METRICS_LIMIT_CONCURRENCY = 2,     /* concurrency and queue full */
    MF_METRICS_LIMIT_REQUEST_CPU = 3,     /* request_cpu_ms */
    MF_METRICS_LIMIT_MEMORY = 4,
    MF_METRICS_LIMIT_MAX_RESPONSE = 5,
    MF_METRICS_LIMIT_QUEUE = 6,           /* unused for now */
    MF_METRICS_LIMIT_RESERVED = 7,
};

struct mf_metrics_record;

bool mf_metrics_open(int fd, unsigned threads);
struct mf_metrics_record *mf_metrics_record(unsigned thread, uint32_t slot);
void mf_metrics_answered(struct mf_metrics_record *r, int status, uint64_t duration_us, bool by_program,
                         bool limit_refusal);
void mf_metrics_limit(struct mf_metrics_record *r, enum mf_metrics_limit which);
void mf_metrics_sandbox(struct mf_metrics_record *r, uint32_t cost_us, uint32_t pages, bool reset);
void mf_metrics_in_flight(struct mf_metrics_record *r, int delta);

#endif /* MAYFLYD_FRONT_METRICS_H */
