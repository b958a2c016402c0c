"""The `mayflyd` command: serve, run, check, status, reload.

Runs in the process the operator starts: `serve` and `run` become the
supervisor; `status` and `reload` only talk to a running daemon's admin
socket, with the standard library, so that they start fast. It builds no
walls and runs no tenant code itself (docs/design.md section 2).
"""
