"""Set rocker's figures beside their anchors, check the targets, render markdown tables."""

from __future__ import annotations

from typing import Any

from .stats import ratio

# The launchers measured beside the Python launcher with a callable app: (key in the figures, label)
OTHER_LAUNCHERS = (("c_client", "C launcher"), ("exec_app", "Python launcher, Exec app"))
START_KINDS = (("warm", "package already mounted"), ("cold", "first rocker of its package"))


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def compare(fig: dict[str, Any], anc: dict[str, Any], top: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []

    def row(what: str, ours: Any, anchor_name: str | None, anchor: Any, unit: str = "ms",
            ours_p99: Any = None, anchor_p99: Any = None) -> None:
        rows.append({"figure": what, "unit": unit, "ours": ours, "ours_p99": ours_p99, "anchor": anchor_name,
                     "anchor_value": anchor, "anchor_p99": anchor_p99, "ratio": ratio(ours, anchor)})

    def p(name: str, q: str = "p50") -> Any:
        return _get(fig, name, q)

    def ap(*path: str) -> Any:
        return _get(anc, *path)

    def w(name: str, q: str = "p50") -> Any:
        return _get(fig, "warm", name, q)

    crun, bwrap = ap("crun", "p50"), ap("bwrap_premounted", "p50")
    for get, key, label in (
            (p, "start_exec_ms", "(a) start: enter_rocker() -> app's main() in the package"),
            (w, "start_exec_ms", "(a) start, package already mounted: enter_rocker() -> app's main()"),
            (p, "start_first_line_ms", "(a) start: enter_rocker() -> first line of the app callable"),
            (w, "start_first_line_ms", "(a) start, package already mounted: -> first line of the callable")):
        row(label, get(key), "crun run, whole (userns, 5 overlays)", crun, ours_p99=get(key, "p99"),
            anchor_p99=ap("crun", "p99"))
        row(label, get(key), "bwrap, package pre-mounted, whole run", bwrap, ours_p99=get(key, "p99"),
            anchor_p99=ap("bwrap_premounted", "p99"))
        if key == "start_first_line_ms" and ap("bwrap_python", "p50") is not None:
            row(label, get(key), "bwrap running python -I -S -c pass, whole run (not the kit's)",
                ap("bwrap_python", "p50"), ours_p99=get(key, "p99"), anchor_p99=ap("bwrap_python", "p99"))
    for fkey, who in OTHER_LAUNCHERS:
        for series, which in START_KINDS:
            cw = _get(fig, fkey, series, "start_exec_ms") or {}
            for anchor_name, key in (("crun run, whole (userns, 5 overlays)", "crun"),
                                     ("bwrap, package pre-mounted, whole run", "bwrap_premounted")):
                if cw:
                    row(f"(a) start, {who}, {which}: -> app's main()", cw.get("p50"), anchor_name,
                        ap(key, "p50"), ours_p99=cw.get("p99"), anchor_p99=ap(key, "p99"))
    fc = ("floor_c1", "create")
    row("(b) create: client round trip (Create call -> reply + fds)", p("create_client_ms"),
        "C floor: create phase", ap(*fc, "p50"), ours_p99=p("create_client_ms", "p99"), anchor_p99=ap(*fc, "p99"))
    row("(b) create: rockerd's own (Create received -> reply)", p("create_daemon_ms"),
        "C floor: create phase", ap(*fc, "p50"), ours_p99=p("create_daemon_ms", "p99"), anchor_p99=ap(*fc, "p99"))
    fs = ("floor_shared_c1", "create")
    row("(b) create, package already mounted: rockerd's own", w("create_daemon_ms"),
        "C floor, shared squashfs: create phase", ap(*fs, "p50"), ours_p99=w("create_daemon_ms", "p99"),
        anchor_p99=ap(*fs, "p99"))
    row("(c) teardown: app exits -> guard gone + loop, mnt/net ns released", p("teardown_ms"),
        "C floor: teardown phase", ap("floor_c1", "teardown", "p50"), ours_p99=p("teardown_ms", "p99"),
        anchor_p99=ap("floor_c1", "teardown", "p99"))
    row("(c) teardown: app exits -> guard gone", p("teardown_guard_ms"), None, None,
        ours_p99=p("teardown_guard_ms", "p99"))
    row("(c) teardown: app exits -> rockerd has handled the end (state record gone)", p("teardown_forgot_ms"),
        None, None, ours_p99=p("teardown_forgot_ms", "p99"))
    c1 = _get(fig, "throughput", "1", "cycle_ms")
    row("whole cycle latency at c=1", _get(c1, "p50"), "C floor: full cycle c=1", ap("floor_c1", "total", "p50"),
        ours_p99=_get(c1, "p99"), anchor_p99=ap("floor_c1", "total", "p99"))
    for c, t in sorted(_get(fig, "throughput").items(), key=lambda kv: int(kv[0])) if _get(fig, "throughput") else []:
        key = "floor_c1" if c == "1" else "floor_c2"
        label = "C floor c=1" if c == "1" else "C floor c=2 (2 CPUs)"
        row(f"(d) throughput c={c}", t["cycles_per_s"], f"{label}, cycles/s", ap(key, "cycles_per_s"), unit="cycles/s")
    for fkey, who in OTHER_LAUNCHERS:
        for c, t in sorted((_get(fig, fkey, "throughput") or {}).items(), key=lambda kv: int(kv[0])):
            key = "floor_c1" if c == "1" else "floor_c2"
            label = "C floor c=1" if c == "1" else "C floor c=2 (2 CPUs)"
            row(f"(d) throughput c={c}, {who}", t["cycles_per_s"], f"{label}, cycles/s", ap(key, "cycles_per_s"),
                unit="cycles/s")
    mem = _get(fig, "memory") or {}
    for level, m in sorted(mem.items(), key=lambda kv: int(kv[0])):
        if level == "0":
            row("rockerd RSS, 0 live", m["rockerd_rss_kib"], None, None, unit="KiB")
            continue
        row(f"(e) guard PSS per idle rocker, {m['live']} live", m["guard_pss_kib_p50"],
            "C floor's guard, idle", ap("floor_guard_pss", "guard_pss_kib_p50"), unit="KiB")
        row(f"(e) rockerd RSS, {m['live']} live", m["rockerd_rss_kib"], None, None, unit="KiB")
    cal = _get(fig, "create_at_live") or {}
    ref = _get(fig, "create_at_live_ref") or {}
    base = _get(cal, "0_pooled", "create_daemon_ms", "p50")
    for label, v in cal.items():
        if label != "0_pooled":
            row(f"(f) create at {label.replace('_', ' ')} live (rockerd's own)", _get(v, "create_daemon_ms", "p50"),
                "same, 0 live (before and after, pooled)", base, ours_p99=_get(v, "create_daemon_ms", "p99"))
            if label not in ("0", "0_after") and label in ref:
                row(f"(f) create at {label} live (rockerd's own)", _get(v, "create_daemon_ms", "p50"),
                    "an empty rockerd at the same time (alternating)", _get(ref, label, "create_daemon_ms", "p50"),
                    ours_p99=_get(v, "create_daemon_ms", "p99"), anchor_p99=_get(ref, label, "create_daemon_ms", "p99"))

    targets: list[dict[str, Any]] = []

    def target(what: str, value: Any, limit: Any, ok: bool | None, note: str = "") -> None:
        targets.append({"target": what, "value": value, "limit": limit,
                        "met": ok, "note": note})

    for which, start in (("first rocker of its package", p("start_exec_ms")),
                         ("package already mounted", w("start_exec_ms"))):
        for name, val in (("crun's whole run", crun), ("bwrap on a pre-mounted package", bwrap)):
            target(f"(a) start p50 ({which}) below {name}", start, val,
                   None if start is None or val is None else start < val,
                   "" if val is not None else "anchor not measured")
    for fkey, who in OTHER_LAUNCHERS:
        for series, which in START_KINDS:
            start = _get(fig, fkey, series, "start_exec_ms", "p50")
            if start is None:
                continue
            for name, val in (("crun's whole run", crun), ("bwrap on a pre-mounted package", bwrap)):
                target(f"(a) start p50 ({who}, {which}) below {name}", start, val,
                       None if val is None else start < val, "" if val is not None else "anchor not measured")
    f2 = ap("floor_c2", "cycles_per_s")
    for fkey, which in (("", "Python launcher, callable app"), *OTHER_LAUNCHERS):
        t2 = _get(fig, *((fkey,) if fkey else ()), "throughput", "2", "cycles_per_s")
        if t2 is None and fkey:
            continue
        target(f"(d) throughput at c=2 ({which}) >= 0.8x the C floor's", t2,
               None if f2 is None else round(0.8 * f2, 2),
               None if t2 is None or f2 is None else t2 >= 0.8 * f2, "" if f2 is not None else "anchor not measured")
    td = p("teardown_ms")
    target("(c) teardown p50 <= 100 ms", td, 100, None if td is None else td <= 100)
    m = mem.get(str(top)) or {}
    g = m.get("guard_pss_kib_p50")
    target(f"(e) userspace PSS per idle rocker <= 256 KiB ({m.get('live')} live)", g, 256,
           None if g is None else g <= 256)
    rss = m.get("rockerd_rss_kib")
    target(f"(e) rockerd RSS <= 64 MiB ({m.get('live')} live)", rss, 64 * 1024, None if rss is None else rss <= 65536)
    hi = _get(cal, str(top), "create_daemon_ms", "p50")
    target(f"(f) create p50 at {top} live <= 1.5x at 0 live (before and after, pooled)", hi,
           None if base is None else round(1.5 * base, 3),
           None if hi is None or base is None else hi <= 1.5 * base)
    return rows, targets


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def render(result: dict[str, Any]) -> str:
    fig, anc = result.get("figures", {}), result.get("anchors", {})
    out: list[str] = []
    v = result.get("versions", {})
    a = result.get("args", {})
    out.append(f"rocker bench: {a.get('rounds')} rounds, kernel {v.get('kernel')}, {v.get('cpus')} CPUs, "
               f"commit {v.get('commit', '?')}, {result.get('duration_s')} s")
    out.append("")
    out.append("| figure | ours p50 | ours p99 | anchor | anchor p50 | anchor p99 | ratio |")
    out.append("|---|---|---|---|---|---|---|")
    for r in result.get("comparisons", []):
        unit = "" if r["unit"] == "ms" else f" {r['unit']}"
        out.append(f"| {r['figure']} | {_fmt(r['ours'])}{unit if r['ours'] is not None else ''} | "
                   f"{_fmt(r['ours_p99'])} | {r['anchor'] or ''} | {_fmt(r['anchor_value'])} | "
                   f"{_fmt(r['anchor_p99'])} | {_fmt(r['ratio']) + 'x' if r['ratio'] is not None else ''} |")
    out.append("")
    out.append("| target | value | limit | met |")
    out.append("|---|---|---|---|")
    for t in result.get("targets", []):
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        out.append(f"| {t['target']} | {_fmt(t['value'])} | {_fmt(t['limit'])} | {met} {t['note']} |")
    net = result.get("network") or {}
    if net:
        cols = [("create_daemon_ms", "p50"), ("create_daemon_ms", "p99"), ("start_first_line_ms", "p50"),
                ("start_first_line_ms", "p99")]
        out += ["", "| network mode | " + " | ".join(f"{k.removesuffix('_ms')} {q} ms" for k, q in cols) + " |",
                "|---" * (len(cols) + 1) + "|"]
        for mode, d in net.items():
            out.append(f"| {mode} | " + " | ".join(_fmt(_get(d, k, q)) for k, q in cols) + " |")
    out.append("")
    keys = ("client_before_wire_ms", "create_client_ms", "create_daemon_ms", "reply_to_first_line_ms",
            "start_first_line_ms", "start_exec_ms", "enter_return_ms", "teardown_guard_ms", "teardown_ms",
            "teardown_forgot_ms")
    out.append("| one rocker at a time, p50 ms | " + " | ".join(k.removesuffix("_ms") for k in keys) + " |")
    out.append("|---" * (len(keys) + 1) + "|")
    for label, d in (("first rocker of its package", fig), ("package already mounted", fig.get("warm") or {})):
        out.append(f"| {label} | " + " | ".join(_fmt(_get(d, k, "p50")) for k in keys) + " |")
    for fkey, who in OTHER_LAUNCHERS:
        for series, which in START_KINDS:
            cw = _get(fig, fkey, series) or {}
            if any(cw.values()):
                out.append("")
                out.append(f"{who}, one rocker at a time, {which}, p50 ms: "
                           + ", ".join(f"{k.removesuffix('_ms')} {_fmt(_get(cw, k, 'p50'))}" for k in cw))
    for label, tp in (("Python launcher, callable app", fig.get("throughput") or {}),
                      *((who, _get(fig, fkey, "throughput") or {}) for fkey, who in OTHER_LAUNCHERS)):
        if not tp:
            continue
        out.append("")
        out.append(f"| {label}: concurrency | cycles/s (median of rounds) | round rates | cycle p50 ms | "
                   "cycle p99 ms | rockerd create p50 ms | guard gone after app exit p50 ms | errors |")
        out.append("|---|---|---|---|---|---|---|---|")
        for c, t in sorted(tp.items(), key=lambda kv: int(kv[0])):
            out.append(f"| {c} | {_fmt(t['cycles_per_s'])} | {', '.join(_fmt(x) for x in t['round_rates'])} | "
                       f"{_fmt(_get(t, 'cycle_ms', 'p50'))} | {_fmt(_get(t, 'cycle_ms', 'p99'))} | "
                       f"{_fmt(_get(t, 'create_daemon_ms', 'p50'))} | {_fmt(_get(t, 'guard_after_exit_ms', 'p50'))} | "
                       f"{t['errors']} |")
    mem = fig.get("memory") or {}
    if mem:
        out.append("")
        out.append("| live rockers | guard PSS p50 KiB | guard PSS mean KiB | guard RSS p50 KiB | rockerd RSS KiB | "
                   "rockerd PSS KiB | rockerd fds | kernel MemAvailable drop per rocker KiB | "
                   "kernel slab per rocker KiB | guards' idle CPU % | rockerd idle CPU % | build s |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for _, m in sorted(mem.items(), key=lambda kv: int(kv[0])):
            out.append(f"| {m['live']} | {_fmt(m.get('guard_pss_kib_p50'))} | {_fmt(m.get('guard_pss_kib_mean'))} | "
                       f"{_fmt(m.get('guard_rss_kib_p50'))} | {m['rockerd_rss_kib']} | {m['rockerd_pss_kib']} | "
                       f"{m['rockerd_fds']} | {_fmt(m.get('kernel_memavailable_drop_kib_per_rocker'))} | "
                       f"{_fmt(m.get('kernel_slab_kib_per_rocker'))} | {_fmt(m.get('guards_idle_cpu_pct'))} | "
                       f"{_fmt(m.get('rockerd_idle_cpu_pct'))} | {_fmt(m.get('build_s'))} |")
    rel = fig.get("release_all")
    if rel:
        out.append("")
        out.append(f"Releasing all {rel['live']} idle rockers at once: apps reaped in "
                   f"{_fmt(rel['apps_reaped_ms'])} ms, "
                   f"guards gone in {_fmt(rel['guards_gone_ms'])} ms, loop devices free in "
                   f"{_fmt(rel['loops_free_ms'])} ms (the last one goes when rockerd has handled every end), "
                   f"network namespaces freed by the kernel in {_fmt(rel.get('netns_freed_ms'))} ms. "
                   f"A rocker asked for right after the release: create round trip "
                   f"{_fmt(rel.get('create_right_after_ms'))} ms, start {_fmt(rel.get('start_right_after_ms'))} ms.")
    cal = fig.get("create_at_live") or {}
    if cal:
        out.append("")
        ref = fig.get("create_at_live_ref") or {}
        out.append("| live rockers | create, rockerd's own p50 / p99 ms | create, client round trip p50 / p99 ms | "
                   "start (main) p50 ms | teardown: guard gone p50 ms | teardown: all released p50 ms | "
                   "empty rockerd meanwhile: create p50 ms | start p50 ms |")
        out.append("|---|---|---|---|---|---|---|---|")
        for label, c in cal.items():
            r = ref.get(label) or {}
            out.append(f"| {label.replace('_', ' ')} | {_fmt(_get(c, 'create_daemon_ms', 'p50'))} / "
                       f"{_fmt(_get(c, 'create_daemon_ms', 'p99'))} | {_fmt(_get(c, 'create_client_ms', 'p50'))} / "
                       f"{_fmt(_get(c, 'create_client_ms', 'p99'))} | {_fmt(_get(c, 'start_exec_ms', 'p50'))} | "
                       f"{_fmt(_get(c, 'teardown_guard_ms', 'p50'))} | {_fmt(_get(c, 'teardown_ms', 'p50'))} | "
                       f"{_fmt(_get(r, 'create_daemon_ms', 'p50'))} | {_fmt(_get(r, 'start_exec_ms', 'p50'))} |")
    if anc:
        out.append("")
        out.append("Anchors (same run): " + "; ".join(
            f"{k} p50 {_fmt(_get(anc, k, 'total', 'p50'))} ms, {_fmt(_get(anc, k, 'cycles_per_s'))} cycles/s"
            for k in ("floor_c1", "floor_c2", "floor_shared_c1") if k in anc)
            + "; " + "; ".join(f"{k} p50 {_fmt(_get(anc, k, 'p50'))} ms"
                               for k in ("bwrap_premounted", "bwrap_python", "crun") if k in anc))
        for s in anc.get("skipped", []):
            out.append(f"Anchor skipped: {s}")
    errs = result.get("errors", {})
    if any(errs.get("counts", {}).values()):
        out.append("")
        out.append(f"Errors: {errs['counts']}; first: {errs.get('first', [])[:5]}")
    return "\n".join(out)
