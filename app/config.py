"""Settings: one object, read from the environment with the ``REFGATE_`` prefix.

Nested groups use ``__`` (``REFGATE_AUTH__ACCESS_TOKEN_TTL=300``). ``get_settings()``
is cached; tests call ``get_settings.cache_clear()`` or build ``Settings`` directly.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
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


class WitnessEndpoint(BaseModel):
    """A C2SP tlog-witness: its submission URL prefix and verifier key (type 0x04)."""

    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2048)
    vkey: str = Field(max_length=512)

    @field_validator("vkey")
    @classmethod
    def _witness_key(cls, vkey: str) -> str:
        from app.crypto.cosignature import parse_witness_vkey

        return parse_witness_vkey(vkey).vkey  # raises a ValueError naming the problem


class AuditSettings(BaseModel):
    log_origin: str = "refgate.local/audit-log"
    sequencer_enabled: bool = True
    batch_size: int = Field(5000, ge=1, le=100_000)
    poll_interval: float = Field(0.2, gt=0, le=60)
    checkpoint_interval: float = Field(1.0, ge=0, le=3600)
    witnesses: list[WitnessEndpoint] = Field(
        default_factory=list,
        max_length=32,
        description='JSON list of {"url", "vkey"}: witnesses asked to cosign each checkpoint',
    )
    witness_timeout: float = Field(10.0, gt=0, le=120, description="seconds per submission")
    witness_retry_base: float = Field(2.0, gt=0, le=3600, description="first retry, seconds")
    witness_retry_cap: float = Field(300.0, gt=0, le=86400, description="longest retry wait")
    witness_poll_interval: float = Field(1.0, gt=0, le=60)


class WebhookSettings(BaseModel):
    """Push delivery. The default retry schedule (30 s doubling, capped at 6 h, 12
    attempts) keeps trying for about 14 hours before a delivery is dead-lettered."""

    dispatcher_enabled: bool = True
    allow_private_targets: bool = Field(
        False,
        description="allow http:// and URLs resolving to private, loopback or link-local "
        "addresses (local testing only)",
    )
    max_attempts: int = Field(12, ge=1, le=50)
    backoff_base: float = Field(30.0, ge=0, le=3600, description="seconds before the first retry")
    backoff_cap: float = Field(6 * 3600.0, ge=0, le=86400, description="longest wait, seconds")
    timeout: float = Field(10.0, gt=0, le=120, description="seconds per delivery attempt")
    poll_interval: float = Field(1.0, gt=0, le=60)
    batch_size: int = Field(50, ge=1, le=1000)
    concurrency: int = Field(10, ge=1, le=200)
    max_per_agency: int = Field(20, ge=1, le=1000)
    secret_grace: int = Field(
        24 * 3600, ge=0, description="seconds the previous secret still signs after a rotation"
    )


class RetentionSettings(BaseModel):
    """How long ciphertexts and wrapped keys outlive a referral's useful life.

    Metadata, statuses and the audit log are kept; only what could be decrypted goes.
    Consents expire within ``referrals.max_consent_days`` (180 days by default), so
    ``expired_days`` usually decides first for referrals that stay open.
    """

    closed_days: int = Field(
        90, ge=0, description="after every recipient is completed, failed or rejected"
    )
    withdrawn_days: int = Field(30, ge=0, description="after the sender withdrew the referral")
    expired_days: int = Field(
        30, ge=0, description="after the last recipient consent expired or was revoked"
    )
    interval: float = Field(3600.0, gt=0, description="seconds between periodic purges")
    batch_size: int = Field(500, ge=1, le=10_000, description="referrals purged per run")


class RateLimitSettings(BaseModel):
    """Requests per fixed window; see ``app.ratelimit`` for what each limit counts."""

    enabled: bool = True
    backend: Literal["auto", "database", "memory"] = Field(
        "auto",
        description="database: shared by every worker through the database; memory: per "
        "process; auto: database on PostgreSQL, memory on SQLite",
    )
    share_every: float = Field(
        0.5,
        ge=0,
        le=10,
        description="database backend: seconds between a worker's exchanges of counts with "
        "the others (0: one upsert per request, exact but a statement on every request)",
    )
    token_per_client: int = Field(30, ge=1, description="tokens issued per client per minute")
    token_per_address: int = Field(
        120, ge=1, description="token requests per source address per minute"
    )
    api_per_client: int = Field(600, ge=1, description="/v1 requests per client per minute")
    api_burst: int = Field(100, ge=1, description="/v1 requests per client per 10 seconds")
    anonymous_per_address: int = Field(
        120, ge=1, description="/v1 requests without a valid token per address per minute"
    )


class MetricsSettings(BaseModel):
    """``GET /metrics`` is served only to ``Authorization: Bearer <token>``; unset, it is 404."""

    token: SecretStr | None = Field(None, min_length=24)


class CorsSettings(BaseModel):
    """No CORS headers at all unless origins are listed; never a wildcard."""

    allow_origins: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("allow_origins")
    @classmethod
    def _explicit_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", origin):
                raise ValueError(
                    f"CORS origin {origin!r} must be scheme://host[:port], no wildcard or path"
                )
        return origins


class KeySettings(BaseModel):
    token_key_file: Path | None = None
    previous_token_key_file: Path | None = Field(
        None,
        description="during a token-key rotation: the previous key, verify-only and listed in "
        "the JWKS, so tokens it signed stay valid until they expire; remove it after one TTL",
    )
    log_key_file: Path | None = None
    webhook_key_file: Path | None = Field(
        None, description="32-byte key that seals webhook signing secrets at rest"
    )


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
    webhooks: WebhookSettings = WebhookSettings()
    retention: RetentionSettings = RetentionSettings()
    keys: KeySettings = KeySettings()
    ratelimit: RateLimitSettings = RateLimitSettings()
    metrics: MetricsSettings = MetricsSettings()
    cors: CorsSettings = CorsSettings()

    @model_validator(mode="after")
    def _production_needs_public_url(self) -> Settings:
        if self.env == "production" and not self.public_url:
            raise ValueError("REFGATE_PUBLIC_URL is required in production")
        if self.public_url:
            self.public_url = self.public_url.rstrip("/")
        return self

    def risks(self) -> list[str]:
        """Settings an operator should know are risky, in plain words (logged at start)."""
        out = []
        sqlite = self.resolved_database_url.startswith("sqlite")
        if sqlite and self.env == "production":
            out.append("the database is the embedded SQLite file: use PostgreSQL in production "
                       "(REFGATE_DATABASE_URL)")
        if not self.public_url:
            out.append("no REFGATE_PUBLIC_URL: token audiences follow each request's Host "
                       "header; set it behind a proxy or in production")
        if not self.ratelimit.enabled:
            out.append("rate limits are off (REFGATE_RATELIMIT__ENABLED=false)")
        if not self.audit.sequencer_enabled:
            out.append("the audit sequencer is off in this process: events wait for "
                       "another worker or `refgate-server sequence`")
        if self.webhooks.allow_private_targets:
            out.append("webhooks may call private and loopback addresses "
                       "(REFGATE_WEBHOOKS__ALLOW_PRIVATE_TARGETS)")
        return out

    @property
    def resolved_database_url(self) -> str:
        """The configured URL, or an SQLite file inside the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'refgate.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
