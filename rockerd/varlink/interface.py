"""The service side of varlink's types: a call, its reply or error, an interface and its
handlers, and org.varlink.service's own description (the layer asyncvarlink calls interface.py)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .peercred import Peer

SERVICE_INTERFACE = "org.varlink.service"

# Same text as the varlink reference implementation ships; must stay parseable
# by the `varlink` PyPI scanner (LF only, no trailing commas, errors with "()").
SERVICE_DESCRIPTION = """\
# The Varlink Service Interface is provided by every varlink service. It
# describes the service and the interfaces it implements.
interface org.varlink.service

# Get a list of all the interfaces a service provides and information
# about the implementation.
method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

# Get the description of an interface that is implemented by this service.
method GetInterfaceDescription(interface: string) -> (description: string)

# The requested interface was not found.
error InterfaceNotFound (interface: string)

# The requested method was not found
error MethodNotFound (method: string)

# The interface defines the requested method, but the service does not
# implement it.
error MethodNotImplemented (method: string)

# One of the passed parameters is invalid.
error InvalidParameter (parameter: string)
"""

_INTERFACE_NAME = re.compile(r"[A-Za-z](?:-*[A-Za-z0-9])*(?:\.[A-Za-z0-9](?:-*[A-Za-z0-9])*)+")
_MEMBER_NAME = re.compile(r"[A-Z][A-Za-z0-9]*")
_DECLARED_METHOD = re.compile(r"^[ \t]*method[ \t\n]+([A-Z][A-Za-z0-9]*)", re.MULTILINE)


@dataclass
class Call:
    """One method call as handed to a handler; ``method`` is the full name."""

    method: str
    parameters: dict[str, Any]
    peer: Peer
    oneway: bool
    more: bool


@dataclass
class Reply:
    """A successful reply; the server sends ``fds`` with it and then closes them in any case."""

    parameters: dict[str, Any]
    fds: list[int] = field(default_factory=list)


class VarlinkError(Exception):
    """Raised by handlers to answer with a varlink error (full name, e.g. ``io.rocker.Rocker.Foo``)."""

    def __init__(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(name, parameters)
        self.name = name
        self.parameters: dict[str, Any] = dict(parameters or {})

    def __str__(self) -> str:
        return f"{self.name} {self.parameters}" if self.parameters else self.name


Handler = Callable[[Call], Awaitable[Reply]]


@dataclass
class Interface:
    """An interface: its IDL text (served verbatim) and handlers keyed by short method name."""

    name: str
    description: str
    methods: dict[str, Handler]


def _check_interface(iface: Interface) -> None:
    """Catch interface definitions that clients could not use, at startup rather than at call time."""
    if not _INTERFACE_NAME.fullmatch(iface.name):
        raise ValueError(f"invalid varlink interface name {iface.name!r}")
    if iface.name == SERVICE_INTERFACE:
        raise ValueError(f"{SERVICE_INTERFACE} is provided by the server itself")
    if "\r" in iface.description:
        raise ValueError(f"{iface.name}: description contains CR; varlink parsers accept LF only")
    declared = None
    for line in iface.description.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        words = stripped.split("#", 1)[0].split()
        if len(words) == 2 and words[0] == "interface":
            declared = words[1]
        break
    if declared != iface.name:
        raise ValueError(f"{iface.name}: description must start with 'interface {iface.name}'")
    methods = set(_DECLARED_METHOD.findall(iface.description))
    for name in iface.methods:
        if not _MEMBER_NAME.fullmatch(name):
            raise ValueError(f"{iface.name}: invalid method name {name!r}")
        if name not in methods:
            raise ValueError(f"{iface.name}: handler {name!r} is not declared in the description")


def _error(name: str, **parameters: Any) -> dict[str, Any]:
    return {"error": name, "parameters": parameters}

