/* Cost of one request's round trip over the channel shapes a reset worker
 * could have to the front end (bench/channel_costs.py builds and runs it).
 *
 *   channel_costs SHAPE N CORE_FRONT CORE_WORKER
 *
 * A "front" process sends N requests of REQ bytes, one at a time, to a
 * "worker" process that answers each with RESP bytes echoing the request
 * id. Shapes:
 *   pair      a new SOCK_SEQPACKET socketpair per request, one end passed
 *             with SCM_RIGHTS over a persistent channel; request and answer
 *             on the pair, both ends closed (today's shape)
 *   pair-hop  the same, the end forwarded by a middle process (the host)
 *             with a second SCM_RIGHTS hop
 *   sock      one persistent SOCK_SEQPACKET socketpair: send/recv
 *   shm       one shared slot (memfd, sealed) and one eventfd each way
 *   sock-chk  sock, plus the worker's checks of its socket after each
 *             request (where the rewind would make them)
 *   shm-chk   shm, plus the worker's checks of its eventfds and mapping
 *
 * Prints one line: "SHAPE us_per_round_trip cpu_us_per_round_trip failed",
 * CPU being user+system of every process between the first and the last
 * round trip, and "failed" the checks that saw a difference (0 expected).
 * Blocking only: no spinning on the shared slot. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <linux/sockios.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REQ 300
#define RESP 200
#define SLOT 4096

static void die(const char *what)
{
    fprintf(stderr, "channel_costs: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void diex(const char *what)
{
    fprintf(stderr, "channel_costs: %s\n", what);
    exit(2);
}

static void pin(int core)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(core, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0)
        die("sched_setaffinity");
}

static double cpu_us(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) < 0)
        die("getrusage(RUSAGE_SELF)");
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6
         + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static double now_us(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
        die("clock_gettime");
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* A frame: the request id (8 bytes), then the payload. */
static uint64_t frame_id(const char *frame)
{
    uint64_t id;
    memcpy(&id, frame, sizeof id);
    return id;
}

static void send_fd(int via, int fd, uint64_t id)
{
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct iovec iov = { .iov_base = &id, .iov_len = sizeof id };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = u.buf, .msg_controllen = sizeof u.buf };
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(via, &msg, 0) != (ssize_t)sizeof id)
        die("sendmsg(SCM_RIGHTS)");
}

/* Returns the fd received, or -1 at the end of the channel. */
static int recv_fd(int via, uint64_t *id)
{
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct iovec iov = { .iov_base = id, .iov_len = sizeof *id };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = u.buf, .msg_controllen = sizeof u.buf };
    ssize_t n = recvmsg(via, &msg, MSG_CMSG_CLOEXEC);
    if (n == 0)
        return -1;
    if (n != (ssize_t)sizeof *id)
        die("recvmsg(SCM_RIGHTS)");
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int)))
        diex("recvmsg: no fd");
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

static void xsend(int fd, const void *buf, size_t len)
{
    if (send(fd, buf, len, 0) != (ssize_t)len)
        die("send");
}

/* Returns 0 at the end of the channel. */
static size_t xrecv(int fd, void *buf, size_t len)
{
    ssize_t n = recv(fd, buf, len, 0);
    if (n < 0)
        die("recv");
    return (size_t)n;
}

/* ---- the persistent socket's checks ---- */

struct sock_state {
    struct timeval rcvtimeo, sndtimeo;
    int rcvbuf, sndbuf, passcred, passsec, peek_off, lock_filter, rcvlowat, filter_len;
    int fl, fdfl;
    dev_t dev;
    ino_t ino;
};

static int getint(int fd, int opt)
{
    int v = 0;
    socklen_t len = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, opt, &v, &len) < 0)
        die("getsockopt");
    return v;
}

