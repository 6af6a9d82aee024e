import hashlib
import json
import math
import re
import shutil
from dataclasses import asdict

import pytest
import torch

import whaleid
import whaleid.model.checkpoint as checkpoint_module
from whaleid.errors import UserError
from whaleid.model.checkpoint import (
    checkpoint_files,
    checkpoint_paths,
    checkpoints,
    convert_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from whaleid.model.network import EmbeddingModel, ModelConfig

PREPROCESS = {"cache": {"sizes": [64], "crop": "saliency", "background": "blur"}, "probabilities": {"saliency": 1.0}}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return EmbeddingModel(
        ModelConfig(backbone="test_efficientnet", embedding_dim=32, img_size=64), pretrained=False
    ).eval()


def head_of(model, classes=2, k=3):
    return {"weight": torch.randn(classes * k, model.embedding_dim), "k": k, "scale": 21.0}


def save_tiny(folder, **kwargs):
    model = tiny_model()
    return model, save_checkpoint(model, folder / "model", ["a", "b"], **{"head": head_of(model), **kwargs})


def save_old_checkpoint(model, path, labels, extra=None, head=None):
    """A model.pt exactly as whaleid 0.1's save_checkpoint wrote it (torch.save of this dict; a pickle)."""
    payload = {
        "format": "whaleid.model/1",
        "config": asdict(model.config),
        "state_dict": model.state_dict(),
        "labels": list(labels),
        "extra": extra or {},
        "head": head,
    }
    torch.save(payload, path)
    return path


def old_trained_checkpoint(path):
    """What whaleid 0.1's `train` saved: the extra it built (recipe, flat train_config, history, epoch, preprocess)."""
    model = tiny_model()
    train_config = {
        "backbone": "test_efficientnet",
        "pretrained": False,
        "embedding_dim": 32,
        "img_size": 64,
        "epochs": 2,
        "img_size_schedule": {0: 48, 1: 64},
        "grad_checkpointing": False,
    }
    history = [{"epoch": 1, "loss": 10.5, "val_map5": 0.6, "val_new_precision": float("nan")}]
    extra = {
        "recipe": {"folds": 1},
        "train_config": train_config,
        "history": history,
        "epoch": 1,
        "preprocess": PREPROCESS,
    }
    return model, save_old_checkpoint(model, path, ["fin_000", "fin_001"], extra, head_of(model))


def outputs(model):
    torch.manual_seed(1)
    with torch.no_grad():
        return model(torch.randn(2, 3, 64, 64))


def test_round_trip_keeps_weights_head_labels_preprocess_and_record(tmp_path):
    model, path = save_tiny(tmp_path, preprocess=PREPROCESS, extra={"epoch": 3, "history": [{"loss": float("nan")}]})
    assert path == tmp_path / "model.json" and (tmp_path / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]  # no temp files left
    loaded, checkpoint = load_checkpoint(path)
    torch.testing.assert_close(outputs(loaded), outputs(model))
    assert checkpoint.labels == ["a", "b"] and checkpoint.preprocess == PREPROCESS and loaded.config == model.config
    assert checkpoint.head["k"] == 3 and checkpoint.head["scale"] == 21.0 and checkpoint.head["weight"].shape == (6, 32)
    assert checkpoint.extra["epoch"] == 3 and math.isnan(checkpoint.extra["history"][0]["loss"])
    assert checkpoint.provenance["whaleid"] == whaleid.__version__ and checkpoint.provenance["created"]
    assert checkpoint.digest == hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    assert (checkpoint.path, checkpoint.weights) == (tmp_path / "model.json", tmp_path / "model.safetensors")


def test_any_name_of_the_pair_loads_it(tmp_path):
    _, path = save_tiny(tmp_path)
    for name in (tmp_path, tmp_path / "model", tmp_path / "model.json", tmp_path / "model.safetensors", str(path)):
        assert load_checkpoint(name)[1].path == path
    assert checkpoint_files(tmp_path) == [tmp_path / "model.safetensors", tmp_path / "model.json"]  # copy order
    assert checkpoint_paths(tmp_path / "other.safetensors") == (tmp_path / "other.json", tmp_path / "other.safetensors")


def test_a_model_without_head_loads_without_one(tmp_path):
    model = tiny_model()
    _, checkpoint = load_checkpoint(save_checkpoint(model, tmp_path / "m.json", ["a"]))
    assert checkpoint.head is None and checkpoint.preprocess is None and checkpoint.extra == {}


def test_the_digest_is_the_same_wherever_the_pair_is_copied(tmp_path):
    _, path = save_tiny(tmp_path / "a")
    copy = tmp_path / "b"
    copy.mkdir()
    for file in checkpoint_files(path):
        shutil.copy(file, copy / file.name)
    assert load_checkpoint(copy)[1].digest == load_checkpoint(path)[1].digest
    _, again = save_tiny(tmp_path / "c")  # the same weights saved again, at another time
    assert load_checkpoint(again)[1].digest == load_checkpoint(path)[1].digest
    model = tiny_model()
    other = save_checkpoint(model, tmp_path / "d", ["a", "b"], head={**head_of(model), "weight": torch.zeros(6, 32)})
    assert load_checkpoint(other)[1].digest != load_checkpoint(path)[1].digest


def test_the_weights_are_written_first_and_the_json_last(tmp_path, monkeypatch):
    _, path = save_tiny(tmp_path)
    written = []
    real = checkpoint_module.atomic_path

    def failing_json(target):
        written.append(target.name)
        if target.suffix == ".json":
            raise OSError("killed")
        return real(target)

    monkeypatch.setattr(checkpoint_module, "atomic_path", failing_json)
    with pytest.raises(OSError, match="killed"):
        save_tiny(tmp_path)
    assert written == ["model.safetensors", "model.json"]
    # the earlier JSON went before the new weights: a folder never pairs a JSON with weights it does not describe
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))} is not a readable whaleid model \(no such file\)"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda path: path.write_bytes(b""), "empty file"),
        (lambda path: path.write_bytes(path.read_bytes()[:40]), "not JSON: truncated or another program's file"),
        (lambda path: path.write_bytes(b"\x80\x02PK\x03\x04"), "not JSON: truncated or another program's file"),
        (lambda path: path.write_text('{"image": "a.jpg"}'), "not a whaleid checkpoint"),
        (lambda path: path.write_text("[1, 2]"), "not a whaleid checkpoint"),
        (lambda path: path.unlink(), "no such file"),
        (lambda path: (path.unlink(), path.mkdir()), "a directory"),
        (lambda path: _edit(path, version=2), "format version 2, newer than this whaleid reads"),
        (lambda path: _edit(path, labels="a,b"), "not a whaleid checkpoint: bad labels, head or extra"),
        (
            lambda path: _edit(path, model={"backbone": "test_efficientnet", "embedding_dim": 8}),
            "its weights do not fit its settings",
        ),
        (lambda path: _edit(path, head={"k": 2, "scale": 21.0}), "its weights do not fit its settings"),
        (lambda path: _edit(path, head=None), "its weights do not fit its settings"),
        (
            lambda path: _edit(path, model={"backbone": "no_such_net"}),
            "its model cannot be built: Unknown timm model 'no_such_net'",
        ),
        (
            lambda path: _edit(path, model={"img_sise": 64}),
            r"its model cannot be built: unknown model keys: \['img_sise'\]",
        ),
    ],
)
def test_every_unreadable_json_is_one_user_error_naming_it(tmp_path, damage, reason):
    _, path = save_tiny(tmp_path)
    damage(path)
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))} is not a readable whaleid model \({reason}"):
        load_checkpoint(path)


def _edit(path, **values):
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def _with_weights(path, data):
    """Weights replaced by ``data``, the JSON's digest updated as if they had been saved so."""
    path.with_suffix(".safetensors").write_bytes(data)
    _edit(path, weights_sha256=hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda path: path.with_suffix(".safetensors").unlink(), "no such file"),
        (lambda path: path.with_suffix(".safetensors").write_bytes(b""), "empty file"),
        (lambda path: (w := path.with_suffix(".safetensors")).write_bytes(w.read_bytes()[:-10]), "its sha256 differs"),
        (
            lambda path: (w := path.with_suffix(".safetensors")).write_bytes(b"garbage" + w.read_bytes()[7:]),
            "its sha256 differs",
        ),
        (lambda path: _with_weights(path, b"\x00" * 64), "not a safetensors file"),
        (lambda path: _with_weights(path, b"garbage, not tensors"), "not a safetensors file"),
    ],
)
def test_weights_missing_changed_or_garbage_are_one_user_error_naming_them(tmp_path, damage, reason):
    _, path = save_tiny(tmp_path)
    damage(path)
    weights = re.escape(str(path.with_suffix(".safetensors")))
    with pytest.raises(UserError, match=rf"^{weights} is not a readable whaleid model \({reason}"):
        load_checkpoint(path)


