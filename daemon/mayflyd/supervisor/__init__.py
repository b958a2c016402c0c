"""The supervisor: mayflyd's main process, run as root by `mayflyd serve`.

The HTTP front end, the tenants and their hosts, the zygote client, reloads,
the admin API, metrics, logs, the seccomp policy and the tenants' cgroups, all
on one asyncio loop. It never imports or runs tenant code, never blocks its
loop, and keeps no tenant state in globals (docs/design.md section 2).
"""
