/*
 * Counting into the metrics area (wire/front_metrics.h). The area is
 * mapped once, before the loops start, and stays mapped until the process
 * ends; after that the state below is only read, so loops need no lock.
 */
#define _GNU_SOURCE /* SEEK_DATA, SEEK_HOLE */
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "front/metrics.h"

static struct {
    unsigned char *records; /* NULL: no area */
    unsigned threads;       /* as the head says (the front end may run fewer) */
    uint32_t slots;
} area;

static const uint64_t duration_bounds_us[] = {MF_METRICS_DURATION_BOUNDS_US};
static const uint64_t cost_bounds_us[] = {MF_METRICS_COST_BOUNDS_US};
static const uint64_t pages_bounds[] = {MF_METRICS_PAGES_BOUNDS};
_Static_assert(sizeof(duration_bounds_us) / 8 + 1 == MF_METRICS_DURATION_BUCKETS, "duration bounds");
_Static_assert(sizeof(cost_bounds_us) / 8 + 1 == MF_METRICS_COST_BUCKETS, "cost bounds");
_Static_assert(sizeof(pages_bounds) / 8 + 1 == MF_METRICS_PAGES_BUCKETS, "pages bounds");

static bool check_head(const struct mf_metrics_head *head, unsigned threads, uint64_t file_size)
{
    if (memcmp(head->magic, MF_METRICS_MAGIC, sizeof(head->magic)) != 0)
        return mf_errx(EINVAL, "--metrics-fd: not a metrics area (no %s magic)", MF_METRICS_MAGIC);
    if (head->version != MF_METRICS_VERSION || head->record_size != sizeof(struct mf_metrics_record))
        return mf_errx(EINVAL, "--metrics-fd: version %u with %u-byte records, this front end writes version %u "
                       "with %zu-byte records", head->version, head->record_size, MF_METRICS_VERSION,
                       sizeof(struct mf_metrics_record));
    if (head->slots == 0 || head->slots > MF_METRICS_MAX_SLOTS)
        return mf_errx(EINVAL, "--metrics-fd: %u slots, not 1..%u", head->slots, MF_METRICS_MAX_SLOTS);
    if (head->threads < threads || head->threads > MF_METRICS_MAX_THREADS)
        return mf_errx(EINVAL, "--metrics-fd: records for %u threads, the front end runs %u", head->threads, threads);
    uint64_t needed = sizeof(*head) + (uint64_t)head->threads * head->slots * sizeof(struct mf_metrics_record);
    if (file_size < needed)
        return mf_errx(EINVAL, "--metrics-fd: %llu bytes, its head needs %llu", (unsigned long long)file_size,
                       (unsigned long long)needed);
    return true;
}

/* Zeroes the in_flight gauges a previous front end left. Only the file's
 * data extents can hold one: walking them (SEEK_DATA, SEEK_HOLE) leaves the
 * pages of slots never used unallocated, where touching every record would
 * allocate the whole area (18 MiB per thread for 4096 slots). */
static bool zero_in_flight(int fd, uint64_t file_size)
{
    const uint64_t first = sizeof(struct mf_metrics_head) + offsetof(struct mf_metrics_record, in_flight);
    const uint64_t size = sizeof(struct mf_metrics_record), records = (uint64_t)area.threads * area.slots;
    off_t data = 0;
    while ((uint64_t)data < file_size) {
        data = lseek(fd, data, SEEK_DATA);
        if (data < 0 && errno == ENXIO)
            return true; /* no data after it */
        if (data < 0)
            return mf_err("lseek(--metrics-fd %d, SEEK_DATA)", fd);
        off_t hole = lseek(fd, data, SEEK_HOLE);
        if (hole < 0)
            return mf_err("lseek(--metrics-fd %d, %lld, SEEK_HOLE)", fd, (long long)data);
        uint64_t i = (uint64_t)data <= first ? 0 : ((uint64_t)data - first + size - 1) / size;
        for (; i < records && first + i * size < (uint64_t)hole; i++) {
            uint64_t *gauge = (uint64_t *)(area.records + i * size + offsetof(struct mf_metrics_record, in_flight));
            __atomic_store_n(gauge, 0, __ATOMIC_RELAXED);
        }
        data = hole;
    }
    return true;
}

