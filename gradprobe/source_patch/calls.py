"""Reading and changing the arguments of a call while keeping its layout."""

from __future__ import annotations

import libcst as cst

from gradprobe.source_patch.syntax import number_code


def argument(call: cst.Call, position: int, keyword: str) -> cst.Arg | None:
    """The argument passed as ``keyword=...`` or as positional number ``position``."""
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == keyword:
            return arg
    positional = [a for a in call.args if a.keyword is None and not a.star]
    return positional[position] if position < len(positional) else None


def argument_value(call: cst.Call, position: int, keyword: str) -> cst.BaseExpression | None:
    """The value of :func:`argument`, or None."""
    arg = argument(call, position, keyword)
    return arg.value if arg is not None else None


def literal_number(node: cst.BaseExpression | None) -> float | None:
    """The value of a number literal, None for anything else."""
    return float(node.evaluated_value) if isinstance(node, (cst.Integer, cst.Float)) else None


def set_argument(call: cst.Call, position: int, keyword: str, code: str) -> cst.Call:
    """``call`` with the argument at ``keyword`` (or ``position``) set to ``code``, appended when absent."""
    arg = argument(call, position, keyword)
    value = cst.parse_expression(code)
    if arg is not None:
        return call.with_changes(args=[a.with_changes(value=value) if a is arg else a for a in call.args])
    return add_keyword(call, keyword, value)


def set_number(call: cst.Call, position: int, keyword: str, number: float) -> cst.Call:
    """:func:`set_argument` with a number; the same node when it already has that literal value."""
    if literal_number(argument_value(call, position, keyword)) == float(number):
        return call
    return set_argument(call, position, keyword, number_code(number))


def add_keyword(call: cst.Call, keyword: str, value: cst.BaseExpression) -> cst.Call:
    """``call`` with ``keyword=value`` appended, following the call's own layout (one line or one per line)."""
    new = cst.Arg(value=value, keyword=cst.Name(keyword), equal=cst.AssignEqual(
        whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")))
    args = list(call.args)
    if not args:
        return call.with_changes(args=[new])
    last = args[-1]
    if len(args) >= 2 and isinstance(args[-2].comma, cst.Comma):
        separator = args[-2].comma
    elif isinstance(call.whitespace_before_args, cst.ParenthesizedWhitespace):
        separator = cst.Comma(whitespace_after=call.whitespace_before_args)
    else:
        separator = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
    return call.with_changes(args=[*args[:-1], last.with_changes(comma=separator), new.with_changes(comma=last.comma)])


def remove_argument(call: cst.Call, arg: cst.Arg) -> cst.Call:
    """``call`` without ``arg``; a trailing comma stays where it was."""
    args = list(call.args)
    index = next(i for i, a in enumerate(args) if a is arg)
    if index == len(args) - 1 and index > 0:
        args[index - 1] = args[index - 1].with_changes(comma=arg.comma)
    del args[index]
    return call.with_changes(args=args)
