#!/usr/bin/env python3
"""Benchmark harness for executioner (DESIGN.md section 8, "Quality bars").

This file owns `make bench`: it measures the per-job scheduling overhead of
`executioner run` against a spawn floor and against ninja and make (the
"ninja-class floor"), the peak memory of a run, and the time to validate and
plan a large DAG. Standard library only (Python 3.11).

For each DAG shape and size N it writes, under bench/out/work/<shape>-<N>/:
  pipeline.yaml   the executioner manifest (N jobs of command "true")
  build.ninja     the same DAG for ninja (outputs are never created, so every
                  invocation re-runs all N edges)
  Makefile        the same DAG for make (.PHONY targets, recipe `@true`)

Shapes:
  fanout   j0, then j1..j(N-1) each depending on j0
  chain    j(i) depends on j(i-1)
  layered  layers of width 10; each job of layer k depends on 2 distinct jobs
           of layer k-1 (positions p and (p + 1 + k % 9) % width)

Per repetition the tools run interleaved (executioner, ninja, make, floor,
executioner, ...) so drifting machine load hits all of them alike; medians are
reported. The spawn floor is measured in-process: os.posix_spawn of
`/bin/sh -c true` (what executioner and ninja spawn for a string command) with
a pool of --workers slots reaped by os.waitpid(-1, 0), releasing jobs in DAG
order (declaration order among ready jobs), with no other bookkeeping.
Edges are respected (not ignored) so that a chain gets no parallelism the
other tools cannot have. Note that GNU make execs `true` directly (no shell
for a recipe without shell syntax), so make can come out slightly below the
floor; `--floor-cmd true` measures a floor without the shell.

After the tables (or alone with --reaction; skipped with --no-reaction) it
measures the controller's reaction time: `executioner controller` watches a
temporary folder; one-job manifests are dropped into it (written to a hidden
temp file, then renamed in) one at a time, and each job writes `date +%s%N`
to a marker file. Reaction = the job's timestamp - time.time_ns() taken right
before the rename. DESIGN target: median < 50 ms.

Then (alone with --ui; skipped with --no-ui) the cost of the HTTP server to the
controller: the same reaction time with the server off, and with it on and 20
clients following a live log (GET /api/v1/runs/ID/jobs/JOB/log/stream) of a job
that prints a line every 50 ms, which runs in both conditions. The conditions
alternate in blocks of fresh controllers; the ratio of the medians (on / off)
is reported. Goal (issue 17): <= 1.2.

Last (alone with --postgres; skipped with --no-postgres, and with a line saying so when
PostgreSQL's server binaries are not installed) the cost of the PostgreSQL store (issue 16): a
throwaway cluster (initdb into a temporary folder, as the `postgres` user when run as root; a
postmaster on a free loopback port with fsync=on and synchronous_commit=on; stopped and removed at
the end, on Ctrl-C, SIGTERM or an error too), then for fanout and chain of each --pg-sizes,
`executioner run` on SQLite (default durability, and durability=full), on PostgreSQL (a new
database per invocation) and the spawn floor, interleaved, medians of --repeats. Reported: per-job
overhead of each and the ratio PostgreSQL / SQLite wall time. The issue's goal, <= 2.0, is for the
version with workers; today's figure is the store's cost alone.

After it (alone with --distributed; skipped with --no-distributed, and with a line saying so when
PostgreSQL is not installed) the workers on PostgreSQL (issue 16 part 2), on a throwaway cluster
as above: (1) the --dist-fanout-n fanout of `true` through `controller --once --slots 1` plus one
`executioner worker --slots 1` against `controller --once` and `run` on SQLite (2 workers), wall
times interleaved, medians of --repeats, ratio to both; (2) dispatch latency on a chain of
--dist-chain-n jobs that stamp `date +%s%N` at their start and end (start of job i+1 - end of job
i; p50 and p99 of --repeats runs pooled) with the embedded worker only, with a separate worker,
and, for reference, on SQLite and the spawn floor; (3) Lost -> re-run: kill -9 of the worker
running a long job, the time until the job's new attempt starts on an idle worker, lease TTL 3 s,
median of --dist-tries. Each part is an entry of DIST_PARTS (leader failover plugs in there).
Alone with --failover (not part of the default run): controller failover on PostgreSQL (issue
16): on a throwaway cluster as above, two `executioner controller` processes (own state folders,
one database, `--lease-ttl`, default the configured default 15 s) until one leads (/readyz 200,
the other 503 standby), then the leader is killed with kill -9; failover = from the kill to the
standby's /readyz answering 200 (it leads and has reconciled once), killed at a random point of
the leader's renewal period. Median of --failover-tries
(default 5) fresh pairs; results in bench/out/failover.json.

Results: a table on stdout and bench/out/results.json. The DESIGN targets are
shown as PASS/OVER markers for information only; the exit status is 0 unless a
command failed (or the executioner binary is missing).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
WORK = OUT / "work"
# Every state folder executioner writes during one invocation; deleted only when it ends. Deleting
# a run's thousands of files right before the next measured run made that run pay for the
# deletion: on ext4 without a journal (this machine's root file system) the kernel skips freshly
# freed inodes one by one when it creates files (`recently_deleted`), which charged the next run
# 0.3-1 ms per log file, a cost of the benchmark's own cleanup and not of the run.
STATE_ROOT = OUT / "state"
# When the last invocation finished deleting its state folders. The same slowdown lasts for a
# while after any mass deletion (the kernel's window is 60 s, or 300 s while the inode bitmap is
# not yet written back), so a new invocation waits until SETTLE_S have passed since then.
CLEANED_AT = OUT / "state-deleted-at"
SETTLE_S = 120

LAYER_WIDTH = 10
# DESIGN.md section 8.
TARGET_OVERHEAD_MS_PER_JOB = 0.3
TARGET_PEAK_RSS_MIB = 40.0
TARGET_PLAN_S = 1.0
BIG_N = 10_000
# A baseline whose first run of a case exceeds this is not repeated for that case.
SLOW_BASELINE_S = 60.0
# Reaction time (DESIGN.md section 8): median < 50 ms from drop to first job start.
TARGET_REACTION_MS = 50.0
REACTION_RESYNC_S = 30  # EXECUTIONER_RESYNC_INTERVAL: a missed event would cost 30 s, not hide
REACTION_TIMEOUT_S = 10.0  # per drop
REACTION_POLL_S = 0.001
REACTION_GAP_S = 0.2  # between drops
REACTION_SETTLE_S = 0.5  # after the lock holds the pid (the watch is set up right after)
REACTION_START_S = 60.0  # for the controller to take its lock
REACTION_STOP_S = 15.0  # SIGTERM -> SIGKILL
# The HTTP server's cost (issue 17): reaction time on / off, 20 followers of a live log.
TARGET_UI_RATIO = 1.2
UI_CLIENTS = 20
UI_BLOCKS = 4  # per condition, alternating off, on, off, on, ...
UI_LINE_S = 0.05  # the live job prints a line this often
# The PostgreSQL store (issue 16): `executioner run` on PostgreSQL against SQLite, same DAGs.
TARGET_PG_RATIO = 2.0  # the goal of the worker version (postgres / sqlite wall time)
PG_SHAPES = ("fanout", "chain")
# Measured each repetition, in this order rotated by one per repetition.
PG_CONDITIONS = ("sqlite", "sqlite_full", "postgres", "floor")
PG_USER = "executioner"
PG_PASSWORD = "throwaway-bench"
PG_FOLDER_PREFIX = "executioner-bench-pg-"
# The server's settings that decide what a commit costs, spelled out so the comparison is honest
# whatever the packaged defaults: every commit is flushed to disk before it returns.
PG_SETTINGS = (("listen_addresses", "127.0.0.1"), ("fsync", "on"), ("synchronous_commit", "on"))
# Workers on PostgreSQL (issue 16 part 2, --distributed), on a cluster as the store's cost's.
# pg_workers_async: the same on a database with synchronous_commit=off (below), for reference.
DIST_FANOUT_CONDITIONS = ("pg_workers", "sqlite_controller", "sqlite_run", "pg_workers_async")
# embedded_async: the embedded worker on a database with synchronous_commit=off (no flush per
# commit), to tell the disk's share from the protocol's.
DIST_DISPATCH_CONDITIONS = ("embedded", "worker", "embedded_async", "sqlite", "floor")
TARGET_DISPATCH_P50_MS = 5.0
TARGET_DISPATCH_P99_MS = 25.0  # Hatchet's published hot dispatch is < 25 ms
DIST_LOST_TTL_S = 3.0  # the lease TTL of the Lost -> re-run measurement
DIST_LOST_IDLE_S = 0.5  # the idle worker is registered at least this long before the kill
DIST_RUN_TIMEOUT_S = 300.0  # for one `controller --once`


class BenchError(RuntimeError):
    """A benchmarked command failed; the whole benchmark fails loudly."""


# --------------------------------------------------------------------------
# DAG generation


def make_dag(shape: str, n: int) -> list[list[int]]:
    """Return deps[i] = indices of the jobs job i depends on (all < i)."""
    if shape == "fanout":
        return [[]] + [[0] for _ in range(1, n)]
    if shape == "chain":
        return [[]] + [[i - 1] for i in range(1, n)]
    if shape == "layered":
        deps: list[list[int]] = []
        for i in range(n):
            layer, pos = divmod(i, LAYER_WIDTH)
            if layer == 0:
                deps.append([])
                continue
            base = (layer - 1) * LAYER_WIDTH  # the previous layer is always full
            offset = 1 + layer % (LAYER_WIDTH - 1)  # 1..width-1, so never == pos
            a, b = pos, (pos + offset) % LAYER_WIDTH
            deps.append(sorted({base + a, base + b}))
        return deps
    raise ValueError(f"unknown shape {shape!r}")


def job_id(i: int) -> str:
    return f"j{i}"


def write_manifest(path: Path, name: str, deps: list[list[int]]) -> None:
    lines = [
        "apiVersion: executioner.dev/v1",
        "kind: Pipeline",
        "metadata:",
        f"  name: {name}",
        "spec:",
        "  jobs:",
    ]
    for i, d in enumerate(deps):
        lines.append(f"    - id: {job_id(i)}")
        lines.append('      command: "true"')
        if d:
            lines.append(f"      dependencies: [{', '.join(job_id(j) for j in d)}]")
    path.write_text("\n".join(lines) + "\n")


def write_ninja(path: Path, deps: list[list[int]]) -> None:
    # The outputs j0..jN are never created, so ninja considers every edge dirty
    # on every invocation and spawns N processes each time. Dependencies are
    # order/implicit inputs (`|`), which ninja accepts as outputs of other edges.
    lines = ["rule run", "  command = true", ""]
    for i, d in enumerate(deps):
        implicit = (" | " + " ".join(job_id(j) for j in d)) if d else ""
        lines.append(f"build {job_id(i)}: run{implicit}")
    lines.append("")
    lines.append("build all: phony " + " ".join(job_id(i) for i in range(len(deps))))
    lines.append("default all")
    path.write_text("\n".join(lines) + "\n")


def write_makefile(path: Path, deps: list[list[int]]) -> None:
    ids = [job_id(i) for i in range(len(deps))]
    lines = [
        ".PHONY: all " + " ".join(ids),
        "all: " + " ".join(ids),
        "",
    ]
    for i, d in enumerate(deps):
        lines.append(f"{ids[i]}: " + " ".join(job_id(j) for j in d))
        lines.append("\t@true")
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Case:
    shape: str
    n: int
    dir: Path
    deps: list[list[int]]

    @property
    def name(self) -> str:
        return f"bench-{self.shape}-{self.n}"


def generate_case(shape: str, n: int) -> Case:
    d = WORK / f"{shape}-{n}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    deps = make_dag(shape, n)
    case = Case(shape, n, d, deps)
    write_manifest(d / "pipeline.yaml", case.name, deps)
    write_ninja(d / "build.ninja", deps)
    write_makefile(d / "Makefile", deps)
    return case


# --------------------------------------------------------------------------
# Runners. Each returns elapsed seconds (and executioner also its peak RSS).


def run_timed(argv: list[str], cwd: Path | None = None,
              measure_rss: bool = False, env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run argv with output discarded; return (seconds, ru_maxrss KiB).

    Uses os.wait4 instead of Popen.wait so the child's rusage is available.
    Raises BenchError (with the command's output from a second, untimed run)
    when it exits non-zero.

    About ru_maxrss: Linux carries the high-water mark of the memory a process
    had before exec() into its ru_maxrss. Popen normally uses vfork, whose
    child shares (and so reports) this Python's *lifetime* peak. With
    measure_rss the child is made with a real fork() (a no-op preexec_fn
    forces it), so the carried-over part is only this Python's current
    anonymous memory (~10 MiB); rss_spawn_floor() measures it, and readings at
    that floor mean "at most this much".
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=_force_fork if measure_rss else None,
    )
    _, status, rusage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        fail(argv, cwd, proc.returncode, env)
    return elapsed, rusage.ru_maxrss


def _force_fork() -> None:
    """preexec_fn that does nothing; its presence makes Popen fork, not vfork."""


def rss_spawn_floor() -> int:
    """ru_maxrss (KiB) that any child spawned with measure_rss reports at least."""
    return max(run_timed(["true"], measure_rss=True)[1] for _ in range(3))


def fail(argv: list[str], cwd: Path | None, code: int,
         env: dict[str, str] | None = None) -> None:
    """Re-run a failed command with its output captured, then raise."""
    rerun = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, errors="replace")
    tail = (rerun.stdout + rerun.stderr).strip().splitlines()[-20:]
    raise BenchError(
        f"command failed with exit code {code}: {shlex.join(argv)}"
        + (f"\n  (in {cwd})" if cwd else "")
        + "\n  output of an untimed re-run (last lines):\n    "
        + "\n    ".join(tail or ["<no output>"])
    )


_state_dirs = itertools.count()


def fresh_state_dir(case: Case, tag: str) -> Path:
    """A new state folder for one executioner invocation. None is deleted before the bench ends
    (see STATE_ROOT): executioner creates it (0700)."""
    return STATE_ROOT / f"{case.shape}-{case.n}-{tag}-{next(_state_dirs)}"


def run_executioner(exe: str, case: Case, workers: int, rep: int) -> tuple[float, int]:
    state = fresh_state_dir(case, f"run{rep}")
    argv = [exe, "--state-dir", str(state), "run", str(case.dir / "pipeline.yaml"),
            "--workers", str(workers), "-q"]
    return run_timed(argv, cwd=case.dir, measure_rss=True)


def run_validate(exe: str, case: Case) -> float:
    state = fresh_state_dir(case, "validate")
    argv = [exe, "--state-dir", str(state), "validate", str(case.dir / "pipeline.yaml")]
    return run_timed(argv, cwd=case.dir)[0]


def run_dry_run(exe: str, case: Case, workers: int) -> float:
    state = fresh_state_dir(case, "dryrun")
    argv = [exe, "--state-dir", str(state), "run", str(case.dir / "pipeline.yaml"),
            "--dry-run", "--workers", str(workers), "-q"]
    return run_timed(argv, cwd=case.dir)[0]


def run_ninja(ninja: str, case: Case, workers: int) -> float:
    return run_timed([ninja, "-C", str(case.dir), f"-j{workers}", "-f", "build.ninja"])[0]


def run_make(make: str, case: Case, workers: int) -> float:
    return run_timed([make, "-C", str(case.dir), f"-j{workers}", "-f", "Makefile", "-s"])[0]


def run_floor(case: Case, workers: int, argv: list[str]) -> float:
    """Spawn N processes with `workers` slots, in DAG order, no bookkeeping."""
    deps = case.deps
    n = len(deps)
    children: list[list[int]] = [[] for _ in range(n)]
    pending = [len(d) for d in deps]
    for i, d in enumerate(deps):
        for j in d:
            children[j].append(i)
    ready = [i for i in range(n) if pending[i] == 0]
    heapq.heapify(ready)  # declaration order first, as executioner does
    env = dict(os.environ)
    path = shutil.which(argv[0]) or argv[0]
    running: dict[int, int] = {}
    done = 0

    t0 = time.perf_counter()
    while done < n:
        while ready and len(running) < workers:
            i = heapq.heappop(ready)
            running[os.posix_spawn(path, argv, env)] = i
        pid, status = os.waitpid(-1, 0)
        i = running.pop(pid)
        if os.waitstatus_to_exitcode(status) != 0:
            raise BenchError(f"floor: {shlex.join(argv)} exited with status {status}")
        done += 1
        for c in children[i]:
            pending[c] -= 1
            if pending[c] == 0:
                heapq.heappush(ready, c)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------
# Reaction time: a manifest dropped into a watched folder -> its first job starts


@dataclass
class Reaction:
    """Outcome of bench_reaction; `skipped` or `error` set when there are no numbers."""
    repeats: int
    samples_ms: list[float] = field(default_factory=list)  # one per drop that started in time
    timeouts: list[int] = field(default_factory=list)  # drop indices whose job never started
    skipped: str | None = None  # the binary cannot do it (no `controller` subcommand)
    error: str | None = None  # the controller failed (did not start, died, ...)
    controller_exit: int | None = None

    def stats(self) -> dict[str, float] | None:
        if not self.samples_ms:
            return None
        s = sorted(self.samples_ms)
        p90 = s[max(0, math.ceil(0.9 * len(s)) - 1)]  # nearest rank
        return {"median": statistics.median(s), "p90": p90, "min": s[0], "max": s[-1]}

    def passed(self) -> bool | None:
        """None when nothing was measured; a drop that never started counts as a miss."""
        if self.timeouts:
            return False
        st = self.stats()
        return None if st is None else st["median"] < TARGET_REACTION_MS

    def to_json(self) -> dict:
        st = self.stats()
        return {
            "repeats": self.repeats,
            "resync_interval_s": REACTION_RESYNC_S,
            "samples_ms": [round(v, 3) for v in self.samples_ms],
            "median_ms": st and round(st["median"], 3),
            "p90_ms": st and round(st["p90"], 3),
            "min_ms": st and round(st["min"], 3),
            "max_ms": st and round(st["max"], 3),
            "timeouts": self.timeouts,
            "timeout_s": REACTION_TIMEOUT_S,
            "target_median_ms": TARGET_REACTION_MS,
            "pass": self.passed(),
            "skipped": self.skipped,
            "error": self.error,
            "controller_exit": self.controller_exit,
        }


def has_controller(exe: str) -> bool:
    try:
        out = subprocess.run([exe, "controller", "--help"], stdin=subprocess.DEVNULL,
                             capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return "<no output>"
    return "\n    ".join(text or ["<no output>"])


def wait_for_lock(proc: subprocess.Popen, lock: Path, timeout: float) -> bool:
    """True once `lock` holds the controller's pid; False if it exited or the time ran out."""
    want = str(proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if lock.read_text().strip() == want:
                return True
        except OSError:
            pass
        time.sleep(0.01)
    return False


def read_stamp(marker: Path) -> int | None:
    """The job's `date +%s%N`, once the file is complete (non-empty, newline-terminated)."""
    try:
        text = marker.read_text()
    except OSError:
        return None
    if not text.endswith("\n"):
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def reaction_manifest(i: int, marker: Path) -> str:
    # json.dumps gives double-quoted flow scalars, which are valid YAML. The marker path is the
    # script's $0; executioner's interpolation leaves `$0` alone (only ${NAME} and $$ are special).
    cmd = ["sh", "-c", 'date +%s%N > "$0"', str(marker)]
    return "\n".join([
        "apiVersion: executioner.dev/v1",
        "kind: Pipeline",
        "metadata:",
        f"  name: react-{i}",
        "spec:",
        "  jobs:",
        "    - id: stamp",
        f"      command: [{', '.join(json.dumps(c) for c in cmd)}]",
    ]) + "\n"


def stop_controller(proc: subprocess.Popen) -> int | None:
    """SIGTERM, wait up to REACTION_STOP_S, then SIGKILL. Returns the exit code."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=REACTION_STOP_S)
    except subprocess.TimeoutExpired:
        progress(f"  reaction: controller still running {REACTION_STOP_S:.0f} s after SIGTERM; "
                 "sending SIGKILL")
        proc.kill()
        return proc.wait()


def time_drop(manifests: Path, markers: Path, i: int) -> float | None:
    """Drops manifest react-<i> (temp file, then rename); ms until its job stamped its marker."""
    marker = markers / f"react-{i}.stamp"
    tmpfile = manifests / f".tmp-{i}"
    tmpfile.write_text(reaction_manifest(i, marker))
    t0 = time.time_ns()
    os.rename(tmpfile, manifests / f"react-{i}.yaml")
    deadline = time.monotonic() + REACTION_TIMEOUT_S
    stamp = None
    while stamp is None and time.monotonic() < deadline:
        time.sleep(REACTION_POLL_S)
        stamp = read_stamp(marker)
    return None if stamp is None else (stamp - t0) / 1e6


def bench_reaction(exe: str, repeats: int) -> Reaction:
    """Drop `repeats` one-job manifests into a running controller's folder, one at a time.

    Each manifest is written to a hidden temp file (ignored by the controller) and renamed into
    place; t0 = time.time_ns() right before the rename. The job writes `date +%s%N` to a marker
    file; reaction = that stamp - t0. Both are wall-clock nanoseconds of the same machine.
    """
    res = Reaction(repeats)
    if not has_controller(exe):
        res.skipped = f"{exe} has no `controller` subcommand (`controller --help` failed)"
        return res

    with tempfile.TemporaryDirectory(prefix="executioner-reaction-") as tmp:
        root = Path(tmp)
        state, manifests, markers = root / "state", root / "manifests", root / "markers"
        manifests.mkdir()
        markers.mkdir()
        log = root / "controller.log"
        env = dict(os.environ, EXECUTIONER_RESYNC_INTERVAL=str(REACTION_RESYNC_S))
        argv = [exe, "--state-dir", str(state), "controller", "--manifests", str(manifests)]
        progress(f"reaction: {shlex.join(argv)} (EXECUTIONER_RESYNC_INTERVAL={REACTION_RESYNC_S}), "
                 f"{repeats} drops")
        with open(log, "wb") as out:
            # cwd = the temp dir, so no ./executioner.toml of the caller's is picked up.
            proc = subprocess.Popen(argv, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            if not wait_for_lock(proc, state / "controller.lock", REACTION_START_S):
                if proc.poll() is None:
                    res.error = (f"the controller did not write its pid to {state}/controller.lock "
                                 f"within {REACTION_START_S:.0f} s")
                else:
                    res.error = f"the controller exited with code {proc.returncode} before locking"
                res.error += f"\n  controller output (last lines):\n    {log_tail(log)}"
                return res
            # The lock is taken before the folder watch is set up: let it settle.
            time.sleep(REACTION_SETTLE_S)
            for i in range(repeats):
                if i:
                    time.sleep(REACTION_GAP_S)
                ms = time_drop(manifests, markers, i)
                if proc.poll() is not None:
                    res.error = (f"the controller exited with code {proc.returncode} during drop {i}"
                                 f"\n  controller output (last lines):\n    {log_tail(log)}")
                    return res
                if ms is None:
                    res.timeouts.append(i)
                    progress(f"  reaction: drop {i + 1}/{repeats}: job not started after "
                             f"{REACTION_TIMEOUT_S:.0f} s")
                    continue
                res.samples_ms.append(ms)
                progress(f"  reaction: drop {i + 1}/{repeats}: {ms:.1f} ms")
        finally:
            res.controller_exit = stop_controller(proc)
    return res


def print_reaction(r: Reaction) -> None:
    print()
    print(f"Reaction time: manifest renamed into the watched folder -> its job's first instruction "
          f"(controller, resync {REACTION_RESYNC_S} s)")
    if r.skipped:
        print(f"  skipped: {r.skipped}")
        return
    st = r.stats()
    if st:
        print(f"  drops {len(r.samples_ms)}/{r.repeats}   median {st['median']:.1f} ms   "
              f"p90 {st['p90']:.1f} ms   min {st['min']:.1f} ms   max {st['max']:.1f} ms")
    if r.timeouts:
        print(f"  {len(r.timeouts)} drop(s) never started within {REACTION_TIMEOUT_S:.0f} s: "
              + ", ".join(f"react-{i}" for i in r.timeouts))
    if r.error:
        print(f"  FAILED: {r.error}")
    if r.passed() is not None:
        print(f"  DESIGN target (informational): median < {TARGET_REACTION_MS:.0f} ms: "
              f"{'PASS' if r.passed() else 'OVER'}")


# --------------------------------------------------------------------------
# The HTTP server's cost: reaction time with it off, and on with clients following a live log


@dataclass
class UiCost:
    """Outcome of bench_ui: reaction samples per condition."""
    repeats: int  # drops per condition
    off_ms: list[float] = field(default_factory=list)
    on_ms: list[float] = field(default_factory=list)
    timeouts: int = 0
    lines_streamed: int = 0  # `event: line` the clients received, over all "on" blocks
    skipped: str | None = None
    error: str | None = None

    def ratio(self) -> float | None:
        if not self.off_ms or not self.on_ms:
            return None
        return statistics.median(self.on_ms) / statistics.median(self.off_ms)

    def passed(self) -> bool | None:
        if self.timeouts:
            return False
        r = self.ratio()
        return None if r is None else r <= TARGET_UI_RATIO

    def to_json(self) -> dict:
        med = lambda v: round(statistics.median(v), 3) if v else None  # noqa: E731
        r = self.ratio()
        return {
            "drops_per_condition": self.repeats,
            "clients": UI_CLIENTS,
            "blocks_per_condition": UI_BLOCKS,
            "off_samples_ms": [round(v, 3) for v in self.off_ms],
            "on_samples_ms": [round(v, 3) for v in self.on_ms],
            "off_median_ms": med(self.off_ms),
            "on_median_ms": med(self.on_ms),
            "ratio": r and round(r, 3),
            "lines_streamed": self.lines_streamed,
            "timeouts": self.timeouts,
            "target_ratio": TARGET_UI_RATIO,
            "pass": self.passed(),
            "skipped": self.skipped,
            "error": self.error,
        }


def live_job_manifest(started: Path) -> str:
    """A job that touches `started`, then prints a line every UI_LINE_S until it is stopped."""
    script = f'touch "$0"; while :; do echo "line $(date +%s%N)"; sleep {UI_LINE_S}; done'
    cmd = ["sh", "-c", script, str(started)]
    return "\n".join([
        "apiVersion: executioner.dev/v1",
        "kind: Pipeline",
        "metadata:",
        "  name: live",
        "spec:",
        "  jobs:",
        "    - id: talk",
        f"      command: [{', '.join(json.dumps(c) for c in cmd)}]",
    ]) + "\n"


class Followers:
    """UI_CLIENTS connections following one job's log stream, read (and dropped) by a thread."""

    def __init__(self, addr: tuple[str, int], target: str):
        import selectors
        import socket
        import threading
        self.lines = 0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._socks = []
        for _ in range(UI_CLIENTS):
            s = socket.create_connection(addr, timeout=10)
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
                      .encode())
            s.setblocking(False)
            self._sel.register(s, selectors.EVENT_READ)
            self._socks.append(s)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.1):
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._sel.unregister(key.fileobj)
                    continue
                self.lines += data.count(b"event: line")

    def close(self) -> int:
        self._stop.set()
        self._thread.join()
        for s in self._socks:
            s.close()
        return self.lines


