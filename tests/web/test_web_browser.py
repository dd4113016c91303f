"""The web app in a real Chromium at 1280 px and 390 px, logging in at the real dev OpenID
provider, with axe-core (from node_modules, no CDN) checking every page it visits.

One browser, one server, one login per person: the people below are signed in once per
module and reused. Screenshots go to a temporary folder, or to the folder named by
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
AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SMALL_PHONE = {"width": 320, "height": 640}
WIDTHS = {"desktop": DESKTOP, "phone": PHONE}


class Person:
    """One browser context (its own cookies) signed in as one email address."""

    def __init__(self, browser: Any, server: ServerProcess, name: str, **options: Any) -> None:
        self.server = server
        self.email = options.pop("email", None) or new_email(name)
        self.viewport = options.get("viewport", DESKTOP)
        self.scripting = options.get("java_script_enabled", True)
        self.context = browser.new_context(**options)
        self.page = self.context.new_page()
        self.errors: list[str] = []

        def on_console(message: Any) -> None:
            # Only our pages count (the dev provider's load a web font they cannot reach),
            # and not the 401/403 answers the stale-session test provokes on purpose.
            ours = message.type == "error" and self.page.url.startswith(server.url)
            if ours and not re.search(r"(status of|Error Code) 40[13]\b", message.text):
                self.errors.append(f"{self.page.url}: {message.text}")

        self.page.on("console", on_console)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def go(self, path: str) -> None:
        self.page.goto(self.server.url + path)

    def log_in(self, shots: bool = False) -> None:
        page = self.page
        self.go("/")
        self.check(shot="landing" if shots else "")
        page.locator("#main").get_by_role("link", name="Log in").click()
        page.wait_for_url("**/login")
        self.check(shot="login" if shots else "")
        page.get_by_role("link", name="Continue to sign in").click()
        page.fill("input[name=login]", self.email)
        page.fill("input[name=password]", "any password")
        page.click("button[type=submit]")
        page.wait_for_selector("button[type=submit]")
        if not page.url.startswith(self.server.url):
            page.click("button[type=submit]")  # the provider's consent screen
        page.wait_for_url("**/dashboard")

    def check(self, shot: str = "") -> None:
        """axe-core finds nothing on this page, and it does not scroll sideways."""
        page = self.page
        if not self.scripting:  # nothing can run in the page; its looks are checked with scripts on
            return
        page.evaluate(AXE.read_text())  # evaluated by the browser, so CSP stays as served
        found = page.evaluate(
            "async () => (await axe.run(document)).violations.map("
            "v => v.id + ' (' + v.impact + '): ' + v.nodes.map(n => n.target.join(' ')).join(', '))"
        )
        assert found == [], f"{page.url} at {self.viewport['width']}px: {found}"
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= self.viewport["width"], f"{page.url} scrolls sideways: {width}px"
        if shot:
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=SHOTS / f"{shot}.png", full_page=True)

    def balance(self) -> str:
        return self.page.inner_text("#balance")

    def top_up(self, amount: str) -> None:
        self.go("/dashboard")
        self.page.fill("#topup-amount", amount)
        self.page.get_by_role("button", name="Add money", exact=True).click()
        self.page.wait_for_selector(f"text=Added ${amount}")

    def fill_payment(self, rows: list[tuple[str, str]], note: str = "") -> None:
        page = self.page
        self.go("/pay")
        for index, (email, amount) in enumerate(rows, start=1):
            if index > 1:
                page.get_by_role("button", name="Add recipient").click()
            page.fill(f"#email-{index}", email)
            page.fill(f"#amount-{index}", amount)
        page.fill("#note", note)

    def close(self) -> None:
        assert not self.errors, self.errors
        self.context.close()


@pytest.fixture(scope="module")
def people(browser: Any, server: ServerProcess) -> Iterator[Any]:
    made: dict[str, Person] = {}

    def person(name: str, **options: Any) -> Person:
        if name not in made:
            made[name] = Person(browser, server, name, **options)
            made[name].log_in()
        return made[name]

    yield person
    for one in made.values():
        one.close()


def _at(people: Any, width: str, name: str, **extra: Any) -> Person:
    options: dict[str, Any] = {"viewport": WIDTHS[width], "timezone_id": "Europe/Paris", **extra}
    if width == "phone":
        options.update(is_mobile=True, has_touch=True, timezone_id="America/New_York")
    return people(f"{name}-{width}", **options)


def test_unauthenticated_visit_goes_to_login_and_unknown_pages_are_pages(
    browser: Any, server: ServerProcess
) -> None:
    visitor = Person(browser, server, "visitor", viewport=PHONE, is_mobile=True)
    visitor.go("/dashboard")
    visitor.page.wait_for_url(re.compile(r".*/login\?next=%2Fdashboard$"))
    assert "Development login" in visitor.page.inner_text("#dev-note")
    visitor.check()
    visitor.go("/no/such/page")
    assert "Page not found" in visitor.page.inner_text("main")
    visitor.check()
    # The browser logs the page's own 404 status; nothing else may fail.
    assert [e for e in visitor.errors if "status of 404" not in e] == []
    visitor.errors.clear()
    visitor.close()


def test_first_visit_landing_and_login_pages(browser: Any, server: ServerProcess) -> None:
    for width, viewport in WIDTHS.items():
        newcomer = Person(browser, server, "newcomer", viewport=viewport)
        newcomer.log_in(shots=width == "desktop")
        assert newcomer.balance() == "$0.00"
        assert "No transactions yet" in newcomer.page.inner_text("#transactions")
        actions = newcomer.page.get_by_role("navigation", name="Money")
        expect(actions.get_by_role("link")).to_have_text(["Pay", "Request", "Add money"])
        assert "w_" not in newcomer.page.inner_text("main"), "wallet id in the main view"
        newcomer.check()
        newcomer.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_pay_two_people_then_receipt(people: Any, server: ServerProcess, width: str) -> None:
    bob, carol = _at(people, width, "bob"), _at(people, width, "carol")
    alice = _at(people, width, "alice")
    alice.top_up("100.00")
    assert alice.balance() == "$100.00"

    alice.fill_payment([(bob.email, "12.34"), (carol.email, "5")], note="Lunch")
    expect(alice.page.locator(".recipient .remove")).to_have_count(2)
    alice.check(shot=f"pay-{width}" if width == "phone" else "pay")
    alice.page.get_by_role("button", name="Review payment").click()
    assert alice.page.inner_text("#pay-total") == "$17.34"
    assert "First payment to this person" in alice.page.inner_text("main")
    alice.check(shot="" if width == "phone" else "confirm")
    alice.page.get_by_role("button", name="Pay $17.34").click()
    alice.page.wait_for_selector("text=You paid $17.34 to 2 people.")
    assert alice.balance() == "$82.66"
    alice.check()
    alice.page.go_back()  # Back after paying: the form again, never a resubmission
    assert "/pay/done/" not in alice.page.url
    alice.page.go_forward()
    alice.page.get_by_role("link", name="View receipt").click()
    shares = alice.page.inner_text("#receipt-shares")
    assert bob.email in shares and "$12.34" in shares and carol.email in shares
    assert alice.page.inner_text("#receipt-balance") == "$82.66"
    alice.check(shot="receipt" if width == "desktop" else "receipt-phone")

    alice.go("/dashboard")
    expect(alice.page.locator("#tz-note")).to_contain_text(
        "Europe/Paris" if width == "desktop" else "America/New York"
    )
    listing = alice.page.inner_text("#tx-results")
    assert "Today" in listing and "-$17.34" in listing and "+$100.00" in listing
    # Start, top-up, payment, now: the chart drew all four points.
    expect(alice.page.locator("#balance-chart")).to_have_attribute("data-points", "4")
    alice.check(shot="dashboard" if width == "desktop" else "dashboard-phone")

    # The keyboard reaches every row; Enter opens its receipt.
    alice.page.focus("#tx-search")
    alice.page.keyboard.press("Tab")  # the search form's button
    alice.page.keyboard.press("Tab")
    assert "Lunch" in alice.page.evaluate("document.activeElement.textContent")
    alice.page.keyboard.press("Enter")
    alice.page.wait_for_url("**/transactions/pay_*")
    alice.go("/dashboard")

    # Filters and search narrow the list in place; search covers notes.
    alice.page.select_option("#tx-filter", "topup")
    expect(alice.page.locator("#tx-results .tx-sent")).to_have_count(0)
    assert alice.page.locator("#tx-results .tx-topup").count() == 1
    expect(alice.page.get_by_role("link", name="Export these as CSV")).to_have_attribute(
        "href", "/transactions.csv?filter=topup"
    )
    alice.page.select_option("#tx-filter", "all")
    alice.page.fill("#tx-search", "lunch")
    expect(alice.page.locator("#tx-results .tx-topup")).to_have_count(0)
    assert alice.page.locator("#tx-results .tx-sent").count() == 1
    alice.check()

    bob.go("/dashboard")
    assert bob.balance() == "$12.34"
    assert "+$12.34" in bob.page.inner_text("#tx-results")
    assert alice.email in bob.page.inner_text("#tx-results")


@pytest.mark.parametrize("width", WIDTHS)
def test_look_alike_recipient_is_flagged(people: Any, server: ServerProcess, width: str) -> None:
    friend, payer = _at(people, width, "friend"), _at(people, width, "wary")
    payer.top_up("5.00")
    payer.fill_payment([(friend.email, "1.00")])
    payer.page.get_by_role("button", name="Review payment").click()
    payer.page.get_by_role("button", name="Pay $1.00").click()
    payer.page.wait_for_selector("text=You paid $1.00 to 1 person.")
    # Same letters to the eye: Cyrillic small ie (U+0435) in place of the Latin "e".
    impostor = _at(people, width, "impostor", email=friend.email.replace("example", "\u0435xample"))
    payer.fill_payment([(impostor.email, "1.00")])
    # The friend is offered by the email field's autocomplete (recent recipients).
    expect(payer.page.locator(f'#recent-recipients option[value="{friend.email}"]')).to_have_count(
        1
    )
    payer.page.get_by_role("button", name="Review payment").click()
    warning = payer.page.get_by_role("alert")
    expect(warning).to_contain_text("Check this address")
    expect(warning).to_contain_text(f"looks like {friend.email}")
    payer.check(shot="confirm-lookalike" if width == "desktop" else "")


@pytest.mark.parametrize("width", WIDTHS)
def test_request_money_paid_in_one_step(people: Any, server: ServerProcess, width: str) -> None:
    dana = _at(people, width, "dana")
    erin = _at(people, width, "erin")
    erin.top_up("20.00")
    dana.go("/dashboard")
    dana.page.get_by_role("link", name="Request", exact=True).click()
    dana.page.fill("#request-email", erin.email)
    dana.page.fill("#request-amount", "1e3")
    dana.page.get_by_role("button", name="Send request").click()
    expect(dana.page.locator("#request-amount")).to_have_attribute("aria-invalid", "true")
    dana.check()
    dana.page.fill("#request-amount", "7.25")
    dana.page.fill("#request-note", "Concert tickets")
    dana.page.get_by_role("button", name="Send request").click()
    dana.page.wait_for_selector("#request-sent")
    dana.check(shot="requests" if width == "desktop" else "")

    erin.go("/dashboard")
    asked = erin.page.locator("#asked-of-me")
    assert "asks you for $7.25" in asked.inner_text() and "Concert tickets" in asked.inner_text()
    erin.check(shot="request-phone" if width == "phone" else "")
    asked.get_by_role("button", name="Pay $7.25").click()
    erin.page.wait_for_selector("text=You paid $7.25 to 1 person.")
    assert erin.balance() == "$12.75"
    dana.go("/requests")
    assert "Paid" in dana.page.inner_text("#my-requests")


@pytest.mark.parametrize("width", WIDTHS)
def test_payment_refusals_show_on_their_fields(
    people: Any, server: ServerProcess, width: str
) -> None:
    payer = _at(people, width, "refused")
    payer.fill_payment([(new_email("nobody"), "1.00"), (payer.email, "1e3")])
    payer.page.get_by_role("button", name="Review payment").click()
    assert "Nobody has a TokPay wallet with this address yet" in payer.page.inner_text(
        "#email-error-1"
    )
    assert "You cannot pay yourself." in payer.page.inner_text("#email-error-2")
    assert "Enter dollars and cents" in payer.page.inner_text("#amount-error-2")
    expect(payer.page.locator("#amount-2")).to_have_attribute("aria-invalid", "true")
    payer.check()
    # One recipient left: no Remove button; ten recipients: "Add recipient" is disabled.
    payer.page.get_by_role("button", name="Remove recipient 2").click()
    expect(payer.page.locator(".recipient .remove:visible")).to_have_count(0)
    for _ in range(9):
        payer.page.get_by_role("button", name="Add recipient").click()
    expect(payer.page.get_by_role("button", name="Add recipient")).to_be_disabled()
    payer.check()


def test_paying_several_people_without_javascript(
    browser: Any, server: ServerProcess, people: Any
) -> None:
    payee = _at(people, "desktop", "nojs-payee")
    noscript = Person(browser, server, "noscript", viewport=PHONE, java_script_enabled=False)
    noscript.log_in()
    page = noscript.page
    page.fill("#topup-amount", "9.00")
    page.get_by_role("button", name="Add money", exact=True).click()
    page.wait_for_url("**/dashboard")
    assert noscript.balance() == "$9.00"
    noscript.go("/pay")
    page.fill("#email-1", payee.email)
    page.fill("#amount-1", "1.00")
    page.get_by_role("button", name="Add recipient").click()  # a plain submit
    page.fill("#email-2", payee.email.upper())
    page.fill("#amount-2", "2.00")
    page.get_by_role("button", name="Remove recipient 2").click()
    expect(page.locator(".recipient")).to_have_count(1)
    page.get_by_role("button", name="Review payment").click()
    page.get_by_role("button", name="Pay $1.00").click()
    page.wait_for_selector("text=You paid $1.00 to 1 person.")
    noscript.go("/dashboard?filter=sent")
    assert "-$1.00" in page.inner_text("#tx-results")
    noscript.close()


def test_stale_token_and_ended_session_keep_what_was_typed(
    people: Any, server: ServerProcess
) -> None:
    person = _at(people, "phone", "stale")
    person.go("/dashboard")
    page = person.page
    page.evaluate("document.querySelector('#topup-form [name=csrf_token]').value = 'stale'")
    page.fill("#topup-amount", "4.20")
    page.get_by_role("button", name="Add money", exact=True).click()
    expect(page.locator("#topup-error")).to_contain_text("out of date")
    assert page.input_value("#topup-amount") == "4.20"
    page.get_by_role("link", name="Reload the page").click()
    page.wait_for_load_state()
    assert page.input_value("#topup-amount") == "4.20"  # kept across the reload
    person.context.clear_cookies()
    page.get_by_role("button", name="Add money", exact=True).click()
    expect(page.get_by_role("link", name="Log in again")).to_be_visible()
    assert page.input_value("#topup-amount") == "4.20"
    person.check()


def test_phone_views_at_320px_and_logout(browser: Any, server: ServerProcess) -> None:
    small = Person(
        browser, server, "small-phone-with-a-rather-long-name", viewport=SMALL_PHONE, is_mobile=True
    )
    small.log_in()
    small.top_up("3.50")
    small.check()
    for path in ("/pay", "/requests", "/requests/new"):
        small.go(path)
        small.check()
    small.page.get_by_role("button", name="Log out").click()
    small.page.wait_for_url(server.url + "/")
    small.go("/dashboard")
    small.page.wait_for_url("**/login?next=%2Fdashboard")
    small.close()
