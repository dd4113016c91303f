"""The web app's routes: landing, login/logout, dashboard, top up, pay.

``install_web`` adds them, the static files and the server-side session to the
gateway's FastAPI app. Pages find the user through the session only; a form or
URL naming any other account is refused with 403.
"""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from authlib.integrations.starlette_client import OAuth, OAuthError
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from tokpay.client.ledger import LedgerClient
from tokpay.ledger.errors import LedgerError
from tokpay.settings import Settings
from tokpay.web import wallet
from tokpay.web.money import MAX_PAYMENT_CENTS, MAX_TOPUP_CENTS, format_cents
from tokpay.web.session import ServerSessionMiddleware, rotate_session
from tokpay.web.store import User, WebStore

HERE = Path(__file__).parent
PAGE_SIZE = 10
SKIP_SESSION = ("/v1", "/static", "/livez", "/healthz", "/metrics", "/openapi.json", "/docs")
# Pages load only this server's own scripts and styles (the vendored htmx and
# Chart.js included; Chart.js sets inline styles on its canvas), and no other
# site may frame them.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
FILTERS = {"all": "All", "sent": "Sent", "received": "Received", "topup": "Top-ups"}


class LoginRequired(Exception):
    pass


class Forbidden(Exception):
    pass


class WebContext:
    """What every web route needs: settings, the user directory, OIDC client, ledger."""

    def __init__(self, settings: Settings, ledger: Callable[[], LedgerClient]) -> None:
        self.settings = settings
        self.ledger = ledger
        self.store = WebStore(settings.web_db_path())
        self.templates = Jinja2Templates(directory=HERE / "templates")
        self.templates.env.globals["format_cents"] = format_cents
        self.templates.env.globals["dev_login"] = settings.oidc_dev
        self.oauth = OAuth()
        if settings.oidc_issuer:
            self.oauth.register(
                "tokpay",
                client_id=settings.oidc_client_id,
                client_secret=settings.oidc_client_secret,
                server_metadata_url=settings.oidc_issuer.rstrip("/")
                + "/.well-known/openid-configuration",
                client_kwargs={"scope": "openid email", "code_challenge_method": "S256"},
            )

    def render(
        self, request: Request, name: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        context.setdefault("user", None)
        # Only signed-in pages carry forms; anonymous visits do not start a session.
        context["csrf_token"] = csrf_token(request) if context["user"] is not None else ""
        response = self.templates.TemplateResponse(request, name, context, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response


def csrf_token(request: Request) -> str:
    token: str = request.session.setdefault("csrf", secrets.token_urlsafe(32))
    return token


def _check_csrf(request: Request, form: FormData) -> None:
    sent = str(form.get("csrf_token", ""))
    expected = request.session.get("csrf", "")
    if not expected or not secrets.compare_digest(sent.encode(), str(expected).encode()):
        raise Forbidden("the form's security token is missing or stale; reload the page")


def _check_account(user: User, named: object) -> None:
    """An account id sent by the browser must be the user's own, or the request is refused."""
    if named not in (None, "", user.account_id):
        raise Forbidden("that account is not yours")


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def install_web(api: FastAPI, settings: Settings, ledger: Callable[[], LedgerClient]) -> None:
    web = WebContext(settings, ledger)
    api.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    api.include_router(_router(web))
    api.add_middleware(
        ServerSessionMiddleware,
        store=web.store,
        ttl_seconds=settings.session_ttl_seconds,
        secure=settings.secure_cookies,
        skip_prefixes=SKIP_SESSION,
    )

    @api.exception_handler(LoginRequired)
    async def login_required(request: Request, _: LoginRequired) -> Response:
        target = "/login?" + urlencode({"next": request.url.path})
        if _is_htmx(request):
            return Response(status_code=200, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    @api.exception_handler(Forbidden)
    async def forbidden(request: Request, error: Forbidden) -> Response:
        user_id = request.session.get("user_id")
        user = web.store.user(user_id) if isinstance(user_id, str) else None
        return web.render(request, "error.html", 403, message=str(error), user=user)


def _router(web: WebContext) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def current_user(request: Request) -> User:
        user_id = request.session.get("user_id")
        user = web.store.user(user_id) if isinstance(user_id, str) else None
        if user is None:
            raise LoginRequired()
        return user

    @router.get("/", response_class=HTMLResponse)
    async def landing(request: Request) -> Response:
        user_id = request.session.get("user_id")
        user = web.store.user(user_id) if isinstance(user_id, str) else None
        return web.render(request, "landing.html", user=user)

    @router.get("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        error = request.query_params.get("error", "")
        return web.render(
            request,
            "login.html",
            next=_local_path(request.query_params.get("next", "")),
            error=error,
            configured=bool(web.settings.oidc_issuer),
            issuer=web.settings.oidc_issuer,
        )

    @router.get("/auth/start")
    async def auth_start(request: Request) -> Response:
        client = web.oauth.create_client("tokpay")
        if client is None:
            return RedirectResponse("/login?error=no-issuer", status_code=303)
        request.session["after_login"] = _local_path(request.query_params.get("next", ""))
        redirect_uri = str(request.url_for("auth_callback"))
        response: Response = await client.authorize_redirect(request, redirect_uri)
        return response

    @router.get("/auth/callback", name="auth_callback")
    async def auth_callback(request: Request) -> Response:
        client = web.oauth.create_client("tokpay")
        if client is None:
            return RedirectResponse("/login?error=no-issuer", status_code=303)
        try:
            token = await client.authorize_access_token(request)
            claims = token.get("userinfo") or {}
            if "email" not in claims:
                claims = await client.userinfo(token=token)
        except OAuthError as error:
            return RedirectResponse(
                "/login?" + urlencode({"error": error.error or "login failed"}), status_code=303
            )
        email = wallet.normalise_email(str(claims.get("email", "")))
        if not wallet.is_email(email) or claims.get("email_verified") is not True:
            return RedirectResponse("/login?error=unverified-email", status_code=303)
        user = web.store.enrol(email)
        await wallet.open_wallet(web.ledger(), user)
        after_login = _local_path(str(request.session.get("after_login", "")))
        request.session.clear()
        request.session["user_id"] = user.id
        rotate_session(request.scope)
        return RedirectResponse(after_login, status_code=303)

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        _check_csrf(request, await request.form())
        request.session.clear()
        return RedirectResponse("/", status_code=303)

    @router.get("/dashboard", response_class=HTMLResponse)
    async def dashboard(request: Request) -> Response:
        user = current_user(request)
        ledger = web.ledger()
        entries = await wallet.entries(ledger, web.store, user)
        return web.render(
            request,
            "dashboard.html",
            user=user,
            balance=await wallet.balance_of(ledger, user),
            topup_id=f"top_{secrets.token_hex(12)}",
            max_topup=MAX_TOPUP_CENTS,
            **_table(entries, "all", "", 1),
        )

    @router.get("/accounts/{account_id}", response_class=HTMLResponse)
    async def account_page(request: Request, account_id: str) -> Response:
        _check_account(current_user(request), account_id)
        return RedirectResponse("/dashboard", status_code=303)

    @router.get("/transactions", response_class=HTMLResponse)
    async def transactions(request: Request) -> Response:
        user = current_user(request)
        query = request.query_params
        _check_account(user, query.get("account"))
        entries = await wallet.entries(web.ledger(), web.store, user)
        raw_page = query.get("page", "")
        page = int(raw_page) if raw_page.isdigit() and len(raw_page) <= 6 else 1
        table = _table(entries, query.get("filter", "all"), query.get("q", ""), page)
        return web.render(request, "_tx_results.html", user=user, **table)

    @router.get("/transactions.csv")
    async def transactions_csv(request: Request) -> Response:
        user = current_user(request)
        _check_account(user, request.query_params.get("account"))
        entries = await wallet.entries(web.ledger(), web.store, user)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["date", "type", "counterparty", "amount", "balance_after", "note", "id"])
        for entry in entries:
            writer.writerow(
                [
                    entry.created_at.isoformat(),
                    entry.kind,
                    "; ".join(entry.counterparties),
                    _decimal(entry.effect),
                    _decimal(entry.balance_after),
                    entry.memo,
                    entry.transfer_id,
                ]
            )
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="tokpay-transactions.csv"'},
        )

    @router.get("/chart.json")
    async def chart_data(request: Request) -> Response:
        user = current_user(request)
        entries = await wallet.entries(web.ledger(), web.store, user)
        points = [
            {"t": e.created_at.isoformat(), "balance": e.balance_after} for e in reversed(entries)
        ]
        if entries:
            # Start the line at the balance before the first transfer shown.
            first = entries[-1]
            points.insert(
                0,
                {"t": first.created_at.isoformat(), "balance": first.balance_after - first.effect},
            )
            points.append({"t": datetime.now(UTC).isoformat(), "balance": entries[0].balance_after})
        return JSONResponse({"currency": wallet.CURRENCY, "points": points})

    @router.post("/topup", response_class=HTMLResponse)
    async def topup(request: Request) -> Response:
        user = current_user(request)
        form = await request.form()
        _check_csrf(request, form)
        _check_account(user, form.get("account"))
        ledger = web.ledger()
        transfer_id = str(form.get("transfer_id", ""))
        amount_text = str(form.get("amount", ""))
        error = message = ""
        try:
            amount = await wallet.top_up(ledger, user, amount_text, transfer_id)
            message = f"Added {format_cents(amount)} to your wallet."
            transfer_id = f"top_{secrets.token_hex(12)}"
            amount_text = ""
        except wallet.WalletError as refusal:
            error = str(refusal)
        if not _is_htmx(request):
            if error:
                return web.render(request, "error.html", message=error, user=user)
            return RedirectResponse("/dashboard", status_code=303)
        entries = await wallet.entries(ledger, web.store, user)
        response = web.render(
            request,
            "_topup_result.html",
            user=user,
            balance=await wallet.balance_of(ledger, user),
            topup_id=transfer_id,
            amount_text=amount_text,
            topup_error=error,
            topup_message=message,
            max_topup=MAX_TOPUP_CENTS,
            **_table(entries, "all", "", 1),
        )
        if message:
            response.headers["HX-Trigger"] = "ledger-changed"
        return response

    @router.get("/pay", response_class=HTMLResponse)
    async def pay_form(request: Request) -> Response:
        user = current_user(request)
        plan = wallet.PaymentPlan([wallet.PaymentRow("", "")], "", f"pay_{secrets.token_hex(12)}")
        return web.render(request, "pay.html", **await _pay_context(user, plan))

    async def _pay_context(user: User, plan: wallet.PaymentPlan) -> dict[str, Any]:
        return {
            "user": user,
            "plan": plan,
            "balance": await wallet.balance_of(web.ledger(), user),
            "max_payment": MAX_PAYMENT_CENTS,
            "max_recipients": wallet.MAX_RECIPIENTS,
        }

    async def _plan_from(request: Request, user: User) -> tuple[FormData, wallet.PaymentPlan]:
        form = await request.form()
        _check_csrf(request, form)
        _check_account(user, form.get("account"))
        plan = wallet.plan_payment(
            web.store,
            user,
            [str(v) for v in form.getlist("email")],
            [str(v) for v in form.getlist("amount")],
            str(form.get("note", "")),
            str(form.get("transfer_id", "")),
        )
        return form, plan

    @router.post("/pay/review", response_class=HTMLResponse)
    async def pay_review(request: Request) -> Response:
        user = current_user(request)
        form, plan = await _plan_from(request, user)
        context = await _pay_context(user, plan)
        if form.get("edit") or not plan.ok:
            if not plan.rows:
                plan.rows.append(wallet.PaymentRow("", ""))
            return web.render(request, "pay.html", **context)
        if plan.total > context["balance"]:
            plan.errors.append(
                f"Your balance is {format_cents(context['balance'])}; this payment needs "
                f"{format_cents(plan.total)}. Nothing was sent."
            )
            return web.render(request, "pay.html", **context)
        return web.render(request, "pay_confirm.html", **context)

    @router.post("/pay/confirm", response_class=HTMLResponse)
    async def pay_confirm(request: Request) -> Response:
        user = current_user(request)
        _, plan = await _plan_from(request, user)
        if plan.ok:
            try:
                transfer = await wallet.pay(web.ledger(), user, plan)
            except (wallet.WalletError, LedgerError) as refusal:
                plan.errors.append(
                    str(refusal) if isinstance(refusal, wallet.WalletError) else refusal.detail
                )
            else:
                return web.render(
                    request,
                    "pay_done.html",
                    user=user,
                    plan=plan,
                    transfer=transfer,
                    balance=await wallet.balance_of(web.ledger(), user),
                )
        if not plan.rows:
            plan.rows.append(wallet.PaymentRow("", ""))
        return web.render(request, "pay.html", **await _pay_context(user, plan))

    return router


def _local_path(path: str) -> str:
    """A page of this site to return to after login; anything else is the dashboard."""
    if path.startswith("/") and not path.startswith(("//", "/\\")) and path.isprintable():
        return path
    return "/dashboard"


def _decimal(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"{sign}{whole}.{rest:02d}"


def _table(entries: list[wallet.Entry], kind: str, query: str, page: int) -> dict[str, Any]:
    kind = kind if kind in FILTERS else "all"
    needle = query.strip().lower()
    rows = [
        e
        for e in entries
        if (kind == "all" or e.kind == kind)
        and (not needle or any(needle in p.lower() for p in e.counterparties))
    ]
    pages = max(1, -(-len(rows) // PAGE_SIZE))
    page = min(max(1, page), pages)
    return {
        "rows": rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE],
        "has_any": bool(entries),
        "filter": kind,
        "filters": FILTERS,
        "q": query,
        "page": page,
        "pages": pages,
        "matches": len(rows),
    }
