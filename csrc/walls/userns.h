/*
 * The user namespace of an unprivileged daemon: the host keeps its own
 * uid and gid but gains the capabilities that the other namespaces, the
 * minimal root and the privilege drop need, valid only inside.
 */
#ifndef MAYFLYD_USERNS_H
#define MAYFLYD_USERNS_H

#include <stdbool.h>

/*
 * unshare(CLONE_NEWUSER), "deny" to setgroups, then identity maps of the
 * current effective uid and gid ("U U 1", "G G 1"). Uses /proc/self of the
 * daemon's procfs: call it first, before ns.c and mounts.c. Afterwards
 * setgroups() is refused: drop privileges with set_groups false.
 */
bool mf_enter_user_namespace(void);

#endif /* MAYFLYD_USERNS_H */
