/* Reading a request into its ticket; see request.h. */
#include "front/request.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/log.h"
#include "front/metrics.h"

static struct mf_conn *conn_of(llhttp_t *parser)
{
    return parser->data;
}

static int refuse(llhttp_t *parser, int status, const char *reason)
{
    conn_of(parser)->error_status = status;
    llhttp_set_error_reason(parser, reason);
    return HPE_USER;
}

/* Appends to the ticket's head buffer; over MF_FRONT_MAX_HEAD it is a 431. */
static int append(llhttp_t *parser, const char *at, size_t len)
{
    struct mf_front_ticket *t = conn_of(parser)->parsing;
    if (t->buf_len + len > MF_FRONT_MAX_HEAD)
        return refuse(parser, 431, "request head too large");
    if (!mf_reserve(&t->buf, &t->buf_cap, t->buf_len + len, 1024)) {
        mf_warn_last();
        return refuse(parser, 503, "out of memory");
    }
    memcpy(t->buf + t->buf_len, at, len);
    t->buf_len += len;
    return 0;
}

static int on_message_begin(llhttp_t *parser)
{
    return mf_conn_request_begin(conn_of(parser)) ? 0 : refuse(parser, 503, "out of memory");
}

static int on_method(llhttp_t *parser, const char *at, size_t len)
{
    conn_of(parser)->parsing->method_len += (uint32_t)len;
    return append(parser, at, len);
}

static int on_url(llhttp_t *parser, const char *at, size_t len)
{
    struct mf_front_ticket *t = conn_of(parser)->parsing;
    if (t->url_len == 0)
        t->url_off = (uint32_t)t->buf_len;
    t->url_len += (uint32_t)len;
    if (t->url_len > MF_FRONT_MAX_URL)
        return refuse(parser, 414, "request target too long");
    return append(parser, at, len);
}

static int on_header_field(llhttp_t *parser, const char *at, size_t len)
{
    struct mf_front_ticket *t = conn_of(parser)->parsing;
    if (t->head_done)
        return 0; /* a trailer: the body's sender may not add headers */
    if (t->header_count == 0 || t->in_value) {
        if (t->header_count == MF_FRONT_MAX_HEADERS)
            return refuse(parser, 431, "too many header fields");
        t->pos[t->header_count++] = (struct mf_header_pos){.name_off = (uint32_t)t->buf_len,
                                                           .value_off = (uint32_t)t->buf_len};
        t->in_value = false;
    }
    t->pos[t->header_count - 1].name_len += (uint32_t)len;
    return append(parser, at, len);
}

static int on_header_value(llhttp_t *parser, const char *at, size_t len)
{
    struct mf_front_ticket *t = conn_of(parser)->parsing;
    if (t->head_done)
        return 0;
    /* llhttp lets obs-fold and some control bytes through: a value may
     * hold visible ASCII, obs-text, SP and HTAB only (RFC 9110 5.5). */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)at[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return refuse(parser, 400, "control character in a header value");
    }
    /* obs-fold: llhttp joins a line that starts with SP or HTAB to the
     * value before it; such a piece is the only one that follows an LF. */
    struct mf_conn *conn = conn_of(parser);
    if ((at > conn->in ? at[-1] : conn->byte_before) == '\n')
        return refuse(parser, 400, "obsolete line folding");
    struct mf_header_pos *pos = &t->pos[t->header_count - 1];
    if (!t->in_value) {
        pos->value_off = (uint32_t)t->buf_len;
        t->in_value = true;
    }
    pos->value_len += (uint32_t)len;
    return append(parser, at, len);
}

static bool name_is(const struct mf_front_ticket *t, const struct mf_header_pos *pos, const char *name)
{
    return pos->name_len == strlen(name) && strncasecmp(t->buf + pos->name_off, name, pos->name_len) == 0;
}

static bool value_is(const struct mf_front_ticket *t, const struct mf_header_pos *pos, const char *value)
{
    return pos->value_len == strlen(value) && strncasecmp(t->buf + pos->value_off, value, pos->value_len) == 0;
}

/* One Transfer-Encoding field's codings, in order, after those of the
 * fields before it: *chunked_last says whether chunked is the last so far,
 * *other whether a coding we do not decode came. False if chunked is not
 * last (RFC 9112 6.3: no way to find the body's end). */
