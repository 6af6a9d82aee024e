import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from whaleid.catalog import read_catalog
from whaleid.embed import Embedder, Embeddings
from whaleid.images import open_image
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


def test_two_identical_members_ensemble_to_one(embedder, synth_csv):
    from whaleid.embed import ensemble

    catalog = read_catalog(synth_csv).subset(np.arange(6))
    one = embedder.embed_catalog(catalog, progress=False)
    mean = ensemble([one, one], "mean")
    np.testing.assert_allclose(mean.vectors, one.vectors, atol=1e-6)
    concat = ensemble([one, one], "concat")
    assert concat.vectors.shape == (6, 2 * one.vectors.shape[1])
    np.testing.assert_allclose(concat.vectors @ concat.vectors.T, one.vectors @ one.vectors.T, atol=1e-6)


def test_ensemble_concat_is_the_mean_cosine_and_aligns_classes():
    from whaleid.embed import ensemble

    table = pd.DataFrame({"image": ["a", "b"], "individual_id": ["x", "y"]})
    unit = lambda v: np.asarray(v, np.float32) / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    a = Embeddings(unit([[1, 0], [0, 1]]), table, meta={"classes": ["p", "q"]}, class_cosines=np.array([[0.5, 0.1], [0.2, 0.3]], np.float32))
    # member b lists the photos in the other order and knows classes q and r
    b = Embeddings(unit([[1, 1], [1, 0]]), table.iloc[::-1].reset_index(drop=True), meta={"classes": ["q", "r"]},
                   class_cosines=np.array([[0.9, 0.7], [0.4, 0.6]], np.float32))
    both = ensemble([a, b], "concat")
    cos_ab = both.vectors[0] @ both.vectors[1]
    assert cos_ab == pytest.approx((0.0 + np.sqrt(0.5)) / 2)  # a: a.b = 0; b: (1,0).(1,1)/sqrt2
    assert both.meta["classes"] == ["p", "q", "r"]
    # photo "a": p from member a only, q averaged (0.1, 0.4), r from member b only
    np.testing.assert_allclose(both.class_cosines[0], [0.5, 0.25, 0.6])
    with pytest.raises(ValueError, match="mean"):
        ensemble([a, Embeddings(np.ones((2, 3), np.float32), table)], "mean")


def test_head_gives_cosines_to_each_class_centre(embedder, synth_csv):
    torch.manual_seed(1)
    dim = embedder.model.embedding_dim
    weight = torch.randn(3 * 2, dim)  # 3 classes x 2 sub-centres
    with_head = Embedder(embedder.model, num_workers=0, head={"weight": weight, "k": 2, "scale": 20.0}, classes=["a", "b", "c"])
    catalog = read_catalog(synth_csv).subset(np.arange(4))
    out = with_head.embed_catalog(catalog, progress=False)
    assert out.meta["classes"] == ["a", "b", "c"] and out.meta["arcface_scale"] == 20.0
    images = torch.stack([with_head.transform(open_image(p)) for p in catalog.paths])
    with torch.inference_mode():
        neck = torch.nn.functional.normalize(embedder.model(images), dim=1)
    expected = (neck @ torch.nn.functional.normalize(weight, dim=1).T).view(4, 3, 2).amax(2)
    np.testing.assert_allclose(out.class_cosines, expected.numpy(), atol=1e-5)


def test_fold_checkpoints_load_as_an_ensemble(embedder, synth_csv, fixtures, tmp_path):
    from whaleid.embed import Ensemble
    from whaleid.model import save_checkpoint

    paths = [save_checkpoint(embedder.model, tmp_path / f"fold{i}" / "model.pt", ["a", "b"]) for i in range(2)]
    both = Embedder.from_checkpoint(paths, num_workers=0)
    assert isinstance(both, Ensemble) and both.source["checkpoints"] == [str(p.resolve()) for p in paths]
    again = Embedder.from_source(both.source, num_workers=0)  # how a query CSV is embedded like its gallery
    assert isinstance(again, Ensemble) and len(again.members) == 2
    photos = read_catalog(synth_csv).paths[:3]
    vectors, ok = both.embed_paths([photos[0], str(fixtures / "images" / "truncated.jpg"), photos[1], photos[2]], progress=False)
    assert ok.tolist() == [True, False, True, True]
    single, _ = embedder.embed_paths([photos[0], photos[1], photos[2]], progress=False)
    np.testing.assert_allclose(vectors @ vectors.T, single @ single.T, atol=1e-5)  # identical members: one model's cosines
