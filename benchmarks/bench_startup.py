"""How fast sandlot starts (issue 17), side by side with Python's own start and Docker's.

Every subject is a fresh process, timed from spawn to exit; subjects are interleaved (every
round runs each once, in a shuffled order), so drift in the machine's load hits all alike:

- ``python -c pass``: the floor every other row is compared with;
- ``python -c "import sandlot"`` and ``python -c "from sandlot import Sandbox"``;
- ``sandlot --help`` and ``sandlot run -- true`` (the console script next to this Python, not
  a shim in front of it such as pyenv's);
- ``docker run --rm --network none IMAGE true`` (skipped, with a note, without Docker);
- the first and the tenth ``Sandbox.create()`` of a new process (each round one process that
  imports the SDK, then creates and kills ten sandboxes), in a state folder that has used
  only bwrap and in one that has used Docker too (its start-up clean-up once asked the engine).

The children use bytecode caches as an installed package does (one untimed run of each
subject writes them first, even under ``PYTHONDONTWRITEBYTECODE``) and a fresh temporary
``SANDLOT_HOME``.

    python benchmarks/bench_startup.py      # ~2 minutes; writes results/startup-<date>.{md,json}
    python benchmarks/bench_startup.py --runs 5 --no-write
    python benchmarks/bench_startup.py --baseline /tmp/old   # + every sandlot row of a checkout
                                                             # of another commit, interleaved
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import _common as c

CREATES = 10  # sandboxes created in each first-vs-tenth process


@dataclass
class Row(c.Sampled):
    section: str
    subject: str
    unit: str = "ms"
    target: str = ""
    note: str = ""
    skipped: bool = False
    samples: list[float] = field(default_factory=list)
    over_floor: float | None = None  # p50 minus python -c pass's p50
    ratio: float | None = None  # p50 against the row's comparison (see the target)
    ok: bool | None = None
    QUANTILES = (50, 90)


def create_worker() -> int:
    """In a child: import the SDK (as a program that creates sandboxes has), then create and
    kill CREATES sandboxes; print each create's milliseconds as JSON."""
    from sandlot import Sandbox

    times = []
    for _ in range(CREATES):
        start = time.perf_counter()
        sb = Sandbox.create()
        times.append((time.perf_counter() - start) * 1000)
        sb.kill()
    print(json.dumps(times))
    return 0


def sandlot_script() -> list[str]:
    """The ``sandlot`` console script of this Python (pip puts it beside the interpreter);
    else the CLI's entry point run by this Python."""
    script = Path(sys.executable).parent / "sandlot"
    if script.is_file():
        return [str(script)]
    entry = "import sys; from sandlot.cli import main; sys.argv[0] = 'sandlot'; sys.exit(main())"
    return [sys.executable, "-c", entry]


def docker_image(wanted: str | None) -> tuple[str | None, str]:
    """The image to run (``wanted``, else sandlot-bench:bookworm, else the first local one),
    or None and why not."""
    if shutil.which("docker") is None:
        return None, "docker is not installed"
    out = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return None, f"docker is not usable: {out.stderr.strip()[:200]}"
    local = [i for i in out.stdout.split() if "<none>" not in i]
    for image in [wanted] if wanted else ["sandlot-bench:bookworm", *local]:
        if image in local:
            return image, ""
    return None, f"no local image {wanted!r}" if wanted else "no local Docker image"


NEUTRAL = "/"  # the children's working folder: `python -c` puts it first on sys.path


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = c.now()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=NEUTRAL)
    return (c.now() - start) * 1000