static bool scan_codings(const char *value, size_t len, bool *chunked_last, bool *other)
{
    size_t i = 0;
    while (i < len) {
        size_t end = i;
        while (end < len && value[end] != ',')
            end++;
        size_t a = i, b = end;
        while (a < b && (value[a] == ' ' || value[a] == '\t'))
            a++;
        while (b > a && (value[b - 1] == ' ' || value[b - 1] == '\t'))
            b--;
        if (b > a) { /* empty list elements are allowed (RFC 9110 5.6.1) */
            if (*chunked_last)
                return false; /* a coding after chunked */
            if (b - a == 7 && strncasecmp(value + a, "chunked", 7) == 0)
                *chunked_last = true;
            else
                *other = true;
        }
        i = end + 1;
    }
    return true;
}

/* The length of an absolute-form target's "http://" or "https://"
 * (case-insensitive), or 0. */
static size_t absolute_scheme(const char *url, size_t len)
{
    if (len > 7 && strncasecmp(url, "http://", 7) == 0)
        return 7;
    if (len > 8 && strncasecmp(url, "https://", 8) == 0)
        return 8;
    return 0;
}

/* Host, Expect, Transfer-Encoding and the request target; 0 or the
 * status refusing it. */
static int check_head(llhttp_t *parser, struct mf_front_ticket *t)
{
    const struct mf_header_pos *host = NULL, *expect = NULL;
    bool coded = false, chunked_last = false, other_coding = false;
    for (size_t i = 0; i < t->header_count; i++) {
        const struct mf_header_pos *pos = &t->pos[i];
        if (name_is(t, pos, "transfer-encoding")) {
            /* RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding
             * has faulty framing; llhttp would de-chunk it. */
            if (parser->http_major == 1 && parser->http_minor == 0)
                return 400;
            coded = true;
            if (!scan_codings(t->buf + pos->value_off, pos->value_len, &chunked_last, &other_coding))
                return 400;
        } else if (name_is(t, pos, "host")) {
            if (host != NULL)
                return 400; /* two hosts: which tenant? */
            host = pos;
        } else if (name_is(t, pos, "expect")) {
            if (expect != NULL || !value_is(t, pos, "100-continue"))
                return 417;
            expect = pos;
        }
    }
    if (coded && !chunked_last)
        return 400; /* RFC 9112 6.3: the body's length is unknown */
    if (other_coding)
        return 501; /* RFC 9112 6.1: gzip, chunked would reach the program still gzip-coded */
    const char *url = t->buf + t->url_off;
    bool asterisk = t->url_len == 1 && url[0] == '*' && parser->method == HTTP_OPTIONS;
    size_t scheme = absolute_scheme(url, t->url_len);
    if (t->url_len == 0 || (url[0] != '/' && !asterisk && scheme == 0))
        return 400; /* origin-form, absolute-form or OPTIONS * only */
    char normal[MF_FRONT_MAX_URL];
    size_t normal_len = 0;
    if (host == NULL) {
        if (parser->http_major == 1 && parser->http_minor >= 1)
            return 400; /* RFC 9112 3.2: an HTTP/1.1 request must name its host */
    } else if (host->value_len > sizeof(normal)
               || !mf_host_normalize(t->buf + host->value_off, host->value_len, normal, &normal_len)) {
        return 400; /* invalid even if the target names the host (RFC 9112 3.2) */
    }
    if (scheme != 0) {
        /* RFC 9112 3.2.2: the target's authority is the host, not Host. */
        const char *authority = url + scheme;
        size_t rest = t->url_len - scheme, len = 0;
        while (len < rest && authority[len] != '/' && authority[len] != '?' && authority[len] != '#')
            len++;
        if (len == 0 || memchr(authority, '@', len) != NULL /* no userinfo: RFC 9110 4.2.4 */
            || !mf_host_normalize(authority, len, normal, &normal_len))
            return 400;
        t->url_off += (uint32_t)(scheme + len);
        t->url_len -= (uint32_t)(scheme + len);
        if (t->url_len == 0 || t->buf[t->url_off] != '/') {
            /* http://host or http://host?q: the path is "/" (RFC 9110 4.2.3);
             * copied first, as append may move buf. */
            char path[MF_FRONT_MAX_URL + 1] = "/";
            memcpy(path + 1, t->buf + t->url_off, t->url_len);
            uint32_t off = (uint32_t)t->buf_len;
            if (append(parser, path, t->url_len + 1) != 0)
                return conn_of(parser)->error_status;
            t->url_off = off;
            t->url_len += 1;
        }
    }
    uint32_t off = (uint32_t)t->buf_len;
    if (append(parser, normal, normal_len) != 0)
        return conn_of(parser)->error_status;
    t->host_off = off;
    t->host_len = (uint32_t)normal_len;
    /* RFC 9110 10.1.1: an HTTP/1.0 client's 100-continue is ignored. */
    t->want_continue = expect != NULL && parser->http_major == 1 && parser->http_minor >= 1;
    return 0;
}

