"""The request model is the one declaration of a request field: everything else agrees with it."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest
import varlink  # the reference implementation's scanner: an independent reading of the interface
from daemon import Daemon
from rockers import make_req

from rocker_client import RockerErr, RockerRequest, cli, enter_rocker
from rocker_client.structs import OPTION_OF_FIELD, REQUEST_FIELDS
from rockerd import interface
from rockerd.registry import Rocker
from rockerd.request import FIELDS, RequestInvalid, RockerRequestModel, parse_request
from rockerd.state import Record

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_INFO = {"guard_pid", "guard_pname", "created", "caller_uid"}


def _idl_fields(member: str, part: int = 0) -> dict[str, str]:
    """`name: type` of the `part`-th parameter list of a member of the interface description."""
    decl = interface.DESCRIPTION[interface.DESCRIPTION.index(member):]
    groups = re.findall(r"\(([^()]*)\)", decl.split("\n\n")[0])
    return dict(tuple(x.strip() for x in f.split(":", 1)) for f in groups[part].split(",") if f.strip())


def test_the_client_request_is_the_models() -> None:
    assert tuple(RockerRequest.__dataclass_fields__) == REQUEST_FIELDS == FIELDS == tuple(
        RockerRequestModel.model_fields)
    assert set(RockerRequest().to_params()) <= set(FIELDS)


def test_create_and_rocker_info_carry_every_field() -> None:
    create = _idl_fields("method Create")
    assert list(create) == list(FIELDS)
    for name, info in RockerRequestModel.model_fields.items():
        assert create[name].startswith("?") == (not info.is_required()), name
    info_fields = _idl_fields("type RockerInfo")
    assert set(info_fields) == set(FIELDS) | RUNTIME_INFO | {"limits", "usage"}  # the cgroup's, from List
    scanned = varlink.Interface(interface.DESCRIPTION)  # parseable by other varlink tools
    assert set(scanned.members) >= {"Create", "List", "Kill", "RockerInfo"}


def test_rocker_run_has_an_option_for_every_field() -> None:
    run = cli.build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    options = {s for a in run._actions for s in a.option_strings}
    assert set(OPTION_OF_FIELD) == set(FIELDS)
    for name, info in RockerRequestModel.model_fields.items():
        extra = info.json_schema_extra
        assert isinstance(extra, dict)
        assert OPTION_OF_FIELD[name] == extra["cli"] and extra["cli"] in options, name


def test_the_c_client_sends_only_model_fields() -> None:
    source = (ROOT / "clients/c/rocker_client.c").read_text()
    body = source[source.index("static int encode_create"):]
    body = body[: body.index("\n}\n")]
    sent = [k for k in re.findall(r'\\"([a-z_]+)\\":', body) if k not in ("method", "parameters")]
    assert sent and set(sent) <= set(FIELDS), sent


def _request() -> RockerRequestModel:
    return parse_request({"app_id": 3, "uid": 1000, "gid": 1000, "app_pkg_path": "/srv/a.squashfs",
                          "app_exec_dir": "/srv/x/exec", "app_data_dir": "/srv/x/data",
                          "app_overlay_dirs": ["/usr", "/etc"]})


def test_list_and_records_carry_the_request_as_one_value() -> None:
    req = _request()
    rocker = Rocker(name="rk-0123abcd", pid=4242, pidfd=-1, request=req, caller_uid=0, work_slot=2)
    info = rocker.info()
    assert set(info) == set(FIELDS) | RUNTIME_INFO
    assert {k: info[k] for k in FIELDS} == req.model_dump()
    rec = Record.from_json(json.loads(json.dumps(rocker.record(starttime=99).__dict__)))
    assert parse_request(rec.request) == req
    assert (rec.name, rec.pid, rec.starttime, rec.work_slot) == ("rk-0123abcd", 4242, 99, 2)


def test_a_record_of_the_flat_format_still_loads() -> None:
    """rockerd 0.1 wrote the request's fields beside the runtime ones; an upgrade must re-adopt those."""
    req = _request()
    flat = {"name": "rk-0123abcd", "pid": 4242, "starttime": 99, "caller_uid": 0, "created": 1.0, "work_slot": 0,
            **req.model_dump()}
    assert parse_request(Record.from_json(flat).request) == req
    with pytest.raises(RequestInvalid):  # what is not a runtime field is the request, and checked as one
        parse_request(Record.from_json({**flat, "surprise": 1}).request)
    with pytest.raises(ValueError):
        Record.from_json({**flat, "request": {}, "surprise": 1})


def test_failures_come_back_as_structured_causes(rockerd: Daemon, base: Path, pkg: Path) -> None:
    """The cause says what failed and where, as data: a client never parses the text of `detail`."""
    req = make_req(base, pkg, overlays=("/usr", "/proc/sys"))
    res = enter_rocker(req, lambda _: 0, socket=rockerd.socket)
    assert res.err_no == RockerErr.param_invalid and res.cause is not None
    assert (res.cause.kind, res.cause.field) == ("InvalidRequest", "app_overlay_dirs[1]")
    assert "/proc" in res.cause.reason and res.detail == str(res.cause)
    req = make_req(base, pkg)
    req.app_pkg_path = str(base / "missing.squashfs")
    res = enter_rocker(req, lambda _: 0, socket=rockerd.socket)
    assert res.err_no == RockerErr.build_rocker_failed and res.cause is not None
    assert (res.cause.kind, res.cause.step, res.cause.errno) == ("BuildFailed", "mount package", errno.ENOENT)
    res = enter_rocker(req, lambda _: 0, socket=str(base / "no-daemon.sock"))
    assert res.err_no == RockerErr.server_unaddr_invalid and res.cause is not None
    assert (res.cause.kind, res.cause.errno) == ("connect", errno.ENOENT)
