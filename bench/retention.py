#!/usr/bin/env python3
"""Disk used by the run history after N short runs, with retention against without.

Two fresh state folders get the same N runs of a three-job pipeline (`executioner run`, one
after the other, as cron would start them). In the `retention` one, `executioner gc` runs every
`--gc-every` runs with `history.keep_runs = --keep-runs` (what a controller or a crontab does);
in the `none` one nothing ever prunes (the behaviour before retention existed). After every
quarter of N, both folders are measured: the database file (after a checkpoint, so that it holds
every commit), the WAL file as the last command left it, and the logs folder, as bytes of content and as disk blocks allocated (every small log
file takes a whole block). Standard library only; see bench/README.md.
"""

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

MANIFEST = """\
apiVersion: executioner.dev/v1
kind: Pipeline
metadata: {name: every-minute}
spec:
  jobs:
    - {id: extract, command: "echo extracting; echo 42 rows"}
    - {id: load, command: "echo loading; echo done", dependencies: [extract]}
    - {id: report, command: "echo report sent", dependencies: [load]}
"""


def tree(path):
    """(content bytes, allocated bytes, files) under path."""
    content = allocated = files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            content += st.st_size
            allocated += st.st_blocks * 512
            files += 1
    return content, allocated, files


def size(path):
    return os.path.getsize(path) if os.path.exists(path) else 0


def database(state):
    """(database file after a checkpoint, WAL file as the last command left it)."""
    db = os.path.join(state, "executioner.db")
    wal = size(db + "-wal")
    # The WAL holds the latest commits until a checkpoint copies them into the file; copy them
    # so that the file's size is the database's, in both modes alike.
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return size(db), wal


def measure(state, runs):
    content, allocated, files = tree(os.path.join(state, "logs"))
    db, wal = database(state)
    return {
        "runs": runs,
        "dbBytes": db,
        "walBytes": wal,
        "logBytes": content,
        "logAllocatedBytes": allocated,
        "logFiles": files,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--executioner", default="target/release/executioner")
    ap.add_argument("--runs", type=int, default=10000, help="runs per mode (N)")
    ap.add_argument("--keep-runs", type=int, default=100)
    ap.add_argument("--gc-every", type=int, default=10, help="runs between two gc (retention mode)")
    ap.add_argument("--out", default="bench/out/retention.json")
    args = ap.parse_args()
    binary = os.path.abspath(args.executioner)
    if not os.access(binary, os.X_OK):
        print(f"no executioner binary at {binary} (cargo build --release)", file=sys.stderr)
        return 2

    work = tempfile.mkdtemp(prefix="executioner-retention-")
    try:
        manifest = os.path.join(work, "every-minute.yaml")
        with open(manifest, "w") as f:
            f.write(MANIFEST)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXECUTIONER_")}
        env["EXECUTIONER_HISTORY__KEEP_RUNS"] = str(args.keep_runs)
        checkpoints = {args.runs * q // 4 for q in range(1, 5)}
        results = {"retention": [], "none": []}
        started = time.monotonic()
        for n in range(1, args.runs + 1):
            for mode in ("retention", "none"):
                state = os.path.join(work, mode)
                cmd = [binary, "--state-dir", state, "run", manifest, "-q"]
                subprocess.run(cmd, cwd=work, env=env, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if mode == "retention" and n % args.gc_every == 0:
                    subprocess.run([binary, "--state-dir", state, "gc", "-q"], cwd=work,
                                   env=env, check=True, stdout=subprocess.DEVNULL)
                if n in checkpoints:
                    results[mode].append(measure(state, n))
        elapsed = time.monotonic() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mib = lambda b: f"{b / 1048576:.2f}"
    print(f"N = {args.runs} runs of 3 jobs; retention: keep_runs = {args.keep_runs}, "
          f"gc every {args.gc_every} runs; {elapsed:.0f} s")
    print(f"{'mode':<10} {'runs':>6} {'db MiB':>8} {'wal MiB':>8} {'logs MiB':>9} "
          f"{'logs on disk MiB':>17} {'log files':>10}")
    for mode in ("retention", "none"):
        for r in results[mode]:
            print(f"{mode:<10} {r['runs']:>6} {mib(r['dbBytes']):>8} {mib(r['walBytes']):>8} "
                  f"{mib(r['logBytes']):>9} {mib(r['logAllocatedBytes']):>17} {r['logFiles']:>10}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"runs": args.runs, "keepRuns": args.keep_runs, "gcEvery": args.gc_every,
                   "seconds": round(elapsed, 1), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
