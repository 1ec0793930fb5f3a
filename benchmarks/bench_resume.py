"""What recording a command's place in its agent's output log costs an append (issue 18).

Every batch of a command's output stores where the command stands in the agent's log (the
session's ``resume``), so a restarted server re-attaches from there. It rides on the UPDATE of
the session's row that every append makes anyway. This times ``LogWriter.append`` of one
output event, with and without a place, interleaved append by append (so a busy machine
slows both alike), on SQLite in a temporary folder.

    python benchmarks/bench_resume.py [--appends 20000] [--bytes 1024]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import percentile

from sandlot.store.database import Database, sqlite_url
from sandlot.store.keys import LOCAL_TENANT, Keys
from sandlot.store.records import ExecutionRecord, Records
from sandlot.transcript.eventlog import EventLog
from sandlot.transcript.logwriter import LogWriter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=20000)
    parser.add_argument("--bytes", type=int, default=1024)
    args = parser.parse_args()
    db = Database(sqlite_url(Path(tempfile.mkdtemp(prefix="bench-resume-"))))
    db.migrate()
    Keys(db).ensure_tenant(LOCAL_TENANT)
    records = Records(db)
    writer = LogWriter(db, EventLog(db), records)
    modes = ("without a place", "with a place")
    sessions = {}
    for n, mode in enumerate(modes):
        session = records.create_session(LOCAL_TENANT, {}).id
        record = ExecutionRecord(id=f"ex-{n}", session_id=session, sandbox_id="sb", kind="command")
        writer.append(session, [(record.id, "started", b"{}")], [record])
        sessions[mode] = (session, record.id)
    data = b"x" * args.bytes
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for i in range(args.appends):
        mode = modes[i % len(modes)]
        session, execution = sessions[mode]
        item = [(execution, "stdout", data)]
        started = time.perf_counter()
        if mode == modes[0]:
            writer.append(session, item)
        else:
            writer.append(session, item, (), {execution: (i, i, 0)})
        times[mode].append(time.perf_counter() - started)
    base = percentile(times[modes[0]], 50)
    print(f"LogWriter.append of one {args.bytes}-byte output event, SQLite, {args.appends} appends")
    print(f"{'':20} {'p10 us':>8} {'p50 us':>8} {'p50 vs without':>15}")
    for mode in modes:
        p10, p50 = percentile(times[mode], 10), percentile(times[mode], 50)
        print(f"{mode:20} {p10 * 1e6:8.1f} {p50 * 1e6:8.1f} {p50 / base:14.2f}x")
    writer.close()
    db.close()


if __name__ == "__main__":
    main()
