"""The review web app under load: 50 uploaders and 2 reviewers, a server killed mid-job, review at 50,000 photos.

Each part runs a real `whaleid serve` process (uvicorn, on 127.0.0.1 and a free port) over its own catalog
folder (SQLite), and drives it over HTTP with httpx, as the pages' scripts do: log in (`POST /api/login`, the
CSRF token sent with every write), uploads (`POST /api/uploads`, one `POST .../photos` per photo, `.../start`,
then `GET /api/jobs/{id}` until done), the queue (`GET /api/queue`), the review page (`GET /review/{id}`: the
HTML only, never its images) and decisions (`POST /api/photos/{id}/decision` with the version the queue
showed). A 5xx, a connection error or any status the call should not answer counts as an error; a 409 on a
decision is the right answer when two reviewers race for one photo and is counted apart. After each server
is stopped, the database is checked directly (`CatalogStore`), not through the server.

1. load: a catalog of 20 synthetic individuals (`whaleid.data.synth`, 160 px, imported before the server
   starts, with the users). 50 uploader threads start together; each logs in, creates an encounter upload,
   sends 3 photos of its own (150 distinct synthetic photos, 160 px) and starts the job, then polls it once
   a second until it is done. Meanwhile 2 reviewer threads loop until every job has finished: the queue's
   first 10 photos, the review page of one of them (timed: the latency reported), a decision on it (confirm
   the top candidate, or new when there is none); each takes the queue's first photo or, half of the time,
   one of its first three, so they sometimes race. Checked: no error, every job done, every uploaded photo
   (by sha256) in `photos` exactly once, in its job's encounter, with one embedding and one match run; every
   decision answered 200 in `decisions` exactly once and no other; no photo decided twice; every photo's
   state, individual and version what its decisions say; no stray file under photos/ or uploads/.
2. crash: one upload is processed and 3 of its photos are decided; then 6 uploads of 8 photos are sent and
   started together, `/api/jobs` is polled every 10 ms until one of them (not the first) is at work (its
   stage past "queued"), and the server is killed with SIGKILL. A new server on the same folder must take
   the jobs up again; checked as in 1 (the decisions made before the kill included), plus that a login
   session survives the restart. Reported: the job running at the kill and its stage, what the database
   held then, and the time from the restart to the last job done.
3. scale: `benchmarks/catalog_scale.py` fills a catalog with 50,000 confirmed photos of 15,000 individuals
   (rows written straight into the tables, random unit 512-d vectors); 250 pending photos are added the same
   way (no files: the page needs none), in encounters of 25, each with a match run of 5 candidates, all
   individuals with 4 or more confirmed photos, and 3 look-alikes among the other pending photos of its
   encounter. After 10 warm-up requests, `GET /review/{id}` is timed over 200 different pending photos,
   one request at a time, then `GET /api/photos/{id}` (the same view as JSON, without the template) over the
   same photos. Target: p95 under 200 ms for the page.

The model of parts 1 and 2 is tf_efficientnet_lite0 (its offline ImageNet weights, 1280-d, 64 px): the
server embeds for real, but embedding is not what is measured here (see the embedding benchmark). The
uploaders, reviewers and the server share the machine (and the client threads share one process), so the
latencies include the client's own share of 2 cores: they are what a browser next to the server would see.

    .venv/bin/python benchmarks/web_load.py --json runs/web_load.json
    .venv/bin/python benchmarks/web_load.py --quick                    # a smoke run of all three parts
    .venv/bin/python benchmarks/web_load.py --parts scale --scale-photos 5000 --scale-individuals 1500

The exit status is 1 when a check failed (the JSON and the summary say which).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from contextlib import closing
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import torch
from sqlalchemy import func, insert, select

from whaleid.data.synth import make_catalog
from whaleid.model.checkpoint import save_checkpoint
from whaleid.model.network import EmbeddingModel, ModelConfig
from whaleid.store.catalog import CatalogStore
from whaleid.store.queries import PHOTO_KINDS
from whaleid.store.schema import Decision, Embedding, Encounter, Individual, Job, MatchRun, Photo
from whaleid.web.users import add_user

sys.path.insert(0, str(Path(__file__).resolve().parent))
import catalog_scale  # noqa: E402  (a script beside this one: its filler of the 50,000-photo catalog)

PARTS = ("load", "crash", "scale")
TARGETS = {"review_page_p95_ms": 200.0}
PASSWORD = "a long enough benchmark password"
REVIEWER_PREFIX = "reviewer"
FULL = {
    "individuals": 20,
    "size": 160,
    "uploads": 50,
    "photos_per_upload": 3,
    "reviewers": 2,
    "decisions": None,  # every uploaded photo at most
    "crash_jobs": 6,
    "crash_photos": 8,
    "crash_decisions": 3,
    "scale_photos": 50_000,
    "scale_individuals": 15_000,
    "scale_pending": 250,
    "scale_requests": 200,
    "warmup": 10,
}
QUICK = {
    **FULL,
    "individuals": 8,
    "uploads": 10,
    "photos_per_upload": 2,
    "crash_jobs": 3,
    "crash_photos": 4,
    "crash_decisions": 2,
    "scale_photos": 5_000,
    "scale_individuals": 1_500,
    "scale_pending": 60,
    "scale_requests": 40,
    "warmup": 5,
}
TIMEOUT = httpx.Timeout(120.0)  # a write may wait out SQLite's 30 s busy timeout on the server


# ---------------------------------------------------------------------- the server and the calls to it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`whaleid serve DIR` in its own process on 127.0.0.1, its output in ``log``; stopped or killed by the caller."""

    def __init__(self, directory: Path, log: Path, start_timeout: float = 180.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        command = [sys.executable, "-m", "whaleid", "serve", str(directory), "--port", str(self.port)]
        started = time.perf_counter()
        with open(log, "a") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"whaleid serve exited ({self.process.returncode}): {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/login", timeout=2).status_code == 200:
                    self.ready_s = time.perf_counter() - started
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"whaleid serve did not answer within {start_timeout:.0f} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a crash or a power cut."""
        self.process.kill()
        self.process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Calls:
    """Every HTTP call made: latencies by kind (with when each started), conflicts and errors; thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.times: dict[str, list[tuple[float, float]]] = defaultdict(list)  # kind -> [(start, ms)]
        self.conflicts: Counter = Counter()
        self.errors: list[str] = []

    def call(self, client: httpx.Client, kind: str, method: str, url: str, expect: int, conflict_ok=False, **kw):
        """The response (``expect`` or, when ``conflict_ok``, 409), or None after recording an error."""
        start = time.monotonic()
        try:
            response = client.request(method, url, **kw)
        except httpx.HTTPError as error:
            self.error(f"{kind}: {method} {url}: {type(error).__name__}: {error}")
            return None
        ms = (time.monotonic() - start) * 1000
        if response.status_code == 409 and conflict_ok:
            with self.lock:
                self.conflicts[kind] += 1
            return response
        if response.status_code != expect:
            self.error(f"{kind}: {method} {url}: {response.status_code} {response.text[:300]}")
            return None
        with self.lock:
            self.times[kind].append((start, ms))
        return response

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)

    def latency(self, kind: str, since: float = -math.inf, until: float = math.inf) -> dict:
        return stats([ms for start, ms in self.times.get(kind, []) if since <= start < until])

    def report(self) -> dict:
        return {
            "requests": {kind: len(v) for kind, v in self.times.items()},
            "latency": {kind: self.latency(kind) for kind in self.times},
            "conflicts_409": dict(self.conflicts),
            "errors": len(self.errors),
            "first_errors": self.errors[:20],
        }


def stats(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0}
    a = np.asarray(ms)
    return {
        "n": len(ms),
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "max_ms": float(a.max()),
    }


def login(url: str, name: str, calls: Calls) -> httpx.Client:
    """A client logged in as ``name`` (its session cookie kept), sending its CSRF token with every request."""
    client = httpx.Client(base_url=url, timeout=TIMEOUT)
    answer = calls.call(client, "login", "POST", "/api/login", 200, json={"name": name, "password": PASSWORD})
    if answer is None:
        client.close()
        raise RuntimeError(f"{name} could not log in")
    client.headers["X-CSRF-Token"] = answer.json()["csrf"]
    return client


def send_upload(client: httpx.Client, calls: Calls, photos: list[Path], place: str, start: bool = True) -> dict | None:
    """An encounter upload with these photos (one request each), started unless told not to."""
    answer = calls.call(
        client, "create upload", "POST", "/api/uploads", 201, json={"date": "2026-08-01", "place": place}
    )
    if answer is None:
        return None
    job = answer.json()["id"]
    upload = {"job": job, "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos], "sent": 0}
    for path in photos:
        files = {"file": (path.name, path.read_bytes(), "image/jpeg")}
        if calls.call(client, "upload photo", "POST", f"/api/uploads/{job}/photos", 201, files=files) is not None:
            upload["sent"] += 1
    if start:
        calls.call(client, "start upload", "POST", f"/api/uploads/{job}/start", 200)
    return upload


def decide(client: httpx.Client, calls: Calls, item: dict, reviewer: str) -> dict | None:
    """Confirm the queue item's top candidate (new when it has none); the decision when answered 200."""
    top = item["candidates"][0]["individual"] if item["candidates"] else None
    body = {"kind": "new", "version": item["version"]}
    if top is not None and top != "new_individual":
        body = {"kind": "confirm", "individual": top, "version": item["version"]}
    url = f"/api/photos/{item['photo']}/decision"
    answer = calls.call(client, "decision", "POST", url, 200, conflict_ok=True, json=body)
    if answer is None or answer.status_code != 200:
        return None
    made = answer.json()
    return {"decision": made["decision"], "photo": item["photo"], "kind": body["kind"], "reviewer": reviewer}


