#!/usr/bin/env python
"""Persistence cost of code contexts, side by side with persistence off, in one sandbox.

Sections:

  small    a namespace of 1,000 small values (ints, floats, short strings, tuples, small lists
           and dicts), then the cell ``x += 1``: a persistent context vs a plain one holding the
           same values. Target: persistence adds at most 5 ms per cell (p50 difference).
  big      the same cell with a 100 MB value in the namespace, which persistence skips (over
           the 16 MiB cap): ``bytes`` (skipped by its length) and a list of 100 one-MiB
           ``bytes`` (skipped when the bounded writer passes the cap). Target: the skip adds
           under 50 ms per cell.
  store    ``Store.save`` timed inside /usr/bin/python3 (the agent's code and its shipped
           cloudpickle, no sandbox): the same namespaces, no IPC noise.

Subjects are interleaved (every round runs each once, forwards then backwards) so the
machine's noise hits them alike.

    python benchmarks/bench_persist.py              # under a minute
    python benchmarks/bench_persist.py --rounds 200 --no-write

Results: a table on the terminal, and benchmarks/results/persist-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, when not run as a script
from _common import fresh_sandlot_home, interleaved, percentile

HOME = fresh_sandlot_home("sandlot-bench-persist-")  # before sandlot is imported

import sandlot  # noqa: E402
from sandlot.providers import agent_files  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SMALL = (
    "for _i in range(1000):\n"
    "    _k = _i % 6\n"
    "    globals()['v%d' % _i] = (_i, _i * 0.5, 'text %d' % _i, (_i, 'a'), [_i, _i + 1],"
    " {'k': _i})[_k]\n"
    "x = 0\n"
)
BIG = {
    "bytes": "big = b'x' * (100 * 1000 * 1000)\n",
    "list of 1 MiB bytes": "big = [bytes([_i]) * (1 << 20) for _i in range(96)]\n",
}
CELL = "x += 1"
TARGETS = {"small": 5.0, "big": 50.0}

STORE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from agent import persist
ns = {"__name__": "__main__"}
exec(sys.argv[3], ns)
store = persist.Store(sys.argv[2])
samples = []
for _ in range(int(sys.argv[4])):
    ns["x"] += 1
    started = time.perf_counter()
    skipped = store.save(ns, frozenset())
    samples.append(time.perf_counter() - started)
print(json.dumps({"library": store.library, "samples": samples, "skipped": sorted(store.reported)}))
"""


def ms(samples: list[float], q: float) -> float:
    return percentile(samples, q) * 1000


def cells(rounds: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with sandlot.Sandbox.create(timeout=900, idle_timeout=900) as box:
        scenarios = {"small": SMALL, **{f"big: {k}": SMALL + v for k, v in BIG.items()}}
        for label, setup in scenarios.items():
            on = box.create_code_context(persist=True, name="bench")
            off = box.create_code_context()
            for ctx in (on, off):
                ex = box.run_code(setup, context=ctx)
                assert ex.error is None, ex.error
                if ctx is on:  # skipped (and reported) once, at the setup cell
                    assert set(ex.not_persisted) == ({"big"} if "big" in label else set())
            samples = interleaved(
                {
                    "on": lambda c=on: _timed(box, c),  # type: ignore[misc]
                    "off": lambda c=off: _timed(box, c),  # type: ignore[misc]
                },
                rounds=rounds,
                warmup=5,
            )
            target = TARGETS["big" if label.startswith("big") else "small"]
            added = ms(samples["on"], 50) - ms(samples["off"], 50)
            rows.append(
                {
                    "section": "cell",
                    "subject": label,
                    "on_p50_ms": ms(samples["on"], 50),
                    "off_p50_ms": ms(samples["off"], 50),
                    "on_p90_ms": ms(samples["on"], 90),
                    "off_p90_ms": ms(samples["off"], 90),
                    "added_p50_ms": added,
                    "target_ms": target,
                    "ok": added <= target,
                    "n": rounds,
                }
            )
            for ctx in (on, off):
                box.remove_code_context(ctx)
            box.commands.run("rm -f /workspace/.sandlot/contexts/bench.pickle")
    return rows


def _timed(box: sandlot.Sandbox, ctx: sandlot.CodeContext) -> float:
    started = time.perf_counter()
    ex = box.run_code(CELL, context=ctx)
    elapsed = time.perf_counter() - started
    assert ex.error is None, ex.error
    return elapsed


def store(rounds: int) -> list[dict[str, object]]:
    root = agent_files.prepare(HOME, "/usr/bin/python3")
    rows: list[dict[str, object]] = []
    scenarios = {"small": SMALL, **{f"big: {k}": SMALL + v for k, v in BIG.items()}}
    for label, setup in scenarios.items():
        out = subprocess.run(
            [
                "/usr/bin/python3",
                "-c",
                STORE,
                str(root),
                str(HOME / "store.pickle"),
                setup,
                str(rounds),
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise SystemExit(f"the store benchmark failed: {out.stderr}")
        found = json.loads(out.stdout)
        samples = found["samples"][5:]
        target = TARGETS["big" if label.startswith("big") else "small"]
        rows.append(
            {
                "section": "store",
                "subject": f"{label} ({found['library']})",
                "save_p50_ms": ms(samples, 50),
                "save_p90_ms": ms(samples, 90),
                "target_ms": target,
                "ok": ms(samples, 50) <= target,
                "skipped": found["skipped"],
                "n": len(samples),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--sections", default="cell,store")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    sections = args.sections.split(",")
    if "store" in sections:
        rows += store(args.rounds)
    if "cell" in sections:
        rows += cells(args.rounds)
    lines = ["| section | subject | figures (ms) | target | ok |", "|---|---|---|---|---|"]
    for row in rows:
        figures = ", ".join(
            f"{k[:-3]} {v:.2f}" for k, v in row.items() if k.endswith("_ms") and k != "target_ms"
        )
        lines.append(
            f"| {row['section']} | {row['subject']} | {figures} | <= {row['target_ms']} ms "
            f"| {'yes' if row['ok'] else 'NO'} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        stamp = time.strftime("%Y-%m-%d", time.gmtime())
        (RESULTS / f"persist-{stamp}.md").write_text(f"# bench_persist {stamp}\n\n{table}\n")
        (RESULTS / f"persist-{stamp}.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
