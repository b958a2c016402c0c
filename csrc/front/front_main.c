/*
 * mayflyd-front's start: options, the listening socket (its own or the
 * supervisor's), the metrics area, one loop per thread (confined by the
 * seccomp filter before the first starts), then the supervisor's control
 * channel if there is one. SIGTERM and SIGINT end the process (graceful draining comes with
 * the hosts); SIGPIPE is ignored (a vanished client is a failed send).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "front/control.h"
#include "front/front.h"
#include "front/front_log.h"
#include "front/loop.h"
#include "front/metrics.h"
#include "front/walls.h"

static const char usage[] =
    "usage: mayflyd-front [options]\n"
    "  --listen HOST:PORT        address to serve (default 127.0.0.1:8080; port 0: any)\n"
    "  --listen-fd N             serve this inherited listening socket instead\n"
    "  --control-fd N            the supervisor's SOCK_SEQPACKET channel (routes; its end ends us)\n"
    "  --metrics-fd N            the supervisor's metrics area (a memfd it created and headed)\n"
    "  --seccomp-fd N            a seccomp BPF program (file or memfd) to confine the process with\n"
    "  --allow-root              run as root without --seccomp-fd (tests only)\n"
    "  --user UID:GID            become this user and group at once (started as root)\n"
    "  --threads N               event loops, one per thread (default: online CPUs)\n"
    "  --header-timeout-ms MS    time for a request head (default 60000)\n"
    "  --body-timeout-ms MS      time for a request body after its head (default 60000)\n"
    "  --idle-timeout-ms MS      keep-alive: time between requests (default 75000)\n"
    "  --max-body BYTES          largest request body (default 1048576)\n"
    "  --max-pipeline N          requests of one connection queued at once (default 16)\n"
    "  --log-format FORMAT       access log lines: logfmt (default) or json\n";

static bool parse_number(const char *option, const char *text, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || value < min || value > max)
        return mf_errx(EINVAL, "%s: %s is not a number in %llu..%llu", option, text,
                       (unsigned long long)min, (unsigned long long)max);
    *out = value;
    return true;
}

static bool parse_listen(struct mf_front_config *config, char *text)
{
    char *colon = strrchr(text, ':');
    if (colon == NULL)
        return mf_errx(EINVAL, "--listen: %s is not HOST:PORT", text);
    uint64_t port;
    MF_TRY(parse_number("--listen", colon + 1, 0, 65535, &port));
    *colon = '\0';
    if (text[0] == '[' && colon > text + 1 && colon[-1] == ']') {
        colon[-1] = '\0';
        text++;
    }
    config->listen_host = text;
    config->listen_port = (uint16_t)port;
    return true;
}

static bool parse_user(struct mf_front_config *config, const char *text)
{
    const char *colon = strchr(text, ':');
    if (colon == NULL)
        return mf_errx(EINVAL, "--user: %s is not UID:GID", text);
    char uid[16];
    size_t len = (size_t)(colon - text);
    if (len == 0 || len >= sizeof(uid))
        return mf_errx(EINVAL, "--user: %s is not UID:GID", text);
    memcpy(uid, text, len);
    uid[len] = '\0';
    uint64_t value;
    MF_TRY(parse_number("--user", uid, 1, UINT32_MAX - 1, &value));
    config->uid = (uint32_t)value;
    MF_TRY(parse_number("--user", colon + 1, 1, UINT32_MAX - 1, &value));
    config->gid = (uint32_t)value;
    config->become_user = true;
    return true;
}

static bool parse_options(int argc, char **argv, struct mf_front_config *config)
{
    static const struct option options[] = {
        {"listen", required_argument, NULL, 'l'},
        {"listen-fd", required_argument, NULL, 'L'},
        {"control-fd", required_argument, NULL, 'c'},
        {"metrics-fd", required_argument, NULL, 'M'},
        {"seccomp-fd", required_argument, NULL, 'S'},
        {"allow-root", no_argument, NULL, 'R'},
        {"user", required_argument, NULL, 'U'},
        {"threads", required_argument, NULL, 't'},
        {"header-timeout-ms", required_argument, NULL, 'H'},
        {"body-timeout-ms", required_argument, NULL, 'B'},
        {"idle-timeout-ms", required_argument, NULL, 'I'},
        {"max-body", required_argument, NULL, 'm'},
        {"max-pipeline", required_argument, NULL, 'p'},
        {"log-format", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    *config = (struct mf_front_config){
        .listen_host = "127.0.0.1", .listen_port = 8080, .threads = cpus > 0 ? (unsigned)cpus : 1,
        .header_timeout_ms = 60000, .body_timeout_ms = 60000, .idle_timeout_ms = 75000,
        .max_body = 1 << 20, .max_pipeline = 16, .listen_fd = -1, .control_fd = -1,
        .metrics_fd = -1, .seccomp_fd = -1,
    };
    uint64_t value;
    int opt;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'l': MF_TRY(parse_listen(config, optarg)); break;
        case 'L': MF_TRY(parse_number("--listen-fd", optarg, 0, INT32_MAX, &value)); config->listen_fd = (int)value; break;
        case 'c': MF_TRY(parse_number("--control-fd", optarg, 0, INT32_MAX, &value)); config->control_fd = (int)value; break;
        case 'M': MF_TRY(parse_number("--metrics-fd", optarg, 0, INT32_MAX, &value)); config->metrics_fd = (int)value; break;
        case 'S': MF_TRY(parse_number("--seccomp-fd", optarg, 0, INT32_MAX, &value)); config->seccomp_fd = (int)value; break;
        case 'R': config->allow_root = true; break;
        case 'U': MF_TRY(parse_user(config, optarg)); break;
        case 't': MF_TRY(parse_number("--threads", optarg, 1, 1024, &value)); config->threads = (unsigned)value; break;
        case 'H': MF_TRY(parse_number("--header-timeout-ms", optarg, 1, 3600000, &config->header_timeout_ms)); break;
        case 'B': MF_TRY(parse_number("--body-timeout-ms", optarg, 1, 3600000, &config->body_timeout_ms)); break;
        case 'I': MF_TRY(parse_number("--idle-timeout-ms", optarg, 1, 3600000, &config->idle_timeout_ms)); break;
        case 'm': MF_TRY(parse_number("--max-body", optarg, 0, 1ull << 30, &config->max_body)); break;
        case 'p': MF_TRY(parse_number("--max-pipeline", optarg, 1, 1024, &value)); config->max_pipeline = (unsigned)value; break;
        case 'f':
            if (strcmp(optarg, "json") != 0 && strcmp(optarg, "logfmt") != 0)
                return mf_errx(EINVAL, "--log-format: %s is not logfmt or json", optarg);
            config->log_json = strcmp(optarg, "json") == 0;
            break;
        case 'h': fputs(usage, stdout); exit(0);
        default: return mf_errx(EINVAL, "unknown option (see --help)");
        }
    }
    if (optind != argc)
        return mf_errx(EINVAL, "unexpected argument %s (see --help)", argv[optind]);
    return true;
}

/* A listening, non-blocking socket on the configured address. */
static bool listen_on(const struct mf_front_config *config, int *out)
{
    char port[8];
    (void)snprintf(port, sizeof(port), "%u", config->listen_port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *found;
    int err = getaddrinfo(config->listen_host, port, &hints, &found);
    if (err != 0)
        return mf_errx(EINVAL, "getaddrinfo(%s): %s", config->listen_host, gai_strerror(err));
    bool ok = false;
    mf_cleanup_fd int fd = socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0)
        mf_err("socket(%d, SOCK_STREAM)", found->ai_family);
    else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
        mf_err("setsockopt(%d, SO_REUSEADDR)", fd);
    else if (bind(fd, found->ai_addr, found->ai_addrlen) < 0)
        mf_err("bind(%s:%s)", config->listen_host, port);
    else if (listen(fd, SOMAXCONN) < 0)
        mf_err("listen(%s:%s)", config->listen_host, port);
    else
        ok = true;
    freeaddrinfo(found);
    MF_TRY(ok);
    *out = mf_steal_fd(&fd);
    return true;
}

