/*
 * The client behind a trusted proxy (the config's trusted_proxies, sent
 * with the routing table): the PROXY protocol header a proxy puts before a
 * connection's first request (v2, HAProxy's send-proxy-v2; and v1's text
 * line), and the Forwarded (RFC 7239) and X-Forwarded-For lists of a
 * request. Pure functions over bytes: no socket, no allocation, no log, so
 * that tests/front/proxy_test.c runs them alone.
 *
 * Trust: only a peer inside trusted_proxies may send a PROXY header (from
 * any other it is not looked for: the bytes are HTTP, and a 400) or have its
 * forwarded headers believed. The headers reach the program unchanged
 * either way; only the request's client address changes.
 */
#ifndef MAYFLYD_FRONT_PROXY_H
#define MAYFLYD_FRONT_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

/* An address, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d): one compare serves both. */
struct mf_addr {
    uint8_t bytes[16];
};

/* A trusted network: addr with its first prefix bits (of 128; an IPv4 /24 is 120). */
struct mf_proxy_net {
    uint8_t addr[16];
    uint8_t prefix;
};

/* The address of an AF_INET or AF_INET6 socket address; false for any other family. */
bool mf_addr_from_sockaddr(const struct sockaddr *sa, struct mf_addr *out);
/* An IPv4 dotted quad or an IPv6 address (no brackets, no zone); false if it is neither. */
bool mf_addr_parse(const char *text, size_t len, struct mf_addr *out);
/* The address as text (an IPv4-mapped one as IPv4) into out (at least 46 bytes); its length. */
size_t mf_addr_text(const struct mf_addr *addr, char *out, size_t cap);
/* Whether addr lies in one of the networks. */
bool mf_proxy_trusted(const struct mf_proxy_net *nets, size_t count, const struct mf_addr *addr);

/* A port: 0..65535 in decimal (1 to 5 digits). Host's too (request.c). */
bool mf_port_number(const char *p, size_t len);

/* A PROXY header longer than this (v2: 16 bytes of head and its length) is refused. */
#define MF_PROXY_MAX_HEADER (16 + 4096)

enum mf_proxy_parse {
    MF_PROXY_NONE, /* the bytes do not begin a PROXY header: they are the first request's */
    MF_PROXY_MORE, /* a header's beginning: more bytes are needed */
    MF_PROXY_DONE, /* a whole header: out->len bytes, and maybe a source address */
    MF_PROXY_BAD,  /* a malformed header: out->why */
};

struct mf_proxy_header {
    size_t len;            /* DONE: the header's bytes, to skip */
    bool has_source;       /* DONE: false for LOCAL, UNSPEC, UNIX and v1's UNKNOWN: the peer stays */
    struct mf_addr source; /* the client's address, if has_source */
    const char *why;       /* BAD: what is wrong */
};

/* Looks at a connection's first bytes (all of them so far). */
enum mf_proxy_parse mf_proxy_header_parse(const uint8_t *data, size_t len, struct mf_proxy_header *out);

/* The header lines a request's client is read from, in the order sent. */
#define MF_FORWARDED_MAX_LINES 32
/* Hops in one request's list: a longer list is ignored (the peer stays). */
#define MF_FORWARDED_MAX_HOPS 64

struct mf_forwarded_lines {
    const char *value[MF_FORWARDED_MAX_LINES];
    size_t len[MF_FORWARDED_MAX_LINES];
    size_t count;
};

/*
 * The client a request's forwarded list names, its peer being trusted:
 * the list (every line's elements, in order) walked from the right, past
 * the addresses that are trusted proxies themselves; the first other one is
 * the client, or the leftmost if all are trusted. forwarded: the lines are
 * Forwarded's (the for= parameter of each element), else X-Forwarded-For's.
 * False (the peer stays the client) if the list is empty, too long, or the
 * walk meets an element that is not an address ("unknown", an obfuscated
 * "_name", a missing for=, anything malformed) before it finds the client.
 */
bool mf_forwarded_client(const struct mf_forwarded_lines *lines, bool forwarded, const struct mf_proxy_net *nets,
                         size_t count, struct mf_addr *client);

#endif /* MAYFLYD_FRONT_PROXY_H */
