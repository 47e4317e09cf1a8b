"""bench/ (the benchmark harness): target lists, peer binaries, rendered configs, tables.

The harness is a measurement tool; these check its pure parts, not timings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import latency  # noqa: E402
import processes  # noqa: E402
import report  # noqa: E402
import scenarios  # noqa: E402
import targets  # noqa: E402

from pooler.config import parse_text  # noqa: E402


def names(wanted: list[targets.Wanted]) -> list[str]:
    return [w.name for w in wanted]


def test_odyssey_expands_to_each_worker_count_and_pooler_takes_workers() -> None:
    wanted = targets.wanted_targets(
        "direct,pgbouncer,odyssey,pooler,splice,poolsplice,pooler4",
        workers=2,
        odyssey_workers=[1, 2],
        splice_workers=1,
    )
    assert names(wanted) == [
        "direct", "pgbouncer", "odyssey1", "odyssey2", "pooler", "splice", "poolsplice", "pooler4"
    ]  # fmt: skip
    by_name = {w.name: w for w in wanted}
    assert by_name["pooler"].workers == 2 and by_name["pooler4"].workers == 4
    assert by_name["odyssey2"].kind == "odyssey" and by_name["odyssey2"].workers == 2


def test_a_target_named_twice_runs_once() -> None:
    wanted = targets.wanted_targets(
        "odyssey1,odyssey", workers=1, odyssey_workers=[1, 2], splice_workers=1
    )
    assert names(wanted) == ["odyssey1", "odyssey2"]


@pytest.mark.parametrize("spec", ["pgbouncer118", "odyssey0", "pgpool", "pooler,bouncer"])
def test_unknown_targets_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="unknown target"):
        targets.wanted_targets(spec, workers=1, odyssey_workers=[1], splice_workers=1)


def test_scaling_runs_pooler_and_odyssey_at_each_count_and_pgbouncer_once() -> None:
    wanted = targets.scaling_targets(targets.parse_counts("4, 1,2,8,2"))
    assert names(wanted) == [
        "direct", "pgbouncer",
        "pooler1", "odyssey1", "pooler2", "odyssey2", "pooler4", "odyssey4", "pooler8", "odyssey8",
    ]  # fmt: skip


@pytest.mark.parametrize("text", ["", "0,1", "1,x", "-2"])
def test_bad_worker_counts_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        targets.parse_counts(text)


def test_scaling_scenarios_get_enough_clients_and_threads() -> None:
    a = scenarios.for_scaling(scenarios.SCENARIOS["a"], clients=64, jobs=4)
    assert (a.clients, a.jobs) == (64, 4) and "64 clients (-j 4)" in a.title
    e = scenarios.for_scaling(scenarios.SCENARIOS["e"], clients=64, jobs=4)
    assert (e.clients, e.jobs) == (500, 4)
    g = scenarios.for_scaling(scenarios.SCENARIOS["g"], clients=64, jobs=4)
    assert (g.clients, g.jobs) == (1, 1)  # one client: the point of g


def test_pooler_and_odyssey_share_one_config_that_pooler_accepts() -> None:
    text = targets.render_odyssey(16001, 15432, 4)
    config = parse_text(text)
    assert config.workers == 4
    [rule] = config.rules
    assert rule.pool == "transaction" and rule.pool_size == 20
    assert rule.pool_reserve_prepared_statement  # odyssey's default is no: said explicitly
    assert not rule.pool_discard


def test_pgbouncer_ini_has_protocol_level_prepared_statements(tmp_path: Path) -> None:
    ini = targets.render_pgbouncer(16002, 15432, tmp_path)
    assert "max_prepared_statements = 200" in ini
    assert "pool_mode = transaction" in ini and "default_pool_size = 20" in ini


@pytest.mark.parametrize(
    ("version", "ok"),
    [("PgBouncer 1.25.2", True), ("PgBouncer 1.21.0", True), ("PgBouncer 1.18.0", False)],
)
def test_pgbouncer_older_than_1_21_is_refused(version: str, ok: bool) -> None:
    if ok:
        targets.check_pgbouncer(version)
    else:
        with pytest.raises(RuntimeError, match="PGBOUNCER_BIN"):
            targets.check_pgbouncer(version)


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 'PgBouncer 1.25.2'\n")
    path.chmod(0o755)
    return path


def test_the_shared_build_above_the_repository_is_found(tmp_path: Path) -> None:
    shared = _executable(tmp_path / "shared" / "peers" / "pgbouncer")
    repo = tmp_path / "wt" / "perf"
    repo.mkdir(parents=True)
    found = targets.find_peer("pgbouncer", "NO_SUCH_BIN_VAR", path_ok=False, start=repo)
    assert found == shared
    assert targets.peer_version(found) == "PgBouncer 1.25.2"


def test_pgbouncer_on_path_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _executable(tmp_path / "bin" / "pgbouncer")  # think Debian's /usr/sbin/pgbouncer
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(RuntimeError, match="no pgbouncer binary: set NO_SUCH_BIN_VAR"):
        targets.find_peer("pgbouncer", "NO_SUCH_BIN_VAR", path_ok=False, start=tmp_path / "repo")
    # odyssey has no distribution package: PATH is fine for it
    _executable(tmp_path / "bin" / "odyssey")
    found = targets.find_peer("odyssey", "NO_SUCH_BIN_VAR", path_ok=True, start=tmp_path / "r")
    assert found == tmp_path / "bin" / "odyssey"


def test_the_environment_names_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = _executable(tmp_path / "mine" / "pgbouncer")
    monkeypatch.setenv("MY_PGBOUNCER", str(binary))
    assert targets.find_peer("pgbouncer", "MY_PGBOUNCER", path_ok=False) == binary
    (tmp_path / "not-exec").write_text("")
    monkeypatch.setenv("MY_PGBOUNCER", str(tmp_path / "not-exec"))
    with pytest.raises(RuntimeError, match="not an executable"):
        targets.find_peer("pgbouncer", "MY_PGBOUNCER", path_ok=False)


def test_a_binary_that_does_not_run_says_why(tmp_path: Path) -> None:
    broken = tmp_path / "pgbouncer"
    broken.write_text("#!/bin/sh\necho 'error while loading shared libraries' >&2\nexit 127\n")
    broken.chmod(0o755)
    with pytest.raises(RuntimeError, match="run-time libraries"):
        targets.peer_version(broken)


def _run(scen: str, target: str, rnd: int, tps: float, cpu_s: float = 0.0) -> report.Run:
    run = report.Run(scen, target, rnd, tps=tps, lat_ms=1.0, wall=1.0, xacts=int(tps))
    run.cpu = {"pooler": cpu_s} if cpu_s else {}
    return run


def test_the_pooling_splice_has_the_pool_size_and_skips_prepared_statements(
    tmp_path: Path,
) -> None:
    want = targets.Wanted("poolsplice", "poolsplice")
    poolsplice = targets.make_target(want, 15432, tmp_path, {})
    argv = poolsplice.argv
    assert argv[argv.index("--pool") + 1] == str(targets.SETTINGS["pool_size"])
    assert poolsplice.skips("c").startswith("n/a") and not poolsplice.skips("b")
    assert "poolsplice" in targets.KINDS


def test_a_scenario_a_target_cannot_serve_is_n_a_not_broken() -> None:
    runs = [_run("b", "pgbouncer", 1, 1000), _run("b", "poolsplice", 1, 900)]
    runs += [_run("c", "pgbouncer", 1, 1000), report.Run("c", "poolsplice", 1, skipped="n/a: x")]
    summary = report.summary_table(runs, "bc", ["pgbouncer", "poolsplice"])
    [row] = [line for line in summary.splitlines() if line.startswith("| poolsplice |")]
    assert [c.strip() for c in row.split("|")[2:-1]] == ["0.90×", "n/a"]
    table = report.build_table(runs, "bc", ["pgbouncer", "poolsplice"])
    [row] = [line for line in table.splitlines() if line.startswith("| c | poolsplice |")]
    assert "n/a: x" in row and "BROKEN" not in row


def test_scaling_table_takes_ratios_within_a_round() -> None:
    runs = [
        # round 1: a slow round for everybody; round 2: a fast one
        _run("a", "pgbouncer", 1, 1000, 0.02), _run("a", "pgbouncer", 2, 2000, 0.04),
        _run("a", "direct", 1, 1500), _run("a", "direct", 2, 3000),
        _run("a", "pooler1", 1, 900, 0.03), _run("a", "pooler1", 2, 1800, 0.06),
        _run("a", "odyssey1", 1, 800, 0.03), _run("a", "odyssey1", 2, 1600, 0.06),
        _run("a", "pooler2", 1, 1200, 0.04), _run("a", "pooler2", 2, 2400, 0.08),
        _run("a", "odyssey2", 1, 1000, 0.04), _run("a", "odyssey2", 2, 2000, 0.08),
    ]  # fmt: skip
    table = report.scaling_table(runs, "a", [1, 2])
    rows = [line for line in table.splitlines() if line.startswith("| a |")]
    assert rows[0].split("|")[3:9] == [" 1350 ", " 1200 ", " 0.90 ", " 0.80 ", " 1.12 ", " 1.00 "]
    assert rows[1].split("|")[3:10] == [
        " 1800 ", " 1500 ", " 1.20 ", " 1.00 ", " 1.20 ", " 1.33 ", " 1.25 "
    ]  # fmt: skip
    assert "pgbouncer 1500 TPS" in table and "direct 2250 TPS" in table


def test_main_table_compares_pooler_with_odyssey_of_the_same_workers() -> None:
    runs = [_run("a", "pgbouncer", 1, 1000), _run("a", "odyssey1", 1, 800)]
    runs += [_run("a", "odyssey2", 1, 500), _run("a", "pooler", 1, 1000, 0.03)]
    table = report.build_table(runs, "a", ["pgbouncer", "odyssey1", "odyssey2", "pooler"],
                               {"pooler": "odyssey1"})  # fmt: skip
    [row] = [line for line in table.splitlines() if line.startswith("| a | pooler |")]
    cells = [c.strip() for c in row.split("|")]
    assert cells[5:8] == ["-", "1.00", "1.25"]  # vs direct, vs pgbouncer, vs odyssey1


def test_summary_gives_ratios_to_pgbouncer_within_rounds_with_their_range() -> None:
    runs = [
        _run("a", "pgbouncer", 1, 1000, 0.016), _run("a", "pgbouncer", 2, 2000, 0.032),
        _run("a", "pgbouncer", 3, 1500, 0.024),
        _run("a", "pooler", 1, 800, 0.024), _run("a", "pooler", 2, 1800, 0.054),
        _run("a", "pooler", 3, 1275, 0.038),
        _run("g", "direct", 1, 100), _run("g", "pgbouncer", 1, 90), _run("g", "pooler", 1, 60),
    ]  # fmt: skip
    runs[-1].lat_ms = 1.05  # direct's is 1.0
    broken = report.Run("g", "splice", 1, broken=True, error="x")
    table = report.summary_table([*runs, broken], "ag", ["direct", "pgbouncer", "pooler", "splice"])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines()[2:]}  # fmt: skip
    assert rows["pgbouncer"] == ["1.00×, 16 µs", "-"]  # (no CPU recorded in its g)
    assert rows["pooler"][0] == "0.85× (0.80–0.90), 30 µs"  # rounds: 0.80, 0.90, 0.85
    assert rows["pooler"][1] == "0.67×, +50 µs lat"
    assert rows["splice"] == ["-", "✗"]
    assert "direct" not in rows


STRACE_SUMMARY = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 53.96    0.042130          10      4014           write
 24.76    0.019335           4      4035           epoll_pwait
 13.45    0.010501           2      4024         2 read
  0.22    0.000174           2        82           getpid
------ ----------- ----------- --------- --------- ----------------
100.00    0.072140           5     12155         2 total
"""


