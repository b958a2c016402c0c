/* Wait statuses in words; see wait_status.h. */
#include "base/wait_status.h"

#include <stdio.h>
#include <sys/wait.h>

const char *mf_describe_wait_status(int status, char *out, size_t cap)
{
    /* Truncation is fine for a description. */
    if (WIFSIGNALED(status))
        (void)snprintf(out, cap, "killed by signal %d", WTERMSIG(status));
    else
        (void)snprintf(out, cap, "exited with status %d", WEXITSTATUS(status));
    return out;
}

bool mf_killed_by(int status, int sig)
{
    return WIFSIGNALED(status) && WTERMSIG(status) == sig;
}