static bool socket_type_is(int fd, int type, const char *option)
{
    int actual;
    socklen_t len = sizeof(actual);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &actual, &len) < 0)
        return mf_err("getsockopt(%s %d, SO_TYPE)", option, fd);
    if (actual != type)
        return mf_errx(EINVAL, "%s %d: socket type %d, not %d", option, fd, actual, type);
    return true;
}

/* The supervisor's listening socket: it keeps the port while a front end
 * restarts, so a crash refuses no connection. */
static bool inherit_listener(int fd)
{
    MF_TRY(socket_type_is(fd, SOCK_STREAM, "--listen-fd"));
    int listening;
    socklen_t len = sizeof(listening);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0)
        return mf_err("getsockopt(--listen-fd %d, SO_ACCEPTCONN)", fd);
    if (!listening)
        return mf_errx(EINVAL, "--listen-fd %d is not listening", fd);
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return mf_err("fcntl(--listen-fd %d, O_NONBLOCK)", fd);
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return mf_err("fcntl(--listen-fd %d, FD_CLOEXEC)", fd);
    return true;
}

/* The port actually bound (port 0 asks the kernel for one). */
static bool bound_port(int fd, unsigned *port)
{
    struct sockaddr_storage addr;
    socklen_t len = sizeof(addr);
    if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0)
        return mf_err("getsockname(%d)", fd);
    char service[8];
    int err = getnameinfo((struct sockaddr *)&addr, len, NULL, 0, service, sizeof(service), NI_NUMERICSERV);
    if (err != 0)
        return mf_errx(EINVAL, "getnameinfo(%d): %s", fd, gai_strerror(err));
    *port = (unsigned)atoi(service);
    return true;
}

