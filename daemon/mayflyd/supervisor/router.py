"""Which tenant serves a request: by its Host header."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

__all__ = ["Router", "normalize_host"]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=_Named)


def normalize_host(header: str) -> str:
    """The host name of a Host header: no port, lower case, no trailing dot."""
    host = header.strip().lower()
    if host.startswith("["):  # [v6]:port
        end = host.find("]")
        host = host[:end + 1] if end >= 0 else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


class Router(Generic[T]):
    """Exact names first, then the longest matching ``*.suffix``, then the default.

    A wildcard ``*.example.com`` matches any name ending in ``.example.com``
    (one or more labels), not ``example.com`` itself.
    """

    __slots__ = ("_exact", "_wildcards", "_default")

    def __init__(self, routes: Iterable[tuple[T, Iterable[str], bool]]) -> None:
        self._exact: dict[str, T] = {}
        wildcards: list[tuple[str, T]] = []
        self._default: T | None = None
        for target, hosts, is_default in routes:
            for host in hosts:
                if host.startswith("*."):
                    wildcards.append((host[1:], target))
                else:
                    self._exact[host] = target
            if is_default:
                self._default = target
        # Longest suffix first, so the most specific wildcard wins.
        self._wildcards = sorted(wildcards, key=lambda item: len(item[0]), reverse=True)

    def route(self, host_header: str | None) -> T | None:
        host = normalize_host(host_header or "")
        target = self._exact.get(host)
        if target is not None:
            return target
        for suffix, candidate in self._wildcards:
            if host.endswith(suffix) and len(host) > len(suffix):
                return candidate
        return self._default
