"""The CLI end to end on a synthetic catalog, with a tiny random backbone: every command runs and writes what it says."""

import json

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from whaleid.app.cli import app

runner = CliRunner()


def run(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_every_command_chains(synth_csv, tmp_path):
    images = synth_csv.parent / "images"
    assert "photos" in run("summary", synth_csv)
    run("split", synth_csv, "--out", tmp_path / "split", "--new-fraction", 0.25, "--folds", 3)
    known = pd.read_csv(tmp_path / "split" / "known.csv")
    new = pd.read_csv(tmp_path / "split" / "new.csv")
    assert not set(known["individual_id"]) & set(new["individual_id"])
    assert set(pd.read_csv(tmp_path / "split" / "folds.csv")["fold"]) == {0, 1, 2}

    run("train", tmp_path / "split" / "known.csv", "--images", images, "--out", tmp_path / "model",
        "--backbone", "test_efficientnet", "--no-pretrained", "--epochs", 1, "--img-size", 48,
        "--batch-size", 8, "--embedding-dim", 16, "--workers", 0, "--val", tmp_path / "split" / "new.csv")
    metrics = json.loads((tmp_path / "model" / "metrics.jsonl").read_text())
    assert metrics["epoch"] == 1 and 0 <= metrics["val_map5"] <= 1

    model = tmp_path / "model" / "model.pt"
    run("embed", tmp_path / "split" / "known.csv", "--images", images, "--model", model, "--out", tmp_path / "gallery")
    run("embed", synth_csv, "--model", model, "--out", tmp_path / "queries", "--tta")
    # a query CSV is embedded with the model that made the gallery
    run("identify", tmp_path / "gallery", tmp_path / "split" / "new.csv", "--images", images,
        "--threshold", 0.5, "--out", tmp_path / "csv_pred.csv")
    assert len(pd.read_csv(tmp_path / "csv_pred.csv")) == len(new)
    out = run("identify", tmp_path / "gallery", tmp_path / "queries", "--calibrate", tmp_path / "gallery",
              "--out", tmp_path / "pred.csv", "--submission", tmp_path / "sub.csv", "--save", tmp_path / "identifier")
    assert "threshold" in out
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert len(pred) == len(pd.read_csv(synth_csv))
    assert all(len(p.split()) == 5 for p in pd.read_csv(tmp_path / "sub.csv")["predictions"])
    # the saved Identifier carries its model: photos in, the same answers out
    from whaleid.search.identify import Identifier

    identifier = Identifier.load(tmp_path / "identifier")
    photos = pd.read_csv(synth_csv)["image"].head(4)
    rankings, ok = identifier.identify_photos([str(images / p) for p in photos], num_workers=0, tta_flip=True)
    assert ok.all()
    # same answers up to float noise between batch sizes: near-tied candidates may swap
    assert [r.ids[0] for r in rankings] == [p.split()[0] for p in pred["predictions"].head(4)]
    for ranking, row in zip(rankings, pred.head(4).itertuples()):
        assert ranking.scores == pytest.approx([float(x) for x in row.scores.split()], abs=2e-3)

    run("evaluate", tmp_path / "pred.csv", "--truth", synth_csv, "--gallery", tmp_path / "gallery", "--out", tmp_path / "eval")
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["n"] == len(pred)
    assert (tmp_path / "eval" / "threshold_sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_csv_is_a_clear_error_not_a_traceback(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "train.csv").write_text("image,species\na.jpg,beluga\n")
    result = runner.invoke(app, ["summary", str(tmp_path / "train.csv")])
    assert result.exit_code == 2
    assert "individual_id" in result.output and "Traceback" not in result.output


def test_crops_cache_explorer_and_a_model_trained_on_crops(synth_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # loose-photo caches go to ./.cache
    images = synth_csv.parent / "images"
    n = len(pd.read_csv(synth_csv))
    out = run("crop", synth_csv, "--out", tmp_path / "crops")
    crops = pd.read_csv(tmp_path / "crops" / "crops.csv")
    assert len(crops) == n and "ok" in out
    assert (tmp_path / "crops" / crops["mask"].iloc[0]).exists()

    root = tmp_path / "cache"
    assert f"'new': {n}" in run("cache", synth_csv, "--cache-root", root, "--sizes", "40,64", "--background", "blur")
    # the settings `crop` used are the defaults, so naming them finds the same cache
    assert f"'reused': {n}" in run("cache", synth_csv, "--cache-root", root, "--sizes", "40,64", "--background", "blur",
                                   "--crop-settings", tmp_path / "crops" / "crop_settings.json")
    with pytest.raises(AssertionError, match="needs --boxes"):
        run("cache", synth_csv, "--cache-root", root, "--crop", "boxes")

    run("explore", synth_csv, "--out", tmp_path / "explore", "--crops", tmp_path / "crops" / "crops.csv",
        "--sheet", tmp_path / "sheet.png", "--sheet-size", 50)
    assert "individuals.html" in (tmp_path / "explore" / "index.html").read_text()
    assert Image.open(tmp_path / "sheet.png").size == (500, 50 * -(-n // 10))

    run("split", synth_csv, "--out", tmp_path / "split", "--new-fraction", 0.25)
    run("train", tmp_path / "split" / "known.csv", "--images", images, "--out", tmp_path / "model",
        "--backbone", "test_efficientnet", "--no-pretrained", "--epochs", 1, "--img-size", 48, "--batch-size", 8,
        "--embedding-dim", 16, "--workers", 0, "--crop", "saliency", "--background", "blur", "--cache-root", root)
    model = tmp_path / "model" / "model.pt"
    run("embed", tmp_path / "split" / "known.csv", "--images", images, "--model", model, "--out", tmp_path / "gallery",
        "--cache-root", root)
    meta = json.loads((tmp_path / "gallery" / "embeddings.json").read_text())
    assert meta["preprocess"]["cache"]["crop"] == "saliency" and meta["preprocess"]["cache"]["background"] == "blur"
    caches = [d for d in root.iterdir() if d.is_dir()]
    assert len(caches) == 1  # cache, training and embedding share one cache: sizes are sub-folders
    assert json.loads((caches[0] / "manifest.json").read_text())["settings"]["sizes"] == [64, 48, 40]
    run("identify", tmp_path / "gallery", tmp_path / "split" / "new.csv", "--images", images, "--threshold", 0.5,
        "--out", tmp_path / "pred.csv", "--save", tmp_path / "identifier", "--cache-root", root)
    journal = pd.read_csv(caches[0] / "journal.csv")
    assert set(pd.read_csv(tmp_path / "split" / "new.csv")["image"]) <= set(journal["image"])  # queries were cropped too

    from whaleid.search.identify import Identifier

    identifier = Identifier.load(tmp_path / "identifier")
    photo = str(images / pd.read_csv(synth_csv)["image"].iloc[0])
    rankings, ok = identifier.identify_photos([photo, str(tmp_path / "missing.jpg")], num_workers=0)
    assert ok.tolist() == [True, False]
    assert (tmp_path / ".cache" / "whaleid").is_dir()  # loose photos went through the same crop


def test_recipe_folds_ensemble_blend_per_species_and_pseudo_labels(synth_csv, tmp_path):
    import yaml

    images = synth_csv.parent / "images"
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({"train": {"backbone": "test_efficientnet", "pretrained": False, "embedding_dim": 16,
                                                "img_size": 48, "batch_size": 8, "num_workers": 0, "epochs": 3}}))
    run("split", synth_csv, "--out", tmp_path / "split", "--new-fraction", 0.25)
    known, new = tmp_path / "split" / "known.csv", tmp_path / "split" / "new.csv"
    # flags override the recipe, --set overrides one key, --folds trains one model per fold
    run("train", known, "--images", images, "--out", tmp_path / "folds", "--config", recipe, "--set", "train.max_steps_per_epoch=2",
        "--epochs", 1, "--folds", 2)
    from whaleid.model.network import load_checkpoint

    _, payload = load_checkpoint(tmp_path / "folds" / "fold1" / "model.pt")
    saved = payload["extra"]["recipe"]
    assert saved["train"]["epochs"] == 1 and saved["train"]["max_steps_per_epoch"] == 2 and saved["folds"] == 2
    assert payload["extra"]["train_config"]["img_size"] == 48 and len(payload["extra"]["history"]) == 1

    run("embed", known, "--images", images, "--model", tmp_path / "folds", "--out", tmp_path / "gallery")
    run("embed", new, "--images", images, "--model", tmp_path / "folds", "--out", tmp_path / "queries", "--tta")
    meta = json.loads((tmp_path / "gallery" / "embeddings.json").read_text())
    assert meta["ensemble"] == {"members": 2, "mode": "concat"} and (tmp_path / "gallery" / "class_cosines.npy").exists()
    out = run("identify", tmp_path / "gallery", tmp_path / "queries", "--blend", 0.5, "--calibrate", tmp_path / "queries",
              "--per-species", "--out", tmp_path / "pred.csv", "--save", tmp_path / "identifier")
    assert "'*'" in out
    sidecar = json.loads((tmp_path / "identifier" / "identifier.json").read_text())
    assert "*" in sidecar["threshold"] and sidecar["metadata"]["blend"] == 0.5

    run("pseudo-label", tmp_path / "folds", known, new, "--images", images, "--unlabelled-images", images,
        "--out", tmp_path / "pseudo.csv", "--confidence", 0.0)
    pseudo = pd.read_csv(tmp_path / "pseudo.csv")
    assert len(pseudo) == len(pd.read_csv(new)) and list(pseudo.columns) == ["image", "species", "individual_id", "score"]
    run("train", known, "--images", images, "--out", tmp_path / "round1", "--config", recipe, "--max-steps", 1, "--epochs", 1,
        "--pseudo", tmp_path / "pseudo.csv", "--pseudo-images", images)
    _, payload = load_checkpoint(tmp_path / "round1" / "model.pt")
    assert len(payload["labels"]) == pd.read_csv(known)["individual_id"].nunique()  # pseudo labels name known animals

    recipe_run = tmp_path / "run.yaml"
    recipe_run.write_text(yaml.safe_dump({**yaml.safe_load(recipe.read_text()), "data": {"csv": str(synth_csv)}}))
    out = run("run", recipe_run, "--out", tmp_path / "run", "--set", "train.max_steps_per_epoch=1", "--set", "train.epochs=1")
    assert "report.json" in out and 0 <= json.loads((tmp_path / "run" / "report.json").read_text())["rounds"][0]["map5"] <= 1
