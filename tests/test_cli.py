"""The CLI end to end on a synthetic catalog, with a tiny random backbone: every command runs and writes what it says."""

import json

import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from whaleid.__main__ import app
from whaleid.model.checkpoint import load_checkpoint
from whaleid.search.identify import Identifier

runner = CliRunner()
TINY = "--backbone test_efficientnet --no-pretrained --epochs 1 --img-size 48 --batch-size 8 --embedding-dim 16 --workers 0"


def run(command: str, **paths) -> str:
    """One command line, ``{name}`` placeholders filled in after splitting (so paths may hold spaces)."""
    result = runner.invoke(app, [token.format(**paths) for token in command.split()])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture
def where(synth_csv, tmp_path):
    """The placeholders every command line here uses."""
    return {"csv": synth_csv, "images": synth_csv.parent / "images", "tmp": tmp_path}


def test_every_command_chains(where):
    tmp = where["tmp"]
    assert "photos" in run("summary {csv}", **where)
    run("split {csv} --out {tmp}/split --new-fraction 0.25 --folds 3", **where)
    known, new = pd.read_csv(tmp / "split" / "known.csv"), pd.read_csv(tmp / "split" / "new.csv")
    assert not set(known["individual_id"]) & set(new["individual_id"])
    assert set(pd.read_csv(tmp / "split" / "folds.csv")["fold"]) == {0, 1, 2}

    run("train {tmp}/split/known.csv --images {images} --out {tmp}/model --val {tmp}/split/new.csv " + TINY, **where)
    metrics = json.loads((tmp / "model" / "metrics.jsonl").read_text())
    assert metrics["epoch"] == 1 and 0 <= metrics["val_map5"] <= 1

    run(
        "embed {tmp}/split/known.csv --images {images} --model {tmp}/model/model.json --out {tmp}/gallery --tta",
        **where,
    )
    run("embed {csv} --model {tmp}/model/model.json --out {tmp}/queries --tta", **where)
    # a query CSV is embedded with the model that made the gallery, and with its flip TTA
    run("identify {tmp}/gallery {tmp}/split/new.csv --images {images} --threshold 0.5 --out {tmp}/csv.csv", **where)
    assert len(pd.read_csv(tmp / "csv.csv")) == len(new)
    out = run(
        "identify {tmp}/gallery {tmp}/queries --calibrate {tmp}/gallery --out {tmp}/pred.csv "
        "--submission {tmp}/sub.csv --save {tmp}/identifier",
        **where,
    )
    assert "threshold" in out
    pred = pd.read_csv(tmp / "pred.csv")
    assert len(pred) == len(pd.read_csv(where["csv"]))
    assert all(len(p.split()) == 5 for p in pd.read_csv(tmp / "sub.csv")["predictions"])
    _saved_identifier_answers_like_the_csv(tmp / "identifier", where, pred)
    # the query CSV was embedded with the gallery's flip TTA: the same scores as the --tta query embeddings
    by_csv = pd.read_csv(tmp / "csv.csv").set_index("image")["scores"]
    by_folder = pred.set_index("image")["scores"].loc[by_csv.index]
    for a, b in zip(by_csv, by_folder):
        assert [float(x) for x in a.split()] == pytest.approx([float(x) for x in b.split()], abs=2e-3)
    # a saved Identifier is a gallery of its own: its threshold, no calibration, the same answers
    run("identify {tmp}/identifier {tmp}/queries --out {tmp}/again.csv", **where)
    again = pd.read_csv(tmp / "again.csv")
    assert again["predictions"].tolist() == pred["predictions"].tolist()
    run("embed {csv} --model {tmp}/model/model.json --out {tmp}/unflipped", **where)
    for line, says in (
        ("identify {tmp}/gallery {tmp}/unflipped --threshold 0.5", "embed them with --tta"),
        ("identify {tmp}/gallery {tmp}/queries --threshold 0.5 --calibrate {tmp}/gallery", "not two"),
        ("identify {tmp}/identifier {tmp}/queries --rerank 5", "scores as it was saved"),
    ):
        result = runner.invoke(app, [token.format(**where) for token in line.split()])
        assert result.exit_code != 0 and says in result.output and "Traceback" not in result.output, result.output

    run("evaluate {tmp}/pred.csv --truth {csv} --gallery {tmp}/gallery --out {tmp}/eval", **where)
    report = json.loads((tmp / "eval" / "report.json").read_text())
    assert report["n"] == len(pred)
    assert (tmp / "eval" / "threshold_sweep.png").read_bytes()[:4] == b"\x89PNG"


