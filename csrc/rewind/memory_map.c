/* /proc/self/maps reading and parsing; see memory_map.h. */
#define _GNU_SOURCE
#include "rewind/memory_map.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"

bool mf_maps_read(int fd, char *buf, size_t cap, size_t *len)
{
    size_t have = 0;

    for (;;) {
        if (have + 1 >= cap)
            return mf_errx(ENOSPC, "/proc/self/maps is larger than %zu bytes", cap - 1);
        ssize_t n = pread(fd, buf + have, cap - 1 - have, (off_t)have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return mf_err("pread(/proc/self/maps)");
        if (n == 0)
            break;
        have += (size_t)n;
    }
    buf[have] = '\0';
    *len = have;
    return true;
}

static bool hex(const char **p, const char *end, char stop, uint64_t *out)
{
    uint64_t v = 0;
    const char *s = *p;

    if (s == end || *s == stop)
        return false;
    for (; s < end && *s != stop; s++) {
        unsigned d;
        if (*s >= '0' && *s <= '9')
            d = (unsigned)(*s - '0');
        else if (*s >= 'a' && *s <= 'f')
            d = (unsigned)(*s - 'a' + 10);
        else
            return false;
        v = v << 4 | d;
    }
    if (s == end)
        return false;
    *p = s + 1;
    *out = v;
    return true;
}

static bool dec(const char **p, const char *end, uint64_t *out)
{
    uint64_t v = 0;
    const char *s = *p;

    if (s == end || *s < '0' || *s > '9')
        return false;
    for (; s < end && *s >= '0' && *s <= '9'; s++)
        v = v * 10 + (uint64_t)(*s - '0');
    *p = s;
    *out = v;
    return true;
}

static bool skip_field(const char **p, const char *end)
{
    const char *s = *p;
    while (s < end && *s != ' ')
        s++;
    if (s == end)
        return false;
    *p = s + 1;
    return true;
}

/* "start-end perms offset dev inode [path]" */
static bool parse_line(const char *s, const char *end, struct mf_vma *v)
{
    memset(v, 0, sizeof(*v));
    if (!hex(&s, end, '-', &v->start) || !hex(&s, end, ' ', &v->end) || end - s < 5)
        return false;
    v->readable = s[0] == 'r';
    v->writable = s[1] == 'w';
    v->executable = s[2] == 'x';
    v->shared = s[3] == 's';
    s += 5;
    if (!hex(&s, end, ' ', &v->offset) || !skip_field(&s, end) || !dec(&s, end, &v->inode))
        return false;
    while (s < end && *s == ' ')
        s++;
    if (s < end && *s == '[') {
        size_t n = (size_t)(end - s);
        if (n >= sizeof(v->name))
            n = sizeof(v->name) - 1;
        memcpy(v->name, s, n);
    } else if (s < end) {
        v->file = true;
    }
    return v->start < v->end;
}

bool mf_maps_parse(const char *text, size_t len, struct mf_vma *out, size_t cap, size_t *n)
{
    const char *p = text, *end = text + len;

    *n = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = nl != NULL ? nl : end;
        if (line_end > p) {
            if (*n == cap)
                return mf_errx(ENOSPC, "more than %zu mappings", cap);
            if (!parse_line(p, line_end, &out[*n]))
                return mf_errx(EPROTO, "/proc/self/maps: cannot parse '%.*s'", (int)(line_end - p), p);
            (*n)++;
        }
        p = line_end + 1;
    }
    return true;
}
