"""The CLI end to end on a synthetic catalog, with a tiny random backbone: every command runs and writes what it says."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from whaleid.cli import app

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
    from whaleid.identify import Identifier

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
