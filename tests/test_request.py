"""Rules of rockerd.request: each one is shown to accept a good value and refuse a bad one."""

from __future__ import annotations

import json
import pickle
import posixpath
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from rockerd.request import (
    FIELDS,
    MAX_OVERLAY_DIRS,
    RequestInvalid,
    RockerRequestModel,
    check_path,
    parse_request,
)

SEED: dict[str, Any] = {
    "app_id": 1000,
    "uid": 1000,
    "gid": 1000,
    "app_pkg_path": "/tmp/your_APP.squashfs",
    "app_exec_dir": "/srv/your_APP/execdir",  # not below an overlay dir: see test_*_inside_overlay_refused
    "app_data_dir": "/srv/your_APP/datadir",
    "app_overlay_dirs": ["/usr", "/var", "/etc", "/home", "/root"],
}
PATH_FIELDS = ("app_pkg_path", "app_exec_dir", "app_data_dir")


def req(**changes: Any) -> dict[str, Any]:
    return {**SEED, **changes}


def refused(params: Any) -> RequestInvalid:
    with pytest.raises(RequestInvalid) as info:
        parse_request(params)
    return info.value


def assert_refused(params: Any, field: str, *words: str) -> RequestInvalid:
    err = refused(params)
    assert err.field == field, f"{err.field!r}: {err.reason}"
    for word in words:
        assert word in err.reason, f"{word!r} not in {err.reason!r}"
    return err


# --- the seed's example and the model itself -----------------------------------------------------------


def test_seed_example_passes() -> None:
    m = parse_request(SEED)
    assert m.model_dump(exclude_unset=True) == SEED


def test_seed_example_from_json_passes() -> None:
    assert parse_request(json.loads(json.dumps(SEED))) == parse_request(SEED)


def test_model_is_frozen() -> None:
    m = parse_request(SEED)
    with pytest.raises(ValidationError):
        m.uid = 0  # type: ignore[misc]


def test_direct_construction_enforces_the_rules() -> None:
    RockerRequestModel(**SEED)
    with pytest.raises(ValidationError):
        RockerRequestModel(**req(app_overlay_dirs=["/usr", "/usr/lib"]))


def test_error_message_names_field() -> None:
    err = refused(req(uid=-1))
    assert str(err).startswith("uid: ")
    assert isinstance(err, Exception)


def test_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(RequestInvalid("app_overlay_dirs[2]", "must be an absolute path")))
    assert (err.field, err.reason) == ("app_overlay_dirs[2]", "must be an absolute path")


def test_request_must_be_a_dict() -> None:
    assert_refused([SEED], "", "object")
    assert_refused(None, "", "object")


def test_field_names_must_be_strings() -> None:
    assert_refused({**SEED, 1: 2}, "", "strings")


# --- presence ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", ["flags", "App_Id", "app_overlay_dir"])
def test_unknown_field_refused(extra: str) -> None:
    assert_refused(req(**{extra: 1}), extra, "unknown", extra)


def test_all_unknown_fields_named() -> None:
    err = assert_refused(req(foo=1, bar=2), "foo", "foo", "bar")
    assert "unknown fields" in err.reason


@pytest.mark.parametrize("name", ["uid", "gid", "app_pkg_path", "app_exec_dir", "app_data_dir"])
def test_missing_required_field_refused(name: str) -> None:
    params = dict(SEED)
    del params[name]
    assert_refused(params, name, "required")


def test_optional_fields_default() -> None:
    params = {k: v for k, v in SEED.items() if k not in ("app_id", "app_overlay_dirs")}
    m = parse_request(params)
    assert m.app_id == 0
    assert m.app_overlay_dirs == []


def test_first_offending_field_named() -> None:
    # uid comes before gid and app_data_dir in the struct, so it is the one reported
    assert_refused(req(app_data_dir="rel", gid="x", uid=-1), "uid")
    assert_refused(req(app_data_dir="rel", gid="x"), "gid")
    assert_refused(req(app_overlay_dirs=["/a", "rel", "/proc"]), "app_overlay_dirs[1]", "absolute")
    # a missing field is reported in declaration order too
    params = req(app_exec_dir=3)
    del params["app_pkg_path"]
    assert_refused(params, "app_pkg_path", "required")


