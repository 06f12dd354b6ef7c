"""The rocker request: a pydantic model of the C struct a client sends, and its syntactic rules.

Everything here is checked without touching the filesystem, so a hostile request is refused before
rockerd does any work for it; whether the paths exist (and what they are) is the build's business.
"""

from __future__ import annotations

import posixpath
import unicodedata
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from rocker_client.structs import MAX_OVERLAY_DIRS

__all__ = [
    "APP_ID_MAX",
    "FIELDS",
    "KERNEL_FS_ROOTS",
    "MAX_OVERLAY_DIRS",
    "MAX_PUBLISH",
    "NAME_MAX_BYTES",
    "PATH_MAX_BYTES",
    "UID_MAX",
    "RequestInvalid",
    "RockerRequestModel",
    "check_path",
    "parse_publish",
    "parse_request",
]

UID_MAX: Final = 4294967294  # (uid_t)-1 is the kernel's "no change" / invalid id
APP_ID_MAX: Final = 2**31 - 1  # the C struct holds a signed int
PATH_MAX_BYTES: Final = 4095  # PATH_MAX (4096) includes the terminating NUL
NAME_MAX_BYTES: Final = 255
KERNEL_FS_ROOTS: Final = ("/proc", "/sys", "/dev")

MEMORY_MIN: Final = 1 << 20  # below a MiB not even the app's first exec fits
MEMORY_MAX: Final = 1 << 62
PIDS_MAX: Final = 1 << 22  # the kernel's PID_MAX_LIMIT
CPUS_MAX: Final = 4096.0
_RANGES: Final = {"app_id": (0, APP_ID_MAX), "uid": (0, UID_MAX), "gid": (0, UID_MAX),
                  "memory_max": (MEMORY_MIN, MEMORY_MAX), "pids_max": (1, PIDS_MAX)}


