"""`whaleid serve`: the review web app over a catalog folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from whaleid.app.command import command, console


@command("serve")
def serve(
    directory: Path = typer.Argument(..., help="The catalog folder (with --demo: made there when empty)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 for the whole lab network."),
    port: int = typer.Option(8000, min=1, max=65535),
    db: Optional[str] = typer.Option(None, help="The catalog's database URL, when not the one it was made with."),
    demo: bool = typer.Option(False, "--demo", help="Build a synthetic demo catalog with photos to review."),
    max_file_mb: float = typer.Option(50, min=0.01, help="Largest photo accepted."),
    max_request_mb: float = typer.Option(60, min=0.01, help="Largest upload request accepted."),
    max_megapixels: float = typer.Option(100, min=0.01, help="Largest photo accepted, in pixels (bomb guard)."),
    secure_cookies: bool = typer.Option(False, help="Send cookies over HTTPS only (set behind a TLS proxy)."),
    proxy: Optional[str] = typer.Option(
        None,
        help="The reverse proxy's address(es), comma-separated (e.g. 127.0.0.1): only then are its "
        "X-Forwarded-For/-Proto headers believed (for the login limit's address).",
    ),
):
    """The review web app: upload surveys, compare each photo with its top-5 animals, decide."""
    from whaleid.web.config import WebConfig
    from whaleid.web.demo import DEMO_ADMIN, DEMO_USER, demo_catalog, demo_logins
    from whaleid.web.jobs import UploadLimits
    from whaleid.web.server import serve as run

    if demo:
        console.print(f"building the demo catalog in {directory} (when empty) ...")
        logins = demo_logins(demo_catalog(directory, db))
        for role, name in (("reviewer", DEMO_USER), ("admin", DEMO_ADMIN)):
            console.print(f"demo {role}:  name [bold]{name}[/bold]  password [bold]{logins[name]}[/bold]")
    limits = UploadLimits(
        file_bytes=int(max_file_mb * 2**20),
        request_bytes=int(max(max_request_mb, max_file_mb + 1) * 2**20),
        pixels=int(max_megapixels * 1e6),
    )
    run(directory, host, port, WebConfig(limits=limits, secure_cookies=secure_cookies, proxy=proxy), db)