def wait_jobs(client: httpx.Client, calls: Calls, jobs: list[int], deadline: float, poll: float = 0.3) -> dict:
    """Each job's last state, polled until all are done or failed, one failed, or the deadline."""
    states: dict[int, str] = {}
    while time.monotonic() < deadline:
        for job in jobs:
            if states.get(job) not in ("done", "failed"):
                answer = calls.call(client, "job status", "GET", f"/api/jobs/{job}", 200)
                if answer is not None:
                    states[job] = answer.json()["state"]
        if all(states.get(j) in ("done", "failed") for j in jobs) or "failed" in states.values():
            break
        time.sleep(poll)
    return states


# ---------------------------------------------------------------------- catalogs


def lite0_model(folder: Path) -> Path:
    network = EmbeddingModel(ModelConfig(backbone="tf_efficientnet_lite0", embedding_dim=0, img_size=64))
    return save_checkpoint(network.eval(), folder / "model", ["zero-shot"]).parent


def add_users(store: CatalogStore, reviewers: int) -> None:
    add_user(store, "admin", PASSWORD, "admin")
    add_user(store, "uploader", PASSWORD, "reviewer")
    for r in range(1, reviewers + 1):
        add_user(store, f"{REVIEWER_PREFIX}{r}", PASSWORD, "reviewer")


