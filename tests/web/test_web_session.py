"""Server-side sessions in-process: what the cookie carries and when it changes."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.web.conftest import csrf_of, login_http, new_email
from tokpay.web.session import (
    COOKIE_NAME,
    AddressRateLimit,
    ServerSessionMiddleware,
    rotate_session,
    sign,
    unsign,
)
from tokpay.web.store import User, WebStore, session_key


async def _app(scope: Any, receive: Any, send: Any) -> None:
    """Sets the session from the path: /set/VALUE, /rotate, /clear, /read."""
    session = scope["session"]
    path = scope["path"]
    if path.startswith("/set/"):
        session["value"] = path.removeprefix("/set/")
    elif path == "/rotate":
        rotate_session(scope)
    elif path == "/clear":
        session.clear()
    body = str(session.get("value", "")).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _run(
    store: WebStore, base_url: str, steps: list[str], idle: int = 60
) -> list[tuple[httpx.Response, dict[str, Any] | None]]:
    """Each response, with what the store held for the client's cookie right after it."""
    app = ServerSessionMiddleware(
        _app, store, ttl_seconds=60, idle_seconds=idle, secure=False, skip_prefixes=("/v1",)
    )

    async def go() -> list[tuple[httpx.Response, dict[str, Any] | None]]:
        transport = httpx.ASGITransport(app=app)
        out = []
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            for step in steps:
                response = await client.get(step)
                session_id = client.cookies.get(COOKIE_NAME)
                out.append((response, store.load_session(session_id, 60) if session_id else None))
        return out

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, go()).result()


def test_cookie_is_an_id_and_data_stays_on_the_server(tmp_path: Path) -> None:
    store = WebStore(tmp_path / "web.sqlite3")
    results = _run(
        store,
        "http://t",
        ["/read", "/set/secret-value", "/read", "/rotate", "/read", "/clear", "/read"],
    )
    read_only, first, read, rotated, after, cleared, gone = (r for r, _ in results)
    assert results[1][1] == {"value": "secret-value"}  # the data is in the table
    assert "set-cookie" not in read_only.headers  # nothing stored, no cookie
    cookie = first.headers["set-cookie"]
    assert "secret-value" not in cookie
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    session_id = cookie.split(";", 1)[0].split("=", 1)[1]
    assert read.text == "secret-value" and "set-cookie" not in read.headers
    new_id = rotated.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
    assert new_id != session_id
    assert store.load_session(session_id, 60) is None
    assert after.text == "secret-value"
    assert f"{COOKIE_NAME}=;" in cleared.headers["set-cookie"]
    assert store.load_session(new_id, 60) is None
    assert gone.text == ""


def test_cookie_is_secure_over_https(tmp_path: Path) -> None:
    store = WebStore(tmp_path / "web.sqlite3")
    ((response, _),) = _run(store, "https://t", ["/set/x"])
    assert "Secure" in response.headers["set-cookie"]


def test_the_table_holds_only_a_hash_of_the_session_id(tmp_path: Path) -> None:
    """A copy of web.sqlite3 must not let anyone in: the id is not in the file."""
    store = WebStore(tmp_path / "web.sqlite3")
    ((response, _),) = _run(store, "http://t", ["/set/x"])
    session_id = response.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
    with sqlite3.connect(store.path) as db:
        keys = [row[0] for row in db.execute("SELECT id_hash FROM web_sessions")]
    assert keys == [session_key(session_id)] and session_key(session_id) != session_id
    for file in tmp_path.iterdir():
        assert session_id.encode() not in file.read_bytes()


def test_an_idle_session_ends_before_its_lifetime(tmp_path: Path) -> None:
    store = WebStore(tmp_path / "web.sqlite3")
    store.save_session("idle", {"user_id": "u_1"}, ttl_seconds=3600, idle_seconds=1)
    assert store.load_session("idle", idle_seconds=1) is not None
    time.sleep(2.1)
    assert store.load_session("idle", idle_seconds=1) is None


def test_log_out_everywhere_ends_only_that_users_sessions(tmp_path: Path) -> None:
    store = WebStore(tmp_path / "web.sqlite3")
    for session_id, user_id in (("a1", "u_a"), ("a2", "u_a"), ("b1", "u_b")):
        store.save_session(session_id, {"user_id": user_id}, 3600, 600)
    assert store.delete_user_sessions("u_a") == 2
    assert store.load_session("a1", 600) is None and store.load_session("a2", 600) is None
    assert store.load_session("b1", 600) == {"user_id": "u_b"}


def test_web_data_is_private_to_its_user(tmp_path: Path, server: ServerProcess) -> None:
    """web.sqlite3 is 0600 and a directory the web app creates is 0700, here and in
    the data directory of a running server."""
    store = WebStore(tmp_path / "new" / "web.sqlite3")
    store.save_session("x", {"v": 1}, 60, 60)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    served = server.data_dir / "web.sqlite3"
    assert stat.S_IMODE(served.stat().st_mode) == 0o600
    assert stat.S_IMODE(server.data_dir.stat().st_mode) == 0o700


