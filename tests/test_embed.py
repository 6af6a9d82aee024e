import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whaleid.data.catalog import read_catalog
from whaleid.data.images import open_image
from whaleid.errors import UserError
from whaleid.model.embed import Embedder
from whaleid.model.embeddings import Embeddings, fingerprint
from whaleid.model.network import EmbeddingModel, ModelConfig


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    return Embedder(
        EmbeddingModel(ModelConfig(backbone="test_efficientnet", embedding_dim=16, img_size=64), pretrained=False),
        batch_size=4,
        num_workers=0,
    )


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

    from whaleid.data.images import open_image

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
    from whaleid.model.embeddings import ensemble

    catalog = read_catalog(synth_csv).subset(np.arange(6))
    one = embedder.embed_catalog(catalog, progress=False)
    mean = ensemble([one, one], "mean")
    np.testing.assert_allclose(mean.vectors, one.vectors, atol=1e-6)
    concat = ensemble([one, one], "concat")
    assert concat.vectors.shape == (6, 2 * one.vectors.shape[1])
    np.testing.assert_allclose(concat.vectors @ concat.vectors.T, one.vectors @ one.vectors.T, atol=1e-6)


def test_ensemble_concat_is_the_mean_cosine_and_aligns_classes():
    from whaleid.model.embeddings import ensemble

    table = pd.DataFrame({"image": ["a", "b"], "individual_id": ["x", "y"]})
    unit = lambda v: np.asarray(v, np.float32) / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    a = Embeddings(
        unit([[1, 0], [0, 1]]),
        table,
        meta={"classes": ["p", "q"]},
        class_cosines=np.array([[0.5, 0.1], [0.2, 0.3]], np.float32),
    )
    # member b lists the photos in the other order and knows classes q and r
    b = Embeddings(
        unit([[1, 1], [1, 0]]),
        table.iloc[::-1].reset_index(drop=True),
        meta={"classes": ["q", "r"]},
        class_cosines=np.array([[0.9, 0.7], [0.4, 0.6]], np.float32),
    )
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
    with_head = Embedder(
        embedder.model, num_workers=0, head={"weight": weight, "k": 2, "scale": 20.0}, classes=["a", "b", "c"]
    )
    catalog = read_catalog(synth_csv).subset(np.arange(4))
    out = with_head.embed_catalog(catalog, progress=False)
    assert out.meta["classes"] == ["a", "b", "c"] and out.meta["arcface_scale"] == 20.0
    images = torch.stack([with_head.transform(open_image(p)) for p in catalog.paths])
    with torch.inference_mode():
        neck = torch.nn.functional.normalize(embedder.model(images), dim=1)
    expected = (neck @ torch.nn.functional.normalize(weight, dim=1).T).view(4, 3, 2).amax(2)
    np.testing.assert_allclose(out.class_cosines, expected.numpy(), atol=1e-5)


def test_fold_checkpoints_load_as_an_ensemble(embedder, synth_csv, fixtures, tmp_path):
    from whaleid.model.checkpoint import save_checkpoint
    from whaleid.model.embed import Ensemble

    paths = [save_checkpoint(embedder.model, tmp_path / f"fold{i}" / "model", ["a", "b"]) for i in range(2)]
    both = Embedder.from_checkpoint(paths, num_workers=0)
    assert isinstance(both, Ensemble) and both.source["checkpoints"] == [str(p.resolve()) for p in paths]
    again = Embedder.from_source(both.source, num_workers=0)  # how a query CSV is embedded like its gallery
    assert isinstance(again, Ensemble) and len(again.members) == 2
    photos = read_catalog(synth_csv).paths[:3]
    vectors, ok = both.embed_paths(
        [photos[0], str(fixtures / "images" / "truncated.jpg"), photos[1], photos[2]], progress=False
    )
    assert ok.tolist() == [True, False, True, True]
    single, _ = embedder.embed_paths([photos[0], photos[1], photos[2]], progress=False)
    np.testing.assert_allclose(
        vectors @ vectors.T, single @ single.T, atol=1e-5
    )  # identical members: one model's cosines


# --------------------------------------------------------------------------- the folder on disk

