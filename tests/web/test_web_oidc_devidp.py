"""The development OpenID provider that ``tokpay serve`` starts: where it may run,
how its secret travels, and that logging out of TokPay logs out of it too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess
from tests.web.conftest import new_email
from tokpay.cluster.sessions import session_pids
from tokpay.cluster.single import NoDevIdentityProvider, start_dev_identity_provider


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_the_dev_provider_refuses_a_gateway_beyond_loopback(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOKPAY_OIDC_ISSUER", raising=False)
    try:
        identity = start_dev_identity_provider(host, 8000)
    except NoDevIdentityProvider as refusal:
        assert "TOKPAY_OIDC_ISSUER" in str(refusal)
        return
    if identity is not None:
        identity.stop()  # a regression must not leave an open provider running
    pytest.fail(f"the dev provider started for --host {host}")


def test_the_dev_provider_secret_is_not_on_any_command_line(server: ServerProcess) -> None:
    """Every local user can read /proc/PID/cmdline; the secret travels by environment."""
    assert server.process is not None
    pids = session_pids(server.process.pid)
    command_lines = {pid: _read(Path(f"/proc/{pid}/cmdline")) for pid in pids}
    (provider,) = [pid for pid, line in command_lines.items() if b"provider.mjs" in line]
    environment = dict(
        entry.split(b"=", 1)
        for entry in _read(Path(f"/proc/{provider}/environ")).split(b"\0")
        if b"=" in entry
    )
    secret = environment[b"TOKPAY_DEVIDP_CLIENT_SECRET"]
    assert len(secret) >= 24
    for line in command_lines.values():
        assert secret not in line


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # a process that ended meanwhile
        return b""


def test_logout_ends_the_dev_provider_session(server: ServerProcess, browser: Any) -> None:
    """After "Log out", "Log in" asks for a login again instead of letting the last
    person straight back in (a shared device)."""
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(server.url + "/login")
        page.get_by_role("link", name="Continue to sign in").click()
        page.fill("input[name=login]", new_email("shared"))
        page.fill("input[name=password]", "any password")
        page.click("button[type=submit]")
        page.wait_for_selector("button[type=submit]")
        if not page.url.startswith(server.url):
            page.click("button[type=submit]")  # the provider's consent screen
        page.wait_for_url("**/dashboard")
        page.get_by_role("button", name="Log out").first.click()
        page.wait_for_url(server.url + "/")
        page.goto(server.url + "/login")
        page.get_by_role("link", name="Continue to sign in").click()
        page.wait_for_selector("input[name=login]")
        assert not page.url.startswith(server.url)
    finally:
        context.close()
