"""Settings: one object, read from the environment with the ``REFGATE_`` prefix.

Nested groups use ``__`` (``REFGATE_AUTH__ACCESS_TOKEN_TTL=300``). ``get_settings()``
is cached; tests call ``get_settings.cache_clear()`` or build ``Settings`` directly.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuthSettings(BaseModel):
    access_token_ttl: int = Field(600, ge=30, le=3600, description="seconds")
    assertion_max_lifetime: int = Field(300, ge=10, le=3600, description="seconds")
    clock_skew: int = Field(30, ge=0, le=300, description="seconds of leeway on iat/nbf")


class ReferralSettings(BaseModel):
    max_fields: int = Field(64, ge=1, le=1024)
    max_field_bytes: int = Field(64 * 1024, ge=16, le=16 * 1024 * 1024)
    max_consent_days: int = Field(180, ge=1, le=3650)
    max_clock_skew: int = Field(300, ge=0, description="seconds a manifest created_at may differ")
    max_recipients: int = Field(32, ge=1, le=1024)


class AuditSettings(BaseModel):
    log_origin: str = "refgate.local/audit-log"
    sequencer_enabled: bool = True
    batch_size: int = Field(5000, ge=1, le=100_000)
    poll_interval: float = Field(0.2, gt=0, le=60)
    checkpoint_interval: float = Field(1.0, ge=0, le=3600)


class KeySettings(BaseModel):
    token_key_file: Path | None = None
    log_key_file: Path | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REFGATE_", env_nested_delimiter="__", extra="ignore"
    )

    env: Literal["development", "production", "test"] = "development"
    data_dir: Path = Path(".refgate")
    database_url: str | None = None
    public_url: str | None = None
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    db_pool_size: int = Field(10, ge=1, le=200)
    auth: AuthSettings = AuthSettings()
    referrals: ReferralSettings = ReferralSettings()
    audit: AuditSettings = AuditSettings()
    keys: KeySettings = KeySettings()

    @model_validator(mode="after")
    def _production_needs_public_url(self) -> Settings:
        if self.env == "production" and not self.public_url:
            raise ValueError("REFGATE_PUBLIC_URL is required in production")
        if self.public_url:
            self.public_url = self.public_url.rstrip("/")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The configured URL, or an SQLite file inside the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'refgate.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