NAMES = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(NAMES, NAMES), min_size=0, max_size=6))
def test_any_names_round_trip_one_row_per_vector(tmp_path_factory, rows):
    """Names with line breaks, quotes, commas or NUL must not add rows to photos.csv (4 rows for 3 vectors)."""
    table = pd.DataFrame({"image": [r[0] for r in rows], "individual_id": [r[1] for r in rows]}, dtype=object)
    failures = pd.DataFrame({"image": [r[1] for r in rows], "reason": ["x\r\ny"] * len(rows)}, dtype=object)
    e = Embeddings(np.ones((len(rows), 3), np.float32), table, failures, meta={"n": len(rows)})
    loaded = Embeddings.load(e.save(tmp_path_factory.mktemp("emb")))
    assert len(loaded.table) == len(loaded.vectors) == len(rows)
    assert loaded.table.values.tolist() == table.values.tolist()
    assert loaded.failures.values.tolist() == failures.values.tolist()


def saved(tmp_path, n=3, dim=4) -> Path:
    table = pd.DataFrame({"image": [f"{i}.jpg" for i in range(n)], "individual_id": [f"w{i}" for i in range(n)]})
    return Embeddings(np.eye(n, dim, dtype=np.float32), table, meta={"model": {"backbone": "b"}}).save(tmp_path / "emb")


def test_missing_and_incomplete_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"embeddings folder not found: .*absent \(make one with `whaleid embed"):
        Embeddings.load(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="embeddings folder is not a folder"):
        Embeddings.load(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"not a complete embeddings folder \(it is empty\): run `whaleid embed"):
        Embeddings.load(tmp_path / "empty")
    folder = saved(tmp_path)
    (folder / "photos.csv").unlink()
    with pytest.raises(UserError, match=r"\(it lacks photos.csv\)"):
        Embeddings.load(folder)


def _pickle(path):
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)


@pytest.mark.parametrize(
    "damage,pattern",
    [
        (lambda d: (d / "vectors.npy").write_bytes(b"junk"), "vectors.npy is not a valid array file"),
        (lambda d: _pickle(d / "vectors.npy"), "vectors.npy is not a valid array file"),
        (lambda d: np.savez(open(d / "vectors.npy", "wb"), x=np.ones(3)), "vectors.npy is not a .npy array"),
        (lambda d: np.save(d / "vectors.npy", np.ones(3, np.float32)), r"shape \(3,\), not vectors"),
        (lambda d: np.save(d / "vectors.npy", np.array([["a"] * 4] * 3)), "not vectors"),
        (
            lambda d: np.save(d / "vectors.npy", np.array([[np.nan] * 4, [1] * 4, [np.inf] * 4], np.float32)),
            "NaN or inf in 2 of 3 vectors",
        ),
        (
            lambda d: np.save(d / "vectors.npy", np.eye(4, dtype=np.float32)),
            "photos.csv lists 3 photos but vectors.npy holds 4 vectors",
        ),
        (lambda d: (d / "photos.csv").write_text('image\n"a\n'), "photos.csv is not a readable CSV"),
        (lambda d: (d / "photos.csv").write_text("name\na\nb\nc\n"), "photos.csv has no image column"),
        (lambda d: (d / "embeddings.json").write_text("{"), "embeddings.json is not readable JSON"),
        (lambda d: (d / "embeddings.json").write_text("[1]"), "embeddings.json is not a JSON object"),
        (
            lambda d: np.save(d / "class_cosines.npy", np.ones((2, 5), np.float32)),
            "does not fit 3 photos and 0 classes",
        ),
    ],
)
def test_damaged_folders_are_user_errors(tmp_path, damage, pattern):
    folder = saved(tmp_path)
    damage(folder)
    with pytest.raises(UserError, match=pattern) as err:
        Embeddings.load(folder)
    assert "run `whaleid embed CSV --out" in str(err.value)


def test_float64_vectors_load_as_float32(tmp_path):
    folder = saved(tmp_path)
    np.save(folder / "vectors.npy", np.eye(3, 4))
    assert Embeddings.load(folder).vectors.dtype == np.float32


# --------------------------------------------------------------------------- which model made them


def test_embeddings_record_dim_and_a_fingerprint_of_the_model(embedder, synth_csv):
    catalog = read_catalog(synth_csv).subset(np.arange(2))
    plain = embedder.embed_catalog(catalog, progress=False)
    assert plain.meta["dim"] == 16 and len(plain.meta["fingerprint"]) == 12
    assert embedder.embed_catalog(catalog, progress=False).meta["fingerprint"] == plain.meta["fingerprint"]
    flipped = Embedder(embedder.model, num_workers=0, tta_flip=True).embed_catalog(catalog, progress=False)
    assert flipped.meta["fingerprint"] == plain.meta["fingerprint"]  # flip TTA stays in the model's space
    plain.require_compatible(flipped, "queries")


