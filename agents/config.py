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

    def failing_sellers(self) -> set[str]:
        return {s.strip() for s in self.seller_api_failing_sellers.split(",") if s.strip()}


agent_settings = AgentSettings()