def main() -> int:
    p = c.new_parser(__doc__ or "")
    c.add_run_options(p)
    p.add_argument("--runs", type=int, default=20, help="runs of each subject (default 20)")
    p.add_argument("--image", help="the image for docker run (default: see above)")
    p.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of another commit: its sandlot rows measured too, in the same rounds",
    )
    p.add_argument("--create-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.create_worker:
        return create_worker()
    runs = 3 if args.quick else args.runs
    started, load0 = c.now(), os.getloadavg()[0]
    results = c.Results()
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["SANDLOT_HOME"] = str(c.fresh_sandlot_home("sl-bench-startup-"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(c.REPO), env.get("PYTHONPATH")]))
    docker_used = c.fresh_sandlot_home("sl-bench-startup-docker-")
    (docker_used / "providers-used").mkdir()
    (docker_used / "providers-used" / "docker").touch()
    os.environ.pop("SANDLOT_HOME")  # this process runs no sandbox

    cli = sandlot_script()
    floor = "python -c pass"
    commands: dict[tuple[str, str], list[str]] = {
        ("python", floor): [py, "-c", "pass"],
        ("import", "python -c 'import sandlot'"): [py, "-c", "import sandlot"],
        ("import", "python -c 'from sandlot import Sandbox'"): [
            py,
            "-c",
            "from sandlot import Sandbox",
        ],
        ("cli", "sandlot --help"): [*cli, "--help"],
        ("cli", "sandlot run -- true"): [*cli, "run", "--", "true"],
    }
    envs = {key: env for key in commands}
    if args.baseline is not None:  # the same sandlot subjects, run from the other checkout
        before = env | {"PYTHONPATH": str(args.baseline.resolve())}
        for (section, subject), argv in list(commands.items()):
            if section != "python":
                key = (section, f"{subject}, baseline")
                commands[key], envs[key] = argv, before  # PYTHONPATH wins over the install
    image, why = docker_image(args.image)
    docker = f"docker run --rm --network none {image or 'IMAGE'} true"
    if image is not None:
        commands[("cli", docker)] = ["docker", "run", "--rm", "--network", "none", image, "true"]
        envs[("cli", docker)] = env
    rows = {key: results.add(Row(*key)) for key in commands}
    if image is None:
        results.add(Row("cli", docker, skipped=True, note=why))
    worker = [py, str(Path(__file__).resolve()), "--create-worker"]
    homes = {"bwrap only": env["SANDLOT_HOME"], "used Docker too": str(docker_used)}
    create_envs = {label: env for label in homes}
    if args.baseline is not None:  # its own state folders: the two may differ in schema
        for label in list(homes):
            other = c.fresh_sandlot_home("sl-bench-startup-base-")
            if label == "used Docker too":
                (other / "providers-used").mkdir()
                (other / "providers-used" / "docker").touch()
            homes[f"{label}, baseline"] = str(other)
            create_envs[f"{label}, baseline"] = before
    create_rows: dict[str, tuple[Row, Row]] = {}
    for label in homes:
        first = results.add(Row("create", f"first Sandbox.create() of a process ({label})"))
        tenth = results.add(Row("create", f"tenth Sandbox.create() of a process ({label})"))
        create_rows[label] = (first, tenth)

    def create_round(label: str) -> None:
        out = subprocess.run(
            worker,
            env=create_envs[label] | {"SANDLOT_HOME": homes[label]},
            capture_output=True,
            text=True,
            cwd=NEUTRAL,
        )
        first, tenth = create_rows[label]
        if out.returncode != 0:
            first.note = f"failed: {out.stderr.strip().splitlines()[-1:]}"
            return
        times = json.loads(out.stdout.strip().splitlines()[-1])
        first.samples.append(times[0])
        tenth.samples.append(times[-1])

    subjects: list[tuple[str, str]] = [*commands, *(("create", label) for label in homes)]
    for key in subjects:  # untimed: bytecode caches written, the image's layers in memory
        if key[0] == "create":
            create_round(key[1])
        else:
            subprocess.run(commands[key], env=envs[key], capture_output=True, cwd=NEUTRAL)
    for first, tenth in create_rows.values():
        first.samples.clear()
        tenth.samples.clear()
    for key in c.shuffled_rounds(random.Random(args.seed), subjects, runs):
        if key[0] == "create":
            create_round(key[1])
        else:
            rows[key].samples.append(timed(commands[key], envs[key]))

    judge(results, rows[("python", floor)], rows.get(("cli", docker)), create_rows)
    if args.baseline is not None:
        results.notes.append(
            f"baseline: the same subject run from {args.baseline} (commit "
            f"{c.git_commit(args.baseline)}), interleaved with this checkout's"
        )
    results.note_load()
    results.notes.append(f"sandlot CLI run as: {' '.join(cli)}")
    results.notes.append(
        "a process's first create loads the manager and the provider (imports, the models' "
        "first validation, pydantic's plugin scan): `from sandlot import Sandbox` does not"
    )
    meta = c.run_meta(
        "bench_startup.py",
        None,
        started,
        load0,
        c.git_commit(),
        c.base_versions() | {"docker": c.tool_version(["docker", "--version"])},
        vars(args) | {"out": str(args.out)},
    )
    c.report(results, meta, args, layout())
    return 0


def judge(
    results: c.Results, floor: Row, docker: Row | None, creates: dict[str, tuple[Row, Row]]
) -> None:
    """Each row's distance from the floor, and the issue's targets."""
    for row in results.rows:
        if row.p50 is not None and floor.p50 is not None and row.section != "create":
            row.over_floor = row.p50 - floor.p50
    limits = {
        "python -c 'import sandlot'": 100.0,
        "sandlot --help": 150.0,
        "sandlot run -- true": 200.0,
    }
    for row in results.rows:
        limit = limits.get(row.subject)
        if limit is None or row.over_floor is None:
            continue
        row.target = f"p50 <= python -c pass + {limit:g} ms"
        row.ok = row.over_floor <= limit
        if row.subject == "sandlot run -- true":
            row.target += "; < 0.5x docker run"
            if docker is not None and docker.p50:
                row.ratio = row.p50 / docker.p50 if row.p50 is not None else None
                row.ok = row.ok and row.ratio is not None and row.ratio < 0.5
            else:
                row.note = "docker run not measured: only the first target judged"
    for first, tenth in creates.values():
        first.target = "p50 <= 1.5x the tenth"
        if first.p50 is not None and tenth.p50:
            first.ratio = first.p50 / tenth.p50
            first.ok = first.ratio <= 1.5


def layout() -> c.Layout:
    def ms(value: float | None) -> str:
        return f"{value:.1f}" if value is not None else "-"

    return c.Layout(
        title="sandlot start-up benchmarks",
        stem="startup",
        headers=[
            *["section", "subject", "p50", "p90", "n", "vs python -c pass", "ratio"],
            *["target", "verdict", "note"],
        ],
        cells=lambda r: [
            r.section,
            r.subject,
            ms(r.p50),
            ms(r.p(90) if r.samples else None),
            str(r.n),
            f"{r.over_floor:+.1f} ms" if r.over_floor is not None else "-",
            f"{r.ratio:.2f}x" if r.ratio is not None else "-",
            r.target,
            c.verdict(r),
            r.note,
        ],
        targets=["section", "subject", "p50", "vs python -c pass", "ratio", "target", "verdict"],
        targets_heading="Targets (issue 17)",
        reading="times in ms from spawn to exit (create: the call alone, in its process), "
        "p50 and p90 over n interleaved runs; ratio: sandlot run against docker run, the "
        "first create against the tenth",
        how_to_run=[
            "python benchmarks/bench_startup.py",
            "python benchmarks/bench_startup.py --runs 5 --no-write",
        ],
    )


if __name__ == "__main__":
    sys.exit(main())
