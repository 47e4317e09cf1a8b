"""What one pgbench run measured (`Run`), and the tables bench/bench.py prints and writes."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Run:
    scenario: str
    target: str
    round: int
    tps: float | None = None
    lat_ms: float | None = None
    conn_ms: float | None = None
    failed: int = 0
    error: str = ""
    broken: bool = False
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # seconds
    target_sys: float = 0.0  # seconds of the target's CPU spent in the kernel
    xacts: int = 0
    note: str = ""
    skipped: str = ""  # not run: why (a target that cannot serve the scenario)

    def pooler_us_per_txn(self) -> float | None:
        if self.target == "direct" or not self.xacts or "pooler" not in self.cpu:
            return None
        return self.cpu["pooler"] * 1e6 / self.xacts

    def sys_us_per_txn(self) -> float | None:
        if self.pooler_us_per_txn() is None:
            return None
        return self.target_sys * 1e6 / self.xacts


def med(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v: float | None, spec: str = ".0f", dash: str = "-") -> str:
    return dash if v is None else format(v, spec)


def build_table(
    runs: list[Run], scenarios: str, targets: list[str], peers: dict[str, str] | None = None
) -> str:
    """The main table: a row per scenario and target, medians over rounds. `peers` maps a
    pooler target to the odyssey target with the same `workers` (the `vs odyssey` column)."""
    peers = peers or {}
    by = {(r.scenario, r.target, r.round): r for r in runs}
    rounds = sorted({r.round for r in runs})
    lines = [
        "| scen | target | median TPS | avg lat ms | vs direct | vs pgbouncer | vs odyssey "
        "| TPS per round | pooler CPU µs/txn | of which kernel "
        "| CPU% pgbench / pooler / postgres / other | note |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for key in scenarios:
        for t in targets:
            rs = [by.get((key, t, n)) for n in rounds]
            rs = [r for r in rs if r is not None]
            if not rs:
                continue
            if all(r.skipped for r in rs):
                lines.append(f"| {key} | {t} | n/a | | | | | | | | | {rs[0].skipped} |")
                continue
            ok = [r for r in rs if not r.broken and r.tps is not None]
            broken = [r for r in rs if r.broken]
            tps = med([r.tps for r in ok])
            lat = med([r.lat_ms for r in ok])

            def ratio(other: str, ok: list[Run] = ok, key: str = key) -> float | None:
                vals = []
                for r in ok:
                    o = by.get((key, other, r.round))
                    if o and not o.broken and o.tps:
                        vals.append(r.tps / o.tps)
                return med(vals)

            per_round = " / ".join(("✗" if r.broken else "") + fmt(r.tps) for r in rs)
            us = med([r.pooler_us_per_txn() for r in ok])
            sys_us = med([r.sys_us_per_txn() for r in ok])
            shares = []
            for part in ("pgbench", "pooler", "postgres", "other"):
                shares.append(fmt(med([100 * r.cpu.get(part, 0.0) / r.wall for r in (ok or rs)])))
            notes = []
            if broken:
                notes.append(f"**BROKEN** ({len(broken)}/{len(rs)} rounds): `{broken[0].error}`")
            conn = med([r.conn_ms for r in ok])
            if key in ("e",) and conn is not None:
                notes.append(f"initial connect {conn:.0f} ms")
            notes += sorted({r.note for r in rs if r.note})
            tps_cell = fmt(tps) if ok else f"({fmt(med([r.tps for r in broken]))})"
            lines.append(
                f"| {key} | {t} | {tps_cell} | {fmt(lat, '.2f')} | "
                f"{fmt(ratio('direct') if t != 'direct' else (1.0 if ok else None), '.2f')} | "
                f"{fmt(ratio('pgbouncer') if t != 'pgbouncer' else (1.0 if ok else None), '.2f')} | "
                f"{fmt(ratio(peers[t]) if t in peers else None, '.2f')} | "
                f"{per_round} | {fmt(us)} | {fmt(sys_us)} | {' / '.join(shares)} | "
                f"{'; '.join(notes)} |"
            )
    # scenario g: added latency over direct, per round, median
    if "g" in scenarios and "direct" in targets:
        extra = [
            "",
            "1-client latency (g): added average latency over direct, median of per-round differences:",
            "",
        ]
        extra += ["| target | avg latency µs | added vs direct µs |", "|---|---:|---:|"]
        for t in targets:
            rs = [by.get(("g", t, n)) for n in rounds]
            rs = [r for r in rs if r and not r.broken and r.lat_ms is not None]
            added = []
            for r in rs:
                d = by.get(("g", "direct", r.round))
                if d and not d.broken and d.lat_ms is not None:
                    added.append((r.lat_ms - d.lat_ms) * 1000)
            extra.append(
                f"| {t} | {fmt(med([r.lat_ms * 1000 for r in rs]))} | "
                f"{fmt(med(added)) if t != 'direct' else '0'} |"
            )
        lines += extra
    return "\n".join(lines)


def summary_table(runs: list[Run], scenarios: str, targets: list[str]) -> str:
    """The ratios for README and docs/benchmarks.md: per target, TPS against pgbouncer per
    scenario (median of the ratios within a round, with their range over rounds: the noise),
    then CPU µs per transaction (median), and in g the latency added over direct."""
    if "pgbouncer" not in targets:
        return ""
    by = {(r.scenario, r.target, r.round): r for r in runs if not r.broken and r.tps}
    header = "| target | " + " | ".join(scenarios) + " |"
    lines = [header, "|---|" + "---:|" * len(scenarios)]
    for t in targets:
        if t in ("pgbouncer", "direct"):
            continue
        cells = []
        for key in scenarios:
            ratios = [
                r.tps / o.tps
                for (k, name, rnd), r in by.items()
                if k == key and name == t and (o := by.get((key, "pgbouncer", rnd))) and o.tps
            ]
            if not ratios:
                mine = [r for r in runs if r.scenario == key and r.target == t]
                cells.append(
                    "n/a" if mine and all(r.skipped for r in mine) else "✗" if mine else "-"
                )
                continue
            cell = f"{med(ratios):.2f}×"
            if len(ratios) > 1:
                cell += f" ({min(ratios):.2f}–{max(ratios):.2f})"
            us = med([r.pooler_us_per_txn() for (k, n, _), r in by.items() if k == key and n == t])
            if us is not None:
                cell += f", {us:.0f} µs"
            if key == "g":
                added = [
                    (r.lat_ms - d.lat_ms) * 1000
                    for (k, name, rnd), r in by.items()
                    if k == "g" and name == t and r.lat_ms is not None
                    and (d := by.get(("g", "direct", rnd))) and d.lat_ms is not None
                ]  # fmt: skip
                if added:
                    cell += f", +{med(added):.0f} µs lat"
            cells.append(cell)
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    pgb = []
    for key in scenarios:
        us = med(
            [r.pooler_us_per_txn() for (k, n, _), r in by.items() if k == key and n == "pgbouncer"]
        )
        pgb.append(f"1.00×, {us:.0f} µs" if us is not None else "-")
    lines.insert(2, "| pgbouncer | " + " | ".join(pgb) + " |")
    return "\n".join(lines)


def memory_table(mem: list[dict[str, Any]]) -> str:
    lines = [
        "| target | idle clients | RSS fresh (kB) | RSS with idle clients (kB) | per idle client "
        "| server conns idle → held | RSS held (kB) | per server conn | note |",
        "|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for m in mem:
        if "rss1" not in m:
            lines.append(
                f"| {m['target']} | {m['clients']} | {m.get('rss0', '-')} | - | - | - | - | - | {m.get('error', '')} |"
            )
            continue
        opened = m.get("opened", m["clients"])
        per_client = (m["rss1"] - m["rss0"]) * 1024 / opened if opened else None
        held = "-"
        per_server = None
        if "rss2" in m:
            ds = m["servers2"] - m["servers1"]
            held = f"{m['servers1']} → {m['servers2']}"
            if ds > 0:
                per_server = (m["rss2"] - m["rss1"]) * 1024 / ds
        lines.append(
            f"| {m['target']} | {opened} | {m['rss0']} | {m['rss1']} | "
            f"{fmt(per_client / 1024 if per_client is not None else None, '.1f')} KB | {held} | "
            f"{m.get('rss2', '-')} | {fmt(per_server / 1024 if per_server is not None else None, '.1f')} KB | "
            f"{m.get('error', '')} |"
        )
    return "\n".join(lines)


def _within_round(runs: list[Run], key: str, target: str, other: str) -> float | None:
    """Median over rounds of target's TPS / other's TPS in the same round."""
    by = {(r.target, r.round): r for r in runs if r.scenario == key and not r.broken and r.tps}
    vals = [
        r.tps / o.tps
        for (t, rnd), r in by.items()
        if t == target and (o := by.get((other, rnd))) is not None and r.tps and o.tps
    ]
    return med(vals)


def scaling_table(runs: list[Run], scenarios: str, counts: list[int]) -> str:
    """SCALE_WORKERS: per scenario, pooler and odyssey at each worker count against
    pgbouncer (one thread) and direct, ratios within a round."""
    lines = [
        "| scen | workers | pooler TPS | odyssey TPS | pooler / pgbouncer | odyssey / pgbouncer "
        "| pooler / odyssey | pooler × own 1st | odyssey × own 1st | pooler CPU µs/txn "
        "| odyssey CPU µs/txn |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for key in scenarios:
        mine = [r for r in runs if r.scenario == key and not r.broken and r.tps]

        def tps(target: str, mine: list[Run] = mine) -> float | None:
            return med([r.tps for r in mine if r.target == target])

        def cpu(target: str, mine: list[Run] = mine) -> float | None:
            return med([r.pooler_us_per_txn() for r in mine if r.target == target])

        first = counts[0]
        for n in counts:
            p, o = f"pooler{n}", f"odyssey{n}"
            lines.append(
                f"| {key} | {n} | {fmt(tps(p))} | {fmt(tps(o))} | "
                f"{fmt(_within_round(runs, key, p, 'pgbouncer'), '.2f')} | "
                f"{fmt(_within_round(runs, key, o, 'pgbouncer'), '.2f')} | "
                f"{fmt(_within_round(runs, key, p, o), '.2f')} | "
                f"{fmt(_within_round(runs, key, p, f'pooler{first}'), '.2f')} | "
                f"{fmt(_within_round(runs, key, o, f'odyssey{first}'), '.2f')} | "
                f"{fmt(cpu(p))} | {fmt(cpu(o))} |"
            )
        broken = sorted({r.target for r in runs if r.scenario == key and r.broken})
        notes.append(
            f"- ({key}) pgbouncer {fmt(tps('pgbouncer'))} TPS (one thread, "
            f"{fmt(cpu('pgbouncer'))} µs/txn), direct {fmt(tps('direct'))} TPS"
            + (f"; broken runs: {', '.join(broken)}" if broken else "")
        )
    return "\n".join([*lines, "", *notes])
