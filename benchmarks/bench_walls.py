"""What each wall of issue 15 costs, measured side by side in one run.

Each pair below differs by one wall and nothing else; subjects are interleaved (every round
runs each once, in a shuffled order), so drift in the machine's load hits both alike:

- seccomp: a bare ``bwrap ... python3 -I -S -c pass`` with and without ``--seccomp FD``
  (sandlot's filter, from a fresh memory file as each sandbox gets it);
- user namespace: that bwrap joining a prepared namespace (``--userns``), as sandlot does;
  making one (done ahead of need, in a background thread) is timed on its own;
- agent walls: ``python3 -I -S`` raising the agent's walls (non-dumpable, the Landlock
  thread) against ``python3 -I -S -c pass``;
- sandlot end to end: create + ``run("true")`` + kill, and a warm ``run("true")``, against
  the floors issue 15 names (the bare bwrap above; ``subprocess.run(["true"])``).

The workspace quota's cost is measured by ``bench_quota.py``.

    python benchmarks/bench_walls.py            # ~1 minute; writes results/walls-<date>.{md,json}
    python benchmarks/bench_walls.py --quick --no-write
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import dataclass, field

import _common as c

c.fresh_sandlot_home("sl-bench-walls-")

import sandlot  # noqa: E402
from sandlot.providers import agent_files, seccomp, userns  # noqa: E402

PYTHON = "/usr/bin/python3"
BARE = [
    "bwrap", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
    "--proc", "/proc", "--dev", "/dev", "--unshare-pid", "--unshare-net", "--unshare-ipc",
    "--unshare-uts", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
]  # fmt: skip
PASS = [PYTHON, "-I", "-S", "-c", "pass"]
WALLS = (
    "import sys; sys.path[:0] = [{root!r}]; import agent.walls as w; "
    "w.setup(['/workspace', '/tmp', '/dev/shm', '/dev']); "
    "assert not w.report()['dumpable'], w.report()"
)


@dataclass
class Row(c.Sampled):
    section: str
    subject: str
    unit: str = "ms"
    baseline: str | None = None
    target: str = ""
    limit: float | None = None  # the p50 ratio to the baseline the target allows
    samples: list[float] = field(default_factory=list)
    ratio: float | None = None
    ok: bool | None = None


def timed(fn: object) -> float:
    t = c.now()
    fn()  # type: ignore[operator]
    return (c.now() - t) * 1000


def run(argv: list[str], fds: tuple[int, ...] = ()) -> None:
    subprocess.run(argv, check=True, pass_fds=fds)


def bwrap_with_seccomp() -> None:
    fd = seccomp.memfd()
    try:
        run([BARE[0], "--seccomp", str(fd), *BARE[1:], "--", *PASS], (fd,))
    finally:
        os.close(fd)


def bwrap_in_namespace() -> None:
    ns = userns.create(1000, 1000)
    try:
        argv = [BARE[0], "--userns", str(ns.fd), "--uid", "1000", "--gid", "1000", *BARE[1:]]
        run([*argv, "--", *PASS], (ns.fd,))
    finally:
        os.close(ns.fd)


def main() -> None:
    p = c.new_parser(__doc__ or "")
    c.add_run_options(p)
    p.add_argument("--rounds", type=int, default=60)
    args = p.parse_args()
    rounds = 5 if args.quick else args.rounds
    started, load0 = c.now(), os.getloadavg()[0]
    results = c.Results()
    root = str(agent_files.prepare(c.Path(os.environ["SANDLOT_HOME"]), PYTHON))
    seccomp.program()
    floor = "floor: bare bwrap, python3 -I -S -c pass"
    subjects = {
        ("walls", floor): lambda: run([*BARE, "--", *PASS]),
        ("walls", "bare bwrap + sandlot's seccomp filter (--seccomp FD)"): bwrap_with_seccomp,
        ("walls", "bare bwrap + a user namespace of its own (made, then joined)"): (
            bwrap_in_namespace
        ),
        ("walls", "making that user namespace (background, off the start path)"): lambda: os.close(
            userns.create(1000, 1000).fd
        ),
        ("agent", "python3 -I -S -c pass"): lambda: run(PASS),
        ("agent", "python3 -I -S raising the agent's walls"): lambda: run(
            [PYTHON, "-I", "-S", "-c", WALLS.format(root=root)]
        ),
    }
    rows = {key: results.add(Row(*key)) for key in subjects}
    for key in c.shuffled_rounds(random.Random(args.seed), list(subjects), rounds):
        rows[key].samples.append(timed(subjects[key]))

    # sandlot end to end, against the floors the issue names
    with sandlot.Sandbox.create() as warm_up:
        warm_up.commands.run("true")
    cold = results.add(Row("sandlot", "sandlot: create + run('true') + kill", baseline=floor))
    cold.target, cold.limit = "p50 <= 1.5x bare bwrap", 1.5
    true_floor = results.add(Row("sandlot", "floor: subprocess.run(['true'])"))
    warm = results.add(Row("sandlot", "sandlot: sb.commands.run('true')"))
    warm.baseline, warm.target, warm.limit = true_floor.subject, "p50 <= 1.5x true", 1.5
    bare = results.add(Row("sandlot", floor + " (this section)"))
    cold.baseline = bare.subject

    def cold_start() -> None:
        with sandlot.Sandbox.create() as sb:
            sb.commands.run("true")

    with sandlot.Sandbox.create() as sb:
        sb.commands.run("true")
        pairs = {
            cold.subject: cold_start,
            bare.subject: lambda: run([*BARE, "--", *PASS]),
            warm.subject: lambda: sb.commands.run("true"),
            true_floor.subject: lambda: subprocess.run(["true"]),
        }
        by_subject = {r.subject: r for r in (cold, bare, warm, true_floor)}
        for subject in c.shuffled_rounds(random.Random(args.seed), list(pairs), rounds):
            by_subject[subject].samples.append(timed(pairs[subject]))

    for row in results.rows:
        base = next((r for r in results.rows if r.subject == row.baseline), None)
        if (
            row.baseline is None
            and row.section in ("walls", "agent")
            and row.subject
            not in (
                floor,
                "python3 -I -S -c pass",
            )
        ):
            base = rows[(row.section, floor if row.section == "walls" else "python3 -I -S -c pass")]
            row.baseline = base.subject
        if base is not None and row.p50 and base.p50:
            row.ratio = row.p50 / base.p50
            if row.limit is not None:
                row.ok = row.ratio <= row.limit
    meta = c.run_meta(
        "bench_walls.py",
        None,
        started,
        load0,
        c.git_commit(),
        c.base_versions(),
        vars(args) | {"out": str(args.out)},
    )
    layout = c.Layout(
        title="sandlot walls benchmarks",
        stem="walls",
        headers=[
            "section",
            "subject",
            "p50",
            "p99",
            "n",
            "vs baseline (p50)",
            "cost",
            "target",
            "verdict",
        ],
        cells=lambda r: [
            r.section,
            r.subject,
            f"{r.p50:.2f}" if r.p50 is not None else "-",
            f"{r.p99:.2f}" if r.p99 is not None else "-",
            str(r.n),
            f"{r.ratio:.2f}x" if r.ratio is not None else "-",
            _cost(r, results),
            r.target,
            c.verdict(r),
        ],
        targets=["section", "subject", "p50", "vs baseline (p50)", "target", "verdict"],
        targets_heading="Targets (issue 15)",
        reading="times in ms, p50 and p99 over n interleaved samples; a wall's cost is its "
        "row's p50 minus its baseline's, both from this run",
        how_to_run=["python benchmarks/bench_walls.py", "python benchmarks/bench_walls.py --quick"],
    )
    c.report(results, meta, args, layout)


def _cost(row: Row, results: c.Results) -> str:
    base = next((r for r in results.rows if r.subject == row.baseline), None)
    if base is None or row.p50 is None or base.p50 is None:
        return "-"
    return f"{row.p50 - base.p50:+.2f} ms"


if __name__ == "__main__":
    sys.exit(main())
