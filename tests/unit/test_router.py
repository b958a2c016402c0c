from __future__ import annotations

from dataclasses import dataclass

import pytest

from mayflyd.supervisor.router import Router, normalize_host


@dataclass(frozen=True)
class T:
    name: str


A, B, C, D = T("a"), T("b"), T("c"), T("d")


@pytest.mark.parametrize("header,expected", [
    ("Example.COM", "example.com"), ("example.com:8080", "example.com"), ("example.com.", "example.com"),
    ("[::1]:8080", "[::1]"), ("  a.b  ", "a.b"), ("", ""),
])
def test_normalize_host(header: str, expected: str) -> None:
    assert normalize_host(header) == expected


def test_routing_order() -> None:
    router = Router([(A, ["a.example"], False), (B, ["*.example"], False), (C, ["*.deep.example"], True),
                     (D, ["deep.example"], False)])
    assert router.route("a.example") is A
    assert router.route("A.EXAMPLE:80") is A
    assert router.route("x.example") is B
    assert router.route("x.deep.example") is C     # the longer wildcard wins
    assert router.route("deep.example") is D       # exact beats wildcard
    assert router.route("example") is C            # a wildcard does not match its bare suffix
    assert router.route("other") is C
    assert router.route(None) is C


def test_no_default() -> None:
    assert Router([(A, ["a"], False)]).route("b") is None