# --- strict types -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["app_id", "uid", "gid"])
@pytest.mark.parametrize("bad", [True, False, "1000", 1000.0, 1.5, None, [1000]])
def test_ints_are_strict(name: str, bad: Any) -> None:
    assert_refused(req(**{name: bad}), name, "integer")


@pytest.mark.parametrize("name", PATH_FIELDS)
@pytest.mark.parametrize("bad", [b"/x", 1, None, ["/x"], True])
def test_paths_must_be_strings(name: str, bad: Any) -> None:
    assert_refused(req(**{name: bad}), name, "string")


def test_overlay_dirs_must_be_a_list_of_strings() -> None:
    assert_refused(req(app_overlay_dirs="/usr"), "app_overlay_dirs", "list")
    assert_refused(req(app_overlay_dirs={"/usr": 1}), "app_overlay_dirs", "list")
    assert_refused(req(app_overlay_dirs=["/usr", 7]), "app_overlay_dirs[1]", "string")
    assert parse_request(req(app_overlay_dirs=["/usr"])).app_overlay_dirs == ["/usr"]


# --- ranges -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["uid", "gid"])
@pytest.mark.parametrize("good", [0, 1, 65534, 65535, 4294967294])
def test_ids_in_range(name: str, good: int) -> None:
    assert getattr(parse_request(req(**{name: good})), name) == good


@pytest.mark.parametrize("name", ["uid", "gid"])
@pytest.mark.parametrize("bad", [-1, 4294967295, 2**64, -(2**63)])
def test_ids_out_of_range(name: str, bad: int) -> None:
    assert_refused(req(**{name: bad}), name, "out of range", "4294967294")


@pytest.mark.parametrize("good", [0, 1, 2**31 - 1])
def test_app_id_in_range(good: int) -> None:
    assert parse_request(req(app_id=good)).app_id == good


@pytest.mark.parametrize("bad", [-1, 2**31, 4294967294])
def test_app_id_out_of_range(bad: int) -> None:
    assert_refused(req(app_id=bad), "app_id", "out of range")


# --- path syntax (every path field, and overlay items) ----------------------------------------------

BAD_PATHS = [
    ("", "empty"),
    ("/a\ud800b", "UTF-8"),
    ("/a\0b", "NUL"),
    ("/a\nb", "control"),
    ("/a\tb", "control"),
    ("/a\x7fb", "control"),
    ("/a\x85b", "control"),
    ("relative/path", "absolute"),
    ("./x", "absolute"),
    ("/" + "/".join(["d" * 200] * 21), "too long"),
    ("/a//b", "'//'"),
    ("//a", "'//'"),
    ("/a/b/", "end with '/'"),
    ("/a/../b", "'..'"),
    ("/..", "'..'"),
    ("/a/./b", "'.'"),
    ("/a/.", "'.'"),
    ("/" + "n" * 256, "component"),
    ("/x/" + "é" * 128, "component"),  # 256 bytes in 128 characters
]
GOOD_PATHS = [
    "/opt/app",
    "/opt/app dir/with spaces",
    "/opt/.hidden/..dots/...",
    "/opt/ünïcödé/日本",
    "/" + "n" * 255,
    "/x/" + "é" * 127,
    "/" + "/".join(["d" * 200] * 20),  # 4020 bytes
]


@pytest.mark.parametrize(("bad", "why"), BAD_PATHS)
@pytest.mark.parametrize("name", PATH_FIELDS)
def test_bad_path_refused(name: str, bad: str, why: str) -> None:
    assert_refused(req(**{name: bad}), name, why)


@pytest.mark.parametrize(("bad", "why"), BAD_PATHS)
def test_bad_overlay_path_refused(bad: str, why: str) -> None:
    assert_refused(req(app_overlay_dirs=["/usr", "/etc", bad]), "app_overlay_dirs[2]", why)


@pytest.mark.parametrize("good", GOOD_PATHS)
def test_good_path_accepted(good: str) -> None:
    assert check_path(good) == good
    assert parse_request(req(app_pkg_path=good)).app_pkg_path == good
    assert parse_request(req(app_overlay_dirs=[good])).app_overlay_dirs == [good]
    m = parse_request(req(app_exec_dir=good, app_data_dir="/srv/data", app_overlay_dirs=[]))
    assert m.app_exec_dir == good


