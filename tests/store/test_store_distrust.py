"""A copy whose fsync failed is never opened again as it is (issue 11, item 4).

The failure is injected for real in a child process: ``os.fdatasync`` raises EIO on the
log's write of one batch, and the service must stop (exit 70) after marking its directory
untrusted. The record whose fsync failed is still in the page cache (the simulation
cannot drop it, which is exactly the danger): reopening in the same boot is refused, by
the service and by ``tokpay serve``; after a reboot (another boot id) the operator opens
what the disk holds, and every acknowledged transfer is there.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.orders import ids_on, pay
from tests.support.services import apply_orders
from tokpay.actors.replicated_service import STOP_EXIT_CODE
from tokpay.actors.shard import ShardService
from tokpay.wal import distrust as distrust_module
from tokpay.wal.distrust import UNTRUSTED_FILE, UntrustedCopy, trust_after_reboot

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import errno, os, sys
    from pathlib import Path

    from tests.support.orders import ids_on, pay, topup
    from tests.support.services import apply_orders, create_accounts
    from tokpay.actors.shard import ShardService

    service = ShardService(0, 2, Path(sys.argv[1]))
    users = ids_on(0, 2, 3, "eio")
    create_accounts(service, users)
    apply_orders(service, [topup(u, 100, id=f"top-{u}", shard_count=2) for u in users])
    apply_orders(service, [pay(users[0], [(users[1], 7)], id="acked")])
    print("acked", flush=True)

    def failing_fdatasync(fd):
        raise OSError(errno.EIO, "injected: fdatasync failed")

    os.fdatasync = failing_fdatasync
    apply_orders(service, [pay(users[0], [(users[2], 5)], id="phantom")])
    print("not reached: a failed fsync must stop the service", flush=True)
    """
)


def crash_on_eio(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(data_dir)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_failed_fsync_marks_the_copy_and_it_is_not_reopened_in_the_same_boot(
    tmp_path: Path,
) -> None:
    child = crash_on_eio(tmp_path)
    assert child.returncode == STOP_EXIT_CODE, child.stderr
    assert "acked" in child.stdout and "not reached" not in child.stdout
    marker = tmp_path / "shard-0" / UNTRUSTED_FILE
    assert marker.exists()
    assert "fdatasync failed" in marker.read_text()
    with pytest.raises(UntrustedCopy, match="has not rebooted"):
        ShardService(0, 2, tmp_path)
    with pytest.raises(UntrustedCopy, match="has not rebooted"):
        trust_after_reboot(tmp_path / "shard-0")
    assert marker.exists()


def test_tokpay_serve_refuses_an_untrusted_copy_and_says_what_to_do(tmp_path: Path) -> None:
    assert crash_on_eio(tmp_path).returncode == STOP_EXIT_CODE
    serve = subprocess.run(
        [sys.executable, "-m", "tokpay.cli", "serve", "--data-dir", str(tmp_path), "--shards", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert serve.returncode == 2
    said = " ".join(serve.stderr.split())
    assert "a write or fsync failed here" in said and "reboot" in said
    retried = subprocess.run(
        [sys.executable, "-m", "tokpay.cli", "serve", "--data-dir", str(tmp_path), "--shards", "2",
         "--trust-after-reboot"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert retried.returncode == 2, "the same boot: the flag must not open it"


def test_after_a_reboot_the_operator_opens_what_the_disk_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert crash_on_eio(tmp_path).returncode == STOP_EXIT_CODE
    rebooted = tmp_path / "boot_id"
    rebooted.write_text("another-boot\n")
    monkeypatch.setattr(distrust_module, "BOOT_ID_PATH", rebooted)
    assert trust_after_reboot(tmp_path / "shard-0")
    service = ShardService(0, 2, tmp_path)
    assert service.ledger.transfer("acked") is not None
    service.check_invariants()
    users = ids_on(0, 2, 3, "eio")
    # The ledger goes on: a new transfer commits and is durable.
    apply_orders(service, [pay(users[1], [(users[2], 1)], id="after")])
    service.close()
    reopened = ShardService(0, 2, tmp_path)
    assert reopened.ledger.transfer("after") is not None
    reopened.close()


def test_a_failed_fsync_in_a_backup_log_marks_it_too(tmp_path: Path) -> None:
    """The marker is written whatever the failing file: its errno is kept as the reason."""
    root = tmp_path / "copy"
    root.mkdir()
    distrust_module.distrust(root, f"backup log write failed: {OSError(errno.EIO, 'x')!r}")
    with pytest.raises(UntrustedCopy, match="backup log write failed"):
        distrust_module.check_trusted(root)
