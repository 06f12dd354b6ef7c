"""scripts/mutants.py on a scratch tree: a killed mutant, a known-equivalent one, drift caught.

The real run (every mutant of scripts/mutants.toml against the real suite) takes minutes and is
not part of the suite (docs/testing.md); that its snippets still match the code is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("mutants_script", ROOT / "scripts" / "mutants.py")
assert _spec and _spec.loader
mutants = importlib.util.module_from_spec(_spec)
sys.modules["mutants_script"] = mutants  # dataclasses look their module up
_spec.loader.exec_module(mutants)

CALC = '''
def clamp(n, lo, hi):
    if n < lo:
        return lo
    if n > hi:
        return hi
    return n


def double(n):
    return n + n
'''

TESTS = '''
from calc import clamp, double


def test_clamp():
    assert clamp(5, 0, 3) == 3 and clamp(-1, 0, 3) == 0 and clamp(2, 0, 3) == 2


def test_double():
    assert double(3) == 6
'''

LIST = """
[[mutant]]
id = "upper-bound-off-by-one"
file = "calc.py"
original = 'if n > hi:'
replacement = 'if n > hi + 5:'
promise = "clamp never returns more than hi"
tests = ["test_calc.py::test_clamp"]

[[mutant]]
id = "double-as-product"
file = "calc.py"
original = 'return n + n'
replacement = 'return 2 * n'
promise = "double doubles"
tests = ["test_calc.py::test_double"]
equivalent = "n + n and 2 * n are the same value for every int"
"""


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "calc.py").write_text(CALC)
    (tree / "test_calc.py").write_text(TESTS)
    (tree / "mutants.toml").write_text(LIST)
    return tree


def _digest(tree: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tree.iterdir()) if p.is_file()}


def test_one_killed_one_equivalent(scratch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _digest(scratch)
    rc = mutants.main(["--tree", str(scratch), "--list", str(scratch / "mutants.toml"), "--lock", "",
                       "--timeout", "60"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "[1/2] upper-bound-off-by-one: killed" in out, out
    assert "[2/2] double-as-product: survived" in out, out
    assert "1 killed, 0 survived, 0 errors, 1 equivalent (not scored); score 100.0% (1/1)" in out, out
    assert "equivalent double-as-product: n + n and 2 * n" in out, out
    assert _digest(scratch) == before, "the checkout itself was edited"


def test_a_survivor_fails_the_run(scratch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lst = scratch / "mutants.toml"
    lst.write_text(LIST.replace('equivalent = "n + n and 2 * n are the same value for every int"\n', ""))
    rc = mutants.main(["--tree", str(scratch), "--list", str(lst), "--lock", "", "--only", "double-*",
                       "--no-baseline"])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "SURVIVED double-as-product" in out and "score 0.0% (0/1)" in out, out


def test_drift_is_refused_before_anything_runs(scratch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (scratch / "calc.py").write_text(CALC.replace("if n > hi:", "if hi < n:"))
    rc = mutants.main(["--tree", str(scratch), "--list", str(scratch / "mutants.toml"), "--lock", ""])
    err = capsys.readouterr().err
    assert rc == 2
    assert "mutant upper-bound-off-by-one: its snippet occurs 0 times in calc.py" in err, err


def test_restore_happens_when_the_run_is_interrupted(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the tests run: the file is back (checked by hash) before the interrupt goes on."""
    m = mutants.load(scratch / "mutants.toml")[0]
    before = (scratch / "calc.py").read_text()

    def interrupted(*a: object) -> None:
        assert "hi + 5" in (scratch / "calc.py").read_text()
        raise KeyboardInterrupt

    monkeypatch.setattr(mutants, "run_tests", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mutants.run_mutant(scratch, m, mutants.NativeBuild(scratch), mutants.TestLock("", 0), 10)
    assert (scratch / "calc.py").read_text() == before


def test_every_mutant_of_the_project_still_applies() -> None:
    """A snippet the code no longer contains is drift: update the mutant along with the code."""
    listed = mutants.load(ROOT / "scripts" / "mutants.toml")
    assert len(listed) >= 25
    for m in listed:
        mutants.check_snippet(ROOT, m)
        assert (ROOT / m.file).exists() and m.tests
