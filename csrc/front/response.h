/*
 * Writing an answer: the program's, checked (status 200..599, header names
 * that are tokens, values without control bytes but HTAB) with the
 * hop-by-hop headers replaced by the front end's own; or the daemon's own
 * refusals and failures.
 */
#ifndef MAYFLYD_FRONT_RESPONSE_H
#define MAYFLYD_FRONT_RESPONSE_H

#include <stdbool.h>

#include "front/conn.h"
#include "front/front.h"

/* Renders the program's answer into ticket->out; an invalid one becomes a
 * 502. False only when memory runs out (logged). */
bool mf_render_answer(struct mf_front_ticket *ticket, const struct mf_front_response *response);
/* Renders a streamed answer's head (status and headers of response) into
 * ticket->out and marks the ticket streaming (stream.c goes on from
 * there); an invalid one becomes a whole 502 (answered, not streaming).
 * False only when memory runs out (logged). */
bool mf_render_stream_head(struct mf_front_ticket *ticket, const struct mf_front_response *response);
/* Renders the daemon's own answer: "<status> <reason>: <why>" as text, with
 * an extra header line ("Name: value") or NULL. closes: Connection: close. */
bool mf_render_daemon(struct mf_front_ticket *ticket, int status, const char *why,
                      const char *extra_header, bool closes);

#endif /* MAYFLYD_FRONT_RESPONSE_H */
