"""Checked conversions of raw values (from a file, the environment or a flag) into the model's.

Each raises `ConfigError` with a message that names where the value came from.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

from webhook.settings.model import ConfigError

_E = TypeVar("_E", bound=StrEnum)


def string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ConfigError(f"{where} must be a list of non-empty strings")
    return value


def enum_value(kind: type[_E], value: Any, where: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise ConfigError(f"{where} must be one of {allowed}, not {value!r}") from None


def port_number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(f"{where}: port must be a number from 1 to 65535, not {value!r}")
    return value


def whole_number(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a whole number, not {value!r}") from None


def delay_seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"shutdown delay must be a number of seconds, not {value!r}") from None
    if not 0 <= seconds <= 300:
        raise ConfigError("shutdown delay must be from 0 to 300 seconds")
    return seconds