def ui_block(exe: str, on: bool, first: int, count: int, res: UiCost) -> None:
    """One fresh controller (HTTP on or off) with the live job running: `count` drops."""
    with tempfile.TemporaryDirectory(prefix="executioner-ui-") as tmp:
        root = Path(tmp)
        state, manifests, markers = root / "state", root / "manifests", root / "markers"
        manifests.mkdir()
        markers.mkdir()
        started = markers / "live.started"
        (manifests / "live.yaml").write_text(live_job_manifest(started))
        log = root / "controller.log"
        env = dict(os.environ, EXECUTIONER_RESYNC_INTERVAL=str(REACTION_RESYNC_S))
        argv = [exe, "--state-dir", str(state), "controller", "--manifests", str(manifests)]
        if on:
            argv += ["--listen", "127.0.0.1:0"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)
        followers = None
        try:
            deadline = time.monotonic() + REACTION_START_S
            while not started.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    res.error = (f"the live job did not start (controller exit {proc.poll()})"
                                 f"\n  controller output (last lines):\n    {log_tail(log)}")
                    return
                time.sleep(0.01)
            if on:
                host, port = (state / "http.addr").read_text().strip().rsplit(":", 1)
                # The live run is the state folder's first run.
                followers = Followers((host, int(port)), "/api/v1/runs/1/jobs/talk/log/stream")
            time.sleep(REACTION_SETTLE_S)
            for i in range(first, first + count):
                time.sleep(REACTION_GAP_S)
                ms = time_drop(manifests, markers, i)
                if proc.poll() is not None:
                    res.error = (f"the controller exited with code {proc.returncode} during drop {i}"
                                 f"\n  controller output (last lines):\n    {log_tail(log)}")
                    return
                if ms is None:
                    res.timeouts += 1
                    continue
                (res.on_ms if on else res.off_ms).append(ms)
                progress(f"  ui: {'on ' if on else 'off'} drop {i + 1}: {ms:.1f} ms")
        finally:
            if followers:
                res.lines_streamed += followers.close()
            stop_controller(proc)


