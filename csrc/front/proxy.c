/* PROXY headers and forwarded lists; see proxy.h. */
#include "front/proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

static const uint8_t v2_signature[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
static const char v1_prefix[] = "PROXY ";
#define V1_MAX 107 /* the spec's longest line, CRLF included */

static void mapped_v4(const void *v4, struct mf_addr *out)
{
    memset(out->bytes, 0, 10);
    out->bytes[10] = out->bytes[11] = 0xff;
    memcpy(out->bytes + 12, v4, 4);
}

static bool is_mapped_v4(const struct mf_addr *addr)
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(addr->bytes, prefix, sizeof(prefix)) == 0;
}

bool mf_addr_from_sockaddr(const struct sockaddr *sa, struct mf_addr *out)
{
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in in;
        memcpy(&in, sa, sizeof(in));
        mapped_v4(&in.sin_addr, out);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 in6;
        memcpy(&in6, sa, sizeof(in6));
        memcpy(out->bytes, &in6.sin6_addr, 16);
        return true;
    }
    return false;
}

bool mf_addr_parse(const char *text, size_t len, struct mf_addr *out)
{
    char copy[INET6_ADDRSTRLEN];
    if (len == 0 || len >= sizeof(copy) || memchr(text, '\0', len) != NULL)
        return false;
    memcpy(copy, text, len);
    copy[len] = '\0';
    uint8_t v4[4];
    if (inet_pton(AF_INET, copy, v4) == 1) {
        mapped_v4(v4, out);
        return true;
    }
    return memchr(copy, ':', len) != NULL && inet_pton(AF_INET6, copy, out->bytes) == 1;
}

size_t mf_addr_text(const struct mf_addr *addr, char *out, size_t cap)
{
    bool v4 = is_mapped_v4(addr);
    if (inet_ntop(v4 ? AF_INET : AF_INET6, v4 ? addr->bytes + 12 : addr->bytes, out, (socklen_t)cap) == NULL) {
        out[0] = '\0'; /* cap too small: cannot happen with 46 bytes */
        return 0;
    }
    return strlen(out);
}

bool mf_proxy_trusted(const struct mf_proxy_net *nets, size_t count, const struct mf_addr *addr)
{
    for (size_t i = 0; i < count; i++) {
        unsigned whole = nets[i].prefix / 8, bits = nets[i].prefix % 8;
        if (memcmp(nets[i].addr, addr->bytes, whole) != 0)
            continue;
        uint8_t mask = (uint8_t)(0xff00u >> bits);
        if (bits == 0 || ((nets[i].addr[whole] ^ addr->bytes[whole]) & mask) == 0)
            return true;
    }
    return false;
}

bool mf_port_number(const char *p, size_t len)
{
    if (len == 0 || len > 5)
        return false;
    unsigned value = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        value = value * 10 + (unsigned)(p[i] - '0');
    }
    return value <= 65535;
}

/* ---- PROXY protocol (haproxy.org/download/2.9/doc/proxy-protocol.txt) */

static enum mf_proxy_parse bad(struct mf_proxy_header *out, const char *why)
{
    out->why = why;
    return MF_PROXY_BAD;
}

static enum mf_proxy_parse parse_v2(const uint8_t *data, size_t len, struct mf_proxy_header *out)
{
    if (len < 16)
        return MF_PROXY_MORE;
    size_t body = (size_t)data[14] << 8 | data[15];
    if (16 + body > MF_PROXY_MAX_HEADER)
        return bad(out, "a v2 header over 4 KiB");
    if ((data[12] >> 4) != 2)
        return bad(out, "a v2 signature with another version");
    unsigned command = data[12] & 0xf, family = data[13] >> 4, transport = data[13] & 0xf;
    if (command > 1)
        return bad(out, "a v2 command other than LOCAL and PROXY");
    if (len < 16 + body)
        return MF_PROXY_MORE;
    *out = (struct mf_proxy_header){.len = 16 + body};
    if (command == 0) /* LOCAL: the proxy's own connection (a health check) */
        return MF_PROXY_DONE;
    if (family == 1 && transport == 1) { /* TCP over IPv4: source, destination, ports */
        if (body < 12)
            return bad(out, "a v2 IPv4 address block shorter than 12 bytes");
        mapped_v4(data + 16, &out->source);
        out->has_source = true;
        return MF_PROXY_DONE;
    }
    if (family == 2 && transport == 1) { /* TCP over IPv6 */
        if (body < 36)
            return bad(out, "a v2 IPv6 address block shorter than 36 bytes");
        memcpy(out->source.bytes, data + 16, 16);
        out->has_source = true;
        return MF_PROXY_DONE;
    }
    if (family == 0 || (family == 3 && transport == 1)) /* UNSPEC, or a Unix socket's client: no address */
        return MF_PROXY_DONE;
    return bad(out, "a v2 family or transport other than TCP over IPv4 or IPv6");
}

