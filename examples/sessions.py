"""A durable session, end to end on this machine: work that outlives its sandboxes, a second
process that picks it up, a run that holds the session, and the transcript of all of it.

    python examples/sessions.py
"""

from __future__ import annotations

import subprocess
import sys
import time

import sandlot

s = sandlot.Session.create(metadata={"example": "sessions"})
print(f"session {s.id}, workspace store: {s.info.workspace}")

# 1. A sandbox attached to the session: work in /workspace and in a persistent code context.
with s.sandbox() as sb:
    sb.commands.run("mkdir -p /workspace/notes && echo 'first draft' > /workspace/notes/a.txt")
    ctx = sb.create_code_context(name="main", persist=True)
    sb.run_code("totals = {'runs': 1}", context=ctx)
    first = sb.id
print(f"detached from {first}: its workspace was checkpointed, the sandbox destroyed")

# 2. Another process connects to the session by id and carries on in a fresh sandbox.
other = f"""
import sandlot
s = sandlot.Session.connect({s.id!r})
with s.sandbox() as sb:
    print("  the other process reads:", sb.files.read("/workspace/notes/a.txt").strip())
    ctx = sb.create_code_context(name="main", persist=True)
    sb.run_code("totals['runs'] += 1", context=ctx)
    sb.commands.run("echo 'second draft' >> /workspace/notes/a.txt")
"""
subprocess.run([sys.executable, "-c", other], check=True)

# 3. One run at a time: a second caller is told who holds the session.
with s.sandbox() as sb:
    print("back here:", sb.files.read("/workspace/notes/a.txt").split("\n")[:2])
    ctx = sb.create_code_context(name="main", persist=True)
    print("code state:", sb.run_code("totals", context=ctx).text)
    handle = sb.commands.run("sleep 1.5; echo slow", background=True, timeout=10)
    time.sleep(0.3)
    shared = sandlot.Session.connect(s.id).sandbox(reuse=True)
    try:
        shared.commands.run("echo hi")  # a background command with a time limit is a run
    except sandlot.SessionBusyError as exc:
        print(f"busy: {exc.details['holder']} holds it ({exc.details['execution']})")
    handle.wait()
    shared.commands.run("echo now it is free")
    sandlot.Session.connect(s.id).detach(shared, stop=False)

# 4. The transcript: every sandbox, every run, every checkpoint, in order.
print("transcript:")
for event in s.events():
    if event.kind in ("stdout", "stderr"):
        print(f"  {event.seq:>3} {event.kind:<10} {event.text.rstrip()}")
    elif event.kind in ("sandbox", "checkpoint"):
        what = f"{event.data['event']} {event.data.get('sandbox', '')}"
        print(f"  {event.seq:>3} {event.kind:<10} {what}")
    else:
        print(f"  {event.seq:>3} {event.kind}")
s.delete()
print("deleted: its checkpoints and transcript are gone")