class RequestInvalid(Exception):
    """A request rockerd refuses; `field` names the first offending field ("" for the whole request)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)  # both in args, so the exception pickles and reprs usefully
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class _RuleError(ValueError):
    """A broken rule that must be reported against a field other than the one being validated."""

    def __init__(self, loc: tuple[str] | tuple[str, int], reason: str) -> None:
        super().__init__(reason)
        self.loc = loc


def check_path(path: str) -> str:
    """Refuse any path the kernel would read differently from how we (and the logs) print it."""
    if not path:
        raise ValueError("must not be empty")
    try:
        raw = path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 (contains a lone surrogate)") from None
    if "\0" in path:
        raise ValueError("must not contain a NUL byte")
    for ch in path:
        if unicodedata.category(ch) == "Cc":
            raise ValueError(f"must not contain control characters (found U+{ord(ch):04X})")
    if not path.startswith("/"):
        raise ValueError("must be an absolute path")
    if len(raw) > PATH_MAX_BYTES:
        raise ValueError(f"is too long: {len(raw)} bytes, at most {PATH_MAX_BYTES}")
    if "//" in path:
        raise ValueError("must not contain '//'")
    if path != "/" and path.endswith("/"):
        raise ValueError("must not end with '/'")
    for comp in path.split("/")[1:]:
        if comp in (".", ".."):
            raise ValueError(f"must not contain a '{comp}' component")
        if len(comp.encode("utf-8")) > NAME_MAX_BYTES:
            raise ValueError(f"has a component longer than {NAME_MAX_BYTES} bytes: {comp[:32]!r}...")
    if posixpath.normpath(path) != path:  # belt and braces: the rules above should imply this
        raise ValueError(f"must be in normal form ({posixpath.normpath(path)!r})")
    return path


def _inside(path: str, parent: str) -> bool:
    """Strictly below `parent`; plain startswith would put /usrx inside /usr."""
    return path != parent and (parent == "/" or path.startswith(parent + "/"))


def _at_or_inside(path: str, parent: str) -> bool:
    return path == parent or _inside(path, parent)


def _not_kernel_fs(path: str) -> str:
    """Mounting over procfs/sysfs/devtmpfs would blind or break the sandbox."""
    for root in KERNEL_FS_ROOTS:
        if _at_or_inside(path, root):
            raise ValueError(f"must not be {root} or inside it (kernel pseudo-filesystem)")
    return path


def _pkg_path(path: str) -> str:
    if path == "/":
        raise ValueError("must name the package file, not /")
    return path


def _mount_dir(path: str) -> str:
    if path == "/":
        raise ValueError("must not be / (it would replace the whole root)")
    return _not_kernel_fs(path)


def _overlay_dir(path: str) -> str:
    if path == "/":
        raise ValueError("must not be / (overlay a subtree, not the whole root)")
    return _not_kernel_fs(path)


def _overlay_list(dirs: list[str]) -> list[str]:
    """Nested or repeated overlays would stack upper dirs over each other in one data dir."""
    for j, later in enumerate(dirs):
        for i in range(j):
            earlier = dirs[i]
            if later == earlier:
                raise _RuleError(("app_overlay_dirs", j), f"duplicate of app_overlay_dirs[{i}] ({earlier})")
            if _inside(later, earlier) or _inside(earlier, later):
                reason = f"overlays {earlier} and {later} overlap: one is inside the other"
                raise _RuleError(("app_overlay_dirs", j), reason)
    return dirs


MAX_PUBLISH: Final = 64


def parse_publish(spec: str) -> tuple[int, int, str]:
    """"8080:80" -> (8080, 80, "tcp"); "5353:53/udp" -> (5353, 53, "udp"). Raises ValueError."""
    shown = repr(spec[:32])
    ports, slash, proto = spec.partition("/")
    proto = proto if slash else "tcp"
    if proto not in ("tcp", "udp"):
        raise ValueError(f"{shown}: the protocol must be tcp or udp")
    host, sep, inner = ports.partition(":")
    if not sep or not host.isdigit() or not inner.isdigit() or not host.isascii() or not inner.isascii():
        raise ValueError(f"{shown}: must be HOST_PORT:PORT or HOST_PORT:PORT/udp")
    h, c = int(host), int(inner)
    if not (0 < h < 65536 and 0 < c < 65536):
        raise ValueError(f"{shown}: ports must be 1..65535")
    return h, c, proto


def check_publish(spec: str) -> str:
    parse_publish(spec)
    return spec


def _publish_list(specs: list[str]) -> list[str]:
    seen: dict[tuple[int, str], int] = {}
    for i, spec in enumerate(specs):
        h, _, proto = parse_publish(spec)
        if (h, proto) in seen:
            raise _RuleError(("publish", i), f"host port {h}/{proto} is also publish[{seen[h, proto]}]")
        seen[h, proto] = i
    return specs


def _sha256(digest: str) -> str:
    if len(digest) != 64 or digest.strip("0123456789abcdef"):
        raise ValueError("must be 64 lowercase hex digits (a SHA-256, as sha256sum prints it)")
    return digest


_Path = Annotated[str, AfterValidator(check_path)]
PkgPath = Annotated[_Path, AfterValidator(_pkg_path)]
MountDir = Annotated[_Path, AfterValidator(_mount_dir)]
OverlayDir = Annotated[_Path, AfterValidator(_overlay_dir)]
Id = Annotated[int, Field(ge=0, le=UID_MAX)]
PublishSpec = Annotated[str, AfterValidator(check_publish)]


def _cli(option: str, metavar: str) -> dict[str, Any]:
    """Where `rocker run` takes the field (tests/test_request_model.py checks the CLI against it)."""
    return {"cli": option, "metavar": metavar}


class RockerRequestModel(BaseModel):
    """A validated request; constructing one directly enforces the same rules as parse_request.

    The one declaration of a request field: the varlink interface (interface.py), the client's
    RockerRequest (rocker_client/structs.py, generated by scripts/gen_docs.py) and the docs are
    derived from it; `rocker run`'s options and the C struct mapping are checked against it.
    A field's description is its documentation in all of them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    app_id: Annotated[int, Field(ge=0, le=APP_ID_MAX)] = Field(
        0, description="the app's id, for the launcher's bookkeeping", json_schema_extra=_cli("--app-id", "N"))
    uid: Id = Field(description="uid of the app outside the rocker (root inside)",
                    json_schema_extra=_cli("--uid", "UID"))
    gid: Id = Field(description="gid of the app outside the rocker", json_schema_extra=_cli("--gid", "GID"))
    app_pkg_path: PkgPath = Field(description="the app's package, a squashfs image",
                                  json_schema_extra=_cli("--pkg", "PKG"))
    app_exec_dir: MountDir = Field(description="where the package is mounted, read-only",
                                   json_schema_extra=_cli("--exec-dir", "DIR"))
    app_data_dir: MountDir = Field(description="where the app's writes over the overlay dirs are kept",
                                   json_schema_extra=_cli("--data-dir", "DIR"))
    app_overlay_dirs: Annotated[
        list[OverlayDir], Field(max_length=MAX_OVERLAY_DIRS), AfterValidator(_overlay_list)
    ] = Field(default_factory=list, description=f"host dirs to overlay copy-on-write (at most {MAX_OVERLAY_DIRS})",
              json_schema_extra=_cli("--overlay", "DIR"))
    seccomp: Literal["default", "nested", "complain", "unconfined"] = Field(
        "default", description="the app's syscall filter: default, nested (may make user namespaces), "
        "complain or unconfined (root only)",
        json_schema_extra=_cli("--seccomp", "PROFILE"))

    network: Literal["none", "host", "bridge"] | None = Field(
        None, description="none (lo only), host or bridge; unset: rockerd's default",
        json_schema_extra=_cli("--network", "MODE"))
    publish: Annotated[list[PublishSpec], Field(max_length=MAX_PUBLISH), AfterValidator(_publish_list)] = Field(
        default_factory=list, description='host ports to the app ("8080:80", "53:53/udp")',
        json_schema_extra=_cli("--publish", "HOST:PORT[/udp]"))
    memory_max: Annotated[int, Field(ge=MEMORY_MIN, le=MEMORY_MAX)] | None = Field(
        None, description="the most memory (bytes, RAM and swap) its processes may use together; the kernel "
        "OOM-kills inside the rocker beyond it (absent: rockerd's default)",
        json_schema_extra=_cli("--memory", "SIZE"))
    pids_max: Annotated[int, Field(ge=1, le=PIDS_MAX)] | None = Field(
        None, description="the most processes and threads it may have at once (absent: rockerd's default)",
        json_schema_extra=_cli("--pids", "N"))
    cpu_max: Annotated[float, Field(gt=0, le=CPUS_MAX)] | None = Field(
        None, description="the most CPU time it may use, in CPUs (0.5: half of one; absent: rockerd's default)",
        json_schema_extra=_cli("--cpus", "CPUS"))

    app_pkg_sha256: Annotated[str, AfterValidator(_sha256)] | None = Field(
        None, description="the package's SHA-256 (64 hex digits), if given: other content is refused",
        json_schema_extra=_cli("--pkg-sha256", "HEX"))

    @model_validator(mode="after")
    def _cross_field(self) -> RockerRequestModel:
        """Rules between fields; each is reported on the later field, naming the earlier one."""
        exe, data = self.app_exec_dir, self.app_data_dir
        data_loc = ("app_data_dir",)
        if data == exe:
            raise _RuleError(data_loc, f"must differ from app_exec_dir ({exe})")
        if _inside(data, exe):
            raise _RuleError(data_loc, f"must not be inside app_exec_dir ({exe}): the package would hide it")
        if _inside(exe, data):
            raise _RuleError(data_loc, f"must not contain app_exec_dir ({exe})")
        for i, ov in enumerate(self.app_overlay_dirs):
            if ov == exe:
                raise _RuleError(
                    ("app_overlay_dirs", i), f"must not equal app_exec_dir ({exe}): it would hide the package"
                )
            if ov == data:
                raise _RuleError(
                    ("app_overlay_dirs", i),
                    f"must not equal app_data_dir ({data}): the overlay's writes are stored there",
                )
            if _inside(data, ov):
                raise _RuleError(
                    ("app_overlay_dirs", i),
                    f"must not contain app_data_dir ({data}): the overlay's upper dir would lie inside its "
                    "own lower dir",
                )
            if _inside(exe, ov):
                raise _RuleError(
                    ("app_overlay_dirs", i),
                    f"must not contain app_exec_dir ({exe}): the package would be mounted inside an overlay",
                )
        if self.publish and self.network not in ("bridge", None):
            raise _RuleError(("publish",), f"needs network bridge, not {self.network}")
        return self


