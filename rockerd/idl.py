"""Varlink IDL field lists rendered from pydantic models, so an interface cannot drift from them."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel

_SCALARS: dict[Any, str] = {int: "int", str: "string", float: "float", bool: "bool"}


def idl_type(annotation: Any) -> str:
    """The varlink type of a field annotation; validators (Annotated metadata) do not change it."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return idl_type(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"no varlink type for the union {annotation!r}")
        return "?" + idl_type(args[0])
    if origin in (list, tuple):
        return "[]" + idl_type(typing.get_args(annotation)[0])
    if origin is Literal:
        values = typing.get_args(annotation)
        if all(isinstance(v, str) for v in values):
            return "string"
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    raise TypeError(f"no varlink type for {annotation!r}")


def idl_fields(model: type[BaseModel], *, optional_if_defaulted: bool, indent: str = "  ") -> str:
    """`name: type` lines of `model`, comma-separated; a field with a default is `?type` when asked
    (a call may leave it out), a field that may be None always is."""
    lines = []
    for name, info in model.model_fields.items():
        t = idl_type(info.annotation)
        if optional_if_defaulted and not info.is_required() and not t.startswith("?"):
            t = "?" + t
        lines.append(f"{indent}{name}: {t}")
    return ",\n".join(lines)
