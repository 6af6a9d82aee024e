"""Shared by the web tests: a small real catalog (synthetic fins, ImageNet features), users of every
role, logged-in API clients, and a real `whaleid serve` process on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
from fastapi.testclient import TestClient

from whaleid.store.catalog import CatalogStore
from whaleid.store.intake import EncounterInfo
from whaleid.web.config import WebConfig
from whaleid.web.server import create_app
from whaleid.web.users import add_user

PASSWORD = "a long enough test password"
ROLES = ("viewer", "reviewer", "admin")
KNOWN = 5  # individuals imported; the rest of the synthetic fins arrive in an encounter awaiting review


def build_catalog(folder: Path, synth_csv: Path, model: Path, db: str | None = None) -> CatalogStore:
    """KNOWN fins imported as the catalog, the others added as one pending encounter; a user per role."""
    table = pd.read_csv(synth_csv)
    first = sorted(table["individual_id"].unique())[:KNOWN]
    folder.mkdir(parents=True, exist_ok=True)
    table[table["individual_id"].isin(first)].to_csv(folder / "known.csv", index=False)
    store = CatalogStore.create(folder / "catalog", model.parent, db)
    store.intake.import_catalog(folder / "known.csv", synth_csv.parent / "images")
    images = synth_csv.parent / "images"
    season = [images / name for name in table[~table["individual_id"].isin(first)]["image"]]
    store.intake.add(season, EncounterInfo(date="2026-07-01", place="test bay"))
    for role in ROLES:
        add_user(store, role, PASSWORD, role)
    return store


def client(store: CatalogStore, role: str | None = None, config: WebConfig | None = None) -> TestClient:
    """A TestClient of the app (use it in a ``with`` block: that runs the job worker), logged in as the
    user of ``role`` (its CSRF token set as a default header) or anonymous."""
    test_client = TestClient(create_app(store, config))
    if role is not None:
        answer = test_client.post("/api/login", json={"name": role, "password": PASSWORD})
        answer.raise_for_status()
        test_client.headers["X-CSRF-Token"] = answer.json()["csrf"]
    return test_client


def wait_for_job(get, job_id: int, timeout: float = 120.0) -> dict:
    """Poll a job (``get`` is a client's get) until it is done or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`whaleid serve DIR` in its own process, on 127.0.0.1; stopped (or killed) by the test."""

    def __init__(self, directory: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "whaleid", "serve", str(directory), "--port", str(self.port), *args]
        self.log = open(directory.parent / f"serve-{self.port}.log", "w")
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"whaleid serve exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                httpx.get(f"{self.url}/login", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError("whaleid serve did not answer within 180 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()

    def kill(self) -> None:
        """kill -9: no cleanup at all, as a crash or a power cut."""
        self.process.kill()
        self.process.wait()
        self.log.close()