/* Decided once the Host is known, and kept: the table may change before
 * the body ends, but not what this request was told. */
static void route(const struct mf_front_loop *loop, struct mf_front_ticket *t)
{
    t->max_body = loop->config->max_body;
    if (loop->routes == NULL) {
        t->route = MF_ROUTE_NO_TABLE;
        return;
    }
    const struct mf_tenant_route *tenant = mf_routes_match(loop->routes, t->buf + t->host_off, t->host_len);
    if (tenant == NULL) {
        t->route = MF_ROUTE_NO_TENANT;
        return;
    }
    t->route = MF_ROUTE_TENANT;
    t->limits = tenant->limits;
    memcpy(t->tenant, tenant->name, tenant->name_len);
    t->tenant_len = tenant->name_len;
    t->metrics = mf_metrics_record(loop->index, tenant->limits.slot);
    if (tenant->limits.max_body < t->max_body)
        t->max_body = tenant->limits.max_body;
}

/* A trusted peer's Forwarded, else X-Forwarded-For, names the client
 * (proxy.h: the walk). Forwarded wins: it is the standard, and a proxy
 * that writes it means it. The headers themselves stay as sent. */
static void forwarded_client(const struct mf_conn *conn, struct mf_front_ticket *t)
{
    const struct mf_routes *routes = conn->loop->routes;
    if (routes == NULL || !conn->peer_known || !mf_proxy_trusted(routes->proxies, routes->proxy_count, &conn->peer))
        return;
    struct mf_forwarded_lines forwarded = {.count = 0}, xff = {.count = 0};
    for (size_t i = 0; i < t->header_count; i++) {
        const struct mf_header_pos *pos = &t->pos[i];
        struct mf_forwarded_lines *lines = name_is(t, pos, "forwarded") ? &forwarded
                                           : name_is(t, pos, "x-forwarded-for") ? &xff : NULL;
        if (lines == NULL)
            continue;
        if (lines->count == MF_FORWARDED_MAX_LINES)
            return; /* more lines than a chain of proxies writes: none is believed */
        lines->value[lines->count] = t->buf + pos->value_off;
        lines->len[lines->count++] = pos->value_len;
    }
    bool use_forwarded = forwarded.count > 0;
    struct mf_addr client;
    if (mf_forwarded_client(use_forwarded ? &forwarded : &xff, use_forwarded, routes->proxies, routes->proxy_count,
                            &client))
        t->client_len = mf_addr_text(&client, t->client, sizeof(t->client));
}

/* llhttp skips a value's leading whitespace but keeps its trailing:
 * neither is part of the value (RFC 9112 5), for Host nor the program. */
static void trim_values(struct mf_front_ticket *t)
{
    for (size_t i = 0; i < t->header_count; i++) {
        struct mf_header_pos *pos = &t->pos[i];
        while (pos->value_len > 0 && (t->buf[pos->value_off + pos->value_len - 1] == ' '
                                      || t->buf[pos->value_off + pos->value_len - 1] == '\t'))
            pos->value_len--;
    }
}

static int on_headers_complete(llhttp_t *parser)
{
    struct mf_conn *conn = conn_of(parser);
    struct mf_front_ticket *t = conn->parsing;
    t->head_done = true;
    trim_values(t);
    if (parser->method == HTTP_CONNECT)
        return refuse(parser, 405, "CONNECT");
    int status = check_head(parser, t);
    if (status != 0)
        return refuse(parser, status, "invalid request head");
    route(conn->loop, t);
    forwarded_client(conn, t);
    if ((parser->flags & F_CONTENT_LENGTH) && parser->content_length > t->max_body)
        return refuse(parser, 413, "request body too large");
    t->head_only = parser->method == HTTP_HEAD;
    bool has_body = (parser->flags & F_CHUNKED) || ((parser->flags & F_CONTENT_LENGTH) && parser->content_length > 0);
    if (!has_body)
        t->want_continue = false;
    mf_conn_head_done(conn, has_body);
    /* Upgrade is ignored: no body is skipped and llhttp's pause after an
     * upgrade request is resumed by the connection (conn.c). */
    return 0;
}

