"""Background work kept in the database: an upload's photos are staged, then one worker thread crops,
embeds and matches them; a server killed mid-job finds the job again at start and runs it again
(the catalog skips photos it already has by content, so nothing is added twice)."""

from __future__ import annotations

import hashlib
import io
import logging
import secrets
import shutil
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from PIL import Image

from whaleid.data.images import ImageError, decode_bytes
from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.store import jobs
from whaleid.store.catalog import CatalogStore
from whaleid.store.intake import EncounterInfo
from whaleid.train.retrain import recipe_trainer

log = logging.getLogger(__name__)
ACCEPTED = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "TIFF": ".tif", "HEIF": ".heic"}
STAGING = "uploads"


def public(store: CatalogStore, message: str) -> str:
    """A library message as the web may show it: the library names the catalog's folder (right in a
    terminal), but a browser must not learn the server's paths."""
    for folder in sorted({str(store.dir.resolve()), str(store.dir)}, key=len, reverse=True):
        message = message.replace(folder, "the catalog")
    return message


class Refused(UserError):
    """An upload or request the server will not take; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    file_bytes: int = 50 * 2**20
    request_bytes: int = 60 * 2**20
    pixels: int = 100_000_000
    files_per_job: int = 5000
    idle_hours: float = 24.0  # an upload that long without a photo (or a start) expires, its staged photos removed


class PixelBudget:
    """At most ``capacity`` pixels decoded at once, across requests and the worker: a decode waits for room
    rather than adding its memory to everyone else's (each photo is bounded alone; this bounds their sum)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_use = 0
        self._room = threading.Condition()

    @contextmanager
    def hold(self, pixels: int, wait: float | None = 60.0) -> Iterator[None]:
        """Room for ``pixels`` while the block runs; 503 when none came within ``wait`` seconds (None: no limit)."""
        pixels = min(pixels, self.capacity)
        with self._room:
            if not self._room.wait_for(lambda: self.in_use + pixels <= self.capacity, wait):
                raise Refused(503, "the server is busy decoding other photos: try again in a minute")
            self.in_use += pixels
        try:
            yield
        finally:
            with self._room:
                self.in_use -= pixels
                self._room.notify_all()


