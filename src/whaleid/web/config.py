"""The server's settings (command-line flags of `whaleid serve`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from whaleid.web.jobs import UploadLimits


@dataclass(frozen=True)
class WebConfig:
    limits: UploadLimits = field(default_factory=UploadLimits)
    session_hours: float = 12.0
    secure_cookies: bool = False  # set behind HTTPS: cookies then travel only over it
    login_attempts: int = 5  # failed logins per address (and per name) per 5 minutes
    proxy: str | None = None  # the reverse proxy's addresses: its X-Forwarded-For is believed; None: nobody's
    start_worker: bool = True
