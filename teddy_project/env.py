"""Reading settings from environment variables, failing early with the variable's name.

Every setting is read here once, at start-up; a bad value stops the process with a
message that names the variable, what was found and what is expected.
"""
from __future__ import annotations

import base64
import binascii
import math
import os
import re
from typing import Callable, TypeVar

from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")


def _read(name: str, default: str | None, parse: Callable[[str], T], expected: str, secret: bool = False) -> T:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        if default is None:
            raise ImproperlyConfigured(f"{name} is not set: expected {expected}.")
        raw = default
    try:
        return parse(raw.strip())
    except (TypeError, ValueError) as exc:
        shown = name if secret else f"{name}={raw!r}"  # a secret is never printed, not even a bad one
        raise ImproperlyConfigured(f"{shown} is not valid: expected {expected} ({exc}).") from None


def env_str(name: str, default: str, pattern: str | None = None) -> str:
    def parse(value: str) -> str:
        if pattern and not re.fullmatch(pattern, value):
            raise ValueError(f"does not match {pattern}")
        return value

    return _read(name, default, parse, f"text matching {pattern}" if pattern else "text")


def env_int(name: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
    def parse(value: str) -> int:
        number = int(value)
        if minimum is not None and number < minimum:
            raise ValueError(f"below the minimum {minimum}")
        if maximum is not None and number > maximum:
            raise ValueError(f"above the maximum {maximum}")
        return number

    return _read(name, str(default), parse, "a whole number")


def env_float(name: str, default: float, minimum: float = 0.0, maximum: float | None = None) -> float:
    def parse(value: str) -> float:
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("not a finite number")
        if number < minimum:
            raise ValueError(f"below the minimum {minimum}")
        if maximum is not None and number > maximum:
            raise ValueError(f"above the maximum {maximum}")
        return number

    return _read(name, str(default), parse, "a number")


def env_bool(name: str, default: bool) -> bool:
    truthy, falsy = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}

    def parse(value: str) -> bool:
        lowered = value.lower()
        if lowered in truthy:
            return True
        if lowered in falsy:
            return False
        raise ValueError("not a boolean")

    return _read(name, "true" if default else "false", parse, "one of true/false/1/0/yes/no")


def env_list(name: str, default: str, item_pattern: str) -> list[str]:
    def parse(value: str) -> list[str]:
        items = [item.strip() for item in value.split(",") if item.strip()]
        if not items:
            raise ValueError("empty list")
        for item in items:
            if not re.fullmatch(item_pattern, item):
                raise ValueError(f"{item!r} does not match {item_pattern}")
        return items

    return _read(name, default, parse, f"a comma-separated list of {item_pattern}")


def env_master_keys(name: str) -> list[bytes]:
    """One or more base64-encoded 32-byte keys, comma-separated; required."""

    def parse(value: str) -> list[bytes]:
        keys = []
        for item in (part.strip() for part in value.split(",") if part.strip()):
            standard = item.replace("-", "+").replace("_", "/")  # url-safe base64 too
            try:
                key = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"key {len(keys) + 1} is not base64") from None
            if len(key) != 32:
                raise ValueError(f"key {len(keys) + 1} decodes to {len(key)} bytes, not 32")
            keys.append(key)
        if not keys:
            raise ValueError("no key given")
        return keys

    return _read(name, None, parse,
                 "base64 of 32 random bytes, e.g. from `python -c \"import os,base64;"
                 "print(base64.b64encode(os.urandom(32)).decode())\"`; comma-separate older keys during a rotation",
                 secret=True)


def env_frequencies(name: str) -> dict[str, int]:
    """"child=10,conversation=50" -> {"child": 10, "conversation": 50}; empty by default."""

    def parse(value: str) -> dict[str, int]:
        out = {}
        for item in (part.strip() for part in value.split(",") if part.strip()):
            stream_type, _, number = item.partition("=")
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", stream_type.strip()) or not number.strip().isdigit():
                raise ValueError(f"{item!r} is not type=number")
            out[stream_type.strip()] = int(number)
        return out

    return _read(name, "", parse, "a comma-separated list of stream_type=number")
