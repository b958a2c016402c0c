/*
 * The routing table the supervisor sends (wire/front_protocol.h): which
 * tenant serves a Host, and its limits. Exact names first, then the
 * longest matching "*.suffix", then the default tenant, as the supervisor's
 * Python router (daemon/mayflyd/supervisor/router.py).
 *
 * Lifetime: the control thread decodes a table and publishes it to every
 * loop's mailbox (routes_pending); each loop takes it from there right after
 * epoll_wait returns, before it handles any event, so every request read
 * after the publication is routed by it. A table counts one reference per
 * loop holding it or per mailbox holding it; whoever drops the last frees
 * it. No loop ever reads a table it does not hold a reference to.
 */
#ifndef MAYFLYD_FRONT_ROUTES_H
#define MAYFLYD_FRONT_ROUTES_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "front/front.h"
#include "front/proxy.h"

struct mf_tenant_route {
    const char *name;  /* into the table's copy of the payload, not terminated */
    size_t name_len;
    struct mf_route_limits limits;
};

struct mf_route_name {
    const char *name;  /* exact: the host; wildcard: ".suffix" */
    size_t len;
    const struct mf_tenant_route *tenant;
};

struct mf_routes {
    atomic_uint refs;
    uint64_t generation;
    bool access_log;       /* MF_ROUTES_ACCESS_LOG */
    struct mf_tenant_route *tenants;
    size_t tenant_count;
    struct mf_route_name *exact;     /* sorted by name: binary search */
    size_t exact_count;
    struct mf_route_name *wildcards; /* longest suffix first */
    size_t wildcard_count;
    const struct mf_tenant_route *fallback; /* the default tenant, or NULL */
    struct mf_proxy_net *proxies;    /* trusted_proxies (proxy.h) */
    size_t proxy_count;
    char *payload;
};

/* Decodes and checks a whole ROUTES payload; false (recorded: what is
 * wrong) on anything malformed. */
bool mf_routes_decode(const char *payload, size_t len, struct mf_routes **out);
void mf_routes_release(struct mf_routes *routes);

/* The tenant serving a normalised host (empty: none sent), or NULL. */
const struct mf_tenant_route *mf_routes_match(const struct mf_routes *routes, const char *host, size_t len);

/* Control thread: hands the table (its reference count unset) to every loop. */
void mf_routes_publish(struct mf_front_loop *loops, unsigned count, struct mf_routes *routes);
/* A loop's thread: takes the newest published table, if any. */
void mf_routes_take(struct mf_front_loop *loop);

#endif /* MAYFLYD_FRONT_ROUTES_H */
