"""Process sessions: start a command as the leader of a session of its own, find every
live process of a session, stop or SIGKILL all of them, and read the session's log.

A session stands for a machine: SIGKILL of every process in it is "the machine died",
and nothing else on this machine is touched. A session is recorded by its leader's pid
and start time, so a pid the kernel has since handed to another process is never
taken for it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TypedDict

from tokpay.cluster.errors import ClusterError

STOP_GRACE_SECONDS = 15.0
KILL_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.25
LOG_TAIL_CHARS = 3000


class ProcessRecord(TypedDict):
    pid: int | None
    """Session leader; every process of the session has this session id."""
    pid_start: int | None
    """The leader's start time (/proc clock ticks), so a reused pid is never taken for it."""
    argv: list[str]
    log: str


def session_pids(sid: int) -> list[int]:
    """Every live process in session ``sid``.

    Zombies are left out: they are dead, cannot be killed again, and stay until their
    parent (perhaps another process that started them) reaps them.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == sid and not _is_zombie(entry):
                pids.append(int(entry.name))
        except (ProcessLookupError, PermissionError):
            continue
    return pids


def _is_zombie(proc_entry: Path) -> bool:
    try:
        stat = (proc_entry / "stat").read_text()
    except OSError:
        return True  # gone since it was listed
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat[stat.rindex(")") + 2] in "ZX"


def kill_session_pids(sid: int, deadline: float) -> None:
    """SIGKILL every process of session ``sid`` until none is left or ``deadline`` passes."""
    while pids := session_pids(sid):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise ClusterError(f"processes {pids} of session {sid} survive SIGKILL")
        time.sleep(0.05)


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot); None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    # Field 22 of the stat line; fields[0] here is field 3 (the state).
    return int(fields[19])


def launch(
    name: str, record: ProcessRecord, env: dict[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    """Start ``record['argv']`` as the leader of a new session, appending to its log;
    record its pid and start time."""
    with Path(record["log"]).open("ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {record['argv']}\n".encode())
        log.flush()
        process = subprocess.Popen(
            record["argv"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    record["pid"] = process.pid
    record["pid_start"] = start_ticks(process.pid)
    if record["pid_start"] is None:
        process.wait()
        raise ClusterError(f"{name} exited at once:\n{log_tail(record)}")
    return process


def session_members(record: ProcessRecord) -> list[int]:
    pid, pid_start = record["pid"], record["pid_start"]
    if pid is None:
        return []
    current = start_ticks(pid)
    if current is not None and current != pid_start:
        # The pid names another process now. Linux never hands out a pid that is still
        # some session's id, so no process of the recorded session is left.
        return []
    return session_pids(pid)


def session_running(record: ProcessRecord) -> bool:
    return bool(session_members(record))


def kill_session(record: ProcessRecord) -> None:
    """SIGKILL every process of the recorded session (the machine died)."""
    pid = record["pid"]
    if pid is None or not session_running(record):
        _reap_if_child(pid)
        return
    kill_session_pids(pid, time.monotonic() + KILL_TIMEOUT_SECONDS)
    _reap_if_child(pid)


def _reap_if_child(pid: int | None) -> None:
    """Collect a dead session leader if it is a child of this process (maybe started by
    another object here), so no zombie of it stays behind."""
    if pid is None:
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_sessions(records: list[ProcessRecord]) -> None:
    """SIGTERM each session's leader, give them all a grace period, SIGKILL the rest."""
    running = [record for record in records if session_running(record)]
    for record in running:
        pid = record["pid"]
        if pid is not None and start_ticks(pid) == record["pid_start"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while any(session_running(r) for r in running) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    for record in running:
        kill_session(record)


def log_tail(record: ProcessRecord) -> str:
    try:
        return Path(record["log"]).read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError as error:
        return f"(no log: {error})"


def log_size(record: ProcessRecord) -> int:
    try:
        return Path(record["log"]).stat().st_size
    except FileNotFoundError:
        return 0


def log_since(record: ProcessRecord, offset: int) -> str:
    with Path(record["log"]).open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")
