"""TokPay's settings, read once from the environment (prefix ``TOKPAY_``)."""

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOKPAY_")

    ray_address: str = "auto"
    """Ray cluster the gateway attaches to."""
    data_dir: Path = Path("var/tokpay")
    fsync: bool = True
    """Turning fsync off voids the durability contract; only benchmarks of the ceiling do it."""

    environment: Literal["development", "production"] = "development"
    """In development a gateway bound only to loopback serves ``/v1`` without an API key."""
    bind_host: str = "127.0.0.1"
    """Address the gateway binds to; ``tokpay gateway`` sets it for its workers."""
    api_key: str = ""
    """Bearer key for ``/v1``; required whenever the API is reachable beyond loopback."""

    oidc_issuer: str = ""
    """OpenID Provider of the web app; empty makes ``tokpay serve`` start the dev provider."""
    oidc_client_id: str = "tokpay-web"
    oidc_client_secret: str = ""
    oidc_token_auth_method: Literal["client_secret_basic", "client_secret_post"] = (
        "client_secret_basic"
    )
    """How the web app authenticates to the provider's token endpoint (as registered there)."""
    oidc_trust_email: bool = False
    """Trust the configured issuer's ``email`` claim when it sends no ``email_verified``
    (Canaille, some Entra set-ups); only for an issuer that verifies addresses itself."""
    oidc_dev: bool = False
    """Set by ``tokpay serve`` when the issuer is its own dev provider (the login page says so)."""
    dev_oidc_port: int = 0
    """Port of the dev provider; 0 picks a free one."""
    secure_cookies: bool = False
    """Mark the session cookie Secure even when the gateway itself sees plain http (behind TLS)."""
    session_ttl_seconds: int = 12 * 3600
    """A session ends this long after login, however active."""
    session_idle_seconds: int = 30 * 60
    """A session ends after this long without a request."""
    login_starts_per_minute: int = 30
    """Logins one client address may start per minute in each gateway process (then 429)."""
    web_db: Path | None = None
    """SQLite file of web sessions and the user directory; default DATA_DIR/web.sqlite3."""

    def web_db_path(self) -> Path:
        return self.web_db if self.web_db is not None else self.data_dir / "web.sqlite3"

    def api_key_required(self) -> bool:
        loopback = self.bind_host in {"127.0.0.1", "localhost", "::1"}
        return bool(self.api_key) or not (self.environment == "development" and loopback)

    allowed_hosts: str = ""
    """Comma-separated host names (``Host`` header, port excluded; ``*.example.com`` for
    subdomains) served besides the loopback names of a loopback bind and a specific bind
    address; any other ``Host`` gets 400 (DNS rebinding). ``*`` serves every host."""
