/* Wait statuses in words; see wait_status.h. */
#define _GNU_SOURCE /* sigabbrev_np */
#include "base/wait_status.h"

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

const char *mf_describe_wait_status(int status, char *out, size_t cap)
{
    /* Truncation is fine for a description. */
    if (WIFSIGNALED(status)) {
        const char *name = sigabbrev_np(WTERMSIG(status)); /* NULL for a real-time signal */
        (void)snprintf(out, cap, "killed by signal %d (SIG%s)", WTERMSIG(status), name ? name : "RT");
    }
    else
        (void)snprintf(out, cap, "exited with status %d", WEXITSTATUS(status));
    return out;
}

bool mf_killed_by(int status, int sig)
{
    return WIFSIGNALED(status) && WTERMSIG(status) == sig;
}
