"""The Identifier as the one façade: its scorer, threshold policy and model(s) survive save/load, ensembles included."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from whaleid.data.catalog import read_catalog
from whaleid.errors import UserError
from whaleid.model.checkpoint import save_checkpoint
from whaleid.model.embed import Embedder
from whaleid.model.embeddings import Embeddings
from whaleid.model.network import EmbeddingModel, ModelConfig
from whaleid.search.identify import Identifier, IdentifyConfig, identify_queries
from whaleid.search.predictions import Predictions
from whaleid.search.ranking import NEW_INDIVIDUAL

CLASSES = ["a", "b", "c"]


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def embeddings(vectors, ids, cosines=None, images=None):
    table = pd.DataFrame(
        {"image": images or [f"p{i}.jpg" for i in range(len(ids))], "species": "whale", "individual_id": ids}
    )
    meta = {"model": {"backbone": "hand-made"}, "dim": 3, "fingerprint": "f" * 12}
    if cosines is not None:
        meta.update(classes=CLASSES, arcface_scale=10.0)
    return Embeddings(
        unit(vectors), table, meta=meta, class_cosines=None if cosines is None else np.asarray(cosines, np.float32)
    )


@pytest.fixture
def blend_case():
    """A query nearest to a photo of "a" whose ArcFace head says "b": kNN and the blend disagree."""
    gallery = embeddings([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1]], ["a", "a", "b", "c"])
    queries = embeddings([[0.8, 0.6, 0], [0, 0.2, 1]], ["b", "c"], cosines=[[0.1, 0.9, 0.0], [0.0, 0.1, 0.9]])
    return gallery, queries


def test_a_saved_blended_identifier_ranks_exactly_as_before(tmp_path, blend_case):
    gallery, queries = blend_case
    identifier = Identifier.from_embeddings(gallery, IdentifyConfig(blend=0.5), threshold=0.4)
    before = identifier.rank(queries)
    knn = Identifier.from_embeddings(gallery).rank(queries)
    assert before[0].ids[0] == "b" and knn[0].ids[0] == "a"  # the blend is what decides here
    metadata = dict(identifier.metadata)
    identifier.save(tmp_path / "id")
    assert identifier.metadata == metadata  # saving changes nothing on the object
    loaded = Identifier.load(tmp_path / "id")
    assert loaded.config == IdentifyConfig(blend=0.5) and loaded.threshold == 0.4
    after = loaded.rank(queries)
    assert [r.ids for r in after] == [r.ids for r in before]
    assert [r.scores for r in after] == [r.scores for r in before]  # exactly, not approximately
    assert [r.ids for r in loaded.identify(queries)] == [r.ids for r in identifier.identify(queries)]


def test_the_blend_needs_class_cosines_and_the_exact_index(blend_case):
    gallery, queries = blend_case
    with pytest.raises(UserError, match="ArcFace head"):
        Identifier.from_embeddings(gallery, IdentifyConfig(blend=0.5)).rank(embeddings(queries.vectors, ["b", "c"]))
    with pytest.raises(UserError, match="exact index"):
        IdentifyConfig(blend=0.5, index="faiss")
    with pytest.raises(UserError, match="choose the blend weight"):
        Identifier.from_embeddings(gallery, IdentifyConfig(blend="auto"))


def test_identify_queries_follows_the_threshold_policy(blend_case):
    gallery, queries = blend_case
    # "rate": the share of queries sent to new_individual is the one asked for
    rate = Identifier.from_embeddings(gallery, IdentifyConfig(threshold="rate", new_rate=0.5))
    predictions = identify_queries(rate, queries)
    assert [p[0] == NEW_INDIVIDUAL for p in predictions.ids].count(True) == 1
    # a calibration set ranked leave-one-out by kNN: its single-photo individual "c" is new there
    sweep = Identifier.from_embeddings(gallery)
    identify_queries(sweep, queries, calibration=gallery)
    assert sweep.threshold is not None
    assert identify_queries(Identifier.from_embeddings(gallery, threshold=0.99), queries).ids[0][0] == NEW_INDIVIDUAL
    other = embeddings(queries.vectors, ["b", "c"])
    other.meta["fingerprint"] = "another-model"
    with pytest.raises(UserError, match="another model"):
        identify_queries(Identifier.from_embeddings(gallery), other)


def test_predictions_round_trip_through_their_csv(tmp_path, blend_case):
    gallery, queries = blend_case
    predictions = Identifier.from_embeddings(gallery, threshold=0.5).predict(queries)
    predictions.save(tmp_path / "p.csv")
    loaded = Predictions.load(tmp_path / "p.csv")
    assert loaded.images == predictions.images and loaded.ids == predictions.ids
    for a, b in zip(loaded.candidates, predictions.candidates):
        assert a.ids == b.ids and a.scores == pytest.approx(b.scores, abs=5e-5)  # written to 4 decimals
    report, sweep = loaded.evaluate(queries.table, gallery_ids=gallery.table["individual_id"])
    assert report.n == 2 and sweep is not None and len(sweep) > 1
    (tmp_path / "bad.csv").write_text("image,predictions,candidates,scores\nx.jpg,a,a b,0.5\n")
    with pytest.raises(UserError, match="line 2 has candidates and scores that do not pair up"):
        Predictions.load(tmp_path / "bad.csv")


def _fold_models(folder, n=2):
    paths = []
    for i in range(n):
        torch.manual_seed(i)
        model = EmbeddingModel(
            ModelConfig(backbone="test_efficientnet", embedding_dim=16, img_size=48), pretrained=False
        )
        paths.append(save_checkpoint(model.eval(), folder / f"fold{i}" / "model", ["x", "y"]))
    return paths


def test_a_moved_ensemble_identifier_identifies_photos_with_its_run_folder_deleted(tmp_path, synth_csv):
    run = tmp_path / "run"
    members = _fold_models(run)
    catalog = read_catalog(synth_csv).subset(np.arange(12))
    gallery = Embedder.from_checkpoint(members, num_workers=0).embed_catalog(catalog, progress=False)
    assert gallery.meta["ensemble"]["members"] == 2
    identifier = Identifier.from_embeddings(gallery, threshold=0.2)
    photos = catalog.table["path"].tolist()[:3]
    before, ok = identifier.identify_photos(photos, num_workers=0)
    identifier.save(tmp_path / "saved")
    sidecar = json.loads((tmp_path / "saved" / "identifier.json").read_text())
    assert sidecar["metadata"]["source"]["checkpoints"] == ["models/0/model.json", "models/1/model.json"]
    shutil.move(tmp_path / "saved", tmp_path / "elsewhere")
    shutil.rmtree(run)
    moved = Identifier.load(tmp_path / "elsewhere")
    after, ok_after = moved.identify_photos(photos, num_workers=0)
    assert ok.all() and ok_after.all()
    assert [r.ids for r in after] == [r.ids for r in before]
    for a, b in zip(after, before):
        assert a.scores == pytest.approx(b.scores, abs=1e-5)
    assert moved.metadata["source"]["checkpoints"][0].startswith(str(tmp_path / "elsewhere"))


def test_python_dash_m_whaleid_is_the_command():
    done = subprocess.run([sys.executable, "-m", "whaleid", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for name in ("identify", "embed", "train", "demo", "run", "convert-checkpoint"):
        assert name in done.stdout