def small_catalog(folder: Path, model: Path, individuals: int, size: int, seed: int, reviewers: int) -> Path:
    """A catalog of ``individuals`` synthetic fins (3-5 photos each, imported as confirmed) and its users."""
    csv = make_catalog(folder / "known", n_individuals=individuals, photos_per_individual=(3, 5), size=size, seed=seed)
    store = CatalogStore.create(folder / "catalog", model)
    store.intake.import_catalog(csv, csv.parent / "images")
    add_users(store, reviewers)
    store.engine.dispose()
    return store.dir


def fresh_photos(folder: Path, count: int, size: int, seed: int) -> list[Path]:
    """``count`` distinct synthetic photos (3 per fin), none of them in a catalog made with another seed."""
    csv = make_catalog(folder, n_individuals=math.ceil(count / 3), photos_per_individual=3, size=size, seed=seed)
    photos = sorted((csv.parent / "images").glob("*.jpg"))[:count]
    if len({hashlib.sha256(p.read_bytes()).digest() for p in photos}) != count:
        raise SystemExit("the synthetic photos are not all distinct")
    return photos


# ---------------------------------------------------------------------- checks on the database


def verify(directory: Path, uploads: list[dict], decided: list[dict]) -> dict:
    """What the database says about the uploads and the decisions made over HTTP (the server stopped)."""
    store = CatalogStore(directory)
    problems: list[str] = []
    try:
        with store.reader() as session:
            jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_([u["job"] for u in uploads])))}
            photos = {p.sha256: p for p in session.scalars(select(Photo))}
            sha_rows = Counter(session.scalars(select(Photo.sha256)))
            runs = Counter(session.scalars(select(MatchRun.photo_id)))
            vectors = Counter(session.scalars(select(Embedding.photo_id)))
            decisions = session.scalars(select(Decision).order_by(Decision.id)).all()
            merged = dict(session.execute(select(Individual.id, Individual.merged_into_id)).all())
        done = 0
        for u in uploads:
            job = jobs.get(u["job"])
            if job is None:
                problems.append(f"job {u['job']} is not in the jobs table")
                continue
            if job.state != "done":
                problems.append(f"job {job.id} is {job.state}: {job.error}")
                continue
            done += 1
            result = job.result or {}
            if len(result.get("photos", [])) != len(u["sha256"]) or result.get("rejected"):
                problems.append(f"job {job.id}: result {result}")
            for sha in u["sha256"]:
                photo = photos.get(sha)
                if photo is None:
                    continue  # counted below
                if photo.encounter_id != job.payload["encounter"]:
                    problems.append(
                        f"photo {photo.id} in encounter {photo.encounter_id}, not {job.payload['encounter']}"
                    )
                if runs[photo.id] != 1 or vectors[photo.id] != 1:
                    problems.append(f"photo {photo.id}: {runs[photo.id]} match runs, {vectors[photo.id]} embeddings")
        uploaded = [sha for u in uploads for sha in u["sha256"]]
        missing = [sha for sha in uploaded if sha_rows[sha] == 0]
        doubled = [sha for sha in uploaded if sha_rows[sha] > 1]
        problems += [f"{len(missing)} uploaded photos are not in the catalog"] if missing else []
        problems += [f"{len(doubled)} uploaded photos are in the catalog more than once"] if doubled else []

        # decisions: each one answered 200 is there once, as answered; the reviewers made no other
        by_id = {d.id: d for d in decisions}
        for d in decided:
            row = by_id.get(d["decision"])
            if row is None:
                problems.append(f"decision {d['decision']} (photo {d['photo']}) answered 200 but is not in the table")
            elif (row.photo_id, row.kind, row.reviewer) != (d["photo"], d["kind"], d["reviewer"]):
                problems.append(f"decision {row.id} is {row.kind} of photo {row.photo_id} by {row.reviewer}, not {d}")
        answered = {d["decision"] for d in decided}
        ours = [d for d in decisions if d.reviewer.startswith(REVIEWER_PREFIX)]
        extra = [d.id for d in ours if d.id not in answered]
        problems += [f"decisions {extra[:10]} are in the table but were never answered 200"] if extra else []
        twice = [p for p, n in Counter(d.photo_id for d in ours).items() if n > 1]
        problems += [f"photos {twice[:10]} were decided more than once (a race both sides won)"] if twice else []

        # every photo: state, individual and version as its decisions say
        undone = {d.undoes_id for d in decisions if d.undoes_id is not None}
        per_photo: dict[int, list[Decision]] = defaultdict(list)
        for d in decisions:
            if d.kind in PHOTO_KINDS:
                per_photo[d.photo_id].append(d)
        inconsistent = []
        for photo in photos.values():
            events = per_photo.get(photo.id, [])
            standing = [d for d in events if d.id not in undone]
            expected = ("pending", None)
            if standing:
                last = standing[-1]
                expected = (
                    ("unsure", None) if last.kind == "unsure" else ("confirmed", _resolved(merged, last.individual_id))
                )
            version = len(events) + sum(d.id in undone for d in events)
            if (photo.state, photo.individual_id) != expected or photo.version != version:
                inconsistent.append(photo.id)
        if inconsistent:
            problems.append(f"{len(inconsistent)} photos disagree with their decisions, e.g. {inconsistent[:10]}")

        files = {p.file for p in photos.values()}
        stray = [f.name for f in (directory / "photos").iterdir() if f.is_file() and f.name not in files]
        staging = directory / "uploads"
        staged = [str(f.relative_to(directory)) for f in staging.rglob("*") if f.is_file()] if staging.exists() else []
        problems += [f"{len(stray)} files under photos/ belong to no photo row: {stray[:5]}"] if stray else []
        problems += [f"{len(staged)} staged files left under uploads/: {staged[:5]}"] if staged else []
        finishes = sorted(j.updated_at for j in jobs.values() if j.state == "done")
        gaps = [(b - a).total_seconds() for a, b in zip(finishes, finishes[1:])]
        return {
            "jobs": len(uploads),
            "jobs_done": done,
            "median_s_between_job_finishes": float(np.median(gaps)) if gaps else None,  # ~ one job's work
            "photos_uploaded": len(uploaded),
            "photos_present_once": sum(sha_rows[sha] == 1 for sha in uploaded),
            "decisions_answered_200": len(decided),
            "decisions_in_table": sum(d["decision"] in by_id for d in decided),
            "photos_checked": len(photos),
            "photos_inconsistent": len(inconsistent),
            "problems": problems,
        }
    finally:
        store.engine.dispose()


