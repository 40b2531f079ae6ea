"""Settings of the reference application itself (prefix ``AGENTS_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AgentSettings(BaseSettings):
    """Knobs of the reference agents (the framework's own live in ``streams.settings``)."""

    model_config = SettingsConfigDict(env_prefix="AGENTS_", env_file=".env", extra="ignore")

    seller_api_latency_ms: float = Field(
        0.0, ge=0, description="Simulated latency of the seller push API per call (demos of slow sinks)."
    )

    seller_api_failing_sellers: str = Field(
        "", description="Comma-separated seller ids the simulated seller API fails for (outage drills)."
    )

    search_indexer_version: int = Field(
        2, ge=1, le=2, description="Search document version: 1 is the released bug (no seller), 2 the fix."
    )

    sms_provider_url: str = Field(
        "http://127.0.0.1:8025", description="Base URL of the SMS provider (the demo's simulator by default)."
    )

    sms_rate: float = Field(200.0, gt=0, description="SMS requests per second the handler allows itself.")

    sms_timeout: float = Field(5.0, gt=0, description="Seconds one SMS request may take.")

    mail_failing_buyers: str = Field(
        "", description="Comma-separated buyer ids whose receipts the simulated mail API refuses (failure-log drills)."
    )

    mail_flaky_every: int = Field(0, ge=0, description="Every n-th mail API call times out once (0: never).")

    mail_latency_ms: float = Field(0.0, ge=0, description="Simulated latency of one mail API call.")

    def failing_sellers(self) -> set[str]:
        return {s.strip() for s in self.seller_api_failing_sellers.split(",") if s.strip()}


agent_settings = AgentSettings()