/* The line the supervisor (and the tests) wait for: serving, confined, and
 * on which port. One write(), no stdio: stdout's first use would ask fstat(),
 * which the filter refuses. */
static bool announce(const char *host, unsigned port, unsigned threads)
{
    char line[320];
    int len = snprintf(line, sizeof(line), "mayflyd-front: listening on %.200s port %u with %u threads\n", host, port,
                       threads);
    if (len < 0 || (size_t)len >= sizeof(line))
        return mf_errx(EINVAL, "the listening line does not fit %zu bytes", sizeof(line));
    if (write(STDOUT_FILENO, line, (size_t)len) != len)
        return mf_err("write(stdout, the listening line)");
    return true;
}

static void *loop_thread(void *arg)
{
    struct mf_front_loop *loop = arg;
    mf_loop_run(loop);
    mf_warn_last();
    exit(1); /* a loop that cannot wait cannot serve: end the process, the supervisor restarts it */
}

/* Signals are blocked in every thread and taken by the main thread only. */
static bool block_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    int err = pthread_sigmask(SIG_BLOCK, set, NULL);
    if (err != 0)
        return mf_errx(err, "pthread_sigmask(SIG_BLOCK, TERM|INT) failed: %s", strerror(err));
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        return mf_err("signal(SIGPIPE, SIG_IGN)");
    return true;
}

/* SIGTERM or SIGINT: stop accepting, finish what is in flight, then end;
 * at once on another signal, or when the supervisor's channel ends. */