def _resolved(merged: dict[int, int | None], individual: int) -> int:
    seen = set()
    while merged.get(individual) is not None and individual not in seen:
        seen.add(individual)
        individual = merged[individual]
    return individual


def snapshot(directory: Path, jobs: list[int]) -> dict:
    """The database and the photo files as a killed server left them."""
    store = CatalogStore(directory)
    try:
        with store.reader() as session:
            states = dict(session.execute(select(Job.id, Job.state).where(Job.id.in_(jobs))).all())
            files = set(session.scalars(select(Photo.file)))
        on_disk = [f.name for f in (directory / "photos").iterdir() if f.is_file()]
        return {
            "job_states": Counter(states.values()),
            "photo_files_without_row": sum(name not in files for name in on_disk),
        }
    finally:
        store.engine.dispose()


# ---------------------------------------------------------------------- 1. load


def part_load(args, work: Path, model: Path) -> dict:
    folder = work / "load"
    started = time.perf_counter()
    directory = small_catalog(folder, model, args.individuals, args.size, seed=1, reviewers=args.reviewers)
    photos = fresh_photos(folder / "uploads", args.uploads * args.photos_per_upload, args.size, seed=2)
    groups = [photos[i * args.photos_per_upload : (i + 1) * args.photos_per_upload] for i in range(args.uploads)]
    setup_s = time.perf_counter() - started
    print(f"load: catalog of {args.individuals} individuals and {len(photos)} photos to upload made in {setup_s:.1f} s")

    calls = Calls()
    uploads: list[dict] = []
    decided: list[dict] = []
    final: dict[int, str] = {}
    lock = threading.Lock()
    go, uploads_over, failed = threading.Event(), threading.Event(), threading.Event()
    max_decisions = args.decisions if args.decisions is not None else len(photos)

    server = Server(directory, folder / "serve.log")
    try:
        deadline = time.monotonic() + args.job_timeout

        def uploader(i: int) -> None:
            go.wait()
            try:
                with closing(login(server.url, "uploader", calls)) as client:
                    upload = send_upload(client, calls, groups[i], place=f"benchmark bay {i}")
                    if upload is None:
                        return
                    with lock:
                        uploads.append(upload)
                    while time.monotonic() < deadline and not failed.is_set():
                        answer = calls.call(client, "job status", "GET", f"/api/jobs/{upload['job']}", 200)
                        state = answer.json()["state"] if answer is not None else None
                        if state in ("done", "failed"):
                            with lock:
                                final[upload["job"]] = state
                            if state == "failed" and not args.keep_going:
                                failed.set()  # jobs run one at a time: the rest would fail the same way
                            return
                        time.sleep(args.poll)
            except Exception as error:  # recorded, never lost in a thread
                calls.error(f"uploader {i}: {type(error).__name__}: {error}")

        def reviewer(r: int) -> None:
            name = f"{REVIEWER_PREFIX}{r}"
            rng = random.Random(r)
            try:
                with closing(login(server.url, name, calls)) as client:
                    while not uploads_over.is_set() and time.monotonic() < deadline:
                        answer = calls.call(client, "queue", "GET", "/api/queue", 200, params={"limit": 10})
                        queue = answer.json() if answer is not None else []
                        if not queue:
                            time.sleep(0.2)
                            continue
                        item = queue[0] if rng.random() < 0.5 else rng.choice(queue[:3])
                        page = calls.call(client, "review page", "GET", f"/review/{item['photo']}", 200)
                        if page is not None and f'data-photo="{item["photo"]}"' not in page.text:
                            calls.error(f"review page of photo {item['photo']} does not show it")
                        made = decide(client, calls, item, name)
                        if made is not None:
                            with lock:
                                decided.append(made)
                                if len(decided) >= max_decisions:
                                    return
                        time.sleep(args.think)
            except Exception as error:
                calls.error(f"{name}: {type(error).__name__}: {error}")

        threads = [threading.Thread(target=uploader, args=(i,), daemon=True) for i in range(args.uploads)]
        reviewers = [threading.Thread(target=reviewer, args=(r,), daemon=True) for r in range(1, args.reviewers + 1)]
        for t in threads + reviewers:
            t.start()
        t0 = time.monotonic()
        go.set()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + 5)
        jobs_s = time.monotonic() - t0
        uploads_over.set()
        for t in reviewers:
            t.join(30)
        stuck = sum(t.is_alive() for t in threads + reviewers)
        if stuck:
            calls.error(f"{stuck} client threads still running at the end")
    finally:
        server.stop()
    log = server.log_tail()
    checks = verify(directory, uploads, decided)
    if len(uploads) != args.uploads:
        checks["problems"].insert(0, f"{args.uploads - len(uploads)} uploads were never created")
    unfinished = [job for job in (u["job"] for u in uploads) if final.get(job) != "done"]
    if unfinished:
        checks["problems"].insert(0, f"{len(unfinished)} jobs not seen done within {args.job_timeout:.0f} s")
    if calls.errors:
        checks["problems"].insert(0, f"{len(calls.errors)} HTTP errors, first: {calls.errors[0]}")
    return {
        "individuals": args.individuals,
        "uploaders": args.uploads,
        "photos_per_upload": args.photos_per_upload,
        "photo_px": args.size,
        "reviewers": args.reviewers,
        "setup_s": setup_s,
        "server_ready_s": server.ready_s,
        "wall_s": jobs_s,
        "photos_per_s": len(photos) / jobs_s,
        "decisions": len(decided),
        "review_page": calls.latency("review page"),
        "upload_photo": calls.latency("upload photo"),
        "create_upload": calls.latency("create upload"),
        "start_upload": calls.latency("start upload"),
        "login": calls.latency("login"),
        "queue": calls.latency("queue"),
        "decision": calls.latency("decision"),
        "job_status": calls.latency("job status"),
        **calls.report(),
        "checks": checks,
        "server_log_tail": log if checks["problems"] else "",
    }