def test_strace_summary_is_calls_per_transaction() -> None:
    calls = latency.strace_summary(STRACE_SUMMARY, 2000)
    assert list(calls) == ["epoll_pwait", "read", "write", "getpid"]
    assert calls["write"] == pytest.approx(2.007) and calls["getpid"] == pytest.approx(0.041)
    with pytest.raises(RuntimeError):
        latency.strace_summary(
            "strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted", 1
        )


def _perf_lines(tid: int, start_us: float) -> list[str]:
    """One relayed round trip as perf script prints it: poll, read client, write server,
    poll, read server, write client; preempted once after the second write."""
    events = [
        (0, "enter", 281, 4), (30, "exit", 281, None),
        (31, "enter", 0, 7), (32, "exit", 0, None),
        (35, "enter", 1, 8), (40, "exit", 1, None),
        (42, "enter", 281, 4), (90, "exit", 281, None),
        (91, "enter", 0, 8), (92, "exit", 0, None),
        (94, "enter", 1, 7), (100, "exit", 1, None),
        (101, "switch", "R", None),
    ]  # fmt: skip
    lines = []
    for at, what, nr, fd in events:
        stamp = f"{(start_us + at) / 1e6:.9f}"
        if what == "switch":
            lines.append(f"  {tid} {stamp}: sched:sched_switch: prev_comm=w prev_pid={tid} "
                         f"prev_prio=120 prev_state={nr} ==> next_comm=pgbench next_pid=9")  # fmt: skip
        elif what == "enter":
            lines.append(f"  {tid} {stamp}: raw_syscalls:sys_enter: NR {nr} ({fd:x}, 0, 0)")
        else:
            lines.append(f"  {tid} {stamp}:  raw_syscalls:sys_exit: NR {nr} = 1")
    return lines