static int on_body(llhttp_t *parser, const char *at, size_t len)
{
    struct mf_conn *conn = conn_of(parser);
    struct mf_front_ticket *t = conn->parsing;
    if (t->body_len + len > t->max_body)
        return refuse(parser, 413, "request body too large"); /* chunked: known only now */
    if (!mf_reserve(&t->body, &t->body_cap, t->body_len + len, 4096)) {
        mf_warn_last();
        return refuse(parser, 503, "out of memory");
    }
    memcpy(t->body + t->body_len, at, len);
    t->body_len += len;
    t->want_continue = false; /* the client sends without waiting */
    return 0;
}

static int on_message_complete(llhttp_t *parser)
{
    struct mf_conn *conn = conn_of(parser);
    conn->parsing->keep_alive = llhttp_should_keep_alive(parser);
    mf_conn_request_end(conn);
    /* Stop after every request, so that the connection decides whether it
     * may take another one (the pipeline limit) before parsing it. */
    return HPE_PAUSED;
}

void mf_request_settings(llhttp_settings_t *settings)
{
    llhttp_settings_init(settings);
    settings->on_message_begin = on_message_begin;
    settings->on_method = on_method;
    settings->on_url = on_url;
    settings->on_header_field = on_header_field;
    settings->on_header_value = on_header_value;
    settings->on_headers_complete = on_headers_complete;
    settings->on_body = on_body;
    settings->on_message_complete = on_message_complete;
}

bool mf_request_finish(struct mf_front_ticket *t)
{
    if (t->header_count > 0) {
        t->headers = calloc(t->header_count, sizeof(*t->headers));
        if (t->headers == NULL)
            return mf_err("calloc(%zu headers)", t->header_count);
    }
    for (size_t i = 0; i < t->header_count; i++)
        t->headers[i] = (struct mf_front_header){
            .name = t->buf + t->pos[i].name_off, .name_len = t->pos[i].name_len,
            .value = t->buf + t->pos[i].value_off, .value_len = t->pos[i].value_len};
    const char *url = t->buf + t->url_off;
    const char *mark = memchr(url, '?', t->url_len);
    size_t path_len = mark ? (size_t)(mark - url) : t->url_len;
    t->request = (struct mf_front_request){
        .id = t->id,
        .method = t->buf, .method_len = t->method_len,
        .path = url, .path_len = path_len,
        .query = mark ? mark + 1 : url + t->url_len,
        .query_len = mark ? t->url_len - path_len - 1 : 0,
        .host = t->buf + t->host_off, .host_len = t->host_len,
        .headers = t->headers, .header_count = t->header_count,
        .body = t->body ? t->body : "", .body_len = t->body_len,
        .client = t->client, .client_len = t->client_len,
        .tenant = t->tenant, .tenant_len = t->tenant_len,
        .limits = &t->limits,
        .arrived_ms = t->arrived_us / 1000,
    };
    return true;
}

static bool is_label_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

bool mf_host_normalize(const char *host, size_t len, char *out, size_t *out_len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)host[i];
        if (c <= 0x20 || c >= 0x7f)
            return false; /* bytes, not characters: no NBSP, no KELVIN SIGN */
        out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : (char)c;
    }
    size_t name_len = len;
    if (len > 0 && out[0] == '[') {
        const char *close = memchr(out, ']', len);
        if (close == NULL)
            return false;
        name_len = (size_t)(close - out) + 1;
        for (size_t i = 1; i + 1 < name_len; i++)
            if (!((out[i] >= '0' && out[i] <= '9') || (out[i] >= 'a' && out[i] <= 'f') || out[i] == ':' || out[i] == '.'))
                return false;
        if (name_len < 4) /* at least "[::]" */
            return false;
    } else {
        const char *colon = memchr(out, ':', len);
        if (colon != NULL)
            name_len = (size_t)(colon - out);
        if (name_len > 0 && out[name_len - 1] == '.')
            name_len--; /* the root label: example.com. is example.com */
        if (name_len == 0 || name_len > 253)
            return false;
        size_t label = 0;
        for (size_t i = 0; i < name_len; i++) {
            unsigned char c = (unsigned char)out[i];
            if (c == '.') {
                if (label == 0 || out[i - 1] == '-')
                    return false;
                label = 0;
            } else if (!is_label_char(c) || (label == 0 && c == '-') || ++label > 63) {
                return false;
            }
        }
        if (label == 0 || out[name_len - 1] == '-')
            return false;
    }
    size_t rest = len - name_len;
    const char *after = out + name_len;
    if (rest > 0 && after[0] == '.')
        after++, rest--; /* the stripped root dot */
    if (rest > 0 && (after[0] != ':' || !mf_port_number(after + 1, rest - 1)))
        return false;
    *out_len = name_len;
    return true;
}