# ---------------------------------------------------------------------- 2. crash


def part_crash(args, work: Path, model: Path) -> dict:
    folder = work / "crash"
    directory = small_catalog(folder, model, args.individuals, args.size, seed=3, reviewers=1)
    photos = fresh_photos(folder / "uploads", (args.crash_jobs + 1) * args.crash_photos, args.size, seed=4)
    groups = [photos[i * args.crash_photos : (i + 1) * args.crash_photos] for i in range(args.crash_jobs + 1)]
    calls = Calls()
    uploads: list[dict] = []
    decided: list[dict] = []
    servers: list[Server] = []
    report: dict = {"jobs": args.crash_jobs, "photos_per_job": args.crash_photos}
    reviewer = f"{REVIEWER_PREFIX}1"
    try:
        servers.append(Server(directory, folder / "serve.log"))
        url = servers[-1].url
        with closing(login(url, "uploader", calls)) as client, closing(login(url, reviewer, calls)) as review:
            # before the crash: one upload processed, a few of its photos decided
            first = send_upload(client, calls, groups[0], place="before the crash")
            if first is not None:
                uploads.append(first)
                wait_jobs(client, calls, [first["job"]], time.monotonic() + args.job_timeout)
            answer = calls.call(review, "queue", "GET", "/api/queue", 200, params={"limit": args.crash_decisions})
            for item in answer.json() if answer is not None else []:
                made = decide(review, calls, item, reviewer)
                if made is not None:
                    decided.append(made)

            # the uploads the crash interrupts: all sent, then all started at once
            batch = [send_upload(client, calls, g, place=f"crash {i}", start=False) for i, g in enumerate(groups[1:])]
            batch = [u for u in batch if u is not None]
            uploads += batch
            for u in batch:
                calls.call(client, "start upload", "POST", f"/api/uploads/{u['job']}/start", 200)
            ids = [u["job"] for u in batch]
            running, deadline = None, time.monotonic() + 120
            while running is None and time.monotonic() < deadline:
                answer = calls.call(client, "job list", "GET", "/api/jobs", 200)
                listed = {j["id"]: j for j in (answer.json() if answer is not None else []) if j["id"] in ids}
                # a job at work (past "queued": its photos being checked, copied, embedded or matched), or
                # the last one in any stage, as there is no later chance
                running = next(
                    (
                        listed[j]
                        for j in ids[1:]
                        if listed.get(j, {}).get("state") == "running"
                        and (listed[j]["progress"]["stage"] != "queued" or j == ids[-1])
                    ),
                    None,
                )
                if running is None and listed and all(j["state"] in ("done", "failed") for j in listed.values()):
                    break  # missed: every job finished between two polls
                time.sleep(0.01)
            servers[-1].kill()
            killed_at = time.monotonic()
            report["running_at_kill"] = (
                {"job": running["id"], "position": ids.index(running["id"]) + 1, "progress": running["progress"]}
                if running
                else None
            )
            if running is None:
                calls.error("crash: no job was seen running, the kill hit an idle server")
            report["at_kill"] = snapshot(directory, ids)

            restart = time.monotonic()
            servers.append(Server(directory, folder / "serve.log"))
            report["restart_ready_s"] = servers[-1].ready_s
            for c in (client, review):
                c.base_url = servers[-1].url  # the same session cookies: sessions live in the database
            if calls.call(review, "session after restart", "GET", "/api/me", 200) is None:
                calls.error("crash: a session did not survive the restart")
            states = wait_jobs(client, calls, ids, restart + args.job_timeout)
            report["recover_s"] = time.monotonic() - restart
            report["kill_to_all_done_s"] = time.monotonic() - killed_at
            report["job_states_after"] = dict(Counter(states.values()))
    finally:
        for server in servers:
            server.stop()
    log = "\n".join(s.log_tail(1500) for s in servers)
    checks = verify(directory, uploads, decided)
    if calls.errors:
        checks["problems"].insert(0, f"{len(calls.errors)} HTTP errors, first: {calls.errors[0]}")
    return {
        **report,
        "decisions_before_kill": len(decided),
        **calls.report(),
        "checks": checks,
        "server_log_tail": log if checks["problems"] else "",
    }


