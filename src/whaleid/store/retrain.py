"""A catalog's next model, learnt from its reviewers' decisions.

Whole individuals are held out of the confirmed photos; the rest train a new model with the catalog's recipe
(the trainer is passed in: the store knows no training). The current model, the new one and an ImageNet-only
start of the same architecture are then scored on that same held-out slice by the open-set protocol: half
of its individuals calibrate the threshold (and, when the catalog re-ranks, the fusion), the other half are
scored, so a query whose individual has no other photo there should be answered new_individual. The new
version is registered with that fusion, threshold and the report, and is not made active: whoever reads the
report activates it (a reindex, which re-matches the waiting photos)."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from whaleid.data.catalog import Catalog
from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.model.checkpoint import recorded_preparation, recorded_recipe
from whaleid.model.embed import embed_files
from whaleid.model.embeddings import Embeddings
from whaleid.model.keypoints import KeypointFiles
from whaleid.preprocess.prepare import prepare_paths
from whaleid.search.identify import Identifier, IdentifyConfig
from whaleid.search.metrics import json_float
from whaleid.search.openset import calibrate_then_score
from whaleid.search.record import GalleryRecord
from whaleid.store.db import Database
from whaleid.store.models import Models, Progress
from whaleid.store.queries import confirmed
from whaleid.store.schema import Individual, Model, Photo
from whaleid.store.vectors import VectorCache

MIN_INDIVIDUALS = 4  # with 2+ confirmed photos, on each side (training, held out): fewer can neither train nor judge
Trainer = Callable[[Catalog, Path, "dict | None", "Progress | None"], Path]


class Retrain:
    """Training, judging and registering a catalog's next model version."""

    def __init__(self, directory: Path, db: Database, models: Models, cache: VectorCache):
        self.dir, self.db, self.models, self.cache = directory, db, models, cache

    def recipe(self) -> dict:
        """The training settings of the active model (its first member's), to train the next one the same way."""
        with self.db.reader() as session:
            model = self.models.active(session)
        return recorded_recipe(self.models.record(model).source["checkpoints"][0])

    def split(self, holdout: float = 0.3, seed: int = 0) -> tuple[pd.DataFrame, Model]:
        """The confirmed photos (photo, file, individual, species, ``part``: train | calibration | test) and the
        active model; a catalog too small to both train and judge is refused with what it lacks."""
        if not 0 < holdout < 1:
            raise UserError(f"--holdout is the share of individuals held out, between 0 and 1, not {holdout}")
        with self.db.reader() as session:
            model = self.models.active(session)
            rows = confirmed(session, Photo.id, Photo.file, Individual.catalog_id, Individual.species)
        table = pd.DataFrame(rows, columns=["photo", "file", "individual_id", "species"])
        table["part"] = [_part(i, holdout, seed) for i in table["individual_id"]]
        counts = table.groupby("individual_id")["part"].agg(["first", "size"])
        repeated = counts[counts["size"] >= 2]["first"].value_counts()
        short = {part: int(repeated.get(part, 0)) for part in ("train", "calibration", "test")}
        need = {"train": MIN_INDIVIDUALS, "calibration": 2, "test": 2}
        if any(short[part] < need[part] for part in need):
            raise UserError(
                f"this catalog is too small to train on: individuals with 2+ confirmed photos are {short['train']} to "
                f"train on, {short['calibration']} + {short['test']} held out to judge by (at least "
                f"{MIN_INDIVIDUALS}, 2 + 2 are needed): confirm more photos; model v{model.version} stays"
            )
        return table, model

    def run(self, trainer: Trainer, holdout: float = 0.3, seed: int = 0, progress: Progress | None = None) -> dict:
        """Train, judge and register the next version; its report (also saved beside its checkpoint)."""
        started = time.time()
        table, model = self.split(holdout, seed)
        say = progress or (lambda stage, done, total: None)
        say("preparing photos", 0, len(table))
        preprocess = self.models.record(model).preprocess
        files, ok = prepare_paths([str(self.dir / "photos" / f) for f in table["file"]], preprocess, self.dir / "cache")
        table = table[ok].reset_index(drop=True)
        table["path"] = files
        train, held = table[table["part"] == "train"], table[table["part"] != "train"].reset_index(drop=True)
        (self.dir / "cache").mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="retrain-", dir=self.dir / "cache") as work:  # two runs never share it
            checkpoint = trainer(
                Catalog(train[["path", "individual_id", "species"]].rename(columns={"path": "image"}), Path("/")),
                Path(work),
                None if preprocess is None else preprocess.to_dict(),
                progress,
            )
            training = time.time() - started
            size, recipe = recorded_preparation(checkpoint)[0], recorded_recipe(checkpoint)
            scored, fitted = self._judged(model, held, checkpoint, size, recipe["model"]["backbone"], say)
            say("registering", 0, 1)
            scoring = IdentifyConfig(rerank=self.models.record(model).scoring.rerank)
            with self.db.session() as session, session.begin():  # the checkpoint's files copied into models/v<N>/
                record = GalleryRecord(preprocess=preprocess, scoring=scoring, **fitted)
                version = self.models.register(session, [str(checkpoint)], record).version
        report = {
            "version": version,
            "from_version": model.version,
            "recipe": {"backbone": recipe["model"].get("backbone"), "img_size": size, "epochs": recipe.get("epochs")},
            "trained_on": _counted(train),
            "held_out": {"seed": seed, "share": holdout}
            | {part: _counted(held[held["part"] == part]) for part in ("calibration", "test")},
            "scores": scored,
            "better": scored["new"]["map5"] > scored["current"]["map5"],
            "seconds": {"training": round(training, 1), "total": round(time.time() - started, 1)},
        }
        with atomic_path(self.models.report_path(version)) as tmp:
            tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
        say("registering", 1, 1)
        return report

    def _judged(
        self, model: Model, held: pd.DataFrame, checkpoint: Path, size: int, backbone: str, say: Progress
    ) -> tuple[dict, dict]:
        """The current model, the new one and an ImageNet-only start scored on the held-out photos; the new one's
        fitted threshold and fusion."""
        preprocess = self.models.record(model).preprocess
        say("scoring on held-out individuals", 0, 3)
        with self.db.reader() as session:
            current = self.cache.vectors(session, model, held["photo"].to_numpy(np.int64))
        keypoints = self.models.keypoints(model, held["file"].tolist())  # the second stage's, when it re-ranks
        scored = {"current": self._judge(model, held, current, keypoints)}
        for name, source in (("new", {"checkpoints": [str(checkpoint)]}), ("imagenet", {"zero_shot": backbone})):
            say("scoring on held-out individuals", len(scored), 3)
            embedder = GalleryRecord(source, img_size=size, preprocess=preprocess).embedder(with_keypoints=False)
            vectors, good = embed_files(embedder, held["path"].tolist(), progress=False)
            if not good.all():
                raise UserError(f"{int((~good).sum())} held-out photos could not be read again: run the retrain again")
            scored[name] = self._judge(model, held, vectors.vectors, keypoints)
        fitted = scored["new"].pop("fitted")
        for result in scored.values():
            result.pop("fitted", None)
        return scored, fitted

    def _judge(self, model: Model, held: pd.DataFrame, vectors: np.ndarray, keypoints: KeypointFiles | None) -> dict:
        """Open-set metrics on the test individuals, threshold (and fusion) fitted on the calibration ones."""
        parts = {}
        for part in ("calibration", "test"):
            rows = np.flatnonzero((held["part"] == part).to_numpy())
            parts[part] = Embeddings(
                vectors[rows],
                held.iloc[rows][["file", "individual_id", "species"]]
                .rename(columns={"file": "image"})
                .reset_index(drop=True),
                keypoints=None if keypoints is None else keypoints.view([keypoints.names[i] for i in rows]),
            )
        config = IdentifyConfig(rerank=self.models.record(model).scoring.rerank)
        scored = calibrate_then_score(
            Identifier.from_embeddings(parts["calibration"], config), parts["calibration"], parts["test"]
        )
        metrics = {key: _rounded(value) for key, value in scored.metrics().items()}
        return {**metrics, "fitted": {"threshold": scored.scorer.threshold, "fusion": scored.scorer.fusion}}


def _part(individual: str, holdout: float, seed: int) -> str:
    """Where an individual's photos go, by a hash of its id: the same individuals stay held out as the catalog
    grows, so a version the catalog trained earlier never saw the ones a later version is judged on."""
    draw = int(hashlib.sha256(f"{seed}:{individual}".encode()).hexdigest()[:12], 16) / 16**12
    if draw >= holdout:
        return "train"
    return "calibration" if draw < holdout / 2 else "test"


def _rounded(value):
    """A metric as the report keeps it: 4 digits, an undefined one (NaN) null; a per-species threshold as it is."""
    return value if isinstance(value, dict) else None if json_float(value) is None else round(value, 4)


def _counted(part: pd.DataFrame) -> dict:
    return {"photos": len(part), "individuals": int(part["individual_id"].nunique())}
