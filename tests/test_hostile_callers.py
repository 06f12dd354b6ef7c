"""Who the caller is, judged from the socket: its supplementary groups, and whether it is on the host.

Issue 13: SO_PEERGROUPS was read with a buffer CPython refuses, so only the
primary gid counted as held; and an app inside a rocker could reach the socket
and ask rockerd for more than its launcher gave it (its paths resolved in the
host's mount namespace, not in its overlaid one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hostile import UID, create_params, needs_system_python, reachable_daemon, run_script, user_dirs
from rockers import make_req, run_app

from rocker_client import wire

__all__ = ["user_dirs"]  # a fixture

CREATE_AND_KILL = r"""
import sys
path, params = sys.argv[1], json.loads(sys.argv[2])
reply = call_once(path, "io.rocker.Rocker.Create", params)
if "error" not in reply:
    call_once(path, "io.rocker.Rocker.Kill", {"guard_pname": reply["parameters"]["guard_pname"]})
print(json.dumps(reply))
"""


@needs_system_python
@pytest.mark.parametrize(("groups", "gid", "allowed"), [
    ([4242], 4242, True),  # a real second group, held only as a supplementary one
    ([4242], 4343, False),  # a gid it does not hold
    (list(range(5000, 5300)), 5299, True),  # 300 groups: more than CPython's getsockopt buffer (1024 bytes)
], ids=["held", "not-held", "300-groups"])
def test_supplementary_groups(user_dirs: Path, groups: list[int], gid: int, allowed: bool) -> None:
    d = reachable_daemon(user_dirs)
    try:
        reply = run_script(CREATE_AND_KILL, d.socket, json.dumps(create_params(user_dirs, gid=gid)), groups=groups)
    finally:
        d.stop()
    if allowed:
        assert "error" not in reply, reply
        assert reply["parameters"]["guard_pname"]
    else:
        assert reply == {"error": "io.rocker.Rocker.PermissionDenied", "parameters": {
            "reason": f"uid {UID} may only ask for a gid it holds, not {gid}"}}
    assert "supplementary groups" not in d.log_text(), "reading SO_PEERGROUPS failed"


def _remote(method: str, params: dict[str, Any], socket_path: str) -> dict[str, Any]:
    try:
        reply, fds = wire.call(socket_path, method, params)
    except wire.RemoteError as e:
        return {"error": e.name, "parameters": e.parameters}
    for fd in fds:
        os.close(fd)
    return {"parameters": reply}


@pytest.mark.parametrize("allow", [False, True], ids=["default", "allowed"])
@pytest.mark.parametrize("rocker_uid", [UID, 0])
def test_calls_from_inside_a_rocker(user_dirs: Path, pkg: Path, monkeypatch: pytest.MonkeyPatch,
                                    allow: bool, rocker_uid: int) -> None:
    """An app asks rockerd, through the socket it can see, for a rocker, the list, and a kill."""
    base = user_dirs
    d = reachable_daemon(base, *(["--allow-nested-callers"] if allow else []))
    monkeypatch.setenv("ROCKER_SOCKET", d.socket)
    nested = create_params(base)

    def probe() -> dict[str, Any]:
        out = {"create": _remote("io.rocker.Rocker.Create", nested, d.socket),
               "list": _remote("io.rocker.Rocker.List", {}, d.socket)}
        name = out["create"].get("parameters", {}).get("guard_pname", "none")
        out["kill"] = _remote("io.rocker.Rocker.Kill", {"guard_pname": name}, d.socket)
        return out

    try:
        run = run_app(make_req(base, base / "app.squashfs", uid=rocker_uid, gid=rocker_uid), probe)
    finally:
        d.stop()
    assert run.res.ok, run.res.detail
    rep = run.report
    assert "probe_error" not in rep, rep
    if allow:
        assert "error" not in rep["create"], rep
        assert rep["kill"] == {"parameters": {}}, rep
        assert [r["guard_pname"] for r in rep["list"]["parameters"]["rockers"]].count(run.res.guard_pname) == 1
        return
    for what in ("create", "list", "kill"):
        assert rep[what].get("error") == "io.rocker.Rocker.PermissionDenied", (what, rep)
        reason = rep[what]["parameters"]["reason"]
        assert "user namespace other than rockerd's" in reason and "--allow-nested-callers" in reason, reason
    assert "refused request of caller uid" in d.log_text()


def test_root_inside_a_rocker_gets_no_root_slots(user_dirs: Path, pkg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """uid 0 inside a rocker is not the host's root: it gets the per-uid cap like any uid, not root's
    reserved connections (otherwise an app of a root launcher could hold every slot)."""
    base = user_dirs
    d = reachable_daemon(base, "--max-connections", "8", "--root-connections", "3", "--max-connections-per-uid", "2")
    monkeypatch.setenv("ROCKER_SOCKET", d.socket)

    def hold() -> dict[str, Any]:
        conns, got = [], []
        try:
            for _ in range(5):
                conn = wire.Connection(d.socket, timeout=5)
                conns.append(conn)
                try:
                    conn.call("org.varlink.service.GetInfo")
                    got.append("ok")
                except wire.RemoteError as e:
                    got.append(e.parameters.get("limit", e.name))
                except wire.WireError as e:
                    got.append(repr(e))
        finally:
            for conn in conns:
                conn.close()
        return {"got": got}

    try:
        run = run_app(make_req(base, base / "app.squashfs", uid=0, gid=0), hold)
    finally:
        d.stop()
    assert run.res.ok, run.res.detail
    got = run.report["got"]
    assert 1 <= got.count("ok") <= 2 and got[-1] in ("connections per uid", "connections"), got
