/*
 * The front end's control channel (supervisor <-> mayflyd-front): one
 * SOCK_SEQPACKET socket, each message one packet framed by protocol.h's
 * mf_frame_header (req_id 0) with the types below, in a range of their own.
 * Mirrored in daemon/mayflyd/front_protocol.py; tests/unit/test_front_control.py
 * compiles a small program against this header to check that both agree.
 *
 *   supervisor -> front : MF_MSG_ROUTES (a whole routing table)
 *   front -> supervisor : MF_MSG_ROUTES_ACK (in use now), MF_MSG_ROUTES_REFUSED
 *
 * The end of the channel ends the front end: its supervisor is gone.
 */
#ifndef MAYFLYD_FRONT_PROTOCOL_H
#define MAYFLYD_FRONT_PROTOCOL_H

#include <stdint.h>

#include "wire/protocol.h"

enum mf_front_msg_type {
    MF_MSG_ROUTES = 96,          /* payload: mf_routes_head, then its tenants */
    MF_MSG_ROUTES_ACK = 112,     /* payload: mf_routes_ack */
    MF_MSG_ROUTES_REFUSED = 113, /* payload: mf_routes_ack, then UTF-8 reason; the old table stays */
};

/* A table fits one packet for now (AF_UNIX's default send buffer holds
 * it); thousands of tenants will need it split. */
#define MF_MAX_ROUTES_PAYLOAD (128u * 1024u)
#define MF_ROUTE_MAX_TENANTS 4096u
#define MF_ROUTE_MAX_NAME 255u

/*
 * ROUTES payload: this head, then tenant_count tenants, each a
 * mf_route_tenant, its name (name_len bytes), then host_count hosts, each
 * a mf_route_host and its name (len bytes). A host is an exact name as
 * the front end normalises Host (lower case, no port, no trailing dot) or
 * "*.suffix": any name ending in ".suffix", not "suffix" itself. A host
 * names one tenant; at most one tenant is the default.
 */
struct mf_routes_head {
    uint64_t generation;   /* the supervisor's count; ROUTES_ACK returns it */
    uint32_t tenant_count;
    uint32_t reserved;     /* 0 */
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
    uint32_t reserved;           /* 0 */
};

struct mf_route_host {
    uint32_t len;
    uint32_t reserved;     /* 0 */
};

struct mf_routes_ack {
    uint64_t generation;
};

_Static_assert(sizeof(struct mf_routes_head) == 16, "mf_routes_head layout");
_Static_assert(sizeof(struct mf_route_tenant) == 40, "mf_route_tenant layout");
_Static_assert(sizeof(struct mf_route_host) == 8, "mf_route_host layout");
_Static_assert(sizeof(struct mf_routes_ack) == 8, "mf_routes_ack layout");

#endif /* MAYFLYD_FRONT_PROTOCOL_H */
