/*
 * The front end's log lines, in the supervisor's format
 * (daemon/mayflyd/supervisor/logs.py): logfmt or JSON (--log-format), with
 * ts, level, logger, tenant, req and msg, so that one log reads as one
 * stream. One write() per line, under PIPE_BUF, so that lines of several
 * threads never interleave. mf_warn's lines (base/log.h) come here too,
 * as logger mayflyd.front.
 */
#ifndef MAYFLYD_FRONT_LOG_H
#define MAYFLYD_FRONT_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "front/metrics.h"

/* The format, and mf_warn's lines through it; before any thread starts. */
void mf_front_log_init(bool json);

/* One line. tenant may be NULL, req 0 (then not shown), ms NULL. */
void mf_front_log(const char *level, const char *logger, const char *tenant, size_t tenant_len, uint64_t req,
                  const char *ms, const char *fmt, ...) __attribute__((format(printf, 7, 8)));

/* An access log line (logger mayflyd.access, level info): also the
 * request's client address (field client, after ms). */
void mf_front_access_log(const char *tenant, size_t tenant_len, uint64_t req, const char *ms, const char *client,
                         size_t client_len, const char *fmt, ...) __attribute__((format(printf, 7, 8)));

/* A request stopped by one of its tenant's limits: counted, and logged as
 * the supervisor logged it ("limit hit: NAME (detail)", mayflyd.tenant). */
void mf_front_limit_hit(struct mf_metrics_record *metrics, enum mf_metrics_limit which, const char *tenant,
                        size_t tenant_len, uint64_t req, const char *detail);

#endif /* MAYFLYD_FRONT_LOG_H */