FIELDS: Final = tuple(RockerRequestModel.model_fields)


def _field_name(loc: tuple[int | str, ...]) -> str:
    name = str(loc[0]) if loc else ""
    return name + "".join(f"[{part}]" for part in loc[1:] if isinstance(part, int))


def _reason(err: dict[str, Any], field: str) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "int_type":
        return "must be an integer (a JSON number without a fraction; not a bool or a string)"
    if kind == "string_type":
        return "must be a string"
    if kind == "list_type":
        return "must be a list of strings"
    if kind in ("float_type", "float_parsing"):
        return "must be a number"
    if kind in ("greater_than", "less_than_equal") and field == "cpu_max":
        return f"out of range: must be above 0 and at most {CPUS_MAX:g}"
    if kind in ("greater_than_equal", "less_than_equal") and field in _RANGES:
        lo, hi = _RANGES[field]
        return f"out of range: must be {lo}..{hi}"
    if kind == "too_long" and field == "publish":
        return f"at most {MAX_PUBLISH} ports may be published, got {ctx.get('actual_length', '?')}"
    if kind == "too_long":
        return f"at most {MAX_OVERLAY_DIRS} overlay dirs are allowed, got {ctx.get('actual_length', '?')}"
    if kind == "value_error" and isinstance(ctx.get("error"), ValueError):
        return str(ctx["error"])
    return str(err.get("msg", kind))