/* "PROXY TCP4 src dst sport dport\r\n" (or TCP6), "PROXY UNKNOWN ...\r\n". */
static enum mf_proxy_parse parse_v1(const uint8_t *data, size_t len, struct mf_proxy_header *out)
{
    const char *text = (const char *)data;
    const char *end = NULL;
    for (size_t i = 0; i + 1 < len && i + 1 < V1_MAX; i++)
        if (text[i] == '\r' && text[i + 1] == '\n') {
            end = text + i;
            break;
        }
    if (end == NULL)
        return len < V1_MAX ? MF_PROXY_MORE : bad(out, "a v1 line over 107 bytes");
    *out = (struct mf_proxy_header){.len = (size_t)(end - text) + 2};
    const char *field[6];
    size_t field_len[6], n = 0;
    for (const char *p = text; p < end && n < 6;) {
        const char *space = memchr(p, ' ', (size_t)(end - p));
        const char *stop = n < 5 && space != NULL ? space : end;
        field[n] = p;
        field_len[n++] = (size_t)(stop - p);
        p = stop + 1;
    }
    if (n >= 2 && field_len[1] == 7 && memcmp(field[1], "UNKNOWN", 7) == 0)
        return MF_PROXY_DONE; /* the proxy does not know: the peer stays */
    bool tcp4 = n >= 2 && field_len[1] == 4 && memcmp(field[1], "TCP4", 4) == 0;
    bool tcp6 = n >= 2 && field_len[1] == 4 && memcmp(field[1], "TCP6", 4) == 0;
    if (n != 6 || !(tcp4 || tcp6))
        return bad(out, "a v1 line other than TCP4, TCP6 or UNKNOWN with its four fields");
    struct mf_addr destination;
    if (!mf_addr_parse(field[2], field_len[2], &out->source) || !mf_addr_parse(field[3], field_len[3], &destination)
        || is_mapped_v4(&out->source) != tcp4 || is_mapped_v4(&destination) != tcp4)
        return bad(out, "a v1 address that is not of its family");
    if (!mf_port_number(field[4], field_len[4]) || !mf_port_number(field[5], field_len[5]))
        return bad(out, "a v1 port that is not a number of 0..65535");
    out->has_source = true;
    return MF_PROXY_DONE;
}

enum mf_proxy_parse mf_proxy_header_parse(const uint8_t *data, size_t len, struct mf_proxy_header *out)
{
    size_t v2 = len < sizeof(v2_signature) ? len : sizeof(v2_signature);
    size_t v1 = len < sizeof(v1_prefix) - 1 ? len : sizeof(v1_prefix) - 1;
    if (len == 0)
        return MF_PROXY_MORE;
    if (memcmp(data, v2_signature, v2) == 0)
        return v2 < sizeof(v2_signature) ? MF_PROXY_MORE : parse_v2(data, len, out);
    if (memcmp(data, v1_prefix, v1) == 0)
        return v1 < sizeof(v1_prefix) - 1 ? MF_PROXY_MORE : parse_v1(data, len, out);
    return MF_PROXY_NONE;
}

/* ---- Forwarded and X-Forwarded-For */

struct hop {
    bool is_addr;
    struct mf_addr addr;
};

struct hops {
    struct hop hop[MF_FORWARDED_MAX_HOPS];
    size_t count;
    bool overflow;
};

