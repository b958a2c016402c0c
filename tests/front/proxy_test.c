/*
 * Unit tests of csrc/front/proxy.c (never part of the installed
 * executable): PROXY headers v2 and v1, whole, split and malformed; the
 * Forwarded and X-Forwarded-For walk. Built and run by
 * tests/unit/test_front_proxy.py, also under the sanitizers; prints each
 * failure and exits 1 if any.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "front/proxy.h"

static int failures;

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
            failures++;                                                      \
        }                                                                    \
    } while (0)

static const uint8_t sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

/* A v2 header into out: its length. body is the address block and TLVs. */
static size_t v2(uint8_t *out, uint8_t ver_cmd, uint8_t family, const uint8_t *body, size_t body_len)
{
    memcpy(out, sig, sizeof(sig));
    out[12] = ver_cmd;
    out[13] = family;
    out[14] = (uint8_t)(body_len >> 8);
    out[15] = (uint8_t)body_len;
    if (body_len > 0)
        memcpy(out + 16, body, body_len);
    return 16 + body_len;
}

static const char *text_of(const struct mf_addr *addr)
{
    static char text[64];
    mf_addr_text(addr, text, sizeof(text));
    return text;
}

/* The header must parse whole; then each shorter beginning must ask for more. */
static void whole_and_split(const uint8_t *data, size_t len, const char *source)
{
    struct mf_proxy_header h;
    CHECK(mf_proxy_header_parse(data, len, &h) == MF_PROXY_DONE);
    CHECK(h.len == len);
    CHECK(h.has_source == (source != NULL));
    if (source != NULL)
        CHECK(strcmp(text_of(&h.source), source) == 0);
    for (size_t cut = 0; cut < len; cut++) {
        if (mf_proxy_header_parse(data, cut, &h) != MF_PROXY_MORE) {
            printf("FAIL: a header cut at %zu of %zu bytes is not MORE\n", cut, len);
            failures++;
        }
    }
}

