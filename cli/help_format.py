"""``--help`` that reads like documentation: flags without a type, usage lines in the usual form.

Recent Typer versions print ``<bool>`` beside every flag and ``{script}`` in usage lines;
the classes here keep the types of options that take a value and write usage lines as
``gradprobe run [OPTIONS] SCRIPT [ARGS]...``.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup

# Typer builds on click, or on its own copy of it: parameters are told apart by their kind's name.


class FlagsWithoutType:
    """A command mixin: flags (``--quiet``, ``--help``) show no value type in help."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            if param.param_type_name == "option" and getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(FlagsWithoutType, TyperCommand):
    """A gradprobe command: see the module docstring."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(usage_name(param))
        return pieces


class Group(FlagsWithoutType, TyperGroup):
    """The root command group: see the module docstring."""


def usage_name(argument: Any) -> str:
    """How ``argument`` reads in a usage line: ``SCRIPT``, ``[RUN]``, ``[ARGS]...``."""
    name = (argument.metavar or argument.name or "").upper()
    shown = name if argument.required else f"[{name}]"
    return shown if argument.nargs == 1 else f"{shown}..."
