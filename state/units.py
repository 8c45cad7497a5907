"""Units of the configuration: durations and fractions as exact integers."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

US_PER_SECOND = 1_000_000
PPM = 1_000_000
_DURATION = re.compile(r"^\s*(\d+)\s*(us|ms|s|m|h|d)?\s*$")
_UNIT_US = {"us": 1, "ms": 1_000, "s": US_PER_SECOND, "m": 60 * US_PER_SECOND,
            "h": 3600 * US_PER_SECOND, "d": 86400 * US_PER_SECOND}


class ConfigError(ValueError):
    """A configuration value that cannot be used."""


def parse_duration(value: object, name: str) -> int:
    """'30m', '2m', '90s', '1h' or a number of seconds, as microseconds."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{name}: {value!r} must not be negative")
        return value * US_PER_SECOND
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(f"{name}: {value!r} is not a duration such as '30m', '90s' or '2h'")
    return int(match.group(1)) * _UNIT_US[match.group(2) or "s"]


def parse_fraction_ppm(value: object, name: str) -> int:
    """A fraction such as '0.02' (or 0.02, or '2%') as parts per million, exactly."""
    text = str(value).strip()
    try:
        fraction = Decimal(text[:-1]) / 100 if text.endswith("%") else Decimal(text)
    except InvalidOperation:
        raise ConfigError(f"{name}: {value!r} is not a fraction such as '0.02' or '2%'") from None
    if not 0 <= fraction < 1:
        raise ConfigError(f"{name}: {value!r} must be at least 0 and below 1")
    return int(fraction * PPM)