static void test_v2(void)
{
    uint8_t buf[8192];
    struct mf_proxy_header h;
    /* TCP over IPv4: 203.0.113.7:4711 -> 192.0.2.1:80, then a request. */
    static const uint8_t v4[12] = {203, 0, 113, 7, 192, 0, 2, 1, 0x12, 0x67, 0, 80};
    size_t len = v2(buf, 0x21, 0x11, v4, sizeof(v4));
    whole_and_split(buf, len, "203.0.113.7");
    memcpy(buf + len, "GET / HTTP/1.1\r\n", 16);
    CHECK(mf_proxy_header_parse(buf, len + 16, &h) == MF_PROXY_DONE && h.len == len);

    /* TCP over IPv6. */
    uint8_t v6[36] = {0};
    CHECK(inet_pton(AF_INET6, "2001:db8::1", v6) == 1);
    CHECK(inet_pton(AF_INET6, "2001:db8::2", v6 + 16) == 1);
    len = v2(buf, 0x21, 0x21, v6, sizeof(v6));
    whole_and_split(buf, len, "2001:db8::1");

    /* TLVs after the addresses are skipped. */
    uint8_t with_tlvs[12 + 5 + 3 + 7] = {198, 51, 100, 9, 192, 0, 2, 1, 0, 1, 0, 80,
                                               0x01, 0x00, 0x02, 'h', '2', /* ALPN */
                                               0x04, 0x00, 0x00,           /* NOOP, empty */
                                               0x03, 0x00, 0x04, 1, 2, 3, 4}; /* CRC32C */
    len = v2(buf, 0x21, 0x11, with_tlvs, sizeof(with_tlvs));
    whole_and_split(buf, len, "198.51.100.9");

    /* LOCAL (a health check), with or without an address block: the peer stays. */
    len = v2(buf, 0x20, 0x00, NULL, 0);
    whole_and_split(buf, len, NULL);
    len = v2(buf, 0x20, 0x11, v4, sizeof(v4));
    whole_and_split(buf, len, NULL);
    /* PROXY over UNSPEC: the peer stays. */
    len = v2(buf, 0x21, 0x00, NULL, 0);
    whole_and_split(buf, len, NULL);

    /* Malformed. */
    len = v2(buf, 0x11, 0x11, v4, sizeof(v4)); /* version 1 in a v2 signature */
    CHECK(mf_proxy_header_parse(buf, len, &h) == MF_PROXY_BAD);
    len = v2(buf, 0x22, 0x11, v4, sizeof(v4)); /* command 2 */
    CHECK(mf_proxy_header_parse(buf, len, &h) == MF_PROXY_BAD);
    len = v2(buf, 0x21, 0x11, v4, 8); /* an IPv4 block too short */
    CHECK(mf_proxy_header_parse(buf, len, &h) == MF_PROXY_BAD);
    len = v2(buf, 0x21, 0x21, v6, 20); /* an IPv6 block too short */
    CHECK(mf_proxy_header_parse(buf, len, &h) == MF_PROXY_BAD);
    len = v2(buf, 0x21, 0x12, v4, sizeof(v4)); /* UDP */
    CHECK(mf_proxy_header_parse(buf, len, &h) == MF_PROXY_BAD);
    len = v2(buf, 0x21, 0x41, v4, sizeof(v4)); /* family 4 */
    CHECK(mf_proxy_header_parse(buf, len, &h) == MF_PROXY_BAD);
    /* A length over the bound: refused at once, not waited for. */
    v2(buf, 0x21, 0x11, v4, sizeof(v4));
    buf[14] = 0xff;
    buf[15] = 0xff;
    CHECK(mf_proxy_header_parse(buf, 16, &h) == MF_PROXY_BAD);
    buf[14] = (uint8_t)((MF_PROXY_MAX_HEADER - 16 + 1) >> 8);
    buf[15] = (uint8_t)(MF_PROXY_MAX_HEADER - 16 + 1);
    CHECK(mf_proxy_header_parse(buf, 16, &h) == MF_PROXY_BAD);
    /* The longest allowed one is read (mostly TLV padding). */
    memset(buf + 16, 0, MF_PROXY_MAX_HEADER - 16);
    memcpy(buf + 16, v4, sizeof(v4));
    buf[14] = (uint8_t)((MF_PROXY_MAX_HEADER - 16) >> 8);
    buf[15] = (uint8_t)(MF_PROXY_MAX_HEADER - 16);
    CHECK(mf_proxy_header_parse(buf, MF_PROXY_MAX_HEADER - 1, &h) == MF_PROXY_MORE);
    CHECK(mf_proxy_header_parse(buf, MF_PROXY_MAX_HEADER, &h) == MF_PROXY_DONE && h.len == MF_PROXY_MAX_HEADER);

    /* Not a header: a bad signature is HTTP's business (a 400 there). */
    len = v2(buf, 0x21, 0x11, v4, sizeof(v4));
    buf[11] = 0x0b;
    CHECK(mf_proxy_header_parse(buf, len, &h) == MF_PROXY_NONE);
    CHECK(mf_proxy_header_parse((const uint8_t *)"\r\n\r\nX", 5, &h) == MF_PROXY_NONE);
    CHECK(mf_proxy_header_parse((const uint8_t *)"GET / HTTP/1.1\r\n", 16, &h) == MF_PROXY_NONE);
    CHECK(mf_proxy_header_parse((const uint8_t *)"POST", 4, &h) == MF_PROXY_NONE);
    CHECK(mf_proxy_header_parse((const uint8_t *)"P", 1, &h) == MF_PROXY_MORE);
    CHECK(mf_proxy_header_parse((const uint8_t *)"", 0, &h) == MF_PROXY_MORE);
}