def test_an_old_model_pt_is_refused_with_the_command_that_converts_it(tmp_path):
    old = save_old_checkpoint(tiny_model(), tmp_path / "model.pt", ["a"])
    expected = (
        rf"^{re.escape(str(old))} is a model.pt of an older whaleid: convert it once with `whaleid convert-checkpoint"
    )
    for name in (old, tmp_path, tmp_path / "model.json"):
        with pytest.raises(UserError, match=expected):
            load_checkpoint(name)


def test_an_old_trained_checkpoint_converts_to_the_same_model(tmp_path):
    (tmp_path / "run").mkdir()
    model, old = old_trained_checkpoint(tmp_path / "run" / "model.pt")
    path = convert_checkpoint(old)
    assert path == tmp_path / "run" / "model.json"
    loaded, checkpoint = load_checkpoint(path)
    torch.testing.assert_close(outputs(loaded), outputs(model))
    payload = torch.load(old, weights_only=True)
    torch.testing.assert_close(checkpoint.head["weight"], payload["head"]["weight"])
    assert checkpoint.labels == ["fin_000", "fin_001"] and checkpoint.head["k"] == 3
    assert checkpoint.preprocess == PREPROCESS  # the old layout, as it was
    assert set(checkpoint.extra) == {"recipe", "train_config", "history", "epoch"} and checkpoint.extra["epoch"] == 1
    assert checkpoint.extra["train_config"]["img_size_schedule"] == {"0": 48, "1": 64}  # JSON keys are strings
    assert math.isnan(checkpoint.extra["history"][0]["val_new_precision"])
    assert checkpoint.provenance["converted_from"] == "model.pt"
    assert checkpoint.provenance["converted_from_sha256"] == hashlib.sha256(old.read_bytes()).hexdigest()
    (tmp_path / "new").mkdir()
    elsewhere = convert_checkpoint(old, tmp_path / "new")  # a folder
    assert elsewhere == tmp_path / "new" / "model.json" and load_checkpoint(elsewhere)[1].digest == checkpoint.digest
    assert convert_checkpoint(old, tmp_path / "new" / "b0") == tmp_path / "new" / "b0.json"  # a stem
    with pytest.raises(UserError, match="model.json already exists"):
        convert_checkpoint(old)