def test_path_length_limit_is_in_bytes() -> None:
    exactly = "/" + "/".join(["d" * 255] * 15) + "/" + "e" * 254  # 15 * 256 + 255 = 4095 bytes
    assert len(exactly.encode()) == 4095
    assert check_path(exactly) == exactly
    too_long = exactly[:-1] + "é"  # a two-byte character for a one-byte one: 4096 bytes
    assert len(too_long.encode()) == 4096
    with pytest.raises(ValueError, match="too long"):
        check_path(too_long)


@given(st.text(alphabet="/a.\n", max_size=12))
def test_accepted_paths_are_normal(path: str) -> None:
    try:
        check_path(path)
    except ValueError:
        return
    assert posixpath.normpath(path) == path
    assert posixpath.isabs(path)


# --- the root and the kernel filesystems ------------------------------------------------------------


def test_pkg_path_not_root() -> None:
    assert_refused(req(app_pkg_path="/"), "app_pkg_path", "not /")
    assert parse_request(req(app_pkg_path="/p.squashfs")).app_pkg_path == "/p.squashfs"


def test_pkg_path_may_live_anywhere_else() -> None:
    assert parse_request(req(app_pkg_path="/proc/self/fd/3")).app_pkg_path == "/proc/self/fd/3"


@pytest.mark.parametrize("name", ["app_exec_dir", "app_data_dir"])
def test_mount_dirs_not_root(name: str) -> None:
    assert_refused(req(**{name: "/"}), name, "must not be /")


@pytest.mark.parametrize("name", ["app_exec_dir", "app_data_dir"])
@pytest.mark.parametrize("bad", ["/proc", "/proc/1", "/sys/fs/cgroup", "/dev", "/dev/shm/x"])
def test_mount_dirs_not_in_kernel_fs(name: str, bad: str) -> None:
    assert_refused(req(**{name: bad}), name, "kernel")


@pytest.mark.parametrize("name", ["app_exec_dir", "app_data_dir"])
@pytest.mark.parametrize("good", ["/procx", "/system/app", "/devel", "/srv/proc", "/opt/dev"])
def test_mount_dirs_near_kernel_fs_ok(name: str, good: str) -> None:
    other = "app_data_dir" if name == "app_exec_dir" else "app_exec_dir"
    m = parse_request(req(**{name: good, other: "/opt/other"}))
    assert getattr(m, name) == good


@pytest.mark.parametrize(("bad", "why"), [
    ("/", "must not be /"),
    ("/proc", "kernel"),
    ("/proc/sys", "kernel"),
    ("/sys", "kernel"),
    ("/sys/kernel", "kernel"),
    ("/dev", "kernel"),
    ("/dev/pts", "kernel"),
])
def test_overlay_not_root_or_kernel_fs(bad: str, why: str) -> None:
    assert_refused(req(app_overlay_dirs=["/usr", bad]), "app_overlay_dirs[1]", why)


@pytest.mark.parametrize("good", ["/procs", "/sysroot", "/device", "/opt", "/srv/dev"])
def test_overlay_near_kernel_fs_ok(good: str) -> None:
    assert parse_request(req(app_overlay_dirs=[good])).app_overlay_dirs == [good]


# --- exec dir vs data dir ---------------------------------------------------------------------------


def test_exec_and_data_must_differ() -> None:
    assert_refused(req(app_data_dir=SEED["app_exec_dir"]), "app_data_dir", "differ")


def test_data_not_inside_exec() -> None:
    assert_refused(req(app_data_dir=SEED["app_exec_dir"] + "/data"), "app_data_dir", "inside app_exec_dir")


def test_exec_not_inside_data() -> None:
    assert_refused(req(app_exec_dir=SEED["app_data_dir"] + "/exe"), "app_data_dir", "contain app_exec_dir")


def test_exec_and_data_siblings_with_common_prefix_ok() -> None:
    m = parse_request(req(app_exec_dir="/var/app", app_data_dir="/var/app2", app_overlay_dirs=["/usr"]))
    assert (m.app_exec_dir, m.app_data_dir) == ("/var/app", "/var/app2")
    m = parse_request(req(app_exec_dir="/var/app2", app_data_dir="/var/app", app_overlay_dirs=["/usr"]))
    assert (m.app_exec_dir, m.app_data_dir) == ("/var/app2", "/var/app")


# --- overlay list rules -----------------------------------------------------------------------------


