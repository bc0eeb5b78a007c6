"""The clip policy spec grammar: ``NAME[:key=value[,key=value...]]``, parts joined with ``+``."""

from __future__ import annotations

import difflib
import re

from gradprobe.errors import GradprobeError
from gradprobe.policies.base import Policy
from gradprobe.policies.keys import Key, format_value
from gradprobe.policies.registry import POLICIES
from gradprobe.policies.skip import compose

# A '+' starts a new policy only when a name follows, so exponents like 1e+3 stay numbers.
_PARTS = re.compile(r"\+(?=\s*[A-Za-z])")


def _key_usage(key: Key) -> str:
    if key.kind == "choice":
        value = "|".join(key.choices)
    elif key.required:
        value = "X" if key.kind == "float" else "N"
    else:
        value = key.default_text or format_value(key.default)
    return f"{key.name}={value}"


def usage(cls: type[Policy]) -> str:
    """The grammar of one policy, e.g. ``global-norm:max=X[,norm=2|inf]`` (defaults shown for optional keys)."""
    required = [_key_usage(k) for k in cls.KEYS if k.required]
    optional = [_key_usage(k) for k in cls.KEYS if not k.required]
    text = cls.name + (":" + ",".join(required) if required else "")
    for i, item in enumerate(optional):
        text += f"[{',' if required or i else ':'}{item}]"
    return text


def parse_spec(text: str) -> Policy:
    """Parse a clip spec such as ``zclip:z=2.5+skip:sigma=6`` into a policy.

    Raises :class:`~gradprobe.errors.GradprobeError` with a one-line message
    naming the policy or key that is wrong and the valid choices.
    """
    if not isinstance(text, str):
        raise GradprobeError(f"a clip spec must be a string, not {type(text).__name__}")
    if not text.strip():
        raise GradprobeError(f"empty clip spec; expected NAME[:key=value,...] with NAME one of {', '.join(POLICIES)}")
    return compose([_parse_part(part, text) for part in _PARTS.split(text.strip())])


def as_policy(spec: "str | Policy") -> Policy:
    """``spec`` as a policy: parsed when it is a spec string, as it is when it is already a policy."""
    return parse_spec(spec) if isinstance(spec, str) else spec


def _folded(text: str) -> str:
    """A policy or key name as written, stripped and lower-cased when ASCII (``lower()`` would
    turn the Kelvin sign into 'k')."""
    text = text.strip()
    return text.lower() if text.isascii() else text


def _parse_part(part: str, text: str) -> Policy:
    head, colon, body = part.partition(":")
    name = _folded(head)
    cls = POLICIES.get(name)
    if cls is None:
        if not name:
            raise GradprobeError(f"missing policy name in clip spec {text.strip()!r}; valid policies: "
                                 f"{', '.join(POLICIES)}")
        close = difflib.get_close_matches(name, POLICIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise GradprobeError(f"unknown clip policy {name!r}{hint}; valid policies: {', '.join(POLICIES)}")
    keys = {key.name: key for key in cls.KEYS}
    valid = f"valid keys: {', '.join(keys) or 'none'} (usage: {usage(cls)})"
    values = {}
    items = body.split(",") if colon else []
    for item in items:
        key_text, equals, value = item.partition("=")
        key_name = _folded(key_text)
        if not equals or not key_name:
            raise GradprobeError(f"{name}: expected key=value, got {item.strip()!r}; {valid}")
        key = keys.get(key_name)
        if key is None:
            raise GradprobeError(f"{name}: unknown key {key_name!r}; {valid}")
        if key.attr in values:
            raise GradprobeError(f"{name}: key {key_name!r} given twice")
        values[key.attr] = key.parse(name, value)
    missing = [key.name for key in cls.KEYS if key.required and key.attr not in values]
    if missing:
        raise GradprobeError(f"{name}: missing required key {missing[0]!r}; {valid}")
    return cls(**values)