class Marker:
    """A pickle that creates a file when loaded: what a tampered model.pt could do instead."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_converting_a_tampered_pickle_refuses_it_without_running_it(tmp_path):
    model, old = old_trained_checkpoint(tmp_path / "model.pt")
    payload = torch.load(old, weights_only=True)
    marker = tmp_path / "ran"
    payload["extra"]["recipe"] = Marker(marker)
    torch.save(payload, old)
    with pytest.raises(
        UserError, match=rf"^{re.escape(str(old))} is not a readable whaleid model \(not a whaleid file\)"
    ):
        convert_checkpoint(old)
    assert not marker.exists() and not (tmp_path / "model.json").exists()
    torch.load(old, weights_only=False)  # the payload is live: a plain unpickling does run it
    assert marker.exists()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda path: torch.save({"state_dict": {}}, path), "not an old whaleid checkpoint"),
        (lambda path: path.write_bytes(path.read_bytes()[:-10]), "truncated or corrupt"),
        (lambda path: path.unlink(), "no such file"),
        (lambda path: _edit_old(path, embedding_dim=8), "its weights do not fit its config"),
    ],
)
def test_converting_what_is_not_an_old_checkpoint_is_one_user_error(tmp_path, damage, reason):
    _, old = old_trained_checkpoint(tmp_path / "model.pt")
    damage(old)
    with pytest.raises(UserError, match=rf"^{re.escape(str(old))} is not a readable whaleid model \({reason}\)"):
        convert_checkpoint(old)


def _edit_old(path, **config):
    payload = torch.load(path, weights_only=True)
    payload["config"].update(config)
    torch.save(payload, path)


def test_a_missing_run_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        checkpoints(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no model.json in"):
        checkpoints(tmp_path)


def test_a_run_folder_of_old_model_pt_files_says_how_to_convert_them(tmp_path):
    (tmp_path / "fold0").mkdir()
    (tmp_path / "fold0" / "model.pt").write_bytes(b"old")
    with pytest.raises(
        UserError, match=r"holds model.pt files of an older whaleid: .*`whaleid convert-checkpoint .*fold0/model.pt`"
    ):
        checkpoints(tmp_path)


def test_a_checkpoint_named_by_either_file_or_its_stem_is_itself(tmp_path):
    path = save_checkpoint(tiny_model(), tmp_path / "fold3" / "b0", ["a"])
    for name in (path, path.with_suffix(".safetensors"), path.with_suffix("")):
        assert checkpoints(name) == [path]
    old = tmp_path / "model.pt"
    old.write_bytes(b"")
    assert checkpoints(old) == [old]  # loading it says how to convert it
