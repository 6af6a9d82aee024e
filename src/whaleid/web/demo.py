"""`whaleid serve DIR --demo`: a catalog that anyone can review within two minutes, on any machine.

Synthetic dorsal fins (whaleid.data.synth): most individuals imported as the known catalog, then
a survey waiting for review: another photo of several known fins and the photos of fins never seen.
Features are ImageNet's (offline lite0 weights), or the model of `make demo` when it exists; the second
stage re-ranks the nearest photos by keypoint matches, which the review page shows.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pandas as pd

from whaleid.data.catalog import read_catalog
from whaleid.data.synth import make_catalog
from whaleid.model.checkpoint import save_checkpoint
from whaleid.model.embed import Embedder
from whaleid.model.keypoints import KeypointConfig
from whaleid.model.network import EmbeddingModel, ModelConfig
from whaleid.search.identify import Identifier, IdentifyConfig
from whaleid.search.rerank import RerankConfig
from whaleid.store.catalog import CONFIG, CatalogStore
from whaleid.store.intake import EncounterInfo
from whaleid.store.users import user_named
from whaleid.web.users import add_user, change_user

DEMO_USER = "demo"
DEMO_ADMIN = "admin"
TRAINED = Path("runs/demo/model")  # what `make demo` trains
KNOWN = 0.7  # of the individuals, imported as the known catalog


def demo_catalog(directory: Path, db: str | None = None, individuals: int = 24, size: int = 256) -> CatalogStore:
    """The demo catalog in ``directory``, built when the folder has none yet."""
    if (directory / CONFIG).is_file():
        return CatalogStore(directory, db)
    source = directory / "demo-source"
    csv = make_catalog(
        source, n_individuals=individuals, photos_per_individual=(4, 6), size=size, seed=7, variation=0.4
    )
    table = pd.read_csv(csv)
    ids = sorted(table["individual_id"].unique())
    known = set(ids[: int(len(ids) * KNOWN)])
    held_out = table.groupby("individual_id").tail(1)  # the last photo of every fin comes in the survey
    in_catalog = table[table["individual_id"].isin(known) & ~table.index.isin(held_out.index)]
    in_catalog.to_csv(source / "known.csv", index=False)
    store = CatalogStore.create(directory, _reranking(_model(source), source / "known.csv", source), db)
    store.intake.import_catalog(source / "known.csv", csv.parent / "images")
    survey = table[~table.index.isin(in_catalog.index)].sample(frac=1.0, random_state=0)
    store.intake.add(
        [csv.parent / "images" / name for name in survey["image"]],
        EncounterInfo(date="2026-07-14", place="demo survey (synthetic fins)", observer="whaleid demo"),
    )
    return store


def _model(source: Path) -> Path:
    if (TRAINED / "model.json").is_file():
        return TRAINED
    network = EmbeddingModel(ModelConfig(backbone="tf_efficientnet_lite0", embedding_dim=0, img_size=128))
    return save_checkpoint(network.eval(), source / "model" / "model", ["zero-shot"]).parent


def _reranking(model: Path, known: Path, source: Path) -> Path:
    """The model with a second stage (ALIKED + LightGlue over the 5 nearest photos), its fusion fitted on the
    known fins left out one at a time: the demo shows the matched points of its proposals."""
    embedder = Embedder.from_checkpoint(model, keypoints=KeypointConfig())
    photos = embedder.embed_catalog(read_catalog(known), progress=False)
    identifier = Identifier.from_embeddings(photos, IdentifyConfig(rerank=RerankConfig(shortlist=5)))
    identifier.fit_fusion(photos, leave_one_out=True)
    identifier.save(source / "identifier")
    return source / "identifier"


def demo_logins(store: CatalogStore) -> dict[str, str]:
    """The demo's users and their passwords, set anew at every start: a reviewer, and an admin so that the
    Users and Model pages are reachable too (the demo has users before `serve` would make a first admin).
    ``WHALEID_DEMO_PASSWORD`` and ``WHALEID_DEMO_ADMIN_PASSWORD`` choose them; else they are random."""
    logins = {}
    for name, role, variable in (
        (DEMO_USER, "reviewer", "WHALEID_DEMO_PASSWORD"),
        (DEMO_ADMIN, "admin", "WHALEID_DEMO_ADMIN_PASSWORD"),
    ):
        password = os.environ.get(variable) or secrets.token_urlsafe(9)
        if user_named(store, name) is not None:
            change_user(store, name, role=role, password=password)
        else:
            add_user(store, name, password, role)
        logins[name] = password
    return logins