def test_a_poll_without_wait_is_no_loop_iteration() -> None:
    """pool_attach_check's poll(2) with timeout 0 between the client's read and the server
    write: counted on its own; the read→write gap spans it."""
    lines = _perf_lines(11, 1000.0)
    lines[4:4] = [  # after the read of fd 7 (31-32), before the write (35)
        "  11 0.001033000: raw_syscalls:sys_enter: NR 7 (7ffd5d1c, 1, 0)",
        "  11 0.001034000:  raw_syscalls:sys_exit: NR 7 = 0",
    ]
    out = latency.phases("\n".join(lines), txns=1)
    assert out["polls (loop iterations)"] == 2
    assert out["poll(2) without wait (attach check)"] == 1
    assert out["on-CPU µs read→write fd 7"] == pytest.approx(3.0)  # 32 → 35, the poll within


def test_phases_count_loop_iterations_and_time_between_relay_syscalls() -> None:
    script = "\n".join(_perf_lines(11, 1000.0) + _perf_lines(11, 2000.0))
    out = latency.phases(script, txns=2)
    assert out["polls (loop iterations)"] == 2 and out["reads"] == 2 and out["writes"] == 2
    assert out["preempted"] == 1 and out["sleeps"] == 0
    assert out["on-CPU µs read→write fd 7"] == pytest.approx(3.0)  # 32 → 35
    assert out["on-CPU µs read→write fd 8"] == pytest.approx(2.0)  # 92 → 94
    assert out["on-CPU µs poll→read"] == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="no syscalls"):
        latency.phases("", txns=1)


