"""TokPay's settings, read once from the environment (prefix ``TOKPAY_``)."""

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOKPAY_")

    ray_address: str = "auto"
    """Ray cluster the gateway attaches to."""
    data_dir: Path = Path("var/tokpay")
    fsync: bool = True
    """Turning fsync off voids the durability contract; only benchmarks of the ceiling do it."""