def bench_ui(exe: str, repeats: int) -> UiCost:
    """Reaction time with the HTTP server off, and on with UI_CLIENTS following a live log.

    The conditions alternate in UI_BLOCKS blocks each (off, on, off, on, ...), each block a fresh
    controller whose folder holds the live job (it runs in both conditions: only the server and
    its clients differ), so that drifting machine load hits both alike.
    """
    res = UiCost(repeats)
    if not has_controller(exe):
        res.skipped = f"{exe} has no `controller` subcommand"
        return res
    per_block = max(1, math.ceil(repeats / UI_BLOCKS))
    progress(f"ui: reaction time, HTTP server off vs on with {UI_CLIENTS} clients following a "
             f"live log; {UI_BLOCKS} blocks of {per_block} drops per condition, interleaved")
    drop = 0
    for _ in range(UI_BLOCKS):
        for on in (False, True):
            ui_block(exe, on, drop, per_block, res)
            drop += per_block
            if res.error:
                return res
    return res


def print_ui(r: UiCost) -> None:
    print()
    print(f"HTTP server's cost: reaction time, server off vs on with {UI_CLIENTS} clients "
          f"following a live log (a line every {UI_LINE_S * 1000:.0f} ms)")
    if r.skipped:
        print(f"  skipped: {r.skipped}")
        return
    if r.off_ms and r.on_ms:
        print(f"  off: {len(r.off_ms)} drops, median {statistics.median(r.off_ms):.1f} ms   "
              f"on: {len(r.on_ms)} drops, median {statistics.median(r.on_ms):.1f} ms   "
              f"ratio on/off {r.ratio():.2f}   ({r.lines_streamed} lines streamed)")
    if r.timeouts:
        print(f"  {r.timeouts} drop(s) never started within {REACTION_TIMEOUT_S:.0f} s")
    if r.error:
        print(f"  FAILED: {r.error}")
    if r.passed() is not None:
        print(f"  goal (informational): ratio <= {TARGET_UI_RATIO}: "
              f"{'PASS' if r.passed() else 'OVER'}")


# --------------------------------------------------------------------------
# The PostgreSQL store: `executioner run` with its state in PostgreSQL against the same run on SQLite


@dataclass
class PgResult:
    """One (shape, N) of bench_postgres: wall times per condition, in seconds."""
    shape: str
    n: int
    samples: dict[str, list[float]] = field(
        default_factory=lambda: {c: [] for c in PG_CONDITIONS})

    def median_ms(self, cond: str) -> float | None:
        s = self.samples.get(cond)
        return statistics.median(s) * 1000 if s else None

    def overhead_ms_per_job(self, cond: str) -> float | None:
        t, f = self.median_ms(cond), self.median_ms("floor")
        return None if t is None or f is None else (t - f) / self.n

    def to_json(self) -> dict:
        return {
            "shape": self.shape,
            "n": self.n,
            "samples_ms": {c: [round(s * 1000, 3) for s in v] for c, v in self.samples.items()},
            "median_ms": {c: self.median_ms(c) and round(self.median_ms(c), 3)
                          for c in self.samples},
            "overhead_ms_per_job": {
                c: round(self.overhead_ms_per_job(c), 4)
                for c in ("sqlite", "sqlite_full", "postgres")
                if self.overhead_ms_per_job(c) is not None
            },
            "postgres_over_sqlite": ratio(self.median_ms("postgres"), self.median_ms("sqlite")),
            "postgres_over_sqlite_full": ratio(self.median_ms("postgres"),
                                               self.median_ms("sqlite_full")),
        }


@dataclass
class PgBench:
    """Outcome of bench_postgres; `skipped` or `error` set when there are no (or not all) numbers."""
    results: list[PgResult] = field(default_factory=list)
    server: str | None = None  # `postgres --version`
    skipped: str | None = None
    error: str | None = None

    def to_json(self) -> dict:
        return {
            "server": self.server,
            "settings": dict(PG_SETTINGS),
            "target_ratio": TARGET_PG_RATIO,
            "results": [r.to_json() for r in self.results],
            "skipped": self.skipped,
            "error": self.error,
        }


def pg_server_bin() -> Path | None:
    """The highest installed version's server binaries (`/usr/lib/postgresql/N/bin`), else
    `pg_config --bindir`, when it has `initdb` and `postgres` (as tests/common/pg_cluster.rs)."""
    def has_server(d: Path) -> bool:
        return (d / "initdb").is_file() and (d / "postgres").is_file()

    versions = []
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        for entry in base.iterdir():
            if entry.name.isdigit() and has_server(entry / "bin"):
                versions.append((int(entry.name), entry / "bin"))
    if versions:
        return max(versions)[1]
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    d = Path(out.stdout.strip())
    return d if out.returncode == 0 and has_server(d) else None


