"""Embedding on ONNX Runtime: the same vectors as torch, one cached export per set of weights."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from whaleid.data.catalog import read_catalog
from whaleid.errors import UserError
from whaleid.model import onnx as onnx_module
from whaleid.model.checkpoint import save_checkpoint
from whaleid.model.embed import Embedder, embed_files
from whaleid.model.network import EmbeddingModel, ModelConfig


def _checkpoint(folder, seed=0):
    """A lite0 with a neck and an ArcFace head at 64 px: both outputs and the class cosines are exercised."""
    torch.manual_seed(seed)
    model = EmbeddingModel(ModelConfig(backbone="tf_efficientnet_lite0", embedding_dim=32, img_size=64)).eval()
    for module in model.neck.modules():  # BatchNorm statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    head = {"weight": torch.randn(3 * 2, 32), "k": 2, "scale": 20.0}
    return save_checkpoint(model, folder / "model", ["a", "b", "c"], head=head)


def _exports(folder):
    return sorted(p.name for p in folder.glob("whaleid-*.onnx"))


@pytest.fixture
def real_photos(shared_data):
    """Real photos of two kinds: 224 px right-whale head crops and full Happywhale frames up to 1024 px."""
    data = shared_data
    heads = read_catalog(data / "right-whale-heads" / "train.csv", check_images=False).table["path"].tolist()[:12]
    frames = read_catalog(data / "happywhale-sample" / "train.csv", check_images=False).table["path"].tolist()[:12]
    return heads + frames


@pytest.mark.parametrize("tta", [False, True])
def test_onnx_and_torch_agree_on_real_photos(tmp_path, real_photos, tta):
    # Measured: the lowest cosine between the engines over these photos is 0.9999998 (float32 rounding
    # in a different order); 0.9999 is the bar, and a wrong graph (another output, no neck,
    # unflipped TTA) scores far below it.
    path = _checkpoint(tmp_path)
    engines = {e: Embedder.from_checkpoint(path, engine=e, tta_flip=tta, num_workers=0) for e in ("onnx", "torch")}
    out = {e: embed_files(embedder, real_photos)[0] for e, embedder in engines.items()}
    assert engines["onnx"].runs_on == "onnx" and engines["torch"].runs_on == "torch"
    assert len(out["onnx"]) == len(real_photos) == len(out["torch"])
    cosine = (out["onnx"].vectors * out["torch"].vectors).sum(axis=1)
    assert cosine.min() >= 0.9999
    np.testing.assert_allclose(out["onnx"].class_cosines, out["torch"].class_cosines, atol=1e-4)
    assert out["onnx"].meta["fingerprint"] == out["torch"].meta["fingerprint"]  # interchangeable vectors


def _batch(size=64, n=3):
    return torch.from_numpy(np.random.default_rng(0).normal(size=(n, 3, size, size)).astype(np.float32))


def test_export_is_cached_beside_the_checkpoint_and_reused(tmp_path, monkeypatch):
    path = _checkpoint(tmp_path)
    Embedder.from_checkpoint(path).onnx  # noqa: B018
    assert len(_exports(tmp_path)) == 1

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cached file fits")

    monkeypatch.setattr(onnx_module, "export", no_export)
    again = Embedder.from_checkpoint(path)
    assert again.onnx is not None and again.onnx.path.parent == tmp_path


def test_changed_checkpoint_gets_a_new_export(tmp_path):
    path = _checkpoint(tmp_path, seed=0)
    first = Embedder.from_checkpoint(path)
    before = first.embed_batch(_batch())[0]
    [old] = _exports(tmp_path)
    _checkpoint(tmp_path, seed=1)  # retrained in place: same file names, other weights
    second = Embedder.from_checkpoint(path)
    after, expected = (
        second.embed_batch(_batch())[0],
        Embedder.from_checkpoint(path, engine="torch").embed_batch(_batch())[0],
    )
    assert old in _exports(tmp_path) and len(_exports(tmp_path)) == 2
    assert second.onnx.path.name != old
    assert (after * expected).sum(1).min() > 0.9999  # the new weights' vectors, not the old export's
    assert (after * before).sum(1).max() < 0.99


def test_export_of_other_weights_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    Embedder.from_checkpoint(_checkpoint(a, seed=0)).onnx  # noqa: B018
    embedder_b = Embedder.from_checkpoint(_checkpoint(b, seed=1))
    [a_file] = _exports(a)
    [b_name] = [f"whaleid-{embedder_b.export_to[0][:16]}.onnx"]
    shutil.copy(a / a_file, b / b_name)  # A's export under the name B's weights look for
    with pytest.raises(UserError, match="exported from other weights.*delete it"):
        embedder_b.embed_batch(_batch())


@pytest.mark.parametrize("damage", ["truncated", "old format"])
def test_broken_or_old_export_is_exported_again(tmp_path, damage):
    path = _checkpoint(tmp_path)
    cached = Embedder.from_checkpoint(path).onnx.path
    if damage == "truncated":
        cached.write_bytes(cached.read_bytes()[:1000])
    else:
        import onnx

        graph = onnx.load(str(cached))
        for prop in graph.metadata_props:
            if prop.key == "whaleid.format":
                prop.value = "whaleid.onnx/0"
        onnx.save(graph, str(cached))
    embedder = Embedder.from_checkpoint(path)
    vectors = embedder.embed_batch(_batch())[0]
    expected = Embedder.from_checkpoint(path, engine="torch").embed_batch(_batch())[0]
    assert (vectors * expected).sum(1).min() > 0.9999
    assert embedder.onnx.session.get_modelmeta().custom_metadata_map["whaleid.format"] == onnx_module.FORMAT


def test_unwritable_model_folder_exports_to_the_cache(tmp_path, monkeypatch):
    path = _checkpoint(tmp_path)
    real = onnx_module.atomic_path

    def read_only(target):
        if target.parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(target))
        return real(target)

    monkeypatch.setattr(onnx_module, "atomic_path", read_only)
    embedder = Embedder.from_checkpoint(path)
    assert embedder.onnx.path.parent == onnx_module.cache_dir()
    assert _exports(tmp_path) == []


def test_zero_shot_exports_into_the_cache_named_by_weights():
    embedder = Embedder.zero_shot("tf_efficientnet_lite0", 64)
    assert embedder.onnx.path.parent == onnx_module.cache_dir()
    assert onnx_module.cache_dir().parent == Path(os.environ["WHALEID_CACHE"])  # the tests' throwaway folder
    assert embedder.onnx.path.name == f"whaleid-{onnx_module.weights_digest(embedder.model)[:16]}.onnx"


def test_engine_torch_exports_nothing_and_unknown_engine_is_refused(tmp_path):
    path = _checkpoint(tmp_path)
    embedder = Embedder.from_checkpoint(path, engine="torch")
    embedder.embed_batch(_batch())
    assert embedder.runs_on == "torch" and _exports(tmp_path) == []
    with pytest.raises(UserError, match="unknown engine 'tensorrt'; valid: auto, onnx, torch"):
        Embedder.from_checkpoint(path, engine="tensorrt")


def test_auto_falls_back_to_torch_when_export_fails(tmp_path, monkeypatch):
    path = _checkpoint(tmp_path)

    def fails(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::frobnicate' to ONNX is not supported")

    monkeypatch.setattr(onnx_module, "export", fails)
    auto = Embedder.from_checkpoint(path)
    with pytest.warns(UserWarning, match="embedding with torch.*aten::frobnicate"):
        vectors = auto.embed_batch(_batch())[0]
    assert auto.runs_on == "torch" and vectors.shape == (3, 32)
    with pytest.raises(UserError, match="cannot run tf_efficientnet_lite0 on ONNX Runtime.*frobnicate"):
        Embedder.from_checkpoint(path, engine="onnx").embed_batch(_batch())


def test_cli_embeds_on_either_engine_and_says_which(tmp_path, synth_csv):
    from typer.testing import CliRunner

    from whaleid.__main__ import app
    from whaleid.model.embeddings import Embeddings

    path = _checkpoint(tmp_path)
    outputs = {}
    for engine in ("auto", "torch"):
        result = CliRunner().invoke(
            app, ["embed", str(synth_csv), "--model", str(path), "--out", str(tmp_path / engine), "--engine", engine]
        )
        assert result.exit_code == 0, result.output
        runs_on = "torch" if engine == "torch" else "onnx"
        assert f"photos/s on {runs_on})" in " ".join(result.output.split())
        outputs[engine] = Embeddings.load(tmp_path / engine)
    assert (outputs["auto"].vectors * outputs["torch"].vectors).sum(1).min() > 0.9999
    refused = CliRunner().invoke(
        app, ["embed", str(synth_csv), "--model", str(path), "--out", str(tmp_path / "x"), "--engine", "tpu"]
    )
    assert refused.exit_code != 0 and "unknown engine 'tpu'; valid: auto, onnx, torch" in refused.output
