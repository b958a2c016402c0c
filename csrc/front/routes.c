/* The routing table: decoding, matching, sharing; see routes.h. */
#include "front/routes.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "front/loop.h"
#include "front/request.h"
#include "wire/front_protocol.h"

/* Reads fixed-size pieces off a payload; false once it runs short. */
struct reader {
    const char *at;
    size_t left;
};

static bool take(struct reader *r, void *out, size_t len, const char *what)
{
    if (r->left < len)
        return mf_errx(EINVAL, "ROUTES: truncated in %s", what);
    memcpy(out, r->at, len);
    r->at += len;
    r->left -= len;
    return true;
}

static bool take_bytes(struct reader *r, size_t len, const char **out, const char *what)
{
    if (r->left < len)
        return mf_errx(EINVAL, "ROUTES: truncated in %s", what);
    *out = r->at;
    r->at += len;
    r->left -= len;
    return true;
}

static int compare_names(const char *a, size_t a_len, const char *b, size_t b_len)
{
    int order = memcmp(a, b, a_len < b_len ? a_len : b_len);
    if (order != 0)
        return order;
    return (a_len > b_len) - (a_len < b_len);
}

static int by_name(const void *a, const void *b)
{
    const struct mf_route_name *x = a, *y = b;
    return compare_names(x->name, x->len, y->name, y->len);
}

static int by_length_then_name(const void *a, const void *b)
{
    const struct mf_route_name *x = a, *y = b;
    if (x->len != y->len)
        return x->len < y->len ? 1 : -1; /* longest first: the most specific wins */
    return by_name(a, b);
}

/* A host as mf_host_normalize leaves one: it must come out unchanged. */
static bool normal_host(const char *name, size_t len)
{
    char normal[256];
    size_t normal_len;
    if (len == 0 || len > 253 || name[0] == '[')
        return false;
    return mf_host_normalize(name, len, normal, &normal_len) && normal_len == len && memcmp(normal, name, len) == 0;
}

/* Sorts the names and refuses one named twice. */
static bool sort_unique(struct mf_route_name *names, size_t count, int (*order)(const void *, const void *))
{
    if (count == 0)
        return true;
    qsort(names, count, sizeof(*names), order);
    for (size_t i = 1; i < count; i++)
        if (by_name(&names[i - 1], &names[i]) == 0)
            return mf_errx(EINVAL, "ROUTES: host %s%.*s named twice", names[i].name[0] == '.' ? "*" : "",
                           (int)names[i].len, names[i].name);
    return true;
}

