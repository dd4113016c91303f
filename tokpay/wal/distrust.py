"""A copy whose fsync failed is never trusted again by the process that saw it fail.

After a failed fsync Linux may mark the dirty pages clean and drop them later: the file
then reads back the record whose fsync failed (from the page cache) until the machine
reboots, when it is gone. Reopening such a log in the same boot would serve a record that
may vanish, and a client's retry would find its transfer and be told it is done. So
before a replica stops after a failed write or fsync it leaves ``UNTRUSTED.json`` in its
directory (with the boot it happened in), and nothing opens that directory again:

- a cluster replica is rebuilt from its peer (a backup's install wipes its directory; a
  primary that cannot open fails over to its backup, which holds every acknowledged
  record because a record is shipped before the primary writes it);
- the single node refuses to start until an operator acts: after a reboot (a new boot id,
  so the page cache no longer holds what the disk lost) ``tokpay serve --trust-after-reboot``
  opens what the disk holds. Nothing acknowledged is lost by that: a record is
  acknowledged only after its fsync succeeded, and the process stopped at the first failure.

PostgreSQL's answer to the same problem is to panic and replay its WAL from the last
checkpoint. That is enough when the WAL's own fsyncs succeeded and the data files failed;
here the failing file is the log itself, so replaying it in the same boot would replay the
phantom record too.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from tokpay.wal._files import fsync_directory

UNTRUSTED_FILE = "UNTRUSTED.json"
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


class UntrustedCopy(Exception):
    """This directory's copy saw a failed write or fsync; it must not be opened as it is."""


def boot_id() -> str:
    """This boot of the machine (changes at every reboot)."""
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        return ""


def distrust(root: Path, reason: str) -> None:
    """Mark ``root`` untrusted before the process stops. Best effort: if the disk refuses
    even this, the process still stops, and a replica whose log cannot be written is
    rebuilt or failed over by the controller anyway."""
    record = {"reason": reason, "at": time.time(), "boot_id": boot_id(), "pid": os.getpid()}
    with contextlib.suppress(OSError):
        path = root / UNTRUSTED_FILE
        with open(path, "w") as out:
            json.dump(record, out)
            out.flush()
            os.fsync(out.fileno())
        fsync_directory(root)


def check_trusted(root: Path) -> None:
    """Raise ``UntrustedCopy`` with what to do if ``root`` was marked untrusted."""
    path = root / UNTRUSTED_FILE
    if not path.exists():
        return
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("at", 0)))
    same_boot = record.get("boot_id") == boot_id()
    raise UntrustedCopy(
        f"{root}: a write or fsync failed here at {when} ({record.get('reason', 'unknown')}); "
        "this copy may read back records that never reached the disk"
        + (
            ". The machine has not rebooted since: reboot it (or rebuild this copy from its "
            "peer) before this directory is used again."
            if same_boot
            else ". The machine has rebooted since, so the disk now says what it holds: after "
            "checking the disk, start with --trust-after-reboot to open it."
        )
    )


def trust_after_reboot(root: Path) -> bool:
    """Clear the mark if the machine rebooted since it was made; True if cleared.
    Raises ``UntrustedCopy`` if it is the same boot."""
    path = root / UNTRUSTED_FILE
    if not path.exists():
        return False
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    if record.get("boot_id") == boot_id():
        check_trusted(root)
    path.unlink()
    return True
