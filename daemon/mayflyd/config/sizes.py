"""Byte sizes as written in the config: "128MiB", "64K", "10MB", 4096.

Binary units (K, KiB, M, MiB, ...) are powers of 1024; the SI spellings
kB, MB, GB, TB are powers of 1000, as their standards say. Units are
case-sensitive so that "mb" is not silently read as either.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Final

__all__ = ["KiB", "MiB", "GiB", "TiB", "parse_size", "format_size"]

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB
TiB: Final = 1024 * GiB

_UNITS: Final = MappingProxyType(
    {
        "": 1,
        "B": 1,
        "K": KiB,
        "KiB": KiB,
        "M": MiB,
        "MiB": MiB,
        "G": GiB,
        "GiB": GiB,
        "T": TiB,
        "TiB": TiB,
        "kB": 1000,
        "MB": 1000**2,
        "GB": 1000**3,
        "TB": 1000**4,
    }
)

_SIZE_RE: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")

_UNIT_LIST: Final = "B, K/KiB, M/MiB, G/GiB, T/TiB (binary), kB, MB, GB, TB (decimal)"


def parse_size(value: object) -> int:
    """Return the number of bytes `value` stands for, or raise ValueError.

    Accepts a non-negative int or a string such as "1.5GiB" or "64 K".
    bool is refused although it is an int subclass: `memory: true` is a typo.
    """
    if isinstance(value, bool):
        raise ValueError(f"must be a size like 128MiB or a number of bytes, got bool ({value})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be a size like 128MiB or a number of bytes, got {type(value).__name__}")
    match = _SIZE_RE.fullmatch(value)
    if match is None:
        raise ValueError(f"not a size: {value!r} (expected e.g. 128MiB, 1.5GiB, 4096)")
    number, unit = match.group(1), match.group(2)
    multiplier = _UNITS.get(unit)
    if multiplier is None:
        raise ValueError(f"unknown size unit {unit!r} in {value!r} (units, case-sensitive: {_UNIT_LIST})")
    try:
        # Decimal keeps "1.5GiB" exact; float would round.
        exact = Decimal(number) * multiplier
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only digits
        raise ValueError(f"not a size: {value!r}") from exc
    if exact != exact.to_integral_value():
        raise ValueError(f"{value!r} is not a whole number of bytes ({exact})")
    return int(exact)


def format_size(size: int) -> str:
    """Render `size` with the largest binary unit that divides it exactly."""
    for unit, multiplier in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size != 0 and size % multiplier == 0:
            return f"{size // multiplier}{unit}"
    return f"{size}B"