static bool decode_tenant(struct mf_routes *routes, struct reader *r, size_t index, size_t *hosts_left)
{
    struct mf_route_tenant wire;
    MF_TRY(take(r, &wire, sizeof(wire), "a tenant"));
    struct mf_tenant_route *tenant = &routes->tenants[index];
    if (wire.name_len == 0 || wire.name_len > MF_ROUTE_MAX_NAME)
        return mf_errx(EINVAL, "ROUTES: tenant %zu: name of %u bytes", index, wire.name_len);
    if ((wire.flags & ~MF_ROUTE_DEFAULT) != 0)
        return mf_errx(EINVAL, "ROUTES: tenant %zu: unknown flags %#x", index, wire.flags);
    if (wire.request_timeout_ms == 0 || wire.concurrency == 0)
        return mf_errx(EINVAL, "ROUTES: tenant %zu: request_timeout_ms and concurrency must be positive", index);
    MF_TRY(take_bytes(r, wire.name_len, &tenant->name, "a tenant's name"));
    tenant->name_len = wire.name_len;
    for (size_t i = 0; i < wire.name_len; i++)
        if ((unsigned char)tenant->name[i] <= 0x20 || (unsigned char)tenant->name[i] >= 0x7f)
            return mf_errx(EINVAL, "ROUTES: tenant %zu: name is not visible ASCII", index);
    tenant->limits = (struct mf_route_limits){
        .max_body = wire.max_body, .max_response = wire.max_response,
        .request_timeout_ms = wire.request_timeout_ms, .concurrency = wire.concurrency,
        .queue = wire.queue, .slot = wire.slot, .request_cpu_ms = wire.request_cpu_ms};
    if (wire.flags & MF_ROUTE_DEFAULT) {
        if (routes->fallback != NULL)
            return mf_errx(EINVAL, "ROUTES: tenants %.*s and %.*s are both the default",
                           (int)routes->fallback->name_len, routes->fallback->name, (int)wire.name_len, tenant->name);
        routes->fallback = tenant;
    }
    if (wire.host_count > *hosts_left)
        return mf_errx(EINVAL, "ROUTES: tenant %.*s: %u hosts, more than the message holds",
                       (int)wire.name_len, tenant->name, wire.host_count);
    *hosts_left -= wire.host_count;
    for (uint32_t h = 0; h < wire.host_count; h++) {
        struct mf_route_host host;
        const char *name = NULL;
        MF_TRY(take(r, &host, sizeof(host), "a host"));
        if (host.reserved != 0)
            return mf_errx(EINVAL, "ROUTES: tenant %.*s: host %u: reserved %u", (int)wire.name_len, tenant->name,
                           h, host.reserved);
        MF_TRY(take_bytes(r, host.len, &name, "a host name"));
        bool wildcard = host.len > 2 && name[0] == '*' && name[1] == '.';
        if (!(wildcard ? normal_host(name + 2, host.len - 2) : normal_host(name, host.len)))
            return mf_errx(EINVAL, "ROUTES: tenant %.*s: %.*s is not a host name", (int)wire.name_len,
                           tenant->name, (int)host.len, name);
        if (wildcard)
            routes->wildcards[routes->wildcard_count++] = (struct mf_route_name){name + 1, host.len - 1, tenant};
        else
            routes->exact[routes->exact_count++] = (struct mf_route_name){name, host.len, tenant};
    }
    return true;
}

static bool decode_proxies(struct mf_routes *routes, struct reader *r, uint32_t count)
{
    routes->proxies = calloc(count ? count : 1, sizeof(*routes->proxies));
    if (routes->proxies == NULL)
        return mf_err("calloc(%u proxies)", count);
    for (uint32_t i = 0; i < count; i++) {
        struct mf_route_proxy wire;
        MF_TRY(take(r, &wire, sizeof(wire), "a trusted proxy"));
        if (wire.prefix > 128 || wire.reserved != 0)
            return mf_errx(EINVAL, "ROUTES: trusted proxy %u: prefix %u, reserved %u", i, wire.prefix,
                           wire.reserved);
        memcpy(routes->proxies[i].addr, wire.addr, sizeof(wire.addr));
        routes->proxies[i].prefix = (uint8_t)wire.prefix;
    }
    routes->proxy_count = count;
    return true;
}

static void routes_free(struct mf_routes *routes)
{
    if (routes == NULL)
        return;
    free(routes->tenants);
    free(routes->exact);
    free(routes->wildcards);
    free(routes->proxies);
    free(routes->payload);
    free(routes);
}