def header_pixels(source: bytes | Path) -> int:
    """The pixels a photo decodes to, read from its header alone (0 when unreadable: its decode fails at once)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is all that is read
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                return im.width * im.height
    except Exception:
        return 0


class Jobs:
    """Stages, queues and runs the jobs of one catalog (one worker thread per server); their rows are
    ``store.jobs``'s."""

    def __init__(self, store: CatalogStore, limits: UploadLimits, poll: float = 0.5, sweep: float = 600.0):
        self.store, self.limits, self.poll, self.sweep = store, limits, poll, sweep
        self.budget = PixelBudget(2 * limits.pixels)  # the worker's photo and one request's, at the largest
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ creating jobs

    def create_upload(self, encounter: EncounterInfo, user: str) -> dict:
        """An encounter and an upload job waiting for its photos."""
        return jobs.new_upload(self.store, encounter, user)

    def stage(self, job_id: int, data: bytes, original_name: str) -> dict:
        """One photo of an upload, decoded in memory and stored under a name the server chose; refused
        (nothing written) when it is too big, not a JPEG/PNG/TIFF/HEIC, truncated, corrupt or a bomb."""
        if len(data) > self.limits.file_bytes:
            raise Refused(413, f"{_shown(original_name)}: larger than {self.limits.file_bytes / 2**20:g} MB")
        pixels = header_pixels(data)
        try:
            with self.budget.hold(pixels if pixels <= self.limits.pixels else 0):  # larger: refused undecoded
                fmt = decode_bytes(data, self.limits.pixels)
        except ImageError as error:
            status = 413 if "too large" in error.reason else 415 if error.reason == "not an image" else 422
            raise Refused(status, f"{_shown(original_name)}: {error.reason}") from None
        if fmt not in ACCEPTED:
            raise Refused(415, f"{_shown(original_name)}: {fmt} photos are not accepted (JPEG, PNG, TIFF or HEIC)")
        jobs.check_receiving(self.store, job_id)  # before writing: no file for a job that takes no photos
        name = f"{STAGING}/{job_id}/{secrets.token_hex(12)}{ACCEPTED[fmt]}"
        target = self.store.dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
        try:
            entry = {"file": name, "name": original_name[:500], "size": len(data)}
            if not jobs.add_staged(self.store, job_id, entry, self.limits.files_per_job):
                raise Refused(413, f"an upload holds at most {self.limits.files_per_job} photos")
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return {"job": job_id, "name": original_name, "format": fmt, "size": len(data)}

    def start(self, job_id: int) -> dict:
        jobs.queue_upload(self.store, job_id)
        self._wake.set()
        return self.get(job_id)

    def create_reindex(self, version: int, user: str) -> dict:
        """A job that embeds every photo with model ``version`` and makes it the active one."""
        if version not in [m["version"] for m in self.store.models.listed()]:
            raise Refused(404, f"no model v{version} in this catalog")
        job = jobs.new_reindex(self.store, version, user)
        self._wake.set()
        return job

    def create_retrain(self, user: str, holdout: float = 0.3, seed: int = 0) -> dict:
        """A job that trains the next model on the confirmed photos, judges it and registers it (not active);
        a catalog too small to train on is refused now, not after a queue's wait."""
        self.store.retrain.split(holdout, seed)
        job = jobs.new_retrain(self.store, {"holdout": holdout, "seed": seed}, user)
        self._wake.set()
        return job

    # ------------------------------------------------------------------ reading jobs

    def get(self, job_id: int) -> dict:
        return jobs.job(self.store, job_id)

    def recent(self, limit: int = 20) -> list[dict]:
        return jobs.recent(self.store, limit)

    # ------------------------------------------------------------------ the worker

    def start_worker(self) -> None:
        """Jobs a killed server left running are queued again, then one thread works through the queue."""
        jobs.requeue_running(self.store)
        self.expire()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="whaleid-jobs", daemon=True)
        self._thread.start()

    def stop_worker(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        swept = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - swept >= self.sweep:
                self.expire()
                swept = time.monotonic()
            if not self.run_next():
                self._wake.wait(self.poll)
                self._wake.clear()

    def expire(self) -> list[int]:
        """Uploads left waiting for photos longer than ``idle_hours`` expire, their staged photos removed."""
        expired = jobs.expire_uploads(self.store, timedelta(hours=self.limits.idle_hours))
        for job_id in expired:
            shutil.rmtree(self.store.dir / STAGING / str(job_id), ignore_errors=True)
        return expired

    def run_next(self) -> bool:
        """Run the oldest queued job, if any; whether there was one."""
        claimed = jobs.claim_next(self.store)
        if claimed is None:
            return False
        job_id, kind, payload = claimed
        try:
            with self.budget.hold(self.limits.pixels, wait=None):  # the job's share: a photo of the largest size
                result = {"upload": self._upload, "reindex": self._reindex, "retrain": self._retrain}[kind](
                    job_id, payload
                )
            jobs.finish(self.store, job_id, "done", result=result)
            shutil.rmtree(self.store.dir / STAGING / str(job_id), ignore_errors=True)
        except UserError as error:
            jobs.finish(self.store, job_id, "failed", error=public(self.store, str(error)))
        except Exception as error:  # one bad job never stops the worker; the log has the details
            log.error("job %s failed:\n%s", job_id, traceback.format_exc())
            jobs.finish(
                self.store, job_id, "failed", error=f"internal error ({type(error).__name__}): see the server log"
            )
        return True

    def _upload(self, job_id: int, payload: dict) -> dict:
        files = payload["files"]
        paths = [self.store.dir / f["file"] for f in files]
        added = self.store.intake.add(
            paths, payload["encounter"], names=[f["name"] for f in files], progress=self._progress(job_id)
        )
        return {
            "photos": jobs.photo_ids(self.store, [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]),
            "added": len(added.added),
            "duplicates": len(added.duplicates),
            "rejected": [{"name": n, "reason": r} for n, r in added.rejected],
        }

    def _reindex(self, job_id: int, payload: dict) -> dict:
        return {"embedded": self.store.gallery.reindex(version=payload["version"], progress=self._progress(job_id))}

    def _retrain(self, job_id: int, payload: dict) -> dict:
        trainer = recipe_trainer(self.store.retrain.recipe(), in_thread=True)
        return self.store.retrain.run(trainer, payload["holdout"], payload["seed"], progress=self._progress(job_id))

    def _progress(self, job_id: int):
        def report(stage: str, done: int, total: int) -> None:
            jobs.report_progress(self.store, job_id, stage, done, total)

        return report


def _shown(name: str) -> str:
    """A user's file name as it may appear in a message: printable, short."""
    text = "".join(c if c.isprintable() else "?" for c in name)[:120]
    return text or "(unnamed)"