def test_overlay_count_limit() -> None:
    dirs = [f"/o{i}" for i in range(MAX_OVERLAY_DIRS)]
    assert parse_request(req(app_overlay_dirs=dirs)).app_overlay_dirs == dirs
    assert_refused(req(app_overlay_dirs=[*dirs, "/o99"]), "app_overlay_dirs", "at most 16", "17")


def test_overlay_duplicates_refused() -> None:
    err = assert_refused(req(app_overlay_dirs=["/usr", "/etc", "/usr"]), "app_overlay_dirs[2]", "duplicate")
    assert "app_overlay_dirs[0]" in err.reason


@pytest.mark.parametrize("dirs", [["/usr", "/usr/lib"], ["/usr/lib", "/usr"], ["/a", "/b", "/a/b/c"]])
def test_overlay_nesting_refused(dirs: list[str]) -> None:
    j = len(dirs) - 1
    err = assert_refused(req(app_overlay_dirs=dirs), f"app_overlay_dirs[{j}]", "overlap", "inside")
    assert dirs[j] in err.reason


def test_overlay_nesting_message() -> None:
    err = refused(req(app_overlay_dirs=["/usr", "/usr/lib"]))
    assert err.reason == "overlays /usr and /usr/lib overlap: one is inside the other"


def test_overlay_common_prefix_is_not_nesting() -> None:
    dirs = ["/usr", "/usrx", "/us", "/usr-local"]
    assert parse_request(req(app_overlay_dirs=dirs)).app_overlay_dirs == dirs


def test_exec_dir_must_not_equal_overlay() -> None:
    assert_refused(
        req(app_overlay_dirs=["/usr", "/opt/app"], app_exec_dir="/opt/app"),
        "app_overlay_dirs[1]", "app_exec_dir", "hide",
    )


def test_exec_dir_inside_overlay_refused() -> None:
    """The package would be mounted inside an overlay (the original seed had exec dir /var/your_APP/execdir
    under overlay /var)."""
    assert_refused(req(app_exec_dir="/opt/app/exe", app_overlay_dirs=["/usr", "/opt"]),
                   "app_overlay_dirs[1]", "must not contain app_exec_dir (/opt/app/exe)", "package")


def test_data_dir_must_not_equal_overlay() -> None:
    assert_refused(
        req(app_overlay_dirs=["/usr", "/srv/data"], app_data_dir="/srv/data"), "app_overlay_dirs[1]", "app_data_dir"
    )


def test_data_dir_inside_overlay_refused() -> None:
    """The overlay's upper dir would sit inside its own lower dir."""
    assert_refused(req(app_data_dir="/var/app/data", app_overlay_dirs=["/var"]),
                   "app_overlay_dirs[0]", "must not contain app_data_dir (/var/app/data)", "lower")


def test_dirs_beside_overlays_ok() -> None:
    """Only containment counts: a sibling or a prefix that is not a parent is fine."""
    m = parse_request(req(app_data_dir="/varx/data", app_exec_dir="/srv/exe", app_overlay_dirs=["/var", "/srv/ex"]))
    assert m.app_data_dir == "/varx/data"


# --- robustness -------------------------------------------------------------------------------------

_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True), st.text(max_size=20),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)
_pathish = st.lists(
    st.sampled_from(["/", ".", "a", "proc", "usr", "\n", "\0", "\ud800", "é"]), max_size=12
).map("".join)
_value = st.one_of(
    _json,
    _pathish,
    st.lists(_pathish, max_size=18),
    st.sampled_from([*SEED.values(), "/", "/usr", 0, 4294967294, 4294967295]),
)
_key = st.one_of(st.sampled_from(FIELDS), st.text(max_size=6))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.dictionaries(_key, _value, max_size=9),
    st.builds(lambda d: {**SEED, **d}, st.dictionaries(st.sampled_from(FIELDS), _value, max_size=3)),
    _json,
))
def test_only_request_invalid_escapes(params: Any) -> None:
    try:
        m = parse_request(params)
    except RequestInvalid as e:
        assert isinstance(e.reason, str) and e.reason
        assert e.field == "" or e.field.split("[", 1)[0] in FIELDS or e.field in params
    else:
        assert isinstance(m, RockerRequestModel)
        assert parse_request(m.model_dump()) == m