def test_phases_tell_how_long_a_task_woken_on_our_cpu_waits_for_it() -> None:
    lines = [
        "  11 [001] 0.000010000: raw_syscalls:sys_enter: NR 1 (7, 0, 0)",
        "  11 [001] 0.000012000: sched:sched_wakeup: comm=pgbench pid=9 prio=120 target_cpu=001",
        "  11 [001] 0.000016000:  raw_syscalls:sys_exit: NR 1 = 1",
        "  11 [001] 0.000020000: raw_syscalls:sys_enter: NR 281 (4, 0, 0)",
        "  11 [001] 0.000021000: sched:sched_switch: prev_comm=w prev_pid=11 prev_prio=120 "
        "prev_state=S ==> next_comm=pgbench next_pid=9",
        "  11 [000] 0.000050000: sched:sched_wakeup: comm=postgres pid=8 prio=120 target_cpu=001",
    ]
    out = latency.phases("\n".join(lines), txns=1)
    assert out["tasks woken"] == 2 and out["… on the waker's CPU"] == 1
    assert out["µs such a task waits for the CPU (median)"] == pytest.approx(9.0)  # 12 → 21


@pytest.mark.timeout(30)
def test_a_pooler_counts_as_started_when_it_says_ready(tmp_path: Path) -> None:
    log = tmp_path / "pooler.log"
    log.write_text("pooler ready, from an earlier start\n")  # before the offset: ignored
    offset = log.stat().st_size
    script = "import time; print('starting', flush=True); time.sleep(0.3); print('pooler ready')"
    proc = processes.spawn([sys.executable, "-c", script], log=log, cwd=tmp_path)
    try:
        processes.wait_logged(proc, log, offset, "pooler ready", 20)
        assert log.read_text().count("pooler ready") == 2
    finally:
        processes.stop_proc(proc)
    died = processes.spawn([sys.executable, "-c", "raise SystemExit(3)"], log=log, cwd=tmp_path)
    try:
        with pytest.raises(RuntimeError, match="exited with 3"):
            processes.wait_logged(died, log, log.stat().st_size, "pooler ready", 20)
    finally:
        processes.stop_proc(died)
