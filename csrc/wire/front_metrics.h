/*
 * The front end's metrics area: a memfd the supervisor creates, sizes and
 * heads, passes to mayflyd-front (--metrics-fd) and keeps across its
 * restarts. The front end's loops count into it; the supervisor's
 * Prometheus collector reads it. No Python work per request.
 *
 * Layout (native endian): this head, then threads * slots records; the
 * record of (thread t, slot s) is at
 *   sizeof(struct mf_metrics_head) + (t * slots + s) * record_size.
 * A slot is a tenant's, given by the supervisor for the daemon's lifetime
 * (mf_route_tenant.slot). Each record is written by one loop thread only,
 * with relaxed atomic loads and stores (no lock); readers sum over threads.
 * Mirrored in daemon/mayflyd/supervisor/front_metrics.py;
 * tests/unit/test_front_metrics.py compiles a program against this header
 * to check that both agree.
 */
#ifndef MAYFLYD_FRONT_METRICS_LAYOUT_H
#define MAYFLYD_FRONT_METRICS_LAYOUT_H

#include <stdint.h>

#define MF_METRICS_MAGIC "MFMETRIC" /* 8 bytes, no terminating NUL in the area */
#define MF_METRICS_VERSION 1u
#define MF_METRICS_MAX_SLOTS 4096u  /* tenants ever, over the daemon's lifetime */
#define MF_METRICS_MAX_THREADS 1024u

struct mf_metrics_head {
    char magic[8];         /* MF_METRICS_MAGIC */
    uint32_t version;      /* MF_METRICS_VERSION */
    uint32_t threads;      /* records per slot: one per front-end loop */
    uint32_t slots;        /* 1..MF_METRICS_MAX_SLOTS */
    uint32_t record_size;  /* sizeof(struct mf_metrics_record) */
    uint64_t reserved;     /* 0 */
};

/* Upper bounds of the histogram buckets (each bucket counts what is above
 * the previous bound and at most its own; the last one, +inf, is implied).
 * Not cumulative: the reader adds them up. */
#define MF_METRICS_DURATION_BOUNDS_US 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, \
    250000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000
#define MF_METRICS_COST_BOUNDS_US 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000
#define MF_METRICS_PAGES_BOUNDS 0, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384

#define MF_METRICS_STATUSES 500        /* statuses 100..599, at status - 100 */
#define MF_METRICS_DURATION_BUCKETS 18 /* 17 bounds and +inf */
#define MF_METRICS_COST_BUCKETS 14     /* 13 bounds and +inf */
#define MF_METRICS_PAGES_BUCKETS 12    /* 11 bounds and +inf */
#define MF_METRICS_LIMITS 8

/* Which limit stopped a request: limit[] indices, and the label values the
 * collector gives them (the names of the tenant's limits in its config). */
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

struct mf_metrics_record {
    uint64_t status[MF_METRICS_STATUSES];              /* answers, by status */
    uint64_t duration_bucket[MF_METRICS_DURATION_BUCKETS]; /* request durations, us */
    uint64_t duration_sum_us;
    uint64_t duration_count;
    uint64_t cost_bucket[MF_METRICS_COST_BUCKETS];     /* CHILD_EXIT cost_us */
    uint64_t cost_sum_us;
    uint64_t cost_count;
    uint64_t pages_bucket[MF_METRICS_PAGES_BUCKETS];   /* CHILD_EXIT pages, reset engine only */
    uint64_t pages_sum;
    uint64_t pages_count;
    uint64_t limit[MF_METRICS_LIMITS];                 /* enum mf_metrics_limit */
    uint64_t errors;      /* 5xx, and the daemon's 4xx refusals for a limit (408/413/431) */
    uint64_t program_4xx; /* 4xx the program chose */
    uint64_t in_flight;   /* a gauge, two's complement; zeroed by a starting front end */
};

_Static_assert(sizeof(struct mf_metrics_head) == 32, "mf_metrics_head layout");
_Static_assert(sizeof(struct mf_metrics_record) == 561 * 8, "mf_metrics_record layout");
_Static_assert(sizeof(struct mf_metrics_record) % 8 == 0, "records keep 8-byte alignment");

#endif /* MAYFLYD_FRONT_METRICS_LAYOUT_H */