def _loc(err: dict[str, Any]) -> tuple[int | str, ...]:
    exc = (err.get("ctx") or {}).get("error")
    return exc.loc if isinstance(exc, _RuleError) else tuple(err["loc"])


def _order(err: dict[str, Any]) -> tuple[int, int]:
    """Declaration order first, then the list itself before its items, then item index."""
    loc = _loc(err)
    head = FIELDS.index(loc[0]) if loc and loc[0] in FIELDS else len(FIELDS)
    item = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else -1
    return head, item


SHOWN_MAX: Final = 64  # characters of a client-chosen name quoted back in a reply (and so in the log)
_LISTED_MAX: Final = 5  # unknown field names listed in one reason


def _shown(name: str) -> str:
    """A client-chosen name as a reply or log line may carry it: printable, one line, bounded.

    rockerd logs field and reason: a raw newline there would forge a log line (each stderr line is
    its own journal entry), and a 60 KiB name would be written to the log with every request.
    """
    cut = name[:SHOWN_MAX]
    if not cut.isprintable():
        cut = repr(cut)[1:-1]  # escapes control, format and separator characters and lone surrogates
    return cut + "..." if len(name) > SHOWN_MAX else cut


def parse_request(params: dict[str, Any]) -> RockerRequestModel:
    """Validate a decoded request, turning every refusal into one RequestInvalid for the client."""
    if not isinstance(params, dict):
        raise RequestInvalid("", f"request must be an object with named fields, not {type(params).__name__}")
    odd_keys = [k for k in params if not isinstance(k, str)]
    if odd_keys:
        raise RequestInvalid("", f"field names must be strings, got {_shown(repr(odd_keys[0]))}")
    unknown = [k for k in params if k not in FIELDS]
    if unknown:
        listed = ", ".join(f"'{_shown(k)}'" for k in unknown[:_LISTED_MAX])
        if len(unknown) > _LISTED_MAX:
            listed += f" and {len(unknown) - _LISTED_MAX} more"
        # field must be safe to log as is: a name that is not is only quoted (escaped) in the reason
        field = unknown[0] if _shown(unknown[0]) == unknown[0] else ""
        raise RequestInvalid(field, f"unknown field{'s' if len(unknown) > 1 else ''}: {listed}")
    try:
        return RockerRequestModel.model_validate(params)
    except ValidationError as e:
        errors = e.errors()
    if not errors:  # pragma: no cover - pydantic never raises an empty ValidationError
        raise RequestInvalid("", "invalid request")
    first = min(errors, key=_order)
    loc = _loc(first)
    raise RequestInvalid(_field_name(loc), _reason(first, str(loc[0]) if loc else ""))
