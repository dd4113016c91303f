"""The web app in a real Chromium, logging in at the real dev OpenID provider.

Screenshots of the main pages go to a temporary folder, or to the folder named by
TOKPAY_SCREENSHOTS (``make screenshots`` refreshes docs/screenshots/ for the README).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import ServerProcess
from tests.web.conftest import new_email

SHOTS = Path(os.environ.get("TOKPAY_SCREENSHOTS") or tempfile.mkdtemp(prefix="tokpay-shots-"))
PHONE = {"width": 390, "height": 844}


class Person:
    """One browser context (its own cookies) signed in as one email address."""

    def __init__(self, browser: Any, server: ServerProcess, name: str, **options: Any) -> None:
        self.server = server
        self.email = new_email(name)
        self.context = browser.new_context(**options)
        self.page = self.context.new_page()
        self.errors: list[str] = []

        def on_console(message: Any) -> None:
            # Only our pages count; the dev provider's pages load a web font they cannot reach.
            if message.type == "error" and self.page.url.startswith(server.url):
                self.errors.append(f"{self.page.url}: {message.text}")

        self.page.on("console", on_console)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def log_in(self, shots: bool = False) -> None:
        page = self.page
        page.goto(self.server.url + "/")
        if shots:
            page.screenshot(path=SHOTS / "landing.png")
        page.locator("#main").get_by_role("link", name="Log in").click()
        page.wait_for_url("**/login")
        if shots:
            page.screenshot(path=SHOTS / "login.png")
        page.get_by_role("link", name="Continue to sign in").click()
        page.fill("input[name=login]", self.email)
        page.fill("input[name=password]", "any password")
        page.click("button[type=submit]")
        page.wait_for_selector("button[type=submit]")
        if not page.url.startswith(self.server.url):
            page.click("button[type=submit]")  # the provider's consent screen
        page.wait_for_url("**/dashboard")

    def balance(self) -> str:
        return self.page.inner_text("#balance")

    def top_up(self, amount: str) -> None:
        self.page.fill("#topup-amount", amount)
        self.page.get_by_role("button", name="Add money").click()

    def fill_payment(self, rows: list[tuple[str, str]], note: str = "") -> None:
        page = self.page
        page.goto(self.server.url + "/pay")
        for index, (email, amount) in enumerate(rows, start=1):
            if index > 1:
                page.get_by_role("button", name="Add recipient").click()
            page.fill(f"#email-{index}", email)
            page.fill(f"#amount-{index}", amount)
        page.fill("#note", note)

    def close(self) -> None:
        assert not self.errors, self.errors
        self.context.close()


@pytest.fixture
def people(browser: Any, server: ServerProcess) -> Iterator[Any]:
    made: list[Person] = []

    def make(name: str, **options: Any) -> Person:
        person = Person(browser, server, name, **options)
        made.append(person)
        return person

    yield make
    for person in made:
        person.close()


def test_unauthenticated_visit_goes_to_login(people: Any, server: ServerProcess) -> None:
    visitor = people("visitor")
    visitor.page.goto(server.url + "/dashboard")
    visitor.page.wait_for_url(re.compile(r".*/login\?next=%2Fdashboard$"))
    assert "Development login" in visitor.page.inner_text("#dev-note")


def test_pay_two_people_in_one_payment(people: Any, server: ServerProcess) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    bob, carol = people("bob"), people("carol")
    bob.log_in()
    carol.log_in()
    alice = people("alice")
    alice.log_in(shots=True)
    assert alice.balance() == "$0.00"
    assert "No transactions yet" in alice.page.inner_text("#transactions")

    alice.top_up("100")
    alice.page.wait_for_selector("text=Added $100.00 to your wallet.")
    assert alice.balance() == "$100.00"

    alice.fill_payment([(bob.email, "12.34"), (carol.email, "5")], note="Lunch")
    alice.page.screenshot(path=SHOTS / "pay.png", full_page=True)
    alice.page.get_by_role("button", name="Review payment").click()
    assert alice.page.inner_text("#pay-total") == "$17.34"
    alice.page.screenshot(path=SHOTS / "confirm.png", full_page=True)
    alice.page.get_by_role("button", name="Pay $17.34").click()
    alice.page.wait_for_selector("text=You paid $17.34 to 2 people.")
    assert alice.balance() == "$82.66"

    alice.page.goto(server.url + "/dashboard")
    assert alice.balance() == "$82.66"
    table = alice.page.inner_text("#transactions")
    assert bob.email in table and carol.email in table and "-$17.34" in table
    # Start, top-up, payment, now: the chart drew all four points.
    expect(alice.page.locator("#balance-chart")).to_have_attribute("data-points", "4")
    alice.page.screenshot(path=SHOTS / "dashboard.png", full_page=True)

    # Filters and search narrow the table in place.
    alice.page.select_option("#tx-filter", "topup")
    expect(alice.page.locator("#transactions tbody tr.tx-sent")).to_have_count(0)
    assert alice.page.locator("#transactions tbody tr.tx-topup").count() == 1
    alice.page.select_option("#tx-filter", "all")
    expect(alice.page.locator("#transactions tbody tr.tx-sent")).to_have_count(1)
    alice.page.fill("#tx-search", carol.email[:8])
    expect(alice.page.locator("#transactions tbody tr.tx-topup")).to_have_count(0)
    assert alice.page.locator("#transactions tbody tr.tx-sent").count() == 1

    bob.page.reload()
    assert bob.balance() == "$12.34"
    assert alice.email in bob.page.inner_text("#transactions")
    carol.page.reload()
    assert carol.balance() == "$5.00"


def _payer_with_ten_dollars_and_payee(people: Any, prefix: str) -> tuple[Person, Person]:
    """Both signed in (the payee first), the payer's top-up of $10.00 shown."""
    payee = people(f"{prefix}payee")
    payee.log_in()
    payer = people(f"{prefix}payer")
    payer.log_in()
    payer.top_up("10.00")
    payer.page.wait_for_selector("text=Added $10.00")
    return payer, payee


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown", "No TokPay user has this email address."),
        ("self", "You cannot pay yourself."),
        ("duplicate", "This recipient is already on the payment"),
        ("insufficient", "Nothing was sent."),
    ],
)
def test_payment_refusals_move_nothing(
    people: Any, server: ServerProcess, case: str, message: str
) -> None:
    payer, payee = _payer_with_ten_dollars_and_payee(people, "")
    rows = {
        "unknown": [(new_email("nobody"), "1.00")],
        "self": [(payer.email, "1.00")],
        "duplicate": [(payee.email, "1.00"), (payee.email.upper(), "2.00")],
        "insufficient": [(payee.email, "10.01")],
    }[case]
    payer.fill_payment(rows)
    payer.page.get_by_role("button", name="Review payment").click()
    assert message in payer.page.inner_text("main")
    assert payer.page.url.endswith("/pay/review")
    payer.page.goto(server.url + "/dashboard")
    assert payer.balance() == "$10.00"
    payee.page.reload()
    assert payee.balance() == "$0.00"


