/*
 * The front end's control channel (supervisor <-> mayflyd-front): one
 * SOCK_SEQPACKET socket, each message one packet framed by protocol.h's
 * mf_frame_header (req_id 0) with the types below, in a range of their own.
 * Mirrored in daemon/mayflyd/front_protocol.py; tests/unit/test_front_control.py
 * compiles a small program against this header to check that both agree.
 *
 *   supervisor -> front : MF_MSG_ROUTES (a whole routing table),
 *                         MF_MSG_HOST_ATTACH (+ one fd: a host's data channel for one loop),
 *                         MF_MSG_HOST_DETACH, MF_MSG_TENANT_STATE,
 *                         MF_MSG_LEAVING (the node drains: answers close their connections)
 *   front -> supervisor : MF_MSG_ROUTES_ACK (in use now), MF_MSG_ROUTES_REFUSED,
 *                         MF_MSG_HOST_DRAINED (sent by a loop itself)
 *
 * The end of the channel ends the front end: its supervisor is gone.
 */
#ifndef MAYFLYD_FRONT_PROTOCOL_H
#define MAYFLYD_FRONT_PROTOCOL_H

#include <stdint.h>

#include "wire/protocol.h"

enum mf_front_msg_type {
    MF_MSG_ROUTES = 96,          /* payload: mf_routes_head, then its tenants */
    MF_MSG_HOST_ATTACH = 97,     /* payload: mf_host_attach, then the tenant name; one fd */
    MF_MSG_HOST_DETACH = 98,     /* payload: mf_host_detach */
    MF_MSG_TENANT_STATE = 99,    /* payload: mf_tenant_state, then the name, then UTF-8 reason */
    MF_MSG_LEAVING = 100,        /* no payload; from now on every answer says Connection: close */
    MF_MSG_ROUTES_ACK = 112,     /* payload: mf_routes_ack */
    MF_MSG_ROUTES_REFUSED = 113, /* payload: mf_routes_ack, then UTF-8 reason; the old table stays */
    MF_MSG_HOST_DRAINED = 114,   /* payload: mf_host_drained */
};

/* A table fits one packet for now (AF_UNIX's default send buffer holds
 * it); thousands of tenants will need it split. */
#define MF_MAX_ROUTES_PAYLOAD (128u * 1024u)
#define MF_ROUTE_MAX_TENANTS 4096u
#define MF_ROUTE_MAX_NAME 255u
#define MF_ROUTE_MAX_PROXIES 1024u

/*
 * ROUTES payload: this head, then tenant_count tenants, each a
 * mf_route_tenant, its name (name_len bytes), then host_count hosts, each
 * a mf_route_host and its name (len bytes), then proxy_count
 * mf_route_proxy (the config's trusted_proxies). A host is an exact name as
 * the front end normalises Host (lower case, no port, no trailing dot) or
 * "*.suffix": any name ending in ".suffix", not "suffix" itself. A host
 * names one tenant; at most one tenant is the default.
 */
struct mf_routes_head {
    uint64_t generation;   /* the supervisor's count; ROUTES_ACK returns it */
    uint32_t tenant_count;
    uint32_t flags;        /* enum mf_routes_flags */
    uint32_t proxy_count;  /* trusted proxies, at most MF_ROUTE_MAX_PROXIES */
    uint32_t reserved;     /* 0 */
};

enum mf_routes_flags {
    MF_ROUTES_ACCESS_LOG = 1u, /* each loop logs every answered request to stderr */
};

enum mf_route_flags {
    MF_ROUTE_DEFAULT = 1u, /* serves a Host no tenant names */
};

struct mf_route_tenant {
    uint64_t max_body;           /* bytes; the front's --max-body stays the ceiling */
    uint64_t max_response;       /* bytes */
    uint32_t request_timeout_ms;
    uint32_t concurrency;
    uint32_t flags;              /* enum mf_route_flags */
    uint32_t name_len;
    uint32_t host_count;
    uint32_t queue;              /* requests the host queues beyond concurrency */
    uint32_t slot;               /* the tenant's metrics slot (wire/front_metrics.h) */
    uint32_t request_cpu_ms;     /* for the 504's text: the host enforces it */
};

struct mf_route_host {
    uint32_t len;
    uint32_t reserved;     /* 0 */
};

/* A trusted proxy's network: IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d)
 * with its prefix plus 96; the bits past the prefix are 0. */
struct mf_route_proxy {
    uint8_t addr[16];
    uint32_t prefix;       /* 0..128 */
    uint32_t reserved;     /* 0 */
};

struct mf_routes_ack {
    uint64_t generation;
};

/* HOST_ATTACH: the fd is the host's data channel (SOCK_SEQPACKET) for loop
 * `thread`; the newest attached, not detached host of a tenant gets its
 * new requests. */
struct mf_host_attach {
    uint64_t host_id;
    uint32_t thread;
    uint32_t name_len;
    uint32_t engine;       /* enum mf_engine: reset hosts take requests on persistent channels */
    uint32_t reserved;     /* 0 */
};

/* HOST_DETACH: no new requests to it; each loop closes its channel once
 * none is in flight there and answers HOST_DRAINED. */
struct mf_host_detach {
    uint64_t host_id;
};

struct mf_host_drained {
    uint64_t host_id;
    uint32_t thread;
    uint32_t reserved;     /* 0 */
};

enum mf_tenant_states {
    MF_TENANT_STARTING = 1, /* requests wait for a host, within their request_timeout_ms */
    MF_TENANT_DOWN = 2,     /* no host soon: requests get 503 at once */
};

struct mf_tenant_state {
    uint32_t state;        /* enum mf_tenant_states */
    uint32_t name_len;
};

_Static_assert(sizeof(struct mf_routes_head) == 24, "mf_routes_head layout");
_Static_assert(sizeof(struct mf_route_proxy) == 24, "mf_route_proxy layout");
_Static_assert(sizeof(struct mf_route_tenant) == 48, "mf_route_tenant layout");
_Static_assert(sizeof(struct mf_route_host) == 8, "mf_route_host layout");
_Static_assert(sizeof(struct mf_routes_ack) == 8, "mf_routes_ack layout");
_Static_assert(sizeof(struct mf_host_attach) == 24, "mf_host_attach layout");
_Static_assert(sizeof(struct mf_host_detach) == 8, "mf_host_detach layout");
_Static_assert(sizeof(struct mf_host_drained) == 16, "mf_host_drained layout");
_Static_assert(sizeof(struct mf_tenant_state) == 8, "mf_tenant_state layout");

#endif /* MAYFLYD_FRONT_PROTOCOL_H */