static void sock_state(int fd, struct sock_state *s)
{
    memset(s, 0, sizeof *s);
    socklen_t len = sizeof s->rcvtimeo;
    if (getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &s->rcvtimeo, &len) < 0)
        die("getsockopt(SO_RCVTIMEO)");
    len = sizeof s->sndtimeo;
    if (getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &s->sndtimeo, &len) < 0)
        die("getsockopt(SO_SNDTIMEO)");
    s->rcvbuf = getint(fd, SO_RCVBUF);
    s->sndbuf = getint(fd, SO_SNDBUF);
    s->passcred = getint(fd, SO_PASSCRED);
    s->passsec = getint(fd, SO_PASSSEC);
    s->peek_off = getint(fd, SO_PEEK_OFF);
    s->lock_filter = getint(fd, SO_LOCK_FILTER);
    s->rcvlowat = getint(fd, SO_RCVLOWAT);
    /* optlen 0: the kernel answers with the attached filter's length. */
    len = 0;
    if (getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, NULL, &len) < 0)
        die("getsockopt(SO_GET_FILTER)");
    s->filter_len = (int)len;
    if ((s->fl = fcntl(fd, F_GETFL)) < 0)
        die("fcntl(F_GETFL)");
    if ((s->fdfl = fcntl(fd, F_GETFD)) < 0)
        die("fcntl(F_GETFD)");
    struct stat st;
    if (fstat(fd, &st) < 0)
        die("fstat");
    s->dev = st.st_dev;
    s->ino = st.st_ino;
}

/* The full set, as the worker would run it after its rewind. ref is a
 * second fd of the same open file, for kcmp (the host would hold it: the
 * request's seccomp filter denies kcmp). */
static int sock_check(int fd, int ref, const struct sock_state *want)
{
    struct sock_state now;
    int failed = 0;
    sock_state(fd, &now);
    if (memcmp(&now, want, sizeof now) != 0)
        failed++;
    int queued;
    if (ioctl(fd, FIONREAD, &queued) < 0)
        die("ioctl(FIONREAD)");
    /* The request read, the previous answer read by the front end: nothing
     * queued either way (SIOCOUTQ: what this end sent and the peer has not
     * read). */
    if (queued != 0)
        failed++;
    if (ioctl(fd, SIOCOUTQ, &queued) < 0)
        die("ioctl(SIOCOUTQ)");
    if (queued != 0)
        failed++;
    struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };
    if (poll(&p, 1, 0) < 0)
        die("poll");
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR))
        failed++;
    pid_t me = getpid();
    long same = syscall(SYS_kcmp, me, me, KCMP_FILE, fd, ref);
    if (same < 0)
        die("kcmp(KCMP_FILE)");
    if (same != 0)
        failed++;
    return failed;
}

/* ---- shared memory ---- */

struct slot_hdr {
    uint64_t id;
    uint32_t len;
    uint32_t magic;
};

#define MAGIC 0x6d61796cu

struct shm {
    char *base;         /* request slot at 0, answer slot at SLOT */
    int memfd, to_worker, to_front;
};

static void slot_put(char *slot, uint64_t id, size_t len)
{
    struct slot_hdr *h = (struct slot_hdr *)slot;
    memset(slot + sizeof *h, 'x', len);
    h->len = (uint32_t)len;
    h->magic = MAGIC;
    __atomic_store_n(&h->id, id, __ATOMIC_RELEASE);
}