static void trim(const char **s, size_t *len)
{
    while (*len > 0 && (**s == ' ' || **s == '\t'))
        (*s)++, (*len)--;
    while (*len > 0 && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t'))
        (*len)--;
}

/* A port after a node: digits, or an obfuscated "_name" (RFC 7239 6.3). */
static bool valid_port(const char *p, size_t len)
{
    return (len > 0 && p[0] == '_') || mf_port_number(p, len);
}


/* A node: "1.2.3.4", "1.2.3.4:80", "[2001:db8::1]", "[2001:db8::1]:80" or a bare "2001:db8::1". */
static bool parse_node(const char *s, size_t len, struct mf_addr *out)
{
    if (len > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (close == NULL)
            return false;
        size_t inner = (size_t)(close - s) - 1, rest = len - inner - 2;
        if (rest > 0 && (close[1] != ':' || !valid_port(close + 2, rest - 1)))
            return false;
        return memchr(s + 1, ':', inner) != NULL && mf_addr_parse(s + 1, inner, out);
    }
    const char *colon = memchr(s, ':', len);
    if (colon != NULL && memchr(colon + 1, ':', len - (size_t)(colon - s) - 1) == NULL) { /* IPv4 and a port */
        size_t host = (size_t)(colon - s);
        return valid_port(colon + 1, len - host - 1) && mf_addr_parse(s, host, out)
               && memchr(s, ':', host) == NULL;
    }
    return mf_addr_parse(s, len, out);
}

static void add_hop(struct hops *hops, bool is_addr, const struct mf_addr *addr)
{
    if (hops->count == MF_FORWARDED_MAX_HOPS) {
        hops->overflow = true;
        return;
    }
    hops->hop[hops->count++] = (struct hop){.is_addr = is_addr, .addr = is_addr ? *addr : (struct mf_addr){{0}}};
}

/* The end of a Forwarded piece at one of the stops (outside quoted strings), or len. */
static size_t piece_end(const char *s, size_t len, const char *stops)
{
    bool quoted = false;
    for (size_t i = 0; i < len; i++) {
        if (quoted && s[i] == '\\')
            i++;
        else if (s[i] == '"')
            quoted = !quoted;
        else if (!quoted && strchr(stops, s[i]) != NULL)
            return i;
    }
    return len;
}

/* A Forwarded element's for= node, unquoted; false if it has none or a malformed one. */
static bool element_for(const char *s, size_t len, struct mf_addr *out)
{
    while (len > 0) {
        size_t end = piece_end(s, len, ";");
        const char *pair = s;
        size_t pair_len = end;
        trim(&pair, &pair_len);
        if (pair_len > 4 && strncasecmp(pair, "for=", 4) == 0) {
            const char *value = pair + 4;
            size_t value_len = pair_len - 4;
            char unquoted[64];
            if (value_len >= 2 && value[0] == '"' && value[value_len - 1] == '"') {
                size_t n = 0;
                for (size_t i = 1; i + 1 < value_len; i++) {
                    if (value[i] == '\\' && i + 2 < value_len)
                        i++;
                    if (n == sizeof(unquoted))
                        return false;
                    unquoted[n++] = value[i];
                }
                value = unquoted;
                value_len = n;
            }
            return parse_node(value, value_len, out);
        }
        s += end < len ? end + 1 : end;
        len -= end < len ? end + 1 : end;
    }
    return false;
}

static void parse_line(const char *s, size_t len, bool forwarded, struct hops *hops)
{
    while (len > 0) {
        size_t end = piece_end(s, len, ","); /* an X-Forwarded-For node holds no quote */
        const char *element = s;
        size_t element_len = end;
        trim(&element, &element_len);
        if (element_len > 0) { /* empty list elements are allowed (RFC 9110 5.6.1) */
            struct mf_addr addr;
            bool is_addr = forwarded ? element_for(element, element_len, &addr)
                                     : parse_node(element, element_len, &addr);
            add_hop(hops, is_addr, &addr);
        }
        s += end < len ? end + 1 : end;
        len -= end < len ? end + 1 : end;
    }
}

bool mf_forwarded_client(const struct mf_forwarded_lines *lines, bool forwarded, const struct mf_proxy_net *nets,
                         size_t count, struct mf_addr *client)
{
    struct hops hops = {.count = 0};
    for (size_t i = 0; i < lines->count; i++)
        parse_line(lines->value[i], lines->len[i], forwarded, &hops);
    if (hops.count == 0 || hops.overflow)
        return false;
    for (size_t i = hops.count; i-- > 0;) {
        if (!hops.hop[i].is_addr)
            return false; /* who sent what is left of it is unknown */
        if (!mf_proxy_trusted(nets, count, &hops.hop[i].addr)) {
            *client = hops.hop[i].addr;
            return true;
        }
    }
    *client = hops.hop[0].addr; /* every hop a trusted proxy: the first one */
    return true;
}