def test_a_copied_checkpoint_is_the_same_model(embedder, synth_csv, tmp_path):
    from whaleid.model.checkpoint import checkpoint_files, save_checkpoint

    first = save_checkpoint(embedder.model, tmp_path / "a" / "model", ["a", "b"])
    (tmp_path / "b").mkdir()
    for path in checkpoint_files(first):
        shutil.copy(path, tmp_path / "b" / path.name)
    copy = tmp_path / "b" / "model.json"
    catalog = read_catalog(synth_csv).subset(np.arange(2))
    a = Embedder.from_checkpoint(first, num_workers=0).embed_catalog(catalog, progress=False)
    b = Embedder.from_checkpoint(copy, num_workers=0).embed_catalog(catalog, progress=False)
    assert a.meta["weights"] == b.meta["weights"] and a.meta["fingerprint"] == b.meta["fingerprint"]
    a.require_compatible(b, "queries")


def meta_of(backbone="efficientnet", weights="abc", dim=512, tta=False) -> dict:
    meta = {
        "model": {"backbone": backbone, "img_size": 224},
        "weights": weights,
        "tta_flip": tta,
        "preprocess": None,
        "source": {"checkpoint": f"/runs/{weights}.pt"},
    }
    return {**meta, "fingerprint": fingerprint(meta), "dim": dim}


def with_meta(meta: dict, dim: int, n: int = 2) -> Embeddings:
    table = pd.DataFrame({"image": [f"{i}.jpg" for i in range(n)], "individual_id": ["w"] * n})
    return Embeddings(np.ones((n, dim), np.float32), table, meta=meta)


def test_other_models_are_refused_with_what_differs(tmp_path):
    gallery = with_meta(meta_of("b7", "def456"), 1280)
    val = with_meta(meta_of("lite0", "abc123"), 512)
    with pytest.raises(UserError) as err:
        gallery.require_compatible(val, "validation embeddings")
    message = str(err.value)
    assert message.startswith("validation embeddings come from another model (512-d, model ")
    fp = gallery.meta["fingerprint"]
    assert f"than the gallery (1280-d, model {fp}; they differ in backbone 'b7' vs 'lite0'" in message
    assert "weights" in message and message.endswith("embed both with the same --model (and --crop)")
    loaded = Embeddings.load(val.save(tmp_path / "val"))
    with pytest.raises(UserError, match=f"validation embeddings {tmp_path / 'val'} come from another model"):
        gallery.require_compatible(loaded, "validation embeddings")
    with pytest.raises(UserError, match="differ in weights"):
        gallery.require_compatible(with_meta(meta_of("b7", "other"), 1280), "queries")


def test_old_embeddings_without_fingerprint_compare_what_they_record():
    old = {"model": {"backbone": "b7", "img_size": 224}, "source": {"checkpoint": "/runs/a.pt"}}
    gallery = with_meta(old, 8)
    gallery.require_compatible(with_meta(dict(old), 8), "queries")
    gallery.require_compatible(with_meta(meta_of("b7", "x", 8) | {"source": old["source"]}, 8), "queries")
    with pytest.raises(UserError, match=r"queries come from another model \(4-d, model b7\) than the gallery \(8-d"):
        gallery.require_compatible(with_meta(dict(old), 4), "queries")
    with pytest.raises(UserError, match="differ in model file"):
        gallery.require_compatible(with_meta({**old, "source": {"checkpoint": "/runs/b.pt"}}, 8), "queries")
    with pytest.raises(UserError, match="img_size 224 vs 512"):
        gallery.require_compatible(with_meta({**old, "model": {"backbone": "b7", "img_size": 512}}, 8), "queries")


def test_a_gallery_needs_labels():
    e = with_meta({}, 4, n=3)
    e.require_labels()
    e.table.loc[1, "individual_id"] = ""
    e.table.loc[2, "individual_id"] = None
    with pytest.raises(UserError, match=r"the gallery: 2 of 3 photos have no individual_id; embed a labelled catalog"):
        e.require_labels()
    with pytest.raises(UserError, match="calibration set holds no vectors"):
        Embeddings(np.zeros((0, 4), np.float32), pd.DataFrame({"image": []})).require_labels("calibration set")
    with pytest.raises(UserError, match="3 of 3 photos have no individual_id"):
        Embeddings(np.ones((3, 4), np.float32), pd.DataFrame({"image": ["a", "b", "c"]})).require_labels()
