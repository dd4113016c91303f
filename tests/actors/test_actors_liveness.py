"""When the controller counts a backup lost (tokpay.actors.liveness): silence alone past
BACKUP_SILENT_SECONDS, or past DEAD_AFTER_SECONDS while its primary reports trouble with
it. A backup starved for a second while its primary still hears it is not torn down
(each needless rebuild leaves the primary alone with the newest records for a while)."""

from __future__ import annotations

from tokpay.actors.liveness import Liveness
from tokpay.actors.protocol import HeartbeatReport
from tokpay.actors.timing import BACKUP_SILENT_SECONDS, DEAD_AFTER_SECONDS


def report(name: str, *, broken: bool = False, leaseless: bool = False) -> HeartbeatReport:
    return HeartbeatReport(
        name=name, epoch=3, role="primary", sequence=7, broken=broken, leaseless=leaseless
    )


def silent_for(liveness: Liveness, name: str, seconds: float) -> None:
    """``name`` was last heard ``seconds`` ago."""
    liveness.heard(HeartbeatReport(name=name, epoch=3, role="backup", sequence=7, broken=False))
    liveness.last_seen[name] -= seconds


def test_a_backup_its_primary_vouches_for_is_lost_only_after_the_longer_silence() -> None:
    liveness = Liveness()
    liveness.heard(report("p"))
    silent_for(liveness, "b", DEAD_AFTER_SECONDS + 0.3)
    assert liveness.dead("b")  # any other replica this silent would be lost
    assert not liveness.backup_lost("b", "p")
    silent_for(liveness, "b", BACKUP_SILENT_SECONDS + 0.3)
    assert liveness.backup_lost("b", "p")


def test_a_backup_is_lost_at_once_when_its_primary_reports_trouble_with_it() -> None:
    for trouble in ({"broken": True}, {"leaseless": True}):
        liveness = Liveness()
        liveness.heard(report("p", **trouble))
        silent_for(liveness, "b", DEAD_AFTER_SECONDS + 0.3)
        assert liveness.backup_lost("b", "p"), trouble
        silent_for(liveness, "b", DEAD_AFTER_SECONDS - 0.3)
        assert not liveness.backup_lost("b", "p"), trouble


def test_a_backup_whose_primary_never_reported_is_lost_after_the_short_silence() -> None:
    liveness = Liveness()
    silent_for(liveness, "b", DEAD_AFTER_SECONDS + 0.3)
    assert liveness.backup_lost("b", "p")
