"""The checks every config section uses: AE titles, ports, finite and bounded numbers."""

from __future__ import annotations

import re

AE_RE = re.compile(r"^[\x21-\x5b\x5d-\x7e](?:[\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")           # destination names
MIB = 1024 * 1024

# Upper bounds: beyond these a value is a typo, and an unbounded wait or retry loop is a hang.
MAX_TIMEOUT_S = 3600.0            # network, DIMSE and send timeouts, lease: one hour
MAX_PERIOD_S = 86400.0            # quiet period, retry delays, sweep interval: one day
MAX_ATTEMPTS = 1000               # send attempts before a send is kept as failed
MAX_DONE_DAYS = 3650.0            # retention of finished work: ten years


def check_ae(where: str, value: str) -> None:
    if not AE_RE.match(value):
        raise ValueError(f"{where} must be 1-16 printable ASCII characters without backslash, got {value!r}")


def check_port(where: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{where} must be a TCP port 0-65535, got {value}")


def check_positive_upto(where: str, value: float, upper: float, what: str) -> None:
    """`value` in (0, upper]; written so that NaN fails too."""
    if not 0 < value <= upper:
        raise ValueError(f"{where} must be positive and at most {upper:g} ({what}), got {value}")


def check_int_range(where: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{where} must be {lo}-{hi}, got {value}")


def check_float_range(where: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:          # also false for nan
        raise ValueError(f"{where} must be between {lo:g} and {hi:g}, got {value}")