def test_users_keyed_by_identity(tmp_path: Path) -> None:
    store = WebStore(tmp_path / "web.sqlite3")
    ada = store.sign_in("https://id.example", "sub-ada", "ada@example.org")
    assert store.sign_in("https://id.example", "sub-ada", "ada@example.org") == ada
    # An email change keeps the wallet.
    moved = store.sign_in("https://id.example", "sub-ada", "ada@new.example")
    assert moved.account_id == ada.account_id and moved.email == "ada@new.example"
    assert store.user_for_email("ada@example.org") is None
    # The old address, now someone else's, does not open Ada's wallet.
    other = store.sign_in("https://id.example", "sub-other", "ada@new.example")
    assert other.account_id != ada.account_id
    assert store.user_for_email("ada@new.example") == other
    assert store.user(ada.id) is not None and store.user(ada.id).email == ""  # type: ignore[union-attr]
    # The same sub at another issuer is another person.
    elsewhere = store.sign_in("https://other.example", "sub-ada", "ada@other.example")
    assert elsewhere.account_id != ada.account_id


def test_a_schema_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    """Users from before (keyed by email) keep their wallet: the first identity that
    signs in with the address claims it. Their sessions (raw ids on disk) end."""
    path = tmp_path / "web.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE web_sessions (id TEXT PRIMARY KEY, data TEXT NOT NULL, "
            "expires_at INTEGER NOT NULL);"
            "CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, "
            "account_id TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL);"
            "INSERT INTO users VALUES ('u_old', 'old@example.org', 'w_old', 1);"
            "INSERT INTO web_sessions VALUES ('raw-id', '{\"user_id\": \"u_old\"}', 9999999999);"
        )
    store = WebStore(path)
    assert store.load_session("raw-id", 600) is None
    old = store.user_for_email("old@example.org")
    assert old is not None and old.account_id == "w_old"
    assert store.emails_of(["w_old"]) == {"w_old": "old@example.org"}
    claimed = store.sign_in("https://id.example", "sub-old", "old@example.org")
    assert claimed.account_id == "w_old"
    # Claimed once: the identity keeps it through an email change.
    assert store.sign_in("https://id.example", "sub-old", "new@example.org").account_id == "w_old"
    WebStore(path)  # opening again changes nothing
    assert store.user_for_email("new@example.org") == User("u_old", "new@example.org", "w_old")


def test_signed_values_refuse_forgery_other_purposes_and_age() -> None:
    key = b"k" * 32
    signed = sign(key, "login", {"state": "s"})
    assert unsign(key, "login", signed, 60) == {"state": "s"}
    assert unsign(b"x" * 32, "login", signed, 60) is None
    assert unsign(key, "other", signed, 60) is None
    body, mac = signed.split(".")
    assert unsign(key, "login", body[:-2] + "AA." + mac, 60) is None
    assert unsign(key, "login", "not a value", 60) is None
    time.sleep(1.1)
    assert unsign(key, "login", signed, 0) is None


def test_the_rate_limit_counts_per_address_and_stays_bounded() -> None:
    limit = AddressRateLimit(limit=2, window_seconds=60, max_addresses=3)
    assert [limit.allow("a", now=0) for _ in range(3)] == [True, True, False]
    assert limit.allow("b", now=0)
    assert limit.allow("a", now=61)  # a new window
    for address in "cdefg":
        limit.allow(address, now=62)
    assert len(limit._seen) == 3


def test_log_out_everywhere_ends_the_other_devices_sessions(server: ServerProcess) -> None:
    email = new_email("everywhere")
    with (
        httpx.Client(base_url=server.url, timeout=30) as phone,
        httpx.Client(base_url=server.url, timeout=30) as laptop,
    ):
        assert login_http(phone, email).url.path == "/dashboard"
        page = login_http(laptop, email)
        assert page.url.path == "/dashboard"
        # The wallet offers it: a form posting to the route, with the session's token.
        assert 'action="/logout/everywhere"' in page.text
        response = laptop.post("/logout/everywhere", data={"csrf_token": csrf_of(page.text)})
        assert response.status_code == 303
        for device in (phone, laptop):
            assert device.get("/dashboard").headers["location"].startswith("/login")


@pytest.mark.parametrize(
    ("asked", "landed"),
    [("/logout", "/dashboard"), ("/pay", "/pay"), ("//evil.example/x", "/dashboard")],
)
def test_login_returns_to_a_page_never_to_a_post_only_address(
    server: ServerProcess, asked: str, landed: str
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        page = login_http(client, new_email("return"), start=f"/auth/start?next={asked}")
        assert page.status_code == 200 and page.url.path == landed