static bool decode(struct mf_routes *routes, const char *payload, size_t len)
{
    struct reader r = {.at = routes->payload, .left = len};
    memcpy(routes->payload, payload, len);
    struct mf_routes_head head = {.generation = 0};
    MF_TRY(take(&r, &head, sizeof(head), "the head"));
    if ((head.flags & ~MF_ROUTES_ACCESS_LOG) != 0 || head.tenant_count > MF_ROUTE_MAX_TENANTS
        || head.proxy_count > MF_ROUTE_MAX_PROXIES || head.reserved != 0)
        return mf_errx(EINVAL, "ROUTES: %u tenants (at most %u), %u proxies (at most %u), unknown flags %#x,"
                       " reserved %u", head.tenant_count, MF_ROUTE_MAX_TENANTS, head.proxy_count,
                       MF_ROUTE_MAX_PROXIES, head.flags, head.reserved);
    routes->generation = head.generation;
    routes->access_log = (head.flags & MF_ROUTES_ACCESS_LOG) != 0;
    /* Each host takes at least a mf_route_host and a byte: that bounds them. */
    size_t hosts_left = len / (sizeof(struct mf_route_host) + 1);
    routes->tenants = calloc(head.tenant_count ? head.tenant_count : 1, sizeof(*routes->tenants));
    routes->exact = calloc(hosts_left ? hosts_left : 1, sizeof(*routes->exact));
    routes->wildcards = calloc(hosts_left ? hosts_left : 1, sizeof(*routes->wildcards));
    if (routes->tenants == NULL || routes->exact == NULL || routes->wildcards == NULL)
        return mf_err("calloc(%u tenants, %zu hosts)", head.tenant_count, hosts_left);
    routes->tenant_count = head.tenant_count;
    for (size_t i = 0; i < head.tenant_count; i++)
        MF_TRY(decode_tenant(routes, &r, i, &hosts_left));
    MF_TRY(decode_proxies(routes, &r, head.proxy_count));
    if (r.left != 0)
        return mf_errx(EINVAL, "ROUTES: %zu bytes after the last trusted proxy", r.left);
    MF_TRY(sort_unique(routes->exact, routes->exact_count, by_name));
    MF_TRY(sort_unique(routes->wildcards, routes->wildcard_count, by_length_then_name));
    return true;
}

bool mf_routes_decode(const char *payload, size_t len, struct mf_routes **out)
{
    struct mf_routes *routes = calloc(1, sizeof(*routes));
    if (routes == NULL)
        return mf_err("calloc(routes)");
    routes->payload = malloc(len ? len : 1);
    if (routes->payload == NULL) {
        routes_free(routes);
        return mf_err("malloc(%zu)", len);
    }
    if (!decode(routes, payload, len)) {
        routes_free(routes);
        return false;
    }
    *out = routes;
    return true;
}

void mf_routes_release(struct mf_routes *routes)
{
    if (routes != NULL && atomic_fetch_sub_explicit(&routes->refs, 1, memory_order_acq_rel) == 1)
        routes_free(routes);
}

const struct mf_tenant_route *mf_routes_match(const struct mf_routes *routes, const char *host, size_t len)
{
    size_t lo = 0, hi = routes->exact_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct mf_route_name *entry = &routes->exact[mid];
        int order = compare_names(host, len, entry->name, entry->len);
        if (order == 0)
            return entry->tenant;
        if (order < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    for (size_t i = 0; i < routes->wildcard_count; i++) {
        const struct mf_route_name *suffix = &routes->wildcards[i];
        if (len > suffix->len && memcmp(host + len - suffix->len, suffix->name, suffix->len) == 0)
            return suffix->tenant;
    }
    return routes->fallback;
}

void mf_routes_publish(struct mf_front_loop *loops, unsigned count, struct mf_routes *routes)
{
    atomic_store_explicit(&routes->refs, count, memory_order_relaxed); /* one per mailbox */
    for (unsigned i = 0; i < count; i++) {
        /* A table its loop never took is dropped here instead. */
        struct mf_routes *unread = atomic_exchange_explicit(&loops[i].routes_pending, routes, memory_order_acq_rel);
        mf_routes_release(unread);
        mf_loop_wake(&loops[i]); /* a loop without traffic takes it now */
    }
}

void mf_routes_take(struct mf_front_loop *loop)
{
    struct mf_routes *newer = atomic_exchange_explicit(&loop->routes_pending, NULL, memory_order_acq_rel);
    if (newer == NULL)
        return;
    mf_routes_release(loop->routes);
    loop->routes = newer;
}