static bool drain(struct mf_front_loop *loops, unsigned count, const sigset_t *signals, int control_fd)
{
    mf_cleanup_fd int signal_fd = signalfd(-1, signals, SFD_CLOEXEC);
    if (signal_fd < 0)
        return mf_err("signalfd(TERM|INT)");
    int drained_fd;
    MF_TRY(mf_loops_drain(loops, count, &drained_fd));
    mf_front_log("info", "mayflyd.front", NULL, 0, 0, NULL, "stopping: accepting no more connections, finishing the requests in flight");
    for (;;) {
        struct pollfd fds[3] = {{.fd = drained_fd, .events = POLLIN}, {.fd = signal_fd, .events = POLLIN},
                                {.fd = control_fd, .events = POLLIN}};
        if (poll(fds, control_fd >= 0 ? 3 : 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return mf_err("poll(drained %d, signalfd %d, control %d)", drained_fd, signal_fd, control_fd);
        }
        if (fds[0].revents != 0) {
            mf_front_log("info", "mayflyd.front", NULL, 0, 0, NULL, "stopping: every connection is closed");
            return true;
        }
        if (fds[1].revents != 0) {
            mf_front_log("info", "mayflyd.front", NULL, 0, 0, NULL, "stopping at once: a second signal");
            return true;
        }
        if (fds[2].revents != 0) {
            char byte;
            /* A message now changes nothing (its fds, if any, are closed with
             * the truncated control data); only the channel's end matters. */
            ssize_t n = recv(control_fd, &byte, sizeof(byte), MSG_DONTWAIT | MSG_TRUNC);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                return true;
        }
    }
}

static bool serve(int argc, char **argv, const struct mf_front_backend *backend)
{
    struct mf_front_config config;
    MF_TRY(parse_options(argc, argv, &config));
    mf_front_log_init(config.log_json);
    if (config.become_user)
        MF_TRY(mf_front_walls_become(config.uid, config.gid));
    MF_TRY(mf_front_walls_check(config.seccomp_fd, config.allow_root));
    sigset_t signals;
    MF_TRY(block_signals(&signals)); /* before any thread: they inherit the mask */
    mf_cleanup_fd int listen_fd = -1;
    if (config.listen_fd >= 0) {
        MF_TRY(inherit_listener(config.listen_fd));
        listen_fd = config.listen_fd;
        config.listen_host = "an inherited socket";
    } else {
        MF_TRY(listen_on(&config, &listen_fd));
    }
    if (config.control_fd >= 0) {
        MF_TRY(socket_type_is(config.control_fd, SOCK_SEQPACKET, "--control-fd"));
        if (fcntl(config.control_fd, F_SETFD, FD_CLOEXEC) < 0)
            return mf_err("fcntl(--control-fd %d, FD_CLOEXEC)", config.control_fd);
    }
    if (config.metrics_fd >= 0)
        MF_TRY(mf_metrics_open(config.metrics_fd, config.threads));
    unsigned port = 0;
    MF_TRY(bound_port(listen_fd, &port));
    mf_cleanup_free struct mf_front_loop *loops = calloc(config.threads, sizeof(*loops));
    if (loops == NULL)
        return mf_err("calloc(%u loops)", config.threads);
    for (unsigned i = 0; i < config.threads; i++)
        MF_TRY(mf_loop_init(&loops[i], &config, backend, listen_fd, i));
    /* Every fd and mapping exists now, and no loop runs yet: no request is
     * ever served unfiltered. */
    if (config.seccomp_fd >= 0)
        MF_TRY(mf_front_walls_enter(config.seccomp_fd));
    for (unsigned i = 0; i < config.threads; i++) {
        pthread_t thread;
        int err = pthread_create(&thread, NULL, loop_thread, &loops[i]);
        if (err != 0)
            return mf_errx(err, "pthread_create(loop %u) failed: %s", i, strerror(err));
    }
    /* From here the threads use them until the process ends. */
    struct mf_front_loop *loops_used = mf_steal_pointer(&loops);
    (void)mf_steal_fd(&listen_fd);
    MF_TRY(announce(config.listen_host, port, config.threads));
    if (config.control_fd >= 0) {
        bool signalled;
        MF_TRY(mf_control_run(config.control_fd, &signals, loops_used, config.threads, &signalled));
        if (!signalled)
            return true; /* the supervisor is gone: nobody waits for a drain */
    } else {
        int sig;
        int err = sigwait(&signals, &sig);
        if (err != 0)
            return mf_errx(err, "sigwait(TERM|INT) failed: %s", strerror(err));
    }
    return drain(loops_used, config.threads, &signals, config.control_fd);
}

int mf_front_main(int argc, char **argv, const struct mf_front_backend *backend)
{
    if (!serve(argc, argv, backend)) {
        mf_warn_last();
        return mf_last_errno() == EINVAL ? 2 : 1;
    }
    return 0;
}