static void test_v1(void)
{
    struct mf_proxy_header h;
    const char *tcp4 = "PROXY TCP4 203.0.113.7 192.0.2.1 4711 80\r\n";
    whole_and_split((const uint8_t *)tcp4, strlen(tcp4), "203.0.113.7");
    const char *tcp6 = "PROXY TCP6 2001:db8::1 2001:db8::2 4711 443\r\n";
    whole_and_split((const uint8_t *)tcp6, strlen(tcp6), "2001:db8::1");
    const char *unknown = "PROXY UNKNOWN\r\n";
    whole_and_split((const uint8_t *)unknown, strlen(unknown), NULL);
    const char *bad[] = {
        "PROXY TCP4 203.0.113.7 192.0.2.1 4711\r\n",        /* a field missing */
        "PROXY TCP4 2001:db8::1 192.0.2.1 4711 80\r\n",     /* not of its family */
        "PROXY TCP6 203.0.113.7 2001:db8::2 4711 80\r\n",
        "PROXY TCP4 203.0.113.7 192.0.2.1 4711 65536\r\n",  /* port over 65535 */
        "PROXY TCP4 203.0.113.7 192.0.2.1 47a1 80\r\n",
        "PROXY TCP4 203.0.113.7 192.0.2.1 4711 80 extra\r\n",
        "PROXY UDP4 203.0.113.7 192.0.2.1 4711 80\r\n",
        "PROXY TCP4 203.0.113.999 192.0.2.1 4711 80\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (mf_proxy_header_parse((const uint8_t *)bad[i], strlen(bad[i]), &h) != MF_PROXY_BAD) {
            printf("FAIL: v1 line %zu is not BAD\n", i);
            failures++;
        }
    char longer[200];
    memset(longer, 'x', sizeof(longer));
    memcpy(longer, "PROXY TCP4 ", 11);
    CHECK(mf_proxy_header_parse((const uint8_t *)longer, 106, &h) == MF_PROXY_MORE);
    CHECK(mf_proxy_header_parse((const uint8_t *)longer, 107, &h) == MF_PROXY_BAD);
}

/* A trusted network; prefix of 128 bits (IPv4: 96 + its own). */
static struct mf_proxy_net net(const char *text, unsigned prefix)
{
    struct mf_addr addr;
    struct mf_proxy_net out = {.prefix = (uint8_t)prefix};
    if (!mf_addr_parse(text, strlen(text), &addr))
        abort(); /* a test's own typo */
    memcpy(out.addr, addr.bytes, sizeof(out.addr));
    return out;
}

static void test_addresses(void)
{
    struct mf_addr a;
    CHECK(mf_addr_parse("192.0.2.1", 9, &a) && strcmp(text_of(&a), "192.0.2.1") == 0);
    CHECK(mf_addr_parse("2001:DB8::1", 11, &a) && strcmp(text_of(&a), "2001:db8::1") == 0);
    CHECK(!mf_addr_parse("192.0.2", 7, &a));
    CHECK(!mf_addr_parse("", 0, &a));
    CHECK(!mf_addr_parse("example.com", 11, &a));
    CHECK(!mf_addr_parse("1.2.3.4\0", 8, &a));
    /* 10.0.0.0/15: 10.0.x.x and 10.1.x.x */
    struct mf_proxy_net nets[2] = {net("10.0.0.0", 96 + 15), net("2001:db8::", 32)};
    CHECK(mf_addr_parse("10.1.255.3", 10, &a) && mf_proxy_trusted(nets, 2, &a));
    CHECK(mf_addr_parse("10.0.0.1", 8, &a) && mf_proxy_trusted(nets, 2, &a));
    CHECK(mf_addr_parse("10.2.0.1", 8, &a) && !mf_proxy_trusted(nets, 2, &a));
    CHECK(mf_addr_parse("2001:db8:ffff::1", 16, &a) && mf_proxy_trusted(nets, 2, &a));
    CHECK(mf_addr_parse("2001:db9::1", 11, &a) && !mf_proxy_trusted(nets, 2, &a));
    CHECK(mf_addr_parse("::ffff:10.1.0.9", 15, &a) && mf_proxy_trusted(nets, 2, &a)); /* mapped is IPv4 */
    CHECK(!mf_proxy_trusted(nets, 0, &a));
    struct mf_proxy_net everything = {.prefix = 0};
    CHECK(mf_proxy_trusted(&everything, 1, &a));
}

/* The walk over the given lines; its client as text, or "-" when the peer stays. */
static const char *walk(bool forwarded, const char *const *values, size_t count)
{
    struct mf_proxy_net nets[2] = {net("127.0.0.1", 128), net("2001:db8:aaaa::", 48)};
    struct mf_forwarded_lines lines = {.count = count};
    for (size_t i = 0; i < count; i++) {
        lines.value[i] = values[i];
        lines.len[i] = strlen(values[i]);
    }
    struct mf_addr client;
    if (!mf_forwarded_client(&lines, forwarded, nets, 2, &client))
        return "-";
    return text_of(&client);
}

