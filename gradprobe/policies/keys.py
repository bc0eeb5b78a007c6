"""The typed keys of a clip policy spec: parsing, validation and canonical formatting of values."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from gradprobe.errors import GradprobeError

# Counters and ring buffers are float32 on the device: keep them exactly representable.
MAX_COUNT = 1_000_000


@dataclass(frozen=True)
class Key:
    """One ``key=value`` of a policy spec.

    ``kind`` is ``"float"``, ``"int"`` or ``"choice"``; ``field`` is the
    attribute of the policy object (``lambda`` is stored as ``lam``).
    ``low`` / ``high`` bound numbers (``low_open`` / ``high_open``: exclusive);
    ``choices`` lists the values of a choice key, canonical spelling first;
    ``default_text`` describes a default that depends on other keys.
    """

    name: str
    kind: str = "float"
    required: bool = False
    default: Any = None
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    choices: tuple[str, ...] = ()
    field: str = ""
    default_text: str = ""

    @property
    def attr(self) -> str:
        """The policy attribute that holds this key's value."""
        return self.field or self.name

    def parse(self, policy: str, text: str) -> Any:
        """The typed value of ``text``, or a one-line GradprobeError."""
        text = text.strip()
        if self.kind == "choice":
            for choice in self.choices:
                if text == choice or _same_number(text, choice):
                    return choice
            raise GradprobeError(
                f"{policy}: {self.name}={text!r} is not valid; choose one of {', '.join(self.choices)}"
            )
        number = _number(text)
        if number is None:
            raise GradprobeError(f"{policy}: {self.name}={text!r} is not a number (ASCII digits, e.g. 0.5 or 1e-3)")
        if self.kind == "int":
            if not number.is_integer():
                raise GradprobeError(f"{policy}: {self.name}={text!r} is not a whole number")
            return int(number)
        return number

    def check(self, policy: str, value: Any) -> None:
        """Raise a one-line GradprobeError when ``value`` is out of this key's range."""
        if self.kind == "choice":
            if value not in self.choices:
                raise GradprobeError(
                    f"{policy}: {self.name}={value!r} is not valid; choose one of {', '.join(self.choices)}"
                )
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GradprobeError(f"{policy}: {self.name} must be a number (got {value!r})")
        if self.kind == "int" and not float(value).is_integer():
            raise GradprobeError(f"{policy}: {self.name} must be a whole number (got {value!r})")
        if not math.isfinite(value):
            raise GradprobeError(f"{policy}: {self.name} must be a finite number (got {value!r})")
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if not (low_ok and high_ok):
            raise GradprobeError(f"{policy}: {self.name} must be {self.range_text()} (got {format_value(value)})")

    def range_text(self) -> str:
        """The valid range in words, e.g. ``> 0`` or ``in (0, 100]``."""
        if self.low is not None and self.high is not None:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f"in {left}{format_value(self.low)}, {format_value(self.high)}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {format_value(self.low)}"
        return f"{'<' if self.high_open else '<='} {format_value(self.high)}"


def _same_number(text: str, choice: str) -> bool:
    number = _number(text)
    return number is not None and number == _number(choice)


# The grammar's numbers: ASCII digits only (``float`` alone would also take "１", "١" and "1_000").
# inf and nan pass here so that the range check can say they are not finite.
_NUMBER = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|inf(?:inity)?|nan)", re.ASCII | re.IGNORECASE)


def _number(text: str) -> float | None:
    """``text`` as a number when it is one in the spec grammar, else None."""
    return float(text) if _NUMBER.fullmatch(text) else None


def format_value(value: Any) -> str:
    """The canonical spelling of a key's value: ``1`` for 1.0, shortest round-trip repr otherwise."""
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def positive(name: str, **kw: Any) -> Key:
    """A float key that must be > 0."""
    return Key(name, low=0.0, low_open=True, **kw)


def count(name: str, low: int, **kw: Any) -> Key:
    """An integer key in ``[low, MAX_COUNT]``."""
    return Key(name, kind="int", low=low, high=MAX_COUNT, **kw)