# ---------------------------------------------------------------------- 3. scale


def add_pending(store: CatalogStore, count: int, seed: int, per_encounter: int = 25) -> list[int]:
    """``count`` pending photos (rows only), each with a match run of 5 well-photographed candidates and 3
    look-alikes in its encounter; their ids."""
    rng = np.random.default_rng(seed)
    stamp = datetime(2025, 6, 1)
    with store.session() as session, session.begin():
        model = store.models.active(session)
        dim = len(session.scalar(select(Embedding.vector).limit(1))) // 4
        rich = session.execute(
            select(Individual.catalog_id)
            .join(Photo, Photo.individual_id == Individual.id)
            .where(Photo.state == "confirmed")
            .group_by(Individual.id)
            .having(func.count() >= 4)
        ).scalars()
        rich = list(rich)
        first = session.scalar(select(func.max(Photo.id))) + 1
        ids = list(range(first, first + count))
        encounters = []
        for e in range(math.ceil(count / per_encounter)):
            encounters.append(Encounter(date="2025-06-01", place=f"benchmark survey {e}", created_at=stamp))
        session.add_all(encounters)
        session.flush()
        session.execute(
            insert(Photo),
            [
                {
                    "id": p,
                    "sha256": hashlib.sha256(f"pending:{seed}:{p}".encode()).hexdigest(),
                    "file": f"pending_{p}.jpg",
                    "original_name": f"survey_{p:06d}.jpg",
                    "size": 100_000,
                    "crop_status": "none",
                    "added_at": stamp,
                    "state": "pending",
                    "encounter_id": encounters[i // per_encounter].id,
                    "version": 0,
                }
                for i, p in enumerate(ids)
            ],
        )
        vectors = rng.standard_normal((count, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        session.execute(
            insert(Embedding),
            [{"photo_id": p, "model_id": model.id, "vector": v.tobytes()} for p, v in zip(ids, vectors)],
        )
        runs = []
        for i, p in enumerate(ids):
            picked = rng.choice(len(rich), 5, replace=False)
            scores = np.sort(rng.uniform(0.3, 0.9, 5))[::-1]
            block = ids[(i // per_encounter) * per_encounter : (i // per_encounter + 1) * per_encounter]
            others = [q for q in block if q != p]
            look_alikes = rng.choice(others, min(3, len(others)), replace=False) if others else []
            runs.append(
                {
                    "photo_id": p,
                    "model_id": model.id,
                    "candidates": [
                        {"individual": rich[j], "score": round(float(s), 6)} for j, s in zip(picked, scores)
                    ],
                    "batch_matches": [{"photo": int(q), "score": 0.5} for q in look_alikes],
                    "filters": {"threshold": None},
                    "created_at": stamp,
                }
            )
        session.execute(insert(MatchRun), runs)
    return ids


def part_scale(args, work: Path) -> dict:
    folder = work / "scale"
    torch.manual_seed(0)
    config = ModelConfig(backbone="test_efficientnet", embedding_dim=512, img_size=128)
    checkpoint = save_checkpoint(EmbeddingModel(config, pretrained=False).eval(), folder / "model" / "model", ["x"])
    store = CatalogStore.create(folder / "catalog", checkpoint)
    started = time.perf_counter()
    catalog_scale.fill(store, args.scale_photos, args.scale_individuals, config.embedding_dim, seed=0)
    pending = add_pending(store, args.scale_pending, seed=1)
    add_users(store, reviewers=1)
    store.engine.dispose()
    fill_s = time.perf_counter() - started
    print(f"scale: {args.scale_photos:,} confirmed photos and {len(pending)} pending written in {fill_s:.1f} s")

    calls = Calls()
    timed = [pending[i % len(pending)] for i in range(args.scale_requests)]
    warm = [pending[-1 - i % len(pending)] for i in range(args.warmup)]
    wrong = []
    server = Server(store.dir, folder / "serve.log")
    try:
        with closing(login(server.url, f"{REVIEWER_PREFIX}1", calls)) as client:
            for photo in warm:
                calls.call(client, "warm-up", "GET", f"/review/{photo}", 200)
            for photo in timed:
                page = calls.call(client, "review page", "GET", f"/review/{photo}", 200)
                if page is not None and page.text.count('<li class="candidate"') != 5:
                    wrong.append(photo)
            for photo in timed:
                calls.call(client, "review JSON", "GET", f"/api/photos/{photo}", 200)
            for _ in range(20):
                calls.call(client, "queue 50", "GET", "/api/queue", 200, params={"limit": 50})
    finally:
        server.stop()
    page = calls.latency("review page")
    problems = [f"{len(calls.errors)} HTTP errors, first: {calls.errors[0]}"] if calls.errors else []
    problems += [f"{len(wrong)} review pages without 5 candidates, e.g. {wrong[:5]}"] if wrong else []
    if page.get("p95_ms", math.inf) >= TARGETS["review_page_p95_ms"]:
        problems.append(
            f"review page p95 {page.get('p95_ms', math.nan):.0f} ms, target {TARGETS['review_page_p95_ms']:.0f}"
        )
    return {
        "catalog_photos": args.scale_photos,
        "individuals": args.scale_individuals,
        "pending": len(pending),
        "fill_s": fill_s,
        "server_ready_s": server.ready_s,
        "distinct_photos_timed": len(set(timed)),
        "review_page": page,
        "review_json": calls.latency("review JSON"),
        "queue_limit_50": calls.latency("queue 50"),
        **calls.report(),
        "checks": {"problems": problems},
        "server_log_tail": server.log_tail() if problems else "",
    }


# ---------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated, of: " + ", ".join(PARTS))
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run (size flags still win)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--dir", help="work folder, kept (default: a temporary one, removed)")
    size = parser.add_argument_group("sizes (defaults: the full run; --quick makes them smaller)")
    size.add_argument("--individuals", type=int, help=f"load, crash: catalog individuals ({FULL['individuals']})")
    size.add_argument("--size", type=int, help=f"load, crash: photo side in px ({FULL['size']})")
    size.add_argument("--uploads", type=int, help=f"load: concurrent uploaders ({FULL['uploads']})")
    size.add_argument("--photos-per-upload", type=int, help=f"load ({FULL['photos_per_upload']})")
    size.add_argument("--reviewers", type=int, help=f"load: concurrent reviewers ({FULL['reviewers']})")
    size.add_argument("--decisions", type=int, help="load: reviewers stop after this many (default: all photos)")
    size.add_argument("--crash-jobs", type=int, help=f"crash: uploads interrupted ({FULL['crash_jobs']})")
    size.add_argument("--crash-photos", type=int, help=f"crash: photos per upload ({FULL['crash_photos']})")
    size.add_argument(
        "--crash-decisions", type=int, help=f"crash: decisions before the kill ({FULL['crash_decisions']})"
    )
    size.add_argument("--scale-photos", type=int, help=f"scale: confirmed photos ({FULL['scale_photos']})")
    size.add_argument("--scale-individuals", type=int, help=f"scale ({FULL['scale_individuals']})")
    size.add_argument("--scale-pending", type=int, help=f"scale: pending photos ({FULL['scale_pending']})")
    size.add_argument("--scale-requests", type=int, help=f"scale: timed review pages ({FULL['scale_requests']})")
    size.add_argument("--warmup", type=int, help=f"scale: untimed review pages first ({FULL['warmup']})")
    parser.add_argument("--think", type=float, default=0.1, help="load: a reviewer's pause between photos, s")
    parser.add_argument("--poll", type=float, default=1.0, help="load: an uploader's job polling interval, s")
    parser.add_argument("--job-timeout", type=float, default=300.0, help="the most to wait for the jobs, s")
    parser.add_argument("--keep-going", action="store_true", help="load: keep waiting after a job failed")
    args = parser.parse_args()
    profile = QUICK if args.quick else FULL
    for key, value in profile.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        parser.error(f"--parts takes some of {', '.join(PARTS)}")
    if args.scale_pending < 4 or not 1 <= args.scale_individuals <= args.scale_photos:
        parser.error("need --scale-pending >= 4 and 1 <= --scale-individuals <= --scale-photos")

    report = {"benchmark": "web_load", "quick": args.quick, "parts": {}, "targets": TARGETS}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="whaleid-web-load-") as tmp:
        work = Path(args.dir) if args.dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = lite0_model(work / "model") if {"load", "crash"} & set(parts) else None
        for part in parts:
            begun = time.perf_counter()
            if part == "load":
                result = part_load(args, work, model)
            elif part == "crash":
                result = part_crash(args, work, model)
            else:
                result = part_scale(args, work)
            result["part_s"] = time.perf_counter() - begun
            report["parts"][part] = result
            print(f"{part}: {len(result['checks']['problems'])} problems, {result['part_s']:.0f} s", flush=True)
    report["total_s"] = time.perf_counter() - started
    report["machine"] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print_summary(report)
    if any(r["checks"]["problems"] for r in report["parts"].values()):
        sys.exit(1)


def print_summary(report: dict) -> None:
    parts = report["parts"]
    print()
    print("| part | request | n | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|---|---|")
    rows = [
        ("load", "review page, during the uploads", "review_page"),
        ("load", "upload photo (one per request)", "upload_photo"),
        ("load", "create upload", "create_upload"),
        ("load", "login", "login"),
        ("load", "decision", "decision"),
        ("scale", "review page, 50,000-photo catalog" if not report["quick"] else "review page", "review_page"),
        ("scale", "review JSON (/api/photos/{id})", "review_json"),
        ("scale", "queue(limit=50)", "queue_limit_50"),
    ]
    for part, label, key in rows:
        s = parts.get(part, {}).get(key)
        if s and s.get("n"):
            print(f"| {part} | {label} | {s['n']} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['max_ms']:.1f} |")
    print()
    if "load" in parts:
        r, c = parts["load"], parts["load"]["checks"]
        print(
            f"load: {r['uploaders']} uploads x {r['photos_per_upload']} photos in {r['wall_s']:.1f} s "
            f"({r['photos_per_s']:.1f} photos/s); jobs done {c['jobs_done']}/{c['jobs']}; photos present once "
            f"{c['photos_present_once']}/{c['photos_uploaded']}; {r['decisions']} decisions "
            f"({c['decisions_in_table']} in the table), {sum(r['conflicts_409'].values())} conflicts (409); "
            f"{r['errors']} HTTP errors; {c['photos_inconsistent']} of {c['photos_checked']} photos inconsistent"
        )
    if "crash" in parts:
        r, c = parts["crash"], parts["crash"]["checks"]
        print(
            f"crash: running at the kill {r.get('running_at_kill')}; at the kill {r.get('at_kill')}; "
            f"restart ready in {r.get('restart_ready_s', math.nan):.1f} s, all jobs done "
            f"{r.get('recover_s', math.nan):.1f} s after the restart; jobs done {c['jobs_done']}/{c['jobs']}; "
            f"photos present once {c['photos_present_once']}/{c['photos_uploaded']}; decisions before the kill "
            f"kept {c['decisions_in_table']}/{c['decisions_answered_200']}; {r['errors']} HTTP errors"
        )
    if "scale" in parts:
        r = parts["scale"]
        target = report["targets"]["review_page_p95_ms"]
        print(
            f"scale: {r['catalog_photos']:,} photos, {r['pending']} pending, review page p95 "
            f"{r['review_page'].get('p95_ms', math.nan):.1f} ms (target < {target:.0f} ms)"
        )
    for part, r in parts.items():
        for problem in r["checks"]["problems"]:
            print(f"PROBLEM {part}: {problem}")
    print(f"total {report['total_s']:.0f} s")


if __name__ == "__main__":
    main()
