"""One ``Settings`` object, read from the environment once in the composition root.

Platform variables keep their ecosystem names; Ackgate's own are prefixed ``ACKGATE_``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from uuid import UUID

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.core import messages
from bot.core.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The Bot Framework's public cloud (SDK-NOTES §2, §3); the TEAMS_* settings move them (tests, demo).
TEAMS_PUBLIC_OPENID_METADATA_URL = "https://login.botframework.com/v1/.well-known/openidconfiguration"
TEAMS_PUBLIC_LOGIN_URL = "https://login.microsoftonline.com"
TEAMS_PUBLIC_SERVICE_URL = "https://smba.trafficmanager.net/teams/"
TEAMS_PUBLIC_SERVICE_URL_HOSTS = ("smba.trafficmanager.net", "*.trafficmanager.net", "*.botframework.com")
TEAMS_APP_TYPES = ("SingleTenant", "MultiTenant")


def _csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    # Slack
    slack_bot_token: SecretStr | None = Field(default=None, validation_alias="SLACK_BOT_TOKEN")
    slack_signing_secret: SecretStr | None = Field(default=None, validation_alias="SLACK_SIGNING_SECRET")
    slack_api_url: str = Field(default="https://slack.com/api/", validation_alias="SLACK_API_URL")

    # Microsoft Teams (the Azure Bot registration); the app id turns Teams on
    microsoft_app_id: str | None = Field(
        default=None, validation_alias=AliasChoices("MICROSOFT_APP_ID", "MicrosoftAppId")
    )
    microsoft_app_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MICROSOFT_APP_PASSWORD", "MicrosoftAppPassword")
    )
    microsoft_app_type: str = Field(
        default="SingleTenant", validation_alias=AliasChoices("MICROSOFT_APP_TYPE", "MicrosoftAppType")
    )
    microsoft_app_tenant_id: str | None = Field(
        default=None, validation_alias=AliasChoices("MICROSOFT_APP_TENANT_ID", "MicrosoftAppTenantId")
    )
    teams_openid_metadata_url: str = Field(
        default=TEAMS_PUBLIC_OPENID_METADATA_URL, validation_alias="TEAMS_OPENID_METADATA_URL"
    )
    teams_login_url: str = Field(default=TEAMS_PUBLIC_LOGIN_URL, validation_alias="TEAMS_LOGIN_URL")
    teams_service_url: str = Field(default=TEAMS_PUBLIC_SERVICE_URL, validation_alias="TEAMS_SERVICE_URL")
    teams_service_url_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(TEAMS_PUBLIC_SERVICE_URL_HOSTS), validation_alias="TEAMS_SERVICE_URL_HOSTS"
    )
    teams_invoke_budget_seconds: float = Field(default=2.5, gt=0, le=10, validation_alias="TEAMS_INVOKE_BUDGET_SECONDS")

    # PagerDuty
    pagerduty_api_token: SecretStr | None = Field(default=None, validation_alias="PAGERDUTY_API_TOKEN")
    pagerduty_api_url: str = Field(default="https://api.pagerduty.com", validation_alias="PAGERDUTY_API_URL")
    pagerduty_from_email: str | None = Field(default=None, validation_alias="PAGERDUTY_FROM_EMAIL")
    pagerduty_timeout_seconds: float = Field(default=4.0, validation_alias="PAGERDUTY_TIMEOUT_SECONDS")
    # Ackgate's own REST budget per rolling minute, kept under PagerDuty's 960 per API key; raise it
    # only when PagerDuty has raised the key's limit.
    pagerduty_requests_per_minute: int = Field(
        default=900, ge=1, le=100_000, validation_alias="PAGERDUTY_REQUESTS_PER_MINUTE"
    )
    # How long a user's acknowledged incidents (when there are any) answer their next requests;
    # 0 asks PagerDuty every time. An incident webhook drops them at once on the replica it reaches.
    pagerduty_incident_cache_seconds: float = Field(
        default=5.0, ge=0, le=60, validation_alias="PAGERDUTY_INCIDENT_CACHE_SECONDS"
    )

    # Ackgate
    database_url: str = Field(default="sqlite:///ackgate.db", validation_alias="ACKGATE_DATABASE_URL")
    policy_file: Path | None = Field(default=None, validation_alias="ACKGATE_POLICY_FILE")
    public_url: str = Field(default="http://localhost:3000", validation_alias="ACKGATE_PUBLIC_URL")
    host: str = Field(default="0.0.0.0", validation_alias="ACKGATE_HOST")  # noqa: S104 - a server binds all
    port: int = Field(default=3000, ge=1, le=65535, validation_alias="ACKGATE_PORT")
    admins: Annotated[list[str], NoDecode] = Field(default_factory=list, validation_alias="ACKGATE_ADMINS")
    provisioner_secret: SecretStr | None = Field(default=None, validation_alias="ACKGATE_PROVISIONER_SECRET")
    approval_timeout_minutes: int = Field(default=60, ge=1, validation_alias="ACKGATE_APPROVAL_TIMEOUT_MINUTES")
    log_level: str = Field(default="INFO", validation_alias="ACKGATE_LOG_LEVEL")
    # How long a stop (SIGTERM) may take to finish in-flight work; under Kubernetes' default 30 s grace.
    drain_seconds: float = Field(default=20.0, ge=0, le=3600, validation_alias="ACKGATE_DRAIN_SECONDS")
    # Names this process in the claims it takes; default host name and port (see README, Operations).
    instance_id: str | None = Field(default=None, min_length=1, validation_alias="ACKGATE_INSTANCE_ID")

    # Authentication requests, incident mirroring and administration
    pagerduty_events_url: str = Field(default="https://events.pagerduty.com", validation_alias="PAGERDUTY_EVENTS_URL")
    pagerduty_integration_key: SecretStr | None = Field(default=None, validation_alias="PAGERDUTY_INTEGRATION_KEY")
    pagerduty_webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, validation_alias="PAGERDUTY_WEBHOOK_SECRET"
    )
    secret_key: SecretStr | None = Field(default=None, validation_alias="ACKGATE_SECRET_KEY")
    auth_link_minutes: int = Field(default=10, ge=1, le=1440, validation_alias="ACKGATE_AUTH_LINK_MINUTES")
    admin_usergroup: str | None = Field(default=None, validation_alias="ACKGATE_ADMIN_USERGROUP")
    mirror_channel: str | None = Field(default=None, validation_alias="ACKGATE_MIRROR_CHANNEL")
    mirror_services: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="ACKGATE_MIRROR_SERVICES"
    )
    incident_check_seconds: int = Field(default=60, ge=10, validation_alias="ACKGATE_INCIDENT_CHECK_SECONDS")

    # Sign-in on the authentication pages (OpenID Connect); without an issuer, holding the link is the proof
    oidc_issuer: str | None = Field(default=None, validation_alias="ACKGATE_OIDC_ISSUER")
    oidc_client_id: str | None = Field(default=None, validation_alias="ACKGATE_OIDC_CLIENT_ID")
    oidc_client_secret: SecretStr | None = Field(default=None, validation_alias="ACKGATE_OIDC_CLIENT_SECRET")

    @field_validator("admins", mode="before")
    @classmethod
    def _split_admins(cls, v: object) -> object:
        parts = _csv(v)
        return [p.lower() for p in parts] if isinstance(parts, list) else parts

    @field_validator("mirror_services", mode="before")
    @classmethod
    def _split_services(cls, v: object) -> object:
        return _csv(v)

    @field_validator("teams_service_url_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: object) -> object:
        parts = _csv(v)
        return [p.lower() for p in parts] if isinstance(parts, list) else parts

    @field_validator("microsoft_app_type")
    @classmethod
    def _known_app_type(cls, v: str) -> str:
        for known in TEAMS_APP_TYPES:
            if v.strip().lower() == known.lower():
                return known
        if v.strip().lower() == "userassignedmsi":
            raise ValueError("UserAssignedMSI is not supported yet; register the bot as SingleTenant")
        raise ValueError(f"{v!r} is not one of {', '.join(TEAMS_APP_TYPES)}")

    @field_validator("microsoft_app_tenant_id", mode="before")
    @classmethod
    def _blank_tenant_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("pagerduty_webhook_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, v: object) -> object:
        return _csv(v)

    @field_validator(
        "pagerduty_api_url",
        "pagerduty_events_url",
        "slack_api_url",
        "public_url",
        "teams_openid_metadata_url",
        "teams_login_url",
        "teams_service_url",
    )
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with https:// (or http:// for a local test server)")
        return v

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, v: str) -> str:
        level = v.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"{v!r} is not a log level")
        return level

    @model_validator(mode="after")
    def _slack_pair(self) -> Settings:
        if (self.slack_bot_token is None) != (self.slack_signing_secret is None):
            missing = "SLACK_SIGNING_SECRET" if self.slack_signing_secret is None else "SLACK_BOT_TOKEN"
            raise ValueError(f"{missing} is missing: Slack needs both SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET")
        return self

    @model_validator(mode="after")
    def _teams_complete(self) -> Settings:
        if self.microsoft_app_id is None:
            if self.microsoft_app_password is not None:
                raise ValueError(messages.TEAMS_NO_APP_ID)
            return self
        try:
            UUID(self.microsoft_app_id.strip())
        except ValueError:
            # botbuilder reads an empty app id as "authentication disabled": never run Teams that way.
            raise ValueError(messages.TEAMS_BAD_APP_ID) from None
        self.microsoft_app_id = self.microsoft_app_id.strip().lower()
        if self.microsoft_app_password is None or not self.microsoft_app_password.get_secret_value().strip():
            raise ValueError(messages.TEAMS_NO_APP_PASSWORD)
        if self.microsoft_app_type == "SingleTenant" and self.microsoft_app_tenant_id is None:
            raise ValueError(messages.TEAMS_NO_TENANT)
        if not self.teams_service_url_hosts:
            raise ValueError(messages.TEAMS_NO_SERVICE_HOSTS)
        return self

    @field_validator("oidc_issuer", "oidc_client_id", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        if self.oidc_issuer is None:
            if self.oidc_client_id is not None or self.oidc_client_secret is not None:
                raise ValueError("ACKGATE_OIDC_ISSUER is missing: sign-in needs the provider's issuer URL too")
            return self
        if not self.oidc_issuer.startswith(("https://", "http://")):
            raise ValueError("ACKGATE_OIDC_ISSUER must start with https:// (or http:// for a local test provider)")
        if self.oidc_client_id is None:
            raise ValueError(
                "ACKGATE_OIDC_CLIENT_ID is missing: sign-in needs the client id Ackgate has at the provider"
            )
        if self.secret_key is None:
            raise ValueError("ACKGATE_SECRET_KEY is missing: sign-in needs it to seal its cookies")
        return self

    @property
    def slack_enabled(self) -> bool:
        return self.slack_bot_token is not None

    @property
    def teams_enabled(self) -> bool:
        return self.microsoft_app_id is not None

    @property
    def chat_platforms(self) -> tuple[str, ...]:
        """The chat platforms configured, in a fixed order. A platform joins with a settings block,
        a line here, and its ``mount`` in ``bot.runtime.app.PLATFORM_MOUNTS``."""
        configured = {"slack": self.slack_enabled, "teams": self.teams_enabled}
        return tuple(name for name, on in configured.items() if on)


_FIX = {
    "SLACK_BOT_TOKEN": "set it to the app's Bot User OAuth Token (xoxb-…), from OAuth & Permissions",
    "SLACK_SIGNING_SECRET": "set it to the Signing Secret from the Slack app's Basic Information page",
    "PAGERDUTY_API_TOKEN": "create a REST API key in PagerDuty (Integrations → API Access Keys) and set it",
    "ACKGATE_POLICY_FILE": "point it at your policy YAML; examples/policy.yaml is a commented starting point",
    "ACKGATE_PORT": "use a port number between 1 and 65535",
    "ACKGATE_LOG_LEVEL": f"use one of {', '.join(LOG_LEVELS)}",
    "ACKGATE_DRAIN_SECONDS": "use a number of seconds, e.g. 20 (under your orchestrator's grace period)",
}


def _alias(loc: tuple[int | str, ...]) -> str:
    field = Settings.model_fields.get(str(loc[0])) if loc else None
    alias = field.validation_alias if field is not None else None
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return str(loc[0]) if loc else "settings"


def load_settings(*, require_runtime: bool = True, **overrides: object) -> Settings:
    """Read the environment. Raises :class:`ConfigError` with one line naming the setting and the fix."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        name = _alias(tuple(err["loc"])) if err["loc"] else ""
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not name:
            raise ConfigError(f"Configuration error: {msg}.") from None
        fix = _FIX.get(name, "")
        raise ConfigError(f"{name} is invalid: {msg}. {fix[:1].upper()}{fix[1:]}".strip()) from None
    if require_runtime:
        for name, value in (
            ("PAGERDUTY_API_TOKEN", settings.pagerduty_api_token),
            ("ACKGATE_POLICY_FILE", settings.policy_file),
        ):
            if value is None:
                raise ConfigError(f"{name} is not set: {_FIX[name]}.")
        if not settings.chat_platforms:
            raise ConfigError(messages.NO_CHAT_PLATFORM)
    return settings