bool mf_metrics_open(int fd, unsigned threads)
{
    mf_cleanup_fd int owned = fd;
    struct stat st;
    if (fstat(owned, &st) < 0)
        return mf_err("fstat(--metrics-fd %d)", owned);
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size < sizeof(struct mf_metrics_head))
        return mf_errx(EINVAL, "--metrics-fd %d: not a metrics area (%lld bytes, mode %o)", owned,
                       (long long)st.st_size, (unsigned)st.st_mode);
    mf_cleanup_mapping struct mf_mapping map = {.len = (size_t)st.st_size};
    map.addr = mmap(NULL, map.len, PROT_READ | PROT_WRITE, MAP_SHARED, owned, 0);
    if (map.addr == MAP_FAILED)
        return mf_err("mmap(--metrics-fd %d, %zu bytes, shared)", owned, map.len);
    const struct mf_metrics_head *head = map.addr;
    MF_TRY(check_head(head, threads, (uint64_t)st.st_size));
    area.threads = head->threads;
    area.slots = head->slots;
    area.records = (unsigned char *)map.addr + sizeof(*head);
    /* A previous front end's requests in flight ended with it. */
    if (!zero_in_flight(owned, (uint64_t)st.st_size)) {
        area.records = NULL;
        return false;
    }
    (void)mf_steal_mapping(&map); /* mapped until the process ends */
    return true;
}

struct mf_metrics_record *mf_metrics_record(unsigned thread, uint32_t slot)
{
    if (area.records == NULL || thread >= area.threads || slot >= area.slots)
        return NULL;
    size_t index = (size_t)thread * area.slots + slot;
    return (struct mf_metrics_record *)(area.records + index * sizeof(struct mf_metrics_record));
}

/* One writer per record: a relaxed load and store is enough (and cheaper than a locked add). */
static void add(uint64_t *counter, uint64_t n)
{
    __atomic_store_n(counter, __atomic_load_n(counter, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

static void observe(uint64_t *buckets, const uint64_t *bounds, size_t bound_count, uint64_t *sum, uint64_t *count,
                    uint64_t value)
{
    size_t i = 0;
    while (i < bound_count && value > bounds[i])
        i++;
    add(&buckets[i], 1);
    add(sum, value);
    add(count, 1);
}

void mf_metrics_answered(struct mf_metrics_record *r, int status, uint64_t duration_us, bool by_program,
                         bool limit_refusal)
{
    if (r == NULL)
        return;
    if (status >= 100 && status < 100 + MF_METRICS_STATUSES)
        add(&r->status[status - 100], 1);
    observe(r->duration_bucket, duration_bounds_us, MF_METRICS_DURATION_BUCKETS - 1, &r->duration_sum_us,
            &r->duration_count, duration_us);
    if (status >= 500 || limit_refusal)
        add(&r->errors, 1);
    else if (by_program && status >= 400 && status < 500)
        add(&r->program_4xx, 1);
}

void mf_metrics_limit(struct mf_metrics_record *r, enum mf_metrics_limit which)
{
    if (r != NULL && (unsigned)which < MF_METRICS_LIMITS)
        add(&r->limit[which], 1);
}

void mf_metrics_sandbox(struct mf_metrics_record *r, uint32_t cost_us, uint32_t pages, bool reset)
{
    if (r == NULL)
        return;
    observe(r->cost_bucket, cost_bounds_us, MF_METRICS_COST_BUCKETS - 1, &r->cost_sum_us, &r->cost_count, cost_us);
    if (reset)
        observe(r->pages_bucket, pages_bounds, MF_METRICS_PAGES_BUCKETS - 1, &r->pages_sum, &r->pages_count, pages);
}

void mf_metrics_in_flight(struct mf_metrics_record *r, int delta)
{
    if (r != NULL)
        add(&r->in_flight, (uint64_t)(int64_t)delta); /* wraps: two's complement */
}