def test_double_click_and_refresh_pay_once(people: Any, server: ServerProcess) -> None:
    payer, payee = _payer_with_ten_dollars_and_payee(people, "once-")
    payer.fill_payment([(payee.email, "4.00")])
    payer.page.get_by_role("button", name="Review payment").click()
    payer.page.get_by_role("button", name="Pay $4.00").dblclick()
    payer.page.wait_for_selector("text=You paid $4.00 to 1 person.")
    payer.page.reload()  # the browser posts the confirmation again
    payer.page.wait_for_selector("text=You paid $4.00 to 1 person.")
    assert payer.balance() == "$6.00"
    payee.page.reload()
    assert payee.balance() == "$4.00"


def test_phone_layout_and_logout(people: Any, server: ServerProcess) -> None:
    phone = people("phone", viewport=PHONE, is_mobile=True, has_touch=True)
    phone.log_in()
    phone.top_up("3.50")
    phone.page.wait_for_selector("text=Added $3.50")
    width = phone.page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the dashboard scrolls sideways on a phone"
    phone.page.screenshot(path=SHOTS / "dashboard-phone.png", full_page=True)
    phone.page.get_by_role("button", name="Log out").click()
    phone.page.wait_for_url(server.url + "/")
    phone.page.goto(server.url + "/dashboard")
    phone.page.wait_for_url("**/login?next=%2Fdashboard")
