import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from whaleid.catalog import read_catalog
from whaleid.embed import Embedder, Embeddings
from whaleid.model import EmbeddingModel, ModelConfig


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    return Embedder(EmbeddingModel(ModelConfig(backbone="test_efficientnet", embedding_dim=16, img_size=64), pretrained=False), batch_size=4, num_workers=0)


def test_vectors_are_unit_length_and_deterministic(embedder, synth_csv):
    catalog = read_catalog(synth_csv)
    paths = catalog.table["path"].tolist()[:6]
    a, ok = embedder.embed_paths(paths, progress=False)
    b, _ = embedder.embed_paths(paths[::-1], progress=False)
    assert ok.all() and a.shape == (6, 16) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a, b[::-1], atol=1e-5)  # batch composition does not matter in eval mode


def test_flip_tta_makes_the_embedding_mirror_invariant(embedder, synth_csv, tmp_path):
    from PIL import ImageOps

    from whaleid.images import open_image

    src = read_catalog(synth_csv).table["path"].iloc[0]
    mirrored = tmp_path / "mirrored.png"
    original = tmp_path / "original.png"
    open_image(src).save(original)
    ImageOps.mirror(open_image(src)).save(mirrored)
    plain, _ = embedder.embed_paths([str(original), str(mirrored)], progress=False)
    assert not np.allclose(plain[0], plain[1], atol=1e-3)
    tta = Embedder(embedder.model, batch_size=2, tta_flip=True, num_workers=0)
    both, _ = tta.embed_paths([str(original), str(mirrored)], progress=False)
    np.testing.assert_allclose(both[0], both[1], atol=1e-4)


def test_broken_photos_are_skipped_and_reported(embedder, synth_csv, fixtures, tmp_path):
    shutil.copytree(synth_csv.parent, tmp_path / "catalog")
    catalog = read_catalog(tmp_path / "catalog" / "train.csv")
    good = catalog.table["path"].tolist()[:3]
    broken = tmp_path / "cut.jpg"
    shutil.copy(fixtures / "images" / "truncated.jpg", broken)
    vectors, ok = embedder.embed_paths([good[0], str(broken), good[1], good[2]], progress=False)
    assert ok.tolist() == [True, False, True, True] and len(vectors) == 3
    # a photo that breaks after the catalog was read ends up in the failures table
    shutil.copy(fixtures / "images" / "not_an_image.jpg", catalog.table["path"].iloc[0])
    embeddings = embedder.embed_catalog(catalog, progress=False)
    assert len(embeddings) == len(catalog) - 1
    assert embeddings.failures["image"].tolist() == [catalog.table["image"].iloc[0]]


def test_embeddings_round_trip(tmp_path):
    e = Embeddings(
        vectors=np.eye(3, 4, dtype=np.float32),
        table=pd.DataFrame({"image": ["a.jpg", "b.jpg", "c.jpg"], "individual_id": ["x", "y", "007"]}),
        meta={"model": {"backbone": "b"}},
    )
    loaded = Embeddings.load(e.save(tmp_path / "emb"))
    np.testing.assert_array_equal(loaded.vectors, e.vectors)
    assert loaded.table["individual_id"].tolist() == ["x", "y", "007"] and loaded.meta == e.meta
