"""Benchmark commands run in interleaved rounds, each when the machine is quiet.

On a shared machine whose speed swings between minutes, two figures compare only when
they were measured in the same sitting, alternately. This runs every case of a plan once
per round (each round starting one case later, so no case always goes first), waits
before each run until the machine has been quiet for a moment (at most ``--max-wait``
seconds), and records, per run, the JSON line the command printed and the CPU the rest
of the machine spent meanwhile (``others_cores``: other work; a run where it is high
was disturbed, and is run again, twice at most). Results go to ``--out`` as JSON Lines,
and a summary of the undisturbed runs (the median and each run of every metric) is
printed as one JSON line.

A plan is a JSON file: a list of cases, each
``{"name": ..., "command": [...], "cwd": ..., "env": {...}, "metrics": {"label": "path.to.value"}}``
(``cwd`` and ``env`` optional; a path's parts are keys or list indexes:
``results.0.acknowledged_records_per_s``).

    .venv/bin/python bench/interleave.py plan.json --rounds 5 --out runs.jsonl
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cluster import SERVERS, machine_busy, processes  # noqa: E402


def _servers_cpu() -> float:
    return sum(cpu for name, _, cpu in processes().values() if name in SERVERS)


def _tree_cpu(root: int, seen: dict[int, float]) -> None:
    """Record the CPU seconds so far of ``root`` and every process under it (kept per pid,
    so that a process that has ended still counts with what it had when last seen)."""
    table = processes()
    children: dict[int, list[int]] = {}
    for pid, (_, parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            seen[pid] = table[pid][2]
        stack.extend(children.get(pid, ()))


def wait_quiet(threshold: float, seconds: float, max_wait: float) -> tuple[float, float]:
    """Wait until the machine spent under ``threshold`` cores over ``seconds``; returns the
    time waited and the last reading."""
    started = time.monotonic()
    while True:
        before = machine_busy()
        time.sleep(seconds)
        busy = (machine_busy() - before) / seconds
        waited = time.monotonic() - started
        if busy < threshold or waited >= max_wait:
            return round(waited, 1), round(busy, 2)


def _value(result: Any, path: str) -> Any:
    for part in path.split("."):
        if result is None:
            return None
        result = result[int(part)] if isinstance(result, list) else result.get(part)
    return result


def run_case(case: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one case; ``others_cores`` is what the machine spent beyond the case's own
    processes (sampled every 0.2 s, so a process's last 0.2 s may be missed) and the shared
    servers (Redis, NATS, PostgreSQL)."""
    env = {**os.environ, **case.get("env", {})}
    busy, servers = machine_busy(), _servers_cpu()
    started = time.monotonic()
    seen: dict[int, float] = {}
    with subprocess.Popen(
        case["command"],
        cwd=case.get("cwd", ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        outputs: list[str] = []
        reader = threading.Thread(target=lambda: outputs.extend(child.communicate(timeout=timeout)))
        reader.start()
        while reader.is_alive():
            _tree_cpu(child.pid, seen)
            reader.join(0.2)
    seconds = time.monotonic() - started
    stdout, stderr = outputs if len(outputs) == 2 else ("", "")
    mine = sum(seen.values()) + (_servers_cpu() - servers)
    others = max(0.0, (machine_busy() - busy) - mine) / seconds
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    result = orjson.loads(lines[-1]) if lines else None
    return {
        "rc": child.returncode,
        "seconds": round(seconds, 1),
        "others_cores": round(others, 2),
        "stderr_tail": stderr[-1500:] if child.returncode or result is None else "",
        "result": result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plan", type=Path, help="the cases (JSON)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True, help="JSON Lines, one per run (appended)")
    parser.add_argument("--quiet-cores", type=float, default=0.25, help="the machine is quiet below this")
    parser.add_argument("--max-wait", type=float, default=300.0, help="longest wait for quiet, per run")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest run")
    parser.add_argument(
        "--disturbed-cores",
        type=float,
        default=0.3,
        help="a run during which the rest of the machine spent more than this is disturbed: it is kept in --out, "
        "left out of the summary, and run again (twice at most)",
    )
    args = parser.parse_args()
    cases = orjson.loads(args.plan.read_bytes())
    runs: dict[str, list[dict[str, Any]]] = {case["name"]: [] for case in cases}
    with args.out.open("ab") as out:
        for round_ in range(args.rounds):
            for i in range(len(cases)):
                case = cases[(i + round_) % len(cases)]
                for attempt in range(3):
                    waited, busy = wait_quiet(args.quiet_cores, 2.0, args.max_wait)
                    record = {"case": case["name"], "round": round_, "attempt": attempt}
                    record |= {"waited_s": waited, "busy_before": busy} | run_case(case, args.timeout)
                    record["disturbed"] = record["others_cores"] > args.disturbed_cores or record["result"] is None
                    wanted = case["metrics"].items()
                    record["metrics"] = {label: _value(record["result"], path) for label, path in wanted}
                    out.write(orjson.dumps(record) + b"\n")
                    out.flush()
                    print(
                        f"round {round_} {case['name']}: {record['metrics']} others={record['others_cores']}"
                        + (" (disturbed)" if record["disturbed"] else ""),
                        file=sys.stderr,
                    )
                    if not record["disturbed"]:
                        runs[case["name"]].append(record)
                        break
    summary = {}
    for name, records in runs.items():
        metrics: dict[str, Any] = {}
        for label in records[0]["metrics"] if records else ():
            values = [r["metrics"][label] for r in records if isinstance(r["metrics"][label], int | float)]
            metrics[label] = {"median": statistics.median(values) if values else None, "runs": values}
        summary[name] = {"metrics": metrics, "others_cores": [r["others_cores"] for r in records]}
    # (runs left out as disturbed are in --out, with "disturbed": true)
    print(orjson.dumps({"bench": "interleave", "rounds": args.rounds, "cases": summary}).decode())


if __name__ == "__main__":
    main()
