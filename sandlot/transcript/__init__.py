"""The transcript: each session's ordered event log, the hub that writes and fans it out, and
the recorder of runs, the same for embedded sessions and a server (the core: no front here).

- :mod:`.eventlog`: the log in the database, gapless sequence numbers;
- :mod:`.logwriter`: the hot path of an append, with the execution records it implies;
- :mod:`.hub`: group-committed appends, live followers, the database's one writer thread;
- :mod:`.recorder`: one run's frames into the log (masking, caps, the run lock's end);
- :mod:`.runs`: runs pumped by a task of their own (a server's executions).

Nothing is imported here: the modules need the database extras (SQLAlchemy).
"""
