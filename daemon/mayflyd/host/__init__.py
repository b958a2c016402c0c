"""What runs in the zygote and in each tenant's host (and in the sandboxes and
reset workers forked from it): the tenant program contract, the host's start
and serving, the zygote itself. This is the only package that runs tenant code.

Keep imports minimal, here and in every module of this package: whatever a
host imports is memory that every idle tenant pays for. Nothing here may
import the supervisor's modules (aiohttp, the config) (docs/design.md section 2).
"""