static void shm_make(struct shm *m)
{
    m->memfd = memfd_create("channel", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (m->memfd < 0)
        die("memfd_create");
    if (ftruncate(m->memfd, 2 * SLOT) < 0)
        die("ftruncate");
    /* Neither side can shrink it under the other (SIGBUS) nor add seals. */
    if (fcntl(m->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
        die("fcntl(F_ADD_SEALS)");
    m->base = mmap(NULL, 2 * SLOT, PROT_READ | PROT_WRITE, MAP_SHARED, m->memfd, 0);
    if (m->base == MAP_FAILED)
        die("mmap");
    slot_put(m->base + SLOT, 0, 0);
    m->to_worker = eventfd(0, EFD_CLOEXEC);
    m->to_front = eventfd(0, EFD_CLOEXEC);
    if (m->to_worker < 0 || m->to_front < 0)
        die("eventfd");
}

static void ev_post(int efd)
{
    uint64_t one = 1;
    if (write(efd, &one, sizeof one) != (ssize_t)sizeof one)
        die("write(eventfd)");
}

static uint64_t ev_wait(int efd)
{
    uint64_t v;
    if (read(efd, &v, sizeof v) != (ssize_t)sizeof v)
        die("read(eventfd)");
    return v;
}

/* The other side may write anything there: copy out, then judge. */
static size_t slot_get(const char *slot, uint64_t want, char *out)
{
    struct slot_hdr h;
    memcpy(&h, slot, sizeof h);
    if (h.id != want || h.magic != MAGIC || h.len > SLOT - sizeof h)
        diex("shared slot: wrong id or length");
    memcpy(out, slot + sizeof h, h.len);
    return h.len;
}

struct shm_state {
    int fl_w, fl_f, seals;
    ino_t ino_w, ino_f, ino_m;
};

static ino_t ino_of(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        die("fstat");
    return st.st_ino;
}

static void shm_state(const struct shm *m, struct shm_state *s)
{
    memset(s, 0, sizeof *s);
    if ((s->fl_w = fcntl(m->to_worker, F_GETFL)) < 0 || (s->fl_f = fcntl(m->to_front, F_GETFL)) < 0)
        die("fcntl(F_GETFL)");
    if ((s->seals = fcntl(m->memfd, F_GET_SEALS)) < 0)
        die("fcntl(F_GET_SEALS)");
    s->ino_w = ino_of(m->to_worker);
    s->ino_f = ino_of(m->to_front);
    s->ino_m = ino_of(m->memfd);
}

static int shm_check(const struct shm *m, const struct shm_state *want, uint64_t id)
{
    struct shm_state now;
    int failed = 0;
    shm_state(m, &now);
    if (memcmp(&now, want, sizeof now) != 0)
        failed++;
    /* Counters zero: an eventfd polls readable while its counter is not. */
    struct pollfd p[2] = { { .fd = m->to_worker, .events = POLLIN }, { .fd = m->to_front, .events = POLLIN } };
    if (poll(p, 2, 0) < 0)
        die("poll");
    if (p[0].revents || p[1].revents)
        failed++;
    /* Mapping still there, and the slots' headers sane. */
    unsigned char vec[2];
    if (mincore(m->base, 2 * SLOT, vec) < 0)
        die("mincore");
    const struct slot_hdr *rq = (const struct slot_hdr *)m->base;
    const struct slot_hdr *rs = (const struct slot_hdr *)(m->base + SLOT);
    if (rq->magic != MAGIC || rs->magic != MAGIC || rq->id != id || rs->id != id - 1
        || rq->len > SLOT - sizeof *rq || rs->len > SLOT - sizeof *rs)
        failed++;
    return failed;
}

/* ---- the processes ---- */

struct report {
    double cpu_us;
    int failed;
};

static void report_to(int out, double cpu, int failed)
{
    struct report r = { .cpu_us = cpu, .failed = failed };
    if (write(out, &r, sizeof r) != (ssize_t)sizeof r)
        die("write(report)");
}

/* The worker loops until its channel ends; its CPU is counted from its
 * first request to its last answer. */
static void worker_pair(int ctl, int out)
{
    char buf[REQ];
    double c0 = 0;
    for (uint64_t n = 0;; n++) {
        uint64_t id;
        int fd = recv_fd(ctl, &id);
        if (fd < 0)
            break;
        if (n == 0)
            c0 = cpu_us();
        if (xrecv(fd, buf, sizeof buf) != REQ)
            diex("short request");
        if (frame_id(buf) != id)
            diex("request id");
        xsend(fd, buf, RESP);
        if (close(fd) < 0)
            die("close");
    }
    report_to(out, cpu_us() - c0, 0);
}

static void host_forward(int from, int to, int out)
{
    double c0 = 0;
    for (uint64_t n = 0;; n++) {
        uint64_t id;
        int fd = recv_fd(from, &id);
        if (fd < 0)
            break;
        if (n == 0)
            c0 = cpu_us();
        send_fd(to, fd, id);
        if (close(fd) < 0)
            die("close");
    }
    report_to(out, cpu_us() - c0, 0);
}

static void worker_sock(int ch, int out, int check)
{
    char buf[REQ];
    double c0 = 0;
    int failed = 0, ref = -1;
    struct sock_state want;
    if (check) {
        if ((ref = fcntl(ch, F_DUPFD_CLOEXEC, 100)) < 0)
            die("fcntl(F_DUPFD_CLOEXEC)");
        sock_state(ch, &want);
    }
    for (uint64_t n = 0;; n++) {
        size_t got = xrecv(ch, buf, sizeof buf);
        if (got == 0)
            break;
        if (n == 0)
            c0 = cpu_us();
        if (got != REQ)
            diex("short request");
        /* The checks stand where the previous request's rewind ends: the
         * front end must not send before it (a forged completion), so here
         * nothing else is queued either way. */
        if (check)
            failed += sock_check(ch, ref, &want);
        xsend(ch, buf, RESP);  /* the id leads the frame: echoed */
    }
    report_to(out, cpu_us() - c0, failed);
}

static void worker_shm(struct shm *m, int out, int check)
{
    char buf[SLOT];
    double c0 = 0;
    int failed = 0;
    struct shm_state want;
    if (check)
        shm_state(m, &want);
    for (uint64_t n = 0;; n++) {
        ev_wait(m->to_worker);
        const struct slot_hdr *h = (const struct slot_hdr *)m->base;
        uint64_t id = __atomic_load_n(&h->id, __ATOMIC_ACQUIRE);
        if (id == UINT64_MAX)
            break;  /* the front end's end of the run */
        if (n == 0)
            c0 = cpu_us();
        if (slot_get(m->base, id, buf) != REQ - sizeof(uint64_t))
            diex("short request");
        if (check)  /* where the previous rewind ends, as for the socket */
            failed += shm_check(m, &want, id);
        slot_put(m->base + SLOT, id, RESP - sizeof(uint64_t));
        ev_post(m->to_front);
    }
    report_to(out, cpu_us() - c0, failed);
}

/* The child closes the fds in drop (-1 ends the list): a channel ends only
 * when every copy of its other end is closed. */
static void spawn(int core, const int *drop, void (*body)(void *), void *arg)
{
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid > 0)
        return;
    pin(core);
    for (; *drop >= 0; drop++)
        if (close(*drop) < 0)
            die("close");
    body(arg);
    _exit(0);
}

struct args {
    int a, b, c, out;
    struct shm *m;
};

static void run_worker_pair(void *p) { struct args *x = p; worker_pair(x->a, x->out); }
static void run_host(void *p) { struct args *x = p; host_forward(x->a, x->b, x->out); }
static void run_worker_sock(void *p) { struct args *x = p; worker_sock(x->a, x->out, x->c); }
static void run_worker_shm(void *p) { struct args *x = p; worker_shm(x->m, x->out, x->c); }

int main(int argc, char **argv)
{
    if (argc != 5)
        diex("usage: channel_costs SHAPE N CORE_FRONT CORE_WORKER");
    const char *shape = argv[1];
    long count = atol(argv[2]);
    int core_front = atoi(argv[3]), core_worker = atoi(argv[4]);
    if (count <= 0)
        diex("N must be positive");
    signal(SIGPIPE, SIG_IGN);
    pin(core_front);

    int rep[2];
    if (pipe2(rep, O_CLOEXEC) < 0)
        die("pipe2");
    int procs = 1;
    int is_pair = !strcmp(shape, "pair"), is_hop = !strcmp(shape, "pair-hop");
    int is_sock = !strcmp(shape, "sock") || !strcmp(shape, "sock-chk");
    int is_shm = !strcmp(shape, "shm") || !strcmp(shape, "shm-chk");
    int check = !strcmp(shape, "sock-chk") || !strcmp(shape, "shm-chk");
    if (!is_pair && !is_hop && !is_sock && !is_shm)
        diex("unknown shape");

    int ch[2], ch2[2];
    struct shm m = { 0 };
    struct args wa = { .out = rep[1], .c = check, .m = &m };
    int front_end;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ch) < 0)
        die("socketpair");
    front_end = ch[0];
    if (is_hop) {
        /* front -> host on ch, host -> worker on ch2; the host shares the
         * worker's core: it is the worker's parent in mayflyd. */
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ch2) < 0)
            die("socketpair");
        struct args ha = { .a = ch[1], .b = ch2[0], .out = rep[1] };
        wa.a = ch2[1];
        spawn(core_worker, (int[]){ ch[0], ch[1], ch2[0], rep[0], -1 }, run_worker_pair, &wa);
        spawn(core_worker, (int[]){ ch[0], ch2[1], rep[0], -1 }, run_host, &ha);
        close(ch2[0]);
        close(ch2[1]);
        close(ch[1]);
        procs = 2;
    } else if (is_pair || is_sock) {
        wa.a = ch[1];
        spawn(core_worker, (int[]){ ch[0], rep[0], -1 }, is_pair ? run_worker_pair : run_worker_sock, &wa);
        close(ch[1]);
    } else {
        shm_make(&m);
        spawn(core_worker, (int[]){ ch[0], ch[1], rep[0], -1 }, run_worker_shm, &wa);
        close(ch[1]);
    }
    close(rep[1]);

    char req[REQ], resp[SLOT];
    memset(req, 'r', sizeof req);
    double t0 = now_us(), c0 = cpu_us();
    for (uint64_t id = 1; id <= (uint64_t)count; id++) {
        if (is_pair || is_hop) {
            int p[2];
            if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, p) < 0)
                die("socketpair");
            send_fd(front_end, p[1], id);
            if (close(p[1]) < 0)
                die("close");
            memcpy(req, &id, sizeof id);
            xsend(p[0], req, REQ);
            if (xrecv(p[0], resp, sizeof resp) != RESP || frame_id(resp) != id)
                diex("wrong answer");
            if (close(p[0]) < 0)
                die("close");
        } else if (is_sock) {
            memcpy(req, &id, sizeof id);
            xsend(front_end, req, REQ);
            if (xrecv(front_end, resp, sizeof resp) != RESP || frame_id(resp) != id)
                diex("wrong answer");
        } else {
            slot_put(m.base, id, REQ - sizeof(uint64_t));
            ev_post(m.to_worker);
            ev_wait(m.to_front);
            if (slot_get(m.base + SLOT, id, resp) != RESP - sizeof(uint64_t))
                diex("wrong answer");
        }
    }
    double wall = now_us() - t0, cpu = cpu_us() - c0;

    if (is_shm) {
        slot_put(m.base, UINT64_MAX, 0);
        ev_post(m.to_worker);
    }
    if (close(front_end) < 0)
        die("close");
    int failed = 0;
    for (int i = 0; i < procs; i++) {
        struct report r;
        if (read(rep[0], &r, sizeof r) != (ssize_t)sizeof r)
            diex("a child did not report");
        cpu += r.cpu_us;
        failed += r.failed;
    }
    for (int i = 0; i < procs; i++) {
        int status;
        if (wait(&status) < 0)
            die("wait");
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            diex("a child failed");
    }
    printf("%s %.3f %.3f %d\n", shape, wall / (double)count, cpu / (double)count, failed);
    return 0;
}