def remove_stale_pg_folders() -> None:
    """Cluster folders left by a bench that was killed (its owner.pid names a dead process)."""
    for entry in Path(tempfile.gettempdir()).glob(f"{PG_FOLDER_PREFIX}*"):
        try:
            pid = int((entry / "owner.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


class PgCluster:
    """A throwaway PostgreSQL cluster for one bench invocation: initdb into a temporary folder,
    a postmaster on a free loopback port, stopped (fast shutdown) and the folder removed on exit
    from the `with` block, whatever ends it. As root the server runs as `postgres` (initdb refuses
    root). The postmaster gets a parent-death signal (setpriv), so a bench killed with -9 does not
    leave it running; the next invocation removes the folder (remove_stale_pg_folders)."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.root: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.user: str | None = None  # the OS user running the server; None: ourselves
        self.databases = 0

    def __enter__(self) -> "PgCluster":
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stop()

    def _as_server_user(self, program: str, *args: str) -> list[str]:
        setpriv = shutil.which("setpriv")
        exe = str(self.bin / program)
        if setpriv:
            ids = ([f"--reuid={self.user}", f"--regid={self.user}", "--init-groups"]
                   if self.user else [])
            return [setpriv, *ids, "--pdeathsig", "KILL", "--", exe, *args]
        if self.user:
            return ["runuser", "-u", self.user, "--", exe, *args]
        return [exe, *args]

    def _start(self) -> None:
        import pwd
        remove_stale_pg_folders()
        self.root = Path(tempfile.mkdtemp(prefix=PG_FOLDER_PREFIX))
        (self.root / "owner.pid").write_text(f"{os.getpid()}\n")
        sock = self.root / "sock"
        sock.mkdir()
        pwfile = self.root / "pwfile"
        pwfile.write_text(PG_PASSWORD)
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pw = pwd.getpwnam(name)
                except KeyError:
                    continue
                self.user = name
                for p in (self.root, sock, pwfile):
                    os.chown(p, pw.pw_uid, pw.pw_gid)
                break
            else:
                raise BenchError("running as root, but there is neither a `postgres` nor a "
                                 "`nobody` user to run PostgreSQL as")
        argv = self._as_server_user(
            "initdb", "-D", str(self.root / "data"), "--username", PG_USER,
            "--auth", "scram-sha-256", "--encoding", "UTF8", "--locale", "C", "--no-sync",
            f"--pwfile={pwfile}")
        out = subprocess.run(argv, cwd="/", stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, errors="replace")
        if out.returncode != 0:
            raise BenchError(f"initdb failed ({shlex.join(argv)}):\n    "
                             + "\n    ".join(out.stderr.strip().splitlines()[-10:]))
        with socket_free_port() as port:
            self.port = port
        settings = [a for k, v in PG_SETTINGS for a in ("-c", f"{k}={v}")]
        argv = self._as_server_user(
            "postgres", "-D", str(self.root / "data"), "-p", str(self.port), "-k", str(sock),
            *settings)
        log = self.root / "server.log"
        with open(log, "wb") as out_f:
            # A session of its own: a Ctrl-C reaches the bench, which then stops the server in
            # order, rather than the server too, in the middle of a measured run.
            self.proc = subprocess.Popen(argv, cwd="/", stdin=subprocess.DEVNULL, stdout=out_f,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + REACTION_START_S
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"PostgreSQL exited with code {self.proc.returncode} at start "
                                 f"({shlex.join(argv)}):\n    {log_tail(log)}")
            ready = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1",
                                    "-p", str(self.port), "-q"], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if ready.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"PostgreSQL did not accept connections on port {self.port} "
                                 f"within {REACTION_START_S:.0f} s:\n    {log_tail(log)}")
            time.sleep(0.05)

    def _stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=REACTION_STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def version(self) -> str | None:
        return tool_version([str(self.bin / "postgres"), "--version"])

    def url(self, database: str) -> str:
        return f"postgres://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def fresh_database(self, tag: str) -> str:
        """CREATE DATABASE, then CHECKPOINT: the copy of the template and the previous runs'
        dirty pages are written now, not during the next measured run. Returns its URL."""
        self.databases += 1
        name = f"bench_{tag}_{self.databases}"  # letters, digits, underscores: no quoting
        argv = [str(self.bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                "-p", str(self.port), "-U", PG_USER, "-d", "postgres",
                "-c", f"CREATE DATABASE {name}", "-c", "CHECKPOINT"]
        env = dict(os.environ, PGPASSWORD=PG_PASSWORD)
        out = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, errors="replace")
        if out.returncode != 0:
            raise BenchError(f"creating database {name} failed: {out.stderr.strip()}")
        return self.url(name)


class socket_free_port:
    """A free loopback port (bound, then released on exit: the server binds it right after)."""

    def __enter__(self) -> int:
        import socket
        self._s = socket.socket()
        self._s.bind(("127.0.0.1", 0))
        return self._s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self._s.close()


def run_pg_condition(exe: str, case: Case, workers: int, cond: str, rep: int,
                     cluster: PgCluster, floor_argv: list[str]) -> float:
    if cond == "floor":
        return run_floor(case, workers, floor_argv)
    state = fresh_state_dir(case, f"{cond}{rep}")
    argv = [exe, "--state-dir", str(state), "run", str(case.dir / "pipeline.yaml"),
            "--workers", str(workers), "-q"]
    env = dict(os.environ)
    # Our own setting wins over a caller's, whichever condition it is.
    env.pop("EXECUTIONER_DURABILITY", None)
    env.pop("EXECUTIONER_DATABASE__URL", None)
    if cond == "sqlite_full":
        env["EXECUTIONER_DURABILITY"] = "full"
    if cond == "postgres":
        argv += ["--database-url", cluster.fresh_database(f"{case.shape}_{case.n}")]
    return run_timed(argv, cwd=case.dir, env=env)[0]


def bench_postgres(exe: str, args) -> PgBench:
    """The fanout and chain of each --pg-sizes with `executioner run` on SQLite (default
    durability, and durability=full) and on PostgreSQL, plus the spawn floor, interleaved (the
    order rotates each repetition), medians of --repeats."""
    res = PgBench()
    bin_dir = pg_server_bin()
    if bin_dir is None:
        res.skipped = ("PostgreSQL's server binaries (initdb, postgres) were not found in "
                       "/usr/lib/postgresql/*/bin nor `pg_config --bindir` "
                       "(apt-get install postgresql)")
        return res
    conds = list(PG_CONDITIONS)
    try:
        with PgCluster(bin_dir) as cluster:
            res.server = cluster.version()
            progress(f"postgres: {res.server} on 127.0.0.1:{cluster.port} ("
                     + ", ".join(f"{k}={v}" for k, v in PG_SETTINGS)
                     + f"); shapes {','.join(PG_SHAPES)}, sizes "
                     f"{','.join(map(str, args.pg_sizes))}, {args.repeats} repeats")
            for shape in PG_SHAPES:
                for n in args.pg_sizes:
                    case = generate_case(shape, n)
                    r = PgResult(shape, n)
                    res.results.append(r)
                    for rep in range(args.repeats):
                        k = rep % len(conds)
                        for cond in conds[k:] + conds[:k]:
                            r.samples[cond].append(run_pg_condition(
                                exe, case, args.workers, cond, rep, cluster, args.floor_argv))
                        progress(f"  postgres: {shape:8} N={n:<6} rep {rep + 1}/{args.repeats} "
                                 + " ".join(f"{c}={r.samples[c][-1] * 1000:.0f}ms"
                                            for c in conds))
    except BenchError as e:
        res.error = str(e)
    return res


def print_postgres(b: PgBench) -> None:
    print()
    print("The PostgreSQL store: `executioner run` with --database-url postgres://... against "
          "SQLite (no workers: the jobs run in the `run` process)")
    if b.skipped:
        print(f"  skipped: {b.skipped}")
        return
    print(f"  server: {b.server}; " + ", ".join(f"{k}={v}" for k, v in PG_SETTINGS))
    if b.results:
        cols: list[tuple[str, callable]] = [
            ("shape", lambda r: r.shape),
            ("N", lambda r: str(r.n)),
            ("sqlite ms", lambda r: fmt(r.median_ms("sqlite"))),
            ("sqlite-full ms", lambda r: fmt(r.median_ms("sqlite_full"))),
            ("postgres ms", lambda r: fmt(r.median_ms("postgres"))),
            ("floor ms", lambda r: fmt(r.median_ms("floor"))),
            ("sqlite ms/job", lambda r: fmt(r.overhead_ms_per_job("sqlite"), "+.3f")),
            ("sqlite-full ms/job", lambda r: fmt(r.overhead_ms_per_job("sqlite_full"), "+.3f")),
            ("postgres ms/job", lambda r: fmt(r.overhead_ms_per_job("postgres"), "+.3f")),
            ("pg/sqlite", lambda r: fmt(ratio(r.median_ms("postgres"), r.median_ms("sqlite")),
                                        ".2f")),
            ("pg/sqlite-full", lambda r: fmt(ratio(r.median_ms("postgres"),
                                                   r.median_ms("sqlite_full")), ".2f")),
        ]
        rows = [[c[0] for c in cols]] + [[c[1](r) for c in cols] for r in b.results]
        widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
        for k, row in enumerate(rows):
            cells = [row[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(row[1:], widths[1:])]
            print("  " + "  ".join(cells))
            if k == 0:
                print("  " + "  ".join("-" * w for w in widths))
        print("  (medians; sqlite = the default durability=normal, sqlite-full = "
              "durability=full (a sync per commit, as PostgreSQL's synchronous_commit=on); "
              "ms/job = (median - median floor) / N)")
        for r in b.results:
            q = ratio(r.median_ms("postgres"), r.median_ms("sqlite"))
            if q is not None:
                print(f"  goal of the worker version (issue 16, informational): {r.shape} N={r.n} "
                      f"postgres / sqlite {q:.2f} <= {TARGET_PG_RATIO}: "
                      f"{'PASS' if q <= TARGET_PG_RATIO else 'OVER'} "
                      "(today: the store's cost alone, no workers)")
    if b.error:
        print(f"  FAILED: {b.error}")


# --------------------------------------------------------------------------
# Controller failover (issue 16): kill -9 of the leader -> the standby leads.

FAILOVER_POLL_S = 0.01
FAILOVER_START_S = 60.0  # for a pair to have one leader


def parse_seconds(ttl: str) -> float:
    """`15s`, `1500ms`, `2m` or a number of seconds, as --lease-ttl takes it."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if ttl.endswith(suffix):
            return float(ttl[:-len(suffix)]) * scale
    return float(ttl)


def readyz(addr: str) -> int | None:
    """The status of GET /readyz at `addr` (HOST:PORT), None when nothing answers."""
    import http.client
    host, port = addr.rsplit(":", 1)
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=2)
        conn.request("GET", "/readyz")
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return None


def start_failover_controller(exe: str, url: str, ttl: str, base: Path) -> tuple[subprocess.Popen, str]:
    """A controller on `url` with its own state and manifests folders under `base`, serving HTTP on
    a free port; returns it and its address."""
    (base / "manifests").mkdir(parents=True)
    state = base / "state"
    env = dict(os.environ, EXECUTIONER_DATABASE__URL=url, EXECUTIONER_LEASE_TTL=ttl)
    env.pop("EXECUTIONER_STATE_DIR", None)
    with open(base / "controller.log", "wb") as log:
        proc = subprocess.Popen([exe, "--state-dir", str(state), "controller", "--manifests",
                                 str(base / "manifests"), "--listen", "127.0.0.1:0"],
                                cwd=base, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + FAILOVER_START_S
    while True:
        try:
            return proc, (state / "http.addr").read_text().strip()
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_controller(proc)
            raise BenchError(f"the controller did not serve HTTP:\n    "
                             f"{log_tail(base / 'controller.log')}")
        time.sleep(0.02)


def failover_once(exe: str, url: str, ttl: str, base: Path) -> float:
    """One pair of controllers: waits for one leader, kills it with -9, returns the seconds until
    the standby's /readyz answers 200."""
    pair = [start_failover_controller(exe, url, ttl, base / name) for name in ("a", "b")]
    try:
        deadline = time.monotonic() + FAILOVER_START_S
        while True:
            answers = [readyz(addr) for _, addr in pair]
            if sorted(answers) == [200, 503]:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"no single leader (readyz {answers}):\n    "
                                 f"{log_tail(base / 'a' / 'controller.log')}")
            time.sleep(FAILOVER_POLL_S)
        leader, standby = (pair[0], pair[1]) if answers[0] == 200 else (pair[1], pair[0])
        # Killed at a random point of the renewal period (a third of the lease), not right after
        # it took the lead: the lease left then ranges over two thirds to all of it.
        time.sleep(random.uniform(0, parse_seconds(ttl) / 3))
        killed = time.monotonic()
        leader[0].kill()
        leader[0].wait()
        deadline = killed + FAILOVER_START_S
        while readyz(standby[1]) != 200:
            if time.monotonic() > deadline:
                raise BenchError("the standby did not take over within "
                                 f"{FAILOVER_START_S:.0f} s")
            time.sleep(FAILOVER_POLL_S)
        return time.monotonic() - killed
    finally:
        for proc, _ in pair:
            stop_controller(proc)


def bench_failover(exe: str, args) -> dict:
    """--failover-tries pairs on one throwaway cluster, a fresh database each; the failover times
    and their median."""
    bin_dir = pg_server_bin()
    res: dict = {"lease_ttl": args.lease_ttl, "tries": args.failover_tries, "seconds": []}
    if bin_dir is None:
        res["error"] = "PostgreSQL's server binaries were not found (apt-get install postgresql)"
        return res
    try:
        with PgCluster(bin_dir) as cluster:
            res["server"] = cluster.version()
            progress(f"failover: {res['server']}, lease_ttl {args.lease_ttl}, "
                     f"{args.failover_tries} tries")
            for i in range(args.failover_tries):
                base = Path(tempfile.mkdtemp(prefix="executioner-failover-"))
                try:
                    t = failover_once(exe, cluster.fresh_database(f"failover{i}"),
                                      args.lease_ttl, base)
                finally:
                    shutil.rmtree(base, ignore_errors=True)
                res["seconds"].append(t)
                progress(f"  failover: try {i + 1}/{args.failover_tries}: {t:.2f} s")
    except BenchError as e:
        res["error"] = str(e)
    if res["seconds"]:
        res["median_seconds"] = statistics.median(res["seconds"])
    return res


def print_failover(r: dict) -> None:
    print()
    print(f"Controller failover on PostgreSQL (kill -9 of the leader -> the standby's /readyz "
          f"200), lease_ttl {r['lease_ttl']}")
    if r["seconds"]:
        print(f"  median {r['median_seconds']:.2f} s over {len(r['seconds'])} tries: "
              + ", ".join(f"{t:.2f}" for t in r["seconds"]))
    if r.get("error"):
        print(f"  FAILED: {r['error']}")
# Workers on PostgreSQL (issue 16 part 2): controllers and workers sharing one database


@dataclass
class DistFanout:
    """The N-job fanout of `true` through controller --once: wall seconds per condition."""
    n: int
    samples: dict[str, list[float]] = field(
        default_factory=lambda: {c: [] for c in DIST_FANOUT_CONDITIONS})

    def median_ms(self, cond: str) -> float | None:
        s = self.samples.get(cond)
        return statistics.median(s) * 1000 if s else None

    def ratios(self) -> dict[str, float | None]:
        pg = self.median_ms("pg_workers")
        return {"pg_over_sqlite_controller": ratio(pg, self.median_ms("sqlite_controller")),
                "pg_over_sqlite_run": ratio(pg, self.median_ms("sqlite_run")),
                "pg_async_over_sqlite_controller": ratio(self.median_ms("pg_workers_async"),
                                                         self.median_ms("sqlite_controller"))}

    def to_json(self) -> dict:
        return {
            "n": self.n,
            "samples_ms": {c: [round(s * 1000, 3) for s in v] for c, v in self.samples.items()},
            "median_ms": {c: self.median_ms(c) and round(self.median_ms(c), 3)
                          for c in self.samples},
            **{k: v and round(v, 3) for k, v in self.ratios().items()},
            "target_ratio": TARGET_PG_RATIO,
        }

    def print_lines(self) -> list[str]:
        r = self.ratios()
        runs = len(self.samples["pg_workers"])
        lines = [f"1. {self.n}-job fanout of `true`, wall time of `controller --once` from its "
                 f"start to its exit after the run's end (medians of {runs}):"]
        labels = {
            "pg_workers": "PostgreSQL, controller --slots 1 + one worker --slots 1",
            "sqlite_controller": "SQLite, controller --once, workers = 2",
            "sqlite_run": "SQLite, executioner run --workers 2",
            "pg_workers_async": "the PostgreSQL one, synchronous_commit=off (reference)",
        }
        for c in DIST_FANOUT_CONDITIONS:
            lines.append(f"   {labels[c]:56} {fmt(self.median_ms(c)):>9} ms")
        q = r["pg_over_sqlite_controller"]
        lines.append(f"   PostgreSQL / SQLite controller {fmt(q, '.2f')}   "
                     f"PostgreSQL / SQLite run {fmt(r['pg_over_sqlite_run'], '.2f')}   "
                     "synchronous_commit=off / SQLite controller "
                     f"{fmt(r['pg_async_over_sqlite_controller'], '.2f')}")
        if q is not None:
            lines.append(f"   goal (issue 16, informational): PostgreSQL / SQLite controller "
                         f"<= {TARGET_PG_RATIO}: {'PASS' if q <= TARGET_PG_RATIO else 'OVER'}")
        return lines


def nearest_rank(sorted_values: list[float], q: float) -> float:
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


@dataclass
class DistDispatch:
    """A chain of N jobs per run: start of job i+1 minus end of job i, in ms, per condition."""
    n: int
    samples_ms: dict[str, list[float]] = field(
        default_factory=lambda: {c: [] for c in DIST_DISPATCH_CONDITIONS})
    run_p50_ms: dict[str, list[float]] = field(
        default_factory=lambda: {c: [] for c in DIST_DISPATCH_CONDITIONS})

    def stats(self, cond: str) -> dict[str, float] | None:
        s = sorted(self.samples_ms.get(cond) or [])
        if not s:
            return None
        return {"p50": nearest_rank(s, 0.5), "p99": nearest_rank(s, 0.99),
                "min": s[0], "max": s[-1]}

    def to_json(self) -> dict:
        return {
            "n": self.n,
            "per_condition": {c: {
                "latencies": len(self.samples_ms[c]),
                "run_p50_ms": [round(v, 3) for v in self.run_p50_ms[c]],
                **{f"{k}_ms": round(v, 3) for k, v in (self.stats(c) or {}).items()},
            } for c in DIST_DISPATCH_CONDITIONS},
            "target_p50_ms": TARGET_DISPATCH_P50_MS,
            "target_p99_ms": TARGET_DISPATCH_P99_MS,
        }

    def print_lines(self) -> list[str]:
        runs = len(self.run_p50_ms["embedded"])
        lines = [f"2. Dispatch latency: a chain of {self.n} jobs, each `date +%s%N` at its start "
                 f"and end; start of job i+1 - end of job i ({self.n - 1} per run, {runs} "
                 "run(s) pooled; nothing subtracted):"]
        labels = {
            "embedded": "PostgreSQL, controller --slots 1 (embedded worker only)",
            "worker": "PostgreSQL, controller --slots 0 + worker --slots 1",
            "embedded_async": "the embedded worker, synchronous_commit=off (reference)",
            "sqlite": "SQLite, controller --once (reference)",
            "floor": "spawn floor: posix_spawn right after the last reap",
        }
        for c in DIST_DISPATCH_CONDITIONS:
            st = self.stats(c)
            if st is None:
                continue
            runs_p50 = ", ".join(f"{v:.1f}" for v in self.run_p50_ms[c])
            lines.append(f"   {labels[c]:56} p50 {st['p50']:7.1f} ms  p99 {st['p99']:7.1f} ms  "
                         f"max {st['max']:7.1f} ms  (p50 per run: {runs_p50})")
        for c in ("embedded", "worker"):
            st = self.stats(c)
            if st:
                ok = st["p50"] <= TARGET_DISPATCH_P50_MS and st["p99"] <= TARGET_DISPATCH_P99_MS
                lines.append(f"   goal (issue 16, informational): {c}: p50 <= "
                             f"{TARGET_DISPATCH_P50_MS:.0f} ms and p99 <= "
                             f"{TARGET_DISPATCH_P99_MS:.0f} ms: {'PASS' if ok else 'OVER'}")
        return lines


@dataclass
class DistLost:
    """kill -9 of the worker running a long job -> the job's new attempt starts on an idle worker."""
    tries: int
    samples_ms: list[float] = field(default_factory=list)
    # Tries after which the killed worker's job was still running (killed by the bench).
    orphans: int = 0

    def to_json(self) -> dict:
        med = statistics.median(self.samples_ms) if self.samples_ms else None
        return {
            "tries": self.tries,
            "lease_ttl_s": DIST_LOST_TTL_S,
            "samples_ms": [round(v, 3) for v in self.samples_ms],
            "median_ms": med and round(med, 3),
            "min_ms": round(min(self.samples_ms), 3) if self.samples_ms else None,
            "max_ms": round(max(self.samples_ms), 3) if self.samples_ms else None,
            "orphaned_jobs": self.orphans,
        }

    def print_lines(self) -> list[str]:
        lines = [f"3. Lost -> re-run: kill -9 of the worker running a long job -> its new attempt "
                 f"starts on the idle worker (lease TTL {DIST_LOST_TTL_S:g} s, so TTL-bound by "
                 "design):"]
        if self.samples_ms:
            s = self.samples_ms
            lines.append(f"   median {statistics.median(s):.0f} ms over {len(s)} tries   "
                         f"min {min(s):.0f} ms   max {max(s):.0f} ms   "
                         f"(samples: {', '.join(f'{v:.0f}' for v in s)})")
        if self.orphans:
            lines.append(f"   the killed worker's job was still running after {self.orphans} of "
                         f"{len(self.samples_ms)} tries (the bench killed it): a kill -9 does not "
                         "yet take the job's processes with it")
        return lines


@dataclass
class DistBench:
    """Outcome of bench_distributed: one entry per part that ran (see DIST_PARTS)."""
    parts: dict[str, object] = field(default_factory=dict)
    server: str | None = None
    skipped: str | None = None
    error: str | None = None

    def to_json(self) -> dict:
        return {
            "server": self.server,
            "settings": dict(PG_SETTINGS),
            "parts": {name: part.to_json() for name, part in self.parts.items()},
            "skipped": self.skipped,
            "error": self.error,
        }


class DistProcess:
    """One `executioner controller` or `worker` of the distributed part, its output in a log."""

    def __init__(self, argv: list[str], env: dict[str, str], root: Path, log: Path):
        self.argv = argv
        self.log = log
        with open(log, "wb") as out:
            # cwd = the temp root: no ./executioner.toml of the caller's is read.
            self.proc = subprocess.Popen(argv, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)

    def failure(self, what: str) -> BenchError:
        return BenchError(f"{what} ({shlex.join(self.argv)}, exit {self.proc.poll()})"
                          f"\n  output (last lines):\n    {log_tail(self.log)}")

    def wait_for_line(self, text: str, timeout: float) -> None:
        """Until `text` is in its log (a worker's "worker registered": it then listens at once)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if text in self.log.read_text(errors="replace"):
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise self.failure(f"exited before logging {text!r}")
            if time.monotonic() > deadline:
                raise self.failure(f"did not log {text!r} within {timeout:.0f} s")
            time.sleep(0.01)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise self.failure(f"still running after {timeout:.0f} s") from None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after REACTION_STOP_S."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=REACTION_STOP_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class DistSetup:
    """The folders, environment and processes of one measured try; stops its processes on exit.

    Everything it writes lives under STATE_ROOT, deleted when the bench ends (see STATE_ROOT)."""

    def __init__(self, exe: str, tag: str, database_url: str | None,
                 lease_ttl_s: float | None = None):
        self.exe = exe
        self.root = STATE_ROOT / f"dist-{tag}-{next(_state_dirs)}"
        self.manifests = self.root / "manifests"
        self.stamps = self.root / "stamps"
        for d in (self.manifests, self.stamps):
            d.mkdir(parents=True)
        os.chmod(self.root, 0o700)
        self.env = dict(os.environ)
        # Our own settings win over a caller's.
        for key in ("EXECUTIONER_DURABILITY", "EXECUTIONER_DATABASE__URL",
                    "EXECUTIONER_LEASE_TTL", "EXECUTIONER_WORKERS"):
            self.env.pop(key, None)
        self.env["EXECUTIONER_WORKERS"] = "2"
        if database_url:
            self.env["EXECUTIONER_DATABASE__URL"] = database_url
        if lease_ttl_s is not None:
            self.env["EXECUTIONER_LEASE_TTL"] = f"{lease_ttl_s:g}s"
        self.procs: list[DistProcess] = []

    def __enter__(self) -> "DistSetup":
        return self

    def __exit__(self, *exc) -> None:
        for p in reversed(self.procs):
            p.stop()

    def start(self, name: str, *args: str) -> DistProcess:
        """`executioner --state-dir ROOT/NAME ARGS...` (each process its own state folder)."""
        argv = [self.exe, "--state-dir", str(self.root / f"state-{name}"), *args]
        p = DistProcess(argv, self.env, self.root, self.root / f"{name}.log")
        self.procs.append(p)
        return p

    def worker(self, name: str) -> DistProcess:
        """A worker with one slot, registered (and so listening) when this returns."""
        p = self.start(name, "worker", "--name", name, "--slots", "1")
        p.wait_for_line("worker registered", REACTION_START_S)
        return p

    def controller(self, *args: str) -> DistProcess:
        return self.start("controller", "controller", "--manifests", str(self.manifests), "--once",
                          *args)

    def timed_controller(self, *args: str) -> float:
        """Seconds from starting `controller --once` to its exit (0 expected)."""
        t0 = time.perf_counter()
        p = self.controller(*args)
        code = p.wait(DIST_RUN_TIMEOUT_S)
        elapsed = time.perf_counter() - t0
        if code != 0:
            raise p.failure("the controller failed")
        return elapsed


def dist_fanout_condition(exe: str, case: Case, cond: str, rep: int, cluster: PgCluster) -> float:
    if cond == "sqlite_run":
        state = STATE_ROOT / f"dist-run-{rep}-{next(_state_dirs)}"
        env = {k: v for k, v in os.environ.items() if k not in (
            "EXECUTIONER_DURABILITY", "EXECUTIONER_DATABASE__URL")}
        argv = [exe, "--state-dir", str(state), "run", str(case.dir / "pipeline.yaml"),
                "--workers", "2", "-q"]
        return run_timed(argv, cwd=case.dir, env=env)[0]
    url = None
    if cond == "pg_workers":
        url = cluster.fresh_database(f"fanout_{case.n}")
    elif cond == "pg_workers_async":
        url = database_without_flush(cluster, f"fanout_{case.n}")
    with DistSetup(exe, f"fanout{rep}-{cond}", url) as s:
        shutil.copy(case.dir / "pipeline.yaml", s.manifests / "pipeline.yaml")
        if url:
            # Registered before the controller starts: an idle worker waiting for work.
            s.worker("bench-worker")
            return s.timed_controller("--slots", "1")
        return s.timed_controller()


def bench_dist_fanout(exe: str, args, cluster: PgCluster) -> DistFanout:
    """The fanout through PostgreSQL (controller --once --slots 1 + one worker --slots 1) against
    `controller --once` and `run` on SQLite (2 workers), interleaved, the order rotated by one
    each repetition, medians of --repeats."""
    case = generate_case("fanout", args.dist_fanout_n)
    res = DistFanout(case.n)
    conds = list(DIST_FANOUT_CONDITIONS)
    for rep in range(args.repeats):
        k = rep % len(conds)
        for cond in conds[k:] + conds[:k]:
            res.samples[cond].append(dist_fanout_condition(exe, case, cond, rep, cluster))
        progress(f"  distributed: fanout N={case.n} rep {rep + 1}/{args.repeats} "
                 + " ".join(f"{c}={res.samples[c][-1] * 1000:.0f}ms" for c in conds))
    return res


def chain_stamp_manifest(n: int, stamps: Path) -> str:
    """A chain of n jobs; job i appends `date +%s%N` to stamps/j<i> at its start and at its end."""
    script = 'date +%s%N >> "$0"; date +%s%N >> "$0"'
    lines = ["apiVersion: executioner.dev/v1", "kind: Pipeline", "metadata:",
             f"  name: dispatch-{n}", "spec:", "  jobs:"]
    for i in range(n):
        cmd = ["sh", "-c", script, str(stamps / job_id(i))]
        lines.append(f"    - id: {job_id(i)}")
        lines.append(f"      command: [{', '.join(json.dumps(c) for c in cmd)}]")
        if i:
            lines.append(f"      dependencies: [{job_id(i - 1)}]")
    return "\n".join(lines) + "\n"


def chain_latencies_ms(n: int, stamps: Path) -> list[float]:
    """start(i+1) - end(i) for the chain's jobs, from their stamp files."""
    pairs = []
    for i in range(n):
        try:
            values = [int(v) for v in (stamps / job_id(i)).read_text().split()]
        except (OSError, ValueError) as e:
            raise BenchError(f"dispatch: the stamps of {job_id(i)} cannot be read: {e}") from None
        if len(values) != 2:
            raise BenchError(f"dispatch: {job_id(i)} left {len(values)} stamps, not 2 "
                             "(did it run more than once?)")
        pairs.append(values)
    return [(pairs[i + 1][0] - pairs[i][1]) / 1e6 for i in range(n - 1)]


def dist_dispatch_floor(n: int, stamps: Path) -> None:
    """The same chain with the bench as the scheduler: posix_spawn job i+1 right after reaping i."""
    script = 'date +%s%N >> "$0"; date +%s%N >> "$0"'
    sh = shutil.which("sh") or "/bin/sh"
    env = dict(os.environ)
    for i in range(n):
        pid = os.posix_spawn(sh, ["sh", "-c", script, str(stamps / job_id(i))], env)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise BenchError(f"dispatch floor: job {i} exited with status {status}")


def database_without_flush(cluster: PgCluster, tag: str) -> str:
    """A fresh database whose sessions commit without waiting for the WAL flush
    (`synchronous_commit = off`: a server crash may lose the last commits, never corrupt)."""
    url = cluster.fresh_database(tag)
    name = url.rsplit("/", 1)[1]
    argv = [str(cluster.bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
            "-p", str(cluster.port), "-U", PG_USER, "-d", "postgres",
            "-c", f"ALTER DATABASE {name} SET synchronous_commit = off"]
    out = subprocess.run(argv, env=dict(os.environ, PGPASSWORD=PG_PASSWORD),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         errors="replace")
    if out.returncode != 0:
        raise BenchError(f"setting synchronous_commit on {name} failed: {out.stderr.strip()}")
    return url


def dist_dispatch_condition(exe: str, n: int, cond: str, rep: int,
                            cluster: PgCluster) -> list[float]:
    url = None
    if cond in ("embedded", "worker"):
        url = cluster.fresh_database(f"chain_{n}")
    elif cond == "embedded_async":
        url = database_without_flush(cluster, f"chain_{n}")
    with DistSetup(exe, f"chain{rep}-{cond}", url) as s:
        if cond == "floor":
            dist_dispatch_floor(n, s.stamps)
            return chain_latencies_ms(n, s.stamps)
        (s.manifests / "chain.yaml").write_text(chain_stamp_manifest(n, s.stamps))
        if cond in ("embedded", "embedded_async"):
            s.timed_controller("--slots", "1")
        elif cond == "worker":
            s.worker("bench-worker")
            s.timed_controller("--slots", "0")
        else:
            s.timed_controller()
        return chain_latencies_ms(n, s.stamps)


def bench_dist_dispatch(exe: str, args, cluster: PgCluster) -> DistDispatch:
    """A chain of --dist-chain-n jobs per condition, interleaved (order rotated each repetition),
    --repeats runs pooled."""
    res = DistDispatch(args.dist_chain_n)
    conds = list(DIST_DISPATCH_CONDITIONS)
    for rep in range(args.repeats):
        k = rep % len(conds)
        for cond in conds[k:] + conds[:k]:
            lat = dist_dispatch_condition(exe, res.n, cond, rep, cluster)
            res.samples_ms[cond].extend(lat)
            res.run_p50_ms[cond].append(nearest_rank(sorted(lat), 0.5) if lat else math.nan)
        progress(f"  distributed: dispatch chain N={res.n} rep {rep + 1}/{args.repeats} p50 "
                 + " ".join(f"{c}={res.run_p50_ms[c][-1]:.1f}ms" for c in conds))
    return res


LOST_SCRIPT = """\
# A long job for the Lost -> re-run measurement: its first attempt stamps its start and sleeps;
# the next one (on the other worker) stamps its start and ends. Line: `date +%s%N` and the pid.
echo "$(date +%s%N) $$" >> "$1"
[ "$(wc -l < "$1")" -ge 2 ] || exec sleep 600
"""


def read_lines(path: Path) -> list[list[str]]:
    """The complete (newline-terminated) lines of `path`, split in words."""
    try:
        text = path.read_text()
    except OSError:
        return []
    return [line.split() for line in text.splitlines(keepends=True) if line.endswith("\n")]


def wait_for_stamps(path: Path, count: int, timeout: float, what: str,
                    procs: list[DistProcess]) -> list[list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = read_lines(path)
        if len(lines) >= count:
            return lines
        for p in procs:
            if p.proc.poll() is not None:
                raise p.failure(f"exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout:.0f} s")
        time.sleep(REACTION_POLL_S)


def lost_job_running(pid: int) -> bool:
    """Whether `pid` is still LOST_SCRIPT's `sleep` (not a zombie waiting for a PID 1 that does
    not reap, nor a process that took the number since)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and argv[:2] == [b"sleep", b"600"]


def bench_dist_lost(exe: str, args, cluster: PgCluster) -> DistLost:
    """Per try (--dist-tries), with lease TTL DIST_LOST_TTL_S everywhere: worker A runs a one-job
    pipeline's long job (controller --once --slots 0), worker B is started and idle; kill -9 A
    at a random phase of A's lease renewals; the time from right before the kill to the stamp of
    the job's next attempt (on B: A is dead). Expected: between TTL - TTL/3 and TTL plus the
    leader's sweep (1 s) plus one dispatch."""
    res = DistLost(args.dist_tries)
    for t in range(args.dist_tries):
        url = cluster.fresh_database("lost")
        with DistSetup(exe, f"lost{t}", url, lease_ttl_s=DIST_LOST_TTL_S) as s:
            script = s.root / "lost.sh"
            script.write_text(LOST_SCRIPT)
            stamps = s.stamps / "starts"
            cmd = ["sh", str(script), str(stamps)]
            (s.manifests / "lost.yaml").write_text("\n".join([
                "apiVersion: executioner.dev/v1", "kind: Pipeline", "metadata:",
                "  name: lost", "spec:", "  jobs:", "    - id: long",
                f"      command: [{', '.join(json.dumps(c) for c in cmd)}]"]) + "\n")
            a = s.worker("bench-a")
            controller = s.controller("--slots", "0")
            first = wait_for_stamps(stamps, 1, REACTION_START_S, "the long job's first start",
                                    [a, controller])
            pid = int(first[0][1])
            try:
                s.worker("bench-b")
                # Plus a random part of a renewal period: the kill falls anywhere between two
                # renewals of the lease (and two sweeps of the leader), not always at one phase.
                time.sleep(DIST_LOST_IDLE_S + random.uniform(0, DIST_LOST_TTL_S / 3))
                t0 = time.time_ns()
                a.proc.kill()
                a.proc.wait()
                lines = wait_for_stamps(stamps, 2, DIST_LOST_TTL_S * 3 + REACTION_TIMEOUT_S,
                                        "the long job's new attempt after kill -9 of its worker",
                                        [controller])
                ms = (int(lines[1][0]) - t0) / 1e6
                code = controller.wait(DIST_RUN_TIMEOUT_S)
                if code != 0:
                    raise controller.failure("the controller failed")
            finally:
                # What the killed worker left: its job, if it is still running.
                orphaned = lost_job_running(pid)
                if orphaned:
                    try:
                        os.killpg(pid, signal.SIGKILL)  # the job leads its own process group
                    except OSError:
                        os.kill(pid, signal.SIGKILL)
            res.samples_ms.append(ms)
            res.orphans += orphaned
            progress(f"  distributed: lost try {t + 1}/{args.dist_tries}: {ms:.0f} ms")
    return res


# The parts of --distributed, in the order they run: name -> function(exe, args, cluster) giving
# an object with to_json() and print_lines(). Leader failover (--failover) plugs in as one more.
DIST_PARTS = {
    "fanout": bench_dist_fanout,
    "dispatch": bench_dist_dispatch,
    "lost": bench_dist_lost,
}


def bench_distributed(exe: str, args) -> DistBench:
    """The parts named by --dist-parts against one throwaway cluster (as bench_postgres)."""
    res = DistBench()
    bin_dir = pg_server_bin()
    if bin_dir is None:
        res.skipped = ("PostgreSQL's server binaries (initdb, postgres) were not found in "
                       "/usr/lib/postgresql/*/bin nor `pg_config --bindir` "
                       "(apt-get install postgresql)")
        return res
    try:
        with PgCluster(bin_dir) as cluster:
            res.server = cluster.version()
            progress(f"distributed: {res.server} on 127.0.0.1:{cluster.port} ("
                     + ", ".join(f"{k}={v}" for k, v in PG_SETTINGS)
                     + f"); parts {','.join(args.dist_parts)}; fanout N={args.dist_fanout_n}, "
                     f"chain N={args.dist_chain_n}, {args.repeats} repeats, "
                     f"{args.dist_tries} lost tries")
            for name in args.dist_parts:
                res.parts[name] = DIST_PARTS[name](exe, args, cluster)
    except BenchError as e:
        res.error = str(e)
    return res


def print_distributed(b: DistBench) -> None:
    print()
    print("Workers on PostgreSQL: controllers and workers sharing one database (issue 16)")
    if b.skipped:
        print(f"  skipped: {b.skipped}")
        return
    print(f"  server: {b.server}; " + ", ".join(f"{k}={v}" for k, v in PG_SETTINGS))
    for part in b.parts.values():
        for line in part.print_lines():
            print("  " + line)
    if b.error:
        print(f"  FAILED: {b.error}")


# --------------------------------------------------------------------------
# Measurement loop


@dataclass
class Result:
    shape: str
    n: int
    samples: dict[str, list[float]] = field(default_factory=dict)  # seconds
    exec_rss_kib: list[int] = field(default_factory=list)
    rss_floor_kib: int | None = None  # what any fork()ed child reports; see run_timed
    notes: list[str] = field(default_factory=list)

    def median_ms(self, tool: str) -> float | None:
        s = self.samples.get(tool)
        return statistics.median(s) * 1000 if s else None

    def overhead_ms_per_job(self, tool: str) -> float | None:
        t, f = self.median_ms(tool), self.median_ms("floor")
        return None if t is None or f is None else (t - f) / self.n

    def peak_rss_mib(self) -> float | None:
        return max(self.exec_rss_kib) / 1024 if self.exec_rss_kib else None

    def rss_at_floor(self) -> bool:
        """True when the reading is the spawning Python's footprint, not executioner's."""
        if not self.exec_rss_kib or self.rss_floor_kib is None:
            return False
        return max(self.exec_rss_kib) <= self.rss_floor_kib + 512

    def rss_text(self) -> str:
        mib = self.peak_rss_mib()
        if mib is None:
            return "-"
        return f"<={mib:.1f}" if self.rss_at_floor() else f"{mib:.1f}"

    def to_json(self) -> dict:
        tools = sorted(self.samples)
        return {
            "shape": self.shape,
            "n": self.n,
            "samples_ms": {t: [round(s * 1000, 3) for s in self.samples[t]] for t in tools},
            "median_ms": {t: round(self.median_ms(t), 3) for t in tools},
            "overhead_ms_per_job": {
                t: round(self.overhead_ms_per_job(t), 4)
                for t in ("executioner", "ninja", "make") if self.overhead_ms_per_job(t) is not None
            },
            "exec_over_ninja": ratio(self.median_ms("executioner"), self.median_ms("ninja")),
            "exec_peak_rss_kib": max(self.exec_rss_kib) if self.exec_rss_kib else None,
            "exec_rss_kib_samples": self.exec_rss_kib,
            "rss_spawn_floor_kib": self.rss_floor_kib,
            "exec_rss_at_floor": self.rss_at_floor(),
            "notes": self.notes,
        }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def bench_case(case: Case, args, exe: str | None, ninja: str | None, make: str | None) -> Result:
    res = Result(case.shape, case.n)
    tools: list[str] = []
    if exe:
        tools.append("executioner")
    if ninja:
        tools.append("ninja")
    if make:
        tools.append("make")
    tools.append("floor")
    for t in tools:
        res.samples[t] = []
    stopped: set[str] = set()
    if exe:
        res.rss_floor_kib = rss_spawn_floor()

    for rep in range(args.repeats):
        for tool in tools:
            if tool in stopped:
                continue
            if tool == "executioner":
                secs, rss = run_executioner(exe, case, args.workers, rep)
                res.exec_rss_kib.append(rss)
            elif tool == "ninja":
                secs = run_ninja(ninja, case, args.workers)
            elif tool == "make":
                secs = run_make(make, case, args.workers)
            else:
                secs = run_floor(case, args.workers, args.floor_argv)
            res.samples[tool].append(secs)
            if tool in ("make", "ninja") and rep == 0 and secs > SLOW_BASELINE_S:
                stopped.add(tool)
                res.notes.append(f"{tool} took {secs:.0f} s once (> {SLOW_BASELINE_S:.0f} s): "
                                 "not repeated; its column is that single run")
        progress(f"  {case.shape:8} N={case.n:<6} rep {rep + 1}/{args.repeats} "
                 + " ".join(f"{t}={res.samples[t][-1] * 1000:.0f}ms"
                            for t in tools if res.samples[t]))

    if exe:
        res.samples["validate"] = [run_validate(exe, case) for _ in range(args.repeats)]
        res.samples["dry_run"] = [run_dry_run(exe, case, args.workers) for _ in range(args.repeats)]
    return res


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Reporting


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(results: list[Result], have_exec: bool, have_ninja: bool, have_make: bool) -> None:
    cols: list[tuple[str, callable]] = [
        ("shape", lambda r: r.shape),
        ("N", lambda r: str(r.n)),
    ]
    if have_exec:
        cols.append(("exec ms", lambda r: fmt(r.median_ms("executioner"))))
    if have_ninja:
        cols.append(("ninja ms", lambda r: fmt(r.median_ms("ninja"))))
    if have_make:
        cols.append(("make ms", lambda r: fmt(r.median_ms("make"))))
    cols.append(("floor ms", lambda r: fmt(r.median_ms("floor"))))
    if have_exec:
        cols.append(("exec ms/job", lambda r: fmt(r.overhead_ms_per_job("executioner"), "+.3f")))
    if have_ninja:
        cols.append(("ninja ms/job", lambda r: fmt(r.overhead_ms_per_job("ninja"), "+.3f")))
    if have_make:
        cols.append(("make ms/job", lambda r: fmt(r.overhead_ms_per_job("make"), "+.3f")))
    if have_exec and have_ninja:
        cols.append(("exec/ninja", lambda r: fmt(ratio(r.median_ms("executioner"),
                                                        r.median_ms("ninja")), ".2f")))
    if have_exec:
        cols.append(("RSS MiB", lambda r: r.rss_text()))
        cols.append(("validate ms", lambda r: fmt(r.median_ms("validate"))))
        cols.append(("dry-run ms", lambda r: fmt(r.median_ms("dry_run"))))

    rows = [[c[0] for c in cols]] + [[c[1](r) for c in cols] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    for k, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(row[1:], widths[1:])]
        print("  ".join(cells))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print("(medians; ms/job = (median - median floor) / N; floor = posix_spawn of "
          "the same N processes, same parallelism, DAG order)")
    if have_exec and any(r.rss_at_floor() for r in results):
        print("(RSS '<=X': the reading equals what any child forked by this script reports, "
              "because Linux counts the pre-exec memory; executioner used at most that)")
    for r in results:
        for note in r.notes:
            print(f"note: {r.shape} N={r.n}: {note}")


def print_targets(results: list[Result]) -> None:
    def mark(ok: bool) -> str:
        return "PASS" if ok else "OVER"

    print()
    print(f"DESIGN targets (informational): <= {TARGET_OVERHEAD_MS_PER_JOB} ms/job above the floor; "
          f"{BIG_N}-job peak memory < {TARGET_PEAK_RSS_MIB:.0f} MiB; "
          f"{BIG_N}-job validate and plan < {TARGET_PLAN_S:.0f} s")
    for r in results:
        parts = []
        ovh = r.overhead_ms_per_job("executioner")
        if ovh is not None:
            parts.append(f"overhead {ovh:+.3f} ms/job {mark(ovh <= TARGET_OVERHEAD_MS_PER_JOB)}")
        if r.n >= BIG_N:
            rss = r.peak_rss_mib()
            if rss is not None:
                parts.append(f"peak RSS {r.rss_text()} MiB {mark(rss < TARGET_PEAK_RSS_MIB)}")
            for tool, label in (("validate", "validate"), ("dry_run", "plan (run --dry-run)")):
                ms = r.median_ms(tool)
                if ms is not None:
                    parts.append(f"{label} {ms:.0f} ms {mark(ms < TARGET_PLAN_S * 1000)}")
        if parts:
            print(f"  {r.shape:8} N={r.n:<6} " + "; ".join(parts))
    if not any(r.n >= BIG_N for r in results):
        print(f"  (no N={BIG_N} case in this run: memory and validate/plan targets not checked)")


def tool_version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def write_json(results: list[Result], args, exe, ninja, make,
               reaction: Reaction | None = None, ui: UiCost | None = None,
               pg: PgBench | None = None, dist: DistBench | None = None) -> Path:
    doc = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "config": {
            "sizes": args.sizes,
            "shapes": args.shapes,
            "repeats": args.repeats,
            "workers": args.workers,
            "floor_argv": args.floor_argv,
            "only_baselines": args.only_baselines,
            "dag_tables": args.run_dag,
            "reaction": args.run_reaction,
            "reaction_repeats": args.reaction_repeats,
            "ui": args.run_ui,
            "ui_repeats": args.ui_repeats,
            "postgres": args.run_pg,
            "pg_sizes": args.pg_sizes,
            "distributed": args.run_dist,
            "dist_parts": args.dist_parts,
            "dist_fanout_n": args.dist_fanout_n,
            "dist_chain_n": args.dist_chain_n,
            "dist_tries": args.dist_tries,
        },
        "tools": {
            "executioner": exe and {"path": exe, "version": tool_version([exe, "--version"])},
            "ninja": ninja and {"path": ninja, "version": tool_version([ninja, "--version"])},
            "make": make and {"path": make, "version": tool_version([make, "--version"])},
        },
        "targets": {
            "overhead_ms_per_job": TARGET_OVERHEAD_MS_PER_JOB,
            "peak_rss_mib_at_10000": TARGET_PEAK_RSS_MIB,
            "validate_and_plan_s_at_10000": TARGET_PLAN_S,
            "reaction_median_ms": TARGET_REACTION_MS,
            "ui_reaction_ratio": TARGET_UI_RATIO,
            "postgres_over_sqlite": TARGET_PG_RATIO,
            "dispatch_p50_ms": TARGET_DISPATCH_P50_MS,
            "dispatch_p99_ms": TARGET_DISPATCH_P99_MS,
        },
        "results": [r.to_json() for r in results],
        "reaction": reaction.to_json() if reaction else None,
        "ui": ui.to_json() if ui else None,
        "postgres": pg.to_json() if pg else None,
        "distributed": dist.to_json() if dist else None,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "results.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------
# CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark executioner against a spawn floor, ninja and make (DESIGN.md §8).")
    p.add_argument("--executioner", default=str(REPO / "target" / "release" / "executioner"),
                   help="path to the executioner binary (default: target/release/executioner)")
    p.add_argument("--sizes", default=None,
                   help="comma-separated job counts (default 100,1000,10000; --quick: 100,1000)")
    p.add_argument("--repeats", type=int, default=None,
                   help="repetitions per tool and case (default 5; --quick: 3)")
    p.add_argument("--shapes", default="fanout,chain,layered",
                   help="comma-separated DAG shapes: fanout, chain, layered")
    p.add_argument("--workers", type=int, default=2, help="parallelism for every tool (default 2)")
    p.add_argument("--quick", action="store_true", help="sizes 100,1000 and 3 repeats")
    p.add_argument("--only-baselines", action="store_true",
                   help="skip executioner: measure only ninja, make and the spawn floor")
    reaction = p.add_mutually_exclusive_group()
    reaction.add_argument("--reaction", action="store_true",
                          help="run only the reaction-time benchmark (controller, manifest drops); "
                               "by default it runs after the DAG tables")
    reaction.add_argument("--no-reaction", action="store_true",
                          help="skip the reaction-time benchmark")
    reaction.add_argument("--ui", action="store_true",
                          help="run only the HTTP server's cost (reaction time off vs on with "
                               "clients following a live log); by default it runs after the "
                               "reaction time")
    reaction.add_argument("--postgres", action="store_true",
                          help="run only the PostgreSQL store's cost (`run` on PostgreSQL vs "
                               "SQLite, a throwaway cluster); by default it runs last when "
                               "PostgreSQL's server binaries are installed")
    p.add_argument("--failover", action="store_true",
                   help="run only the controller failover time on PostgreSQL (two controllers, "
                        "kill -9 of the leader); never part of the default run")
    p.add_argument("--lease-ttl", default="15s",
                   help="lease_ttl for --failover (default 15s, the default)")
    p.add_argument("--failover-tries", type=int, default=5,
                   help="pairs of controllers for --failover (default 5)")
    reaction.add_argument("--distributed", action="store_true",
                          help="run only the workers on PostgreSQL (fanout through workers vs "
                               "SQLite, dispatch latency, Lost -> re-run; a throwaway cluster); "
                               "by default it runs last when PostgreSQL is installed")
    p.add_argument("--no-ui", action="store_true", help="skip the HTTP server's cost")
    p.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL store's cost")
    p.add_argument("--pg-sizes", default="1000",
                   help="comma-separated job counts for the PostgreSQL store's cost (default 1000)")
    p.add_argument("--no-distributed", action="store_true",
                   help="skip the workers on PostgreSQL")
    p.add_argument("--dist-parts", default=",".join(DIST_PARTS),
                   help=f"parts of the workers on PostgreSQL (default {','.join(DIST_PARTS)})")
    p.add_argument("--dist-fanout-n", type=int, default=1000,
                   help="jobs of the fanout through workers (default 1000; uses --repeats)")
    p.add_argument("--dist-chain-n", type=int, default=200,
                   help="jobs of the dispatch-latency chain (default 200; uses --repeats)")
    p.add_argument("--dist-tries", type=int, default=5,
                   help="kill -9 tries of the Lost -> re-run time (default 5)")
    p.add_argument("--ui-repeats", type=int, default=20,
                   help="manifests dropped per condition for the HTTP server's cost (default 20)")
    p.add_argument("--reaction-repeats", type=int, default=20,
                   help="manifests dropped for the reaction time (default 20)")
    p.add_argument("--no-settle", action="store_true",
                   help="do not wait for the file system to settle after the previous invocation's "
                        "clean-up (see bench/README.md)")
    p.add_argument("--floor-cmd", default="/bin/sh -c true",
                   help="the process the floor spawns per job (default: '/bin/sh -c true', "
                        "what a string command costs)")
    args = p.parse_args(argv)

    args.sizes = [int(s) for s in (args.sizes or ("100,1000" if args.quick else "100,1000,10000"))
                  .split(",") if s.strip()]
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    args.pg_sizes = [int(s) for s in args.pg_sizes.split(",") if s.strip()]
    args.floor_argv = shlex.split(args.floor_cmd)
    for s in args.shapes:
        if s not in ("fanout", "chain", "layered"):
            p.error(f"unknown shape {s!r} (fanout, chain, layered)")
    args.dist_parts = [s.strip() for s in args.dist_parts.split(",") if s.strip()]
    for s in args.dist_parts:
        if s not in DIST_PARTS:
            p.error(f"--dist-parts: unknown part {s!r} ({', '.join(DIST_PARTS)})")
    if any(n < 1 for n in args.sizes + args.pg_sizes + [args.dist_fanout_n, args.dist_tries]):
        p.error("sizes must be positive")
    if args.dist_chain_n < 2:
        p.error("--dist-chain-n must be at least 2")
    if args.repeats < 1 or args.workers < 1:
        p.error("--repeats and --workers must be at least 1")
    if args.reaction_repeats < 1:
        p.error("--reaction-repeats must be at least 1")
    if args.ui_repeats < 1:
        p.error("--ui-repeats must be at least 1")
    if args.failover_tries < 1:
        p.error("--failover-tries must be at least 1")
    if args.failover and args.only_baselines:
        p.error("--failover needs the executioner binary; not with --only-baselines")
    if (args.reaction or args.ui or args.postgres or args.distributed) and args.only_baselines:
        p.error("--reaction, --ui, --postgres and --distributed need the executioner binary; "
                "not with --only-baselines")
    if args.ui and args.no_ui:
        p.error("--ui and --no-ui contradict each other")
    if args.postgres and args.no_postgres:
        p.error("--postgres and --no-postgres contradict each other")
    if args.distributed and args.no_distributed:
        p.error("--distributed and --no-distributed contradict each other")
    alone = args.reaction or args.ui or args.postgres or args.distributed
    args.run_dag = not alone
    args.run_reaction = not args.no_reaction and not args.only_baselines and (
        args.reaction or not alone)
    args.run_ui = not args.no_ui and not args.only_baselines and (args.ui or not alone)
    args.run_pg = not args.no_postgres and not args.only_baselines and (
        args.postgres or not alone)
    args.run_dist = not args.no_distributed and not args.only_baselines and (
        args.distributed or not alone)
    return args


def settle(skip: bool) -> None:
    """Wait until SETTLE_S have passed since the last mass deletion of state folders."""
    try:
        since = time.time() - float(CLEANED_AT.read_text())
    except (OSError, ValueError):
        return
    wait = SETTLE_S - since
    if wait <= 0:
        return
    if skip:
        progress(f"bench: state folders were deleted {since:.0f} s ago; not waiting (--no-settle), "
                 "file creation may still be slow")
        return
    progress(f"bench: state folders were deleted {since:.0f} s ago; waiting {wait:.0f} s for the "
             "file system to settle (--no-settle skips this)")
    time.sleep(wait)


def prepare_state(args) -> None:
    """The folders the measured runs write to; waits for an earlier clean-up to settle."""
    WORK.mkdir(parents=True, exist_ok=True)
    if STATE_ROOT.exists():  # left by an interrupted invocation
        shutil.rmtree(STATE_ROOT)
        CLEANED_AT.write_text(f"{time.time()}\n")
    settle(args.no_settle)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    exe = None
    if not args.only_baselines:
        exe = args.executioner
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            print(f"error: executioner binary not found at {exe}\n"
                  "  build it with `cargo build --release` (make bench does), pass --executioner PATH,"
                  " or use --only-baselines", file=sys.stderr)
            return 2
        exe = os.path.abspath(exe)
    if (args.postgres or args.distributed) and pg_server_bin() is None:
        flag = "--postgres" if args.postgres else "--distributed"
        print(f"error: {flag}: PostgreSQL's server binaries (initdb, postgres) were not found in "
              "/usr/lib/postgresql/*/bin nor `pg_config --bindir`\n"
              "  install them with `apt-get install postgresql`", file=sys.stderr)
        return 2

    # A SIGTERM ends the bench as a Ctrl-C does: through the `finally` blocks, which stop the
    # PostgreSQL cluster and delete the state folders.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return run_parts(args, exe)
    finally:
        # Deleted only now, after every part (see STATE_ROOT): a mass deletion slows the file
        # creation of whatever is measured next.
        if STATE_ROOT.exists():
            shutil.rmtree(STATE_ROOT, ignore_errors=True)
            CLEANED_AT.write_text(f"{time.time()}\n")


def run_parts(args, exe: str | None) -> int:
    if args.failover:
        failover = bench_failover(exe, args)
        print_failover(failover)
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / "failover.json"
        path.write_text(json.dumps(failover, indent=2) + "\n")
        print(f"\nresults: {path.relative_to(REPO)}")
        return 1 if failover.get("error") else 0
    if not args.run_dag:
        reaction = ui = pg = dist = None
        if args.run_reaction:
            reaction = bench_reaction(exe, args.reaction_repeats)
            print_reaction(reaction)
        if args.run_ui:
            ui = bench_ui(exe, args.ui_repeats)
            print_ui(ui)
        if args.run_pg or args.run_dist:
            prepare_state(args)
        if args.run_pg:
            pg = bench_postgres(exe, args)
            print_postgres(pg)
        if args.run_dist:
            dist = bench_distributed(exe, args)
            print_distributed(dist)
        path = write_json([], args, exe, None, None, reaction, ui, pg, dist)
        print(f"\nresults: {path.relative_to(REPO)}")
        return 1 if any(part and part.error for part in (reaction, ui, pg, dist)) else 0

    ninja = shutil.which("ninja")
    if not ninja:
        print("warning: `ninja` is not on PATH; continuing without the ninja column.\n"
              "  `make bench` installs it (apt-get install -y ninja-build).", file=sys.stderr)
    make = shutil.which("make")
    if not make:
        print("warning: `make` is not on PATH; continuing without the make column.", file=sys.stderr)

    prepare_state(args)
    progress(f"bench: shapes={','.join(args.shapes)} sizes={','.join(map(str, args.sizes))} "
             f"repeats={args.repeats} workers={args.workers} "
             f"tools={','.join(t for t, on in (('executioner', exe), ('ninja', ninja), ('make', make)) if on)},floor")

    results: list[Result] = []
    try:
        for shape in args.shapes:
            for n in args.sizes:
                case = generate_case(shape, n)
                results.append(bench_case(case, args, exe, ninja, make))
    except BenchError as e:
        print(f"\nbench FAILED: {e}", file=sys.stderr)
        return 1

    print()
    print_table(results, bool(exe), bool(ninja), bool(make))
    if exe:
        print_targets(results)
    sys.stdout.flush()
    reaction = None
    if exe and args.run_reaction:
        reaction = bench_reaction(exe, args.reaction_repeats)
        print_reaction(reaction)
    ui = None
    if exe and args.run_ui:
        ui = bench_ui(exe, args.ui_repeats)
        print_ui(ui)
    sys.stdout.flush()
    pg = None
    if exe and args.run_pg:
        pg = bench_postgres(exe, args)
        print_postgres(pg)
    sys.stdout.flush()
    dist = None
    if exe and args.run_dist:
        dist = bench_distributed(exe, args)
        print_distributed(dist)
    path = write_json(results, args, exe, ninja, make, reaction, ui, pg, dist)
    print(f"\nresults: {path.relative_to(REPO)}")
    print("noise: expect +-50% between invocations on a 2-core machine; compare medians of one run.")
    return 1 if any(part and part.error for part in (reaction, ui, pg, dist)) else 0

if __name__ == "__main__":
    sys.exit(main())
