/* Metrics: no area yet, so there is no record and nothing to count; see metrics.h. */
#include "front/metrics.h"

#include <errno.h>
#include <stddef.h>

#include "base/log.h"

bool mf_metrics_open(int fd, unsigned threads)
{
    (void)threads;
    return mf_errx(ENOSYS, "metrics area (fd %d): not built yet", fd);
}

struct mf_metrics_record *mf_metrics_record(unsigned thread, uint32_t slot)
{
    (void)thread;
    (void)slot;
    return NULL;
}

void mf_metrics_answered(struct mf_metrics_record *r, int status, uint64_t duration_us, bool by_program,
                         bool limit_refusal)
{
    (void)r, (void)status, (void)duration_us, (void)by_program, (void)limit_refusal;
}

void mf_metrics_limit(struct mf_metrics_record *r, enum mf_metrics_limit which)
{
    (void)r, (void)which;
}

void mf_metrics_sandbox(struct mf_metrics_record *r, uint32_t cost_us, uint32_t pages, bool reset)
{
    (void)r, (void)cost_us, (void)pages, (void)reset;
}

void mf_metrics_in_flight(struct mf_metrics_record *r, int delta)
{
    (void)r, (void)delta;
}