def _saved_identifier_answers_like_the_csv(folder, where, pred):
    """The saved Identifier carries its model: photos in, the same answers out."""
    identifier = Identifier.load(folder)
    photos = pd.read_csv(where["csv"])["image"].head(4)
    rankings, ok = identifier.identify_photos([str(where["images"] / p) for p in photos], num_workers=0)
    assert ok.all()
    # same answers up to float noise between batch sizes: near-tied candidates may swap
    assert [r.ids[0] for r in rankings] == [p.split()[0] for p in pred["predictions"].head(4)]
    for ranking, row in zip(rankings, pred.head(4).itertuples()):
        assert ranking.scores == pytest.approx([float(x) for x in row.scores.split()], abs=2e-3)


def test_bad_csv_is_a_clear_error_not_a_traceback(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "train.csv").write_text("image,species\na.jpg,beluga\n")
    result = runner.invoke(app, ["summary", str(tmp_path / "train.csv")])
    assert result.exit_code == 2
    assert "individual_id" in result.output and "Traceback" not in result.output


def test_crops_cache_and_explorer(where, monkeypatch):
    tmp, n = where["tmp"], len(pd.read_csv(where["csv"]))
    out = run("crop {csv} --out {tmp}/crops", **where)
    crops = pd.read_csv(tmp / "crops" / "crops.csv")
    assert len(crops) == n and "ok" in out
    assert (tmp / "crops" / crops["mask"].iloc[0]).exists()

    assert f"'new': {n}" in run("cache {csv} --cache-root {tmp}/cache --sizes 40,64 --background blur", **where)
    # the settings `crop` used are the defaults, so naming them finds the same cache
    again = "cache {csv} --cache-root {tmp}/cache --sizes 40,64 --background blur --crop-settings {tmp}/crops/crop_settings.json"
    assert f"'reused': {n}" in run(again, **where)
    with pytest.raises(AssertionError, match="needs --boxes"):
        run("cache {csv} --cache-root {tmp}/cache --crop boxes", **where)

    run(
        "explore {csv} --out {tmp}/explore --crops {tmp}/crops/crops.csv --sheet {tmp}/sheet.png --sheet-size 50",
        **where,
    )
    assert "individuals.html" in (tmp / "explore" / "index.html").read_text()
    assert Image.open(tmp / "sheet.png").size == (500, 50 * -(-n // 10))


def test_a_model_trained_on_crops_crops_its_queries_the_same_way(where, monkeypatch):
    tmp = where["tmp"]
    monkeypatch.chdir(tmp)  # loose-photo caches go to ./.cache
    run("cache {csv} --cache-root {tmp}/cache --sizes 40,64 --background blur", **where)
    run("split {csv} --out {tmp}/split --new-fraction 0.25", **where)
    crop = "--crop saliency --background blur --cache-root {tmp}/cache"
    run("train {tmp}/split/known.csv --images {images} --out {tmp}/model " + TINY + " " + crop, **where)
    run(
        "embed {tmp}/split/known.csv --images {images} --model {tmp}/model --out {tmp}/gallery --cache-root {tmp}/cache",
        **where,
    )
    meta = json.loads((tmp / "gallery" / "embeddings.json").read_text())
    assert meta["preprocess"]["cache"]["crop"] == "saliency" and meta["preprocess"]["cache"]["background"] == "blur"
    caches = [d for d in (tmp / "cache").iterdir() if d.is_dir()]
    assert len(caches) == 1  # cache, training and embedding share one cache: sizes are sub-folders
    assert json.loads((caches[0] / "manifest.json").read_text())["settings"]["sizes"] == [64, 48, 40]
    run(
        "identify {tmp}/gallery {tmp}/split/new.csv --images {images} --threshold 0.5 --out {tmp}/pred.csv "
        "--save {tmp}/identifier --cache-root {tmp}/cache",
        **where,
    )
    journal = pd.read_csv(caches[0] / "journal.csv")
    assert set(pd.read_csv(tmp / "split" / "new.csv")["image"]) <= set(journal["image"])  # queries were cropped too

    identifier = Identifier.load(tmp / "identifier")
    photo = str(where["images"] / pd.read_csv(where["csv"])["image"].iloc[0])
    rankings, ok = identifier.identify_photos([photo, str(tmp / "missing.jpg")], num_workers=0)
    assert ok.tolist() == [True, False]
    assert (tmp / ".cache" / "whaleid").is_dir()  # loose photos went through the same crop


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    model = {"backbone": "test_efficientnet", "embedding_dim": 16, "img_size": 48}
    train = {"model": model, "pretrained": False, "batch_size": 8, "num_workers": 0, "epochs": 3}
    path.write_text(yaml.safe_dump({"train": train}))
    return path


def test_folds_ensemble_blend_and_per_species_thresholds(where, recipe):
    tmp = where["tmp"]
    run("split {csv} --out {tmp}/split --new-fraction 0.25", **where)
    # flags override the recipe, --set overrides one key, --folds trains one model per fold
    folds = "--config {recipe} --set train.max_steps_per_epoch=2 --epochs 1 --folds 2"
    run("train {tmp}/split/known.csv --images {images} --out {tmp}/folds " + folds, recipe=recipe, **where)
    _, checkpoint = load_checkpoint(tmp / "folds" / "fold1" / "model.json")
    saved = checkpoint.extra["recipe"]
    assert saved["train"]["epochs"] == 1 and saved["train"]["max_steps_per_epoch"] == 2 and saved["folds"] == 2
    assert checkpoint.extra["train_config"]["model"]["img_size"] == 48 and len(checkpoint.extra["history"]) == 1

    run("embed {tmp}/split/known.csv --images {images} --model {tmp}/folds --out {tmp}/gallery --tta", **where)
    run("embed {tmp}/split/new.csv --images {images} --model {tmp}/folds --out {tmp}/queries --tta", **where)
    meta = json.loads((tmp / "gallery" / "embeddings.json").read_text())
    assert meta["ensemble"] == {"members": 2, "mode": "concat"} and (tmp / "gallery" / "class_cosines.npy").exists()
    out = run(
        "identify {tmp}/gallery {tmp}/queries --blend 0.5 --calibrate {tmp}/queries --per-species "
        "--out {tmp}/pred.csv --save {tmp}/identifier",
        **where,
    )
    assert "'*'" in out
    sidecar = json.loads((tmp / "identifier" / "identifier.json").read_text())
    assert "*" in sidecar["record"]["threshold"] and sidecar["record"]["scoring"]["blend"] == 0.5


def test_pseudo_labels_then_a_round_trained_on_them_then_a_recipe(where, recipe):
    tmp = where["tmp"]
    run("split {csv} --out {tmp}/split --new-fraction 0.25", **where)
    run(
        "train {tmp}/split/known.csv --images {images} --out {tmp}/model --config {recipe} --epochs 1",
        recipe=recipe,
        **where,
    )
    run(
        "pseudo-label {tmp}/model {tmp}/split/known.csv {tmp}/split/new.csv --images {images} "
        "--unlabelled-images {images} --out {tmp}/pseudo.csv --confidence 0.0",
        **where,
    )
    pseudo = pd.read_csv(tmp / "pseudo.csv")
    assert len(pseudo) == len(pd.read_csv(tmp / "split" / "new.csv"))
    assert list(pseudo.columns) == ["image", "species", "individual_id", "score"]
    run(
        "train {tmp}/split/known.csv --images {images} --out {tmp}/round1 --config {recipe} --max-steps 1 --epochs 1 "
        "--pseudo {tmp}/pseudo.csv --pseudo-images {images}",
        recipe=recipe,
        **where,
    )
    _, checkpoint = load_checkpoint(tmp / "round1" / "model.json")
    known = pd.read_csv(tmp / "split" / "known.csv")
    assert len(checkpoint.labels) == known["individual_id"].nunique()  # pseudo labels name known animals

    recipe_run = tmp / "run.yaml"
    recipe_run.write_text(yaml.safe_dump({**yaml.safe_load(recipe.read_text()), "data": {"csv": str(where["csv"])}}))
    out = run("run {tmp}/run.yaml --out {tmp}/run --set train.max_steps_per_epoch=1 --set train.epochs=1", **where)
    assert "report.json" in out and 0 <= json.loads((tmp / "run" / "report.json").read_text())["rounds"][0]["map5"] <= 1
