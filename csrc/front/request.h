/*
 * Reading a request: llhttp (strict mode) callbacks that pack the head into
 * its ticket, the limits (414, 431, 413), and the checks llhttp leaves to
 * us: control bytes in values, Host, the request target (origin-form,
 * absolute-form, whose authority is the host, or OPTIONS *), Expect,
 * Transfer-Encoding, CONNECT.
 */
#ifndef MAYFLYD_FRONT_REQUEST_H
#define MAYFLYD_FRONT_REQUEST_H

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>

#include "front/conn.h"

/* The callbacks; parser->data is the struct mf_conn. A callback that
 * refuses the request sets conn->error_status and returns HPE_USER. */
void mf_request_settings(llhttp_settings_t *settings);

/* Points ticket->request into the ticket's buffers, once parsed. */
bool mf_request_finish(struct mf_front_ticket *ticket);

/* Host matching works on bytes: lowercase ASCII host name, IPv4 or
 * [IPv6] literal, an optional port stripped. False for anything else,
 * non-ASCII bytes included. out holds at least len bytes. */
bool mf_host_normalize(const char *host, size_t len, char *out, size_t *out_len);

#endif /* MAYFLYD_FRONT_REQUEST_H */
