/*
 * The supervisor's control channel (wire/front_protocol.h), served by the
 * main thread: routing tables in, their acknowledgements out.
 */
#ifndef MAYFLYD_FRONT_CONTROL_H
#define MAYFLYD_FRONT_CONTROL_H

#include <signal.h>
#include <stdbool.h>

#include "front/loop.h"

/* Serves the channel until one of the signals arrives (taken; *signalled
 * true: the caller drains) or the supervisor closes it (the process ends);
 * false on a failed call (recorded). */
bool mf_control_run(int control_fd, const sigset_t *signals, struct mf_front_loop *loops, unsigned count,
                    bool *signalled);

#endif /* MAYFLYD_FRONT_CONTROL_H */