#define WALK(forwarded, expected, ...)                                                     \
    do {                                                                                   \
        const char *const values_[] = {__VA_ARGS__};                                       \
        const char *got_ = walk(forwarded, values_, sizeof(values_) / sizeof(values_[0])); \
        if (strcmp(got_, expected) != 0) {                                                 \
            printf("FAIL %s:%d: walk gave %s, not %s\n", __FILE__, __LINE__, got_, expected); \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

static void test_walk(void)
{
    /* X-Forwarded-For: from the right, past trusted proxies. */
    WALK(false, "198.51.100.1", "198.51.100.1, 127.0.0.1");
    WALK(false, "198.51.100.2", "198.51.100.1, 198.51.100.2, 127.0.0.1");
    WALK(false, "198.51.100.1", "198.51.100.1");
    WALK(false, "127.0.0.1", "127.0.0.1, 2001:db8:aaaa::5"); /* all trusted: the leftmost */
    WALK(false, "198.51.100.2", "198.51.100.1", "198.51.100.2,127.0.0.1"); /* lines joined in order */
    WALK(false, "198.51.100.3", "198.51.100.3:4711");
    WALK(false, "2001:db8::7", "[2001:db8::7]:4711");
    WALK(false, "2001:db8::7", "2001:db8::7");
    WALK(false, "198.51.100.1", " 198.51.100.1 ,, 127.0.0.1 ,");
    WALK(false, "-", "");
    WALK(false, "-", "unknown");
    WALK(false, "-", "198.51.100.1, garbage, 127.0.0.1"); /* a bad hop before the client */
    WALK(false, "198.51.100.2", "garbage, 198.51.100.2, 127.0.0.1"); /* left of the client: not read */
    WALK(false, "-", "198.51.100.1:99999");
    WALK(false, "-", "[2001:db8::7");
    WALK(false, "-", "1.2.3.4:5:6");
    WALK(false, "-", "\"198.51.100.1, 127.0.0.1");
    /* Forwarded: the for= of each element. */
    WALK(true, "2001:db8::1", "for=\"[2001:db8::1]:4711\"");
    WALK(true, "192.0.2.60", "for=192.0.2.60;proto=http;by=203.0.113.43");
    WALK(true, "192.0.2.60", "For=192.0.2.60, for=127.0.0.1;proto=\"h;t,tp\"");
    WALK(true, "192.0.2.61", "for=192.0.2.60", "for=192.0.2.61;by=127.0.0.1");
    WALK(true, "192.0.2.60", "proto=https; for = 10.0.0.1, for=\"192.0.2.60:80\", for=127.0.0.1");
    WALK(true, "2001:db8::1", "for=\"[2001:db8::1]\"");
    WALK(true, "-", "for=unknown");
    WALK(true, "-", "for=_hidden, for=127.0.0.1");
    WALK(true, "192.0.2.9", "for=_hidden, for=192.0.2.9");
    WALK(true, "-", "proto=http");
    WALK(true, "-", "for=\"[2001:db8::1]:4711");
    WALK(true, "-", "for=\"[2001:db8::1]:x\"");
    WALK(true, "192.0.2.1", "for=\"192.0.2.1:_obf\"");
    /* A list over MF_FORWARDED_MAX_HOPS: ignored. */
    char many[MF_FORWARDED_MAX_HOPS * 11 + 16];
    size_t n = 0;
    for (int i = 0; i <= MF_FORWARDED_MAX_HOPS; i++)
        n += (size_t)snprintf(many + n, sizeof(many) - n, "%s10.0.0.%d", i ? "," : "", i % 250);
    WALK(false, "-", many);
}

int main(void)
{
    test_v2();
    test_v1();
    test_addresses();
    test_walk();
    if (failures > 0) {
        printf("%d failures\n", failures);
        return 1;
    }
    printf("all passed\n");
    return 0;
}
