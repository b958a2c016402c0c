/*
 * The stop sandbox: the program's stop hook (hooks->stop: the seed
 * contract's on_stop(), an app's shutdown), run once when the host stops
 * cleanly. The sealed host runs no tenant code (docs/design.md, "Tenant
 * code and the sealed host"), so the hook runs where a request does: in a
 * fork of the sealed host with a request's walls, under both engines.
 *
 * Only after a SHUTDOWN from the supervisor: a control channel that just
 * closed means the supervisor is gone, and the host ends at once.
 */
#ifndef MAYFLYD_STOP_SANDBOX_H
#define MAYFLYD_STOP_SANDBOX_H

#include <stddef.h>
#include <stdint.h>

#include "engine/children.h"
#include "walls/request_limits.h"

/* The stop sandbox's bound when the host was given none. */
#define MF_STOP_DEFAULT_MS 5000

/*
 * If the supervisor sent SHUTDOWN (c->shutdown) and the program has a stop
 * hook: kills and reaps the requests' children (as the end of serving
 * always did), forks one sandbox that sets limits and request_filter on
 * itself as a request's does (mf_children_enter_sandbox) and runs the
 * hook, waits for it up to timeout_ms (0: MF_STOP_DEFAULT_MS), SIGKILLs it
 * past that or as soon as the control channel closes, and reaps it. Its
 * output goes where a request's does; a failure is only warned about: the
 * host's exit stays what serving made it.
 */
void mf_stop_sandbox_run(struct mf_children *c, const struct mf_limits *limits, const void *request_filter,
                         size_t request_filter_len, uint32_t timeout_ms);

#endif /* MAYFLYD_STOP_SANDBOX_H */
