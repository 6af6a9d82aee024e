"""Bad invocations end in one clear line and a non-zero exit, never a traceback."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from whaleid.__main__ import app
from whaleid.model.embeddings import Embeddings
from whaleid.model.keypoints import KeypointConfig
from whaleid.preprocess.crops import CROP_COLUMNS

runner = CliRunner()
MINE = "a file of the user's\n"
TINY = [
    "--backbone",
    "test_efficientnet",
    "--no-pretrained",
    "--img-size",
    "32",
    "--embedding-dim",
    "8",
    "--workers",
    "0",
]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def photos(folder, names, individuals=None, species="x"):
    """A catalog CSV with a tiny real photo per name; ``individuals`` defaults to one each."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / "images" / name)
    ids = individuals or [f"id{i}" for i in range(len(names))]
    pd.DataFrame({"image": names, "species": species, "individual_id": ids}).to_csv(folder / "train.csv", index=False)
    return folder / "train.csv"


def vectors(folder, n=6, dim=8, ids=None, nan=False, model="m1"):
    rng = np.random.default_rng(1)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    if nan:
        v[0] = np.nan
    table = pd.DataFrame(
        {
            "image": [f"p{i}.jpg" for i in range(n)],
            "species": "x",
            "individual_id": ids if ids is not None else [f"id{i % 3}" for i in range(n)],
        }
    )
    meta = {"model": {"img_size": 32}, "source": {"zero_shot": model}}
    return Embeddings(v, table, meta=meta).save(folder)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files the bad invocations point at."""
    root = tmp_path_factory.mktemp("bad")
    w = {"root": root}
    w["one_individual"] = photos(root / "one", ["a.jpg", "b.jpg", "c.jpg"], ["w1", "w1", "w1"])
    w["one_photo"] = photos(root / "single", ["a.jpg"], ["w1"])
    w["four"] = photos(root / "four", ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], ["w1", "w1", "w2", "w2"])
    w["gallery"] = vectors(root / "gallery")
    w["nan_gallery"] = vectors(root / "nan_gallery", nan=True)
    w["other_model"] = vectors(root / "other_model", dim=16, model="m2")
    w["unlabelled"] = vectors(root / "unlabelled", ids=[""] * 6)
    (root / "empty_dir").mkdir()
    (root / "empty.pt").write_bytes(b"")
    (root / "junk.pt").write_bytes(b"PK\x03\x04 not a checkpoint" * 10)
    (root / "bad.json").write_text("{not json")
    (root / "unknown_key.json").write_text(json.dumps({"threshold": 0.5, "colour": "red"}))
    (root / "boxes.csv").write_text("image,box\na.jpg,1 2 three 4\n")
    (root / "preds.csv").write_text("image,predictions\na.jpg,w1 new_individual\n")
    (root / "preds_nocol.csv").write_text("image,guess\na.jpg,w1\n")
    (root / "truth_dup.csv").write_text("image,species,individual_id\na.jpg,x,w1\na.jpg,x,w2\n")
    (root / "truth.csv").write_text("image,species,individual_id\na.jpg,x,w1\n")
    (root / "ragged.csv").write_text("image,species,individual_id\na.jpg,x,w1,extra\nb.jpg,x,w2\n")
    os.symlink("/dev/null", root / "devnull.csv")
    (root / "a_file.txt").write_text(MINE)  # where a folder is wanted: must be refused and left as it is
    (root / "not_weights.pth").write_bytes(b"plain text, not a torch file\n")
    result = invoke("train", w["four"], "--out", root / "tiny", "--epochs", 1, *TINY)
    assert result.exit_code == 0, result.output
    w["tiny"] = root / "tiny"
    w["std0"] = shutil.copytree(w["tiny"], root / "std0")
    meta = json.loads((w["std0"] / "model.json").read_text())
    meta["model"]["std"] = [0.5, 0.0, 0.5]  # the weights' digest still matches: only the JSON was edited
    (w["std0"] / "model.json").write_text(json.dumps(meta))
    ok_row = ["a.jpg", 0, 0, 48, 40, 48, 40, 0.5, 0.9, "ok", ""]
    for name, cell in (("crops_ok", 0), ("crops_empty", ""), ("crops_text", "left")):
        rows = [CROP_COLUMNS, [ok_row[0], cell, *ok_row[2:]]]
        with open(root / f"{name}.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    w["cut_keypoints"] = vectors(root / "cut_keypoints")
    meta = json.loads((w["cut_keypoints"] / "embeddings.json").read_text())
    (w["cut_keypoints"] / "embeddings.json").write_text(json.dumps({**meta, "keypoints": KeypointConfig().to_dict()}))
    (w["cut_keypoints"] / "keypoints.npz").write_bytes(b"PK\x03\x04" + bytes(200))  # a zip cut short
    w["zip_vectors"] = vectors(root / "zip_vectors")
    (w["zip_vectors"] / "vectors.npy").write_bytes(b"PK\x03\x04" + bytes(200))
    return w


BAD = {
    "missing csv": lambda w: ["summary", w["root"] / "nope.csv"],
    "csv is /dev/null": lambda w: ["summary", w["root"] / "devnull.csv"],
    "csv is a folder": lambda w: ["summary", w["root"]],
    "row with too many fields": lambda w: ["summary", w["root"] / "ragged.csv", "--no-check"],
    "split one individual": lambda w: ["split", w["one_individual"], "--out", w["root"] / "s1"],
    "split min-photos above all": lambda w: ["split", w["four"], "--out", w["root"] / "s2", "--min-photos", 50],
    "split new-fraction 0": lambda w: ["split", w["four"], "--out", w["root"] / "s3", "--new-fraction", 0],
    "split folds 1": lambda w: ["split", w["four"], "--out", w["root"] / "s4", "--folds", 1],
    "train epochs 0": lambda w: ["train", w["four"], "--out", w["root"] / "t", "--epochs", 0, *TINY],
    "train epochs -1": lambda w: ["train", w["four"], "--out", w["root"] / "t", "--epochs", -1, *TINY],
    "train batch 1": lambda w: ["train", w["four"], "--out", w["root"] / "t", "--batch-size", 1, *TINY],
    "train lr nan": lambda w: ["train", w["four"], "--out", w["root"] / "t", "--lr", "nan", *TINY],
    "train max-steps 0": lambda w: ["train", w["four"], "--out", w["root"] / "t", "--max-steps", 0, *TINY],
    "train grad-accum 0": lambda w: [
        "train",
        w["four"],
        "--out",
        w["root"] / "t",
        "--set",
        "train.grad_accum=0",
        *TINY,
    ],
    "train folds 1": lambda w: ["train", w["four"], "--out", w["root"] / "t", "--folds", 1, *TINY],
    "train one photo": lambda w: ["train", w["one_photo"], "--out", w["root"] / "t", *TINY],
    "train one individual": lambda w: ["train", w["one_individual"], "--out", w["root"] / "t", *TINY],
    "embed empty model file": lambda w: [
        "embed",
        w["four"],
        "--model",
        w["root"] / "empty.pt",
        "--out",
        w["root"] / "e",
    ],
    "embed junk model file": lambda w: ["embed", w["four"], "--model", w["root"] / "junk.pt", "--out", w["root"] / "e"],
    "embed model folder without model": lambda w: [
        "embed",
        w["four"],
        "--model",
        w["root"] / "empty_dir",
        "--out",
        w["root"] / "e",
    ],
    "identify missing gallery": lambda w: ["identify", w["root"] / "nope", w["gallery"], "--out", w["root"] / "p.csv"],
    "identify empty gallery": lambda w: [
        "identify",
        w["root"] / "empty_dir",
        w["gallery"],
        "--out",
        w["root"] / "p.csv",
    ],
    "identify NaN gallery": lambda w: ["identify", w["nan_gallery"], w["gallery"], "--out", w["root"] / "p.csv"],
    "identify unlabelled gallery": lambda w: ["identify", w["unlabelled"], w["gallery"], "--out", w["root"] / "p.csv"],
    "identify queries of another model": lambda w: [
        "identify",
        w["gallery"],
        w["other_model"],
        "--out",
        w["root"] / "p.csv",
    ],
    "identify calibration of another model": lambda w: [
        "identify",
        w["gallery"],
        w["gallery"],
        "--calibrate",
        w["other_model"],
        "--out",
        w["root"] / "p.csv",
    ],
    "identify new-rate 2": lambda w: [
        "identify",
        w["gallery"],
        w["gallery"],
        "--new-rate",
        2,
        "--out",
        w["root"] / "p.csv",
    ],
    "evaluate missing predictions": lambda w: ["evaluate", w["root"] / "nope.csv", "--truth", w["root"] / "truth.csv"],
    "evaluate predictions without column": lambda w: [
        "evaluate",
        w["root"] / "preds_nocol.csv",
        "--truth",
        w["root"] / "truth.csv",
    ],
    "evaluate duplicated truth": lambda w: [
        "evaluate",
        w["root"] / "preds.csv",
        "--truth",
        w["root"] / "truth_dup.csv",
    ],
    "crop enlarge -1": lambda w: ["crop", w["four"], "--out", w["root"] / "c", "--enlarge", -1],
    "crop enlarge 0": lambda w: ["crop", w["four"], "--out", w["root"] / "c", "--enlarge", 0],
    "cache malformed crop settings": lambda w: [
        "cache",
        w["four"],
        "--cache-root",
        w["root"] / "k",
        "--crop-settings",
        w["root"] / "bad.json",
    ],
    "cache unknown crop setting": lambda w: [
        "cache",
        w["four"],
        "--cache-root",
        w["root"] / "k",
        "--crop-settings",
        w["root"] / "unknown_key.json",
    ],
    "cache sizes not numbers": lambda w: ["cache", w["four"], "--cache-root", w["root"] / "k", "--sizes", "big"],
    "cache malformed boxes": lambda w: [
        "cache",
        w["four"],
        "--cache-root",
        w["root"] / "k",
        "--crop",
        "boxes",
        "--boxes",
        w["root"] / "boxes.csv",
    ],
    "explore sheet columns 0": lambda w: ["explore", w["four"], "--out", w["root"] / "x", "--sheet-columns", 0],
    "synth min above max": lambda w: ["synth", "--out", w["root"] / "y", "--min-photos", 5, "--max-photos", 2],
    # an output path of the wrong kind: refused before any work, the file in the way left as it is
    "split out is a file": lambda w: ["split", w["four"], "--out", w["root"] / "a_file.txt"],
    "embed out is a file": lambda w: ["embed", w["four"], "--model", w["tiny"], "--out", w["root"] / "a_file.txt"],
    "embed out under a file": lambda w: [
        "embed",
        w["four"],
        "--model",
        w["tiny"],
        "--out",
        w["root"] / "a_file.txt" / "e",
    ],
    "train out is a file": lambda w: ["train", w["four"], "--out", w["root"] / "a_file.txt", *TINY],
    "explore out is a file": lambda w: ["explore", w["four"], "--out", w["root"] / "a_file.txt"],
    "explore sheet is a folder": lambda w: [
        "explore",
        w["four"],
        "--out",
        w["root"] / "x",
        "--crops",
        w["root"] / "crops_ok.csv",
        "--sheet",
        w["root"] / "empty_dir",
    ],
    "identify out is a folder": lambda w: ["identify", w["gallery"], w["gallery"], "--out", w["root"] / "empty_dir"],
    "identify save is a file": lambda w: [
        "identify",
        w["gallery"],
        w["gallery"],
        "--out",
        w["root"] / "p.csv",
        "--save",
        w["root"] / "a_file.txt",
    ],
    "identify submission is a folder": lambda w: [
        "identify",
        w["gallery"],
        w["gallery"],
        "--out",
        w["root"] / "p.csv",
        "--submission",
        w["root"] / "empty_dir",
    ],
    "evaluate out is a file": lambda w: [
        "evaluate",
        w["root"] / "preds.csv",
        "--truth",
        w["root"] / "truth.csv",
        "--out",
        w["root"] / "a_file.txt",
    ],
    "openset out is a folder": lambda w: [
        "openset",
        w["gallery"],
        "--val",
        w["gallery"],
        "--out",
        w["root"] / "empty_dir",
    ],
    "crop out is a file": lambda w: ["crop", w["four"], "--out", w["root"] / "a_file.txt"],
    "cache root is a file": lambda w: ["cache", w["four"], "--cache-root", w["root"] / "a_file.txt"],
    "synth out is a file": lambda w: ["synth", "--out", w["root"] / "a_file.txt"],
    "pseudo-label out is a folder": lambda w: [
        "pseudo-label",
        w["tiny"],
        w["four"],
        w["four"],
        "--out",
        w["root"] / "empty_dir",
    ],
    # backbones and weights
    "embed zero-shot unknown backbone": lambda w: [
        "embed",
        w["four"],
        "--zero-shot",
        "no_such_net",
        "--out",
        w["root"] / "e",
    ],
    "train unknown backbone": lambda w: [
        "train",
        w["four"],
        "--out",
        w["root"] / "t",
        "--backbone",
        "no_such_net",
        "--no-pretrained",
        "--workers",
        0,
    ],
    "train weights not a torch file": lambda w: [
        "train",
        w["four"],
        "--out",
        w["root"] / "t",
        *TINY,
        "--weights",
        w["root"] / "not_weights.pth",
    ],
    "train weights a broken zip": lambda w: [
        "train",
        w["four"],
        "--out",
        w["root"] / "t",
        *TINY,
        "--weights",
        w["root"] / "junk.pt",
    ],
    "train weights of another model": lambda w: [
        "train",
        w["four"],
        "--out",
        w["root"] / "t",
        *TINY,
        "--weights",
        w["tiny"] / "model.safetensors",
    ],
    "embed model with std 0": lambda w: ["embed", w["four"], "--model", w["std0"], "--out", w["root"] / "e"],
    # damaged or edited artifacts
    "explore crops empty box cell": lambda w: [
        "explore",
        w["four"],
        "--out",
        w["root"] / "x",
        "--crops",
        w["root"] / "crops_empty.csv",
    ],
    "explore crops box not a number": lambda w: [
        "explore",
        w["four"],
        "--out",
        w["root"] / "x",
        "--crops",
        w["root"] / "crops_text.csv",
    ],
    "identify truncated keypoints": lambda w: [
        "identify",
        w["gallery"],
        w["cut_keypoints"],
        "--out",
        w["root"] / "p.csv",
    ],
    "identify vectors a broken zip": lambda w: [
        "identify",
        w["zip_vectors"],
        w["gallery"],
        "--out",
        w["root"] / "p.csv",
    ],
}
# What the line must name, where a case is about one file or option.
SAYS = {
    "split out is a file": "--out",
    "embed out is a file": "a_file.txt is a file",
    "embed out under a file": "a_file.txt is a file",
    "train out is a file": "--out",
    "explore out is a file": "--out",
    "explore sheet is a folder": "--sheet",
    "identify out is a folder": "is a folder",
    "identify save is a file": "--save",
    "identify submission is a folder": "--submission",
    "evaluate out is a file": "--out",
    "openset out is a folder": "is a folder",
    "crop out is a file": "--out",
    "cache root is a file": "--cache-root",
    "synth out is a file": "--out",
    "pseudo-label out is a folder": "is a folder",
    "embed zero-shot unknown backbone": "Unknown timm model",
    "train unknown backbone": "Unknown timm model",
    "train weights not a torch file": "not_weights.pth is not a checkpoint",
    "train weights a broken zip": "junk.pt is not a checkpoint",
    "train weights of another model": "does not fit",
    "embed model with std 0": "model.json",
    "explore crops empty box cell": "crops_empty.csv: x0",
    "explore crops box not a number": "crops_text.csv: x0",
    "identify truncated keypoints": "keypoints.npz",
    "identify vectors a broken zip": "vectors.npy",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_invocation_is_one_clear_line(world, case):
    result = invoke(*BAD[case](world))
    assert result.exit_code == 2, (case, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert "error: unexpected" not in result.output and "please report it" not in result.output, result.output
    message = [line for line in result.output.splitlines() if line.strip()]
    assert message and len(message[-1]) > 10, result.output
    assert SAYS.get(case, "") in message[-1], result.output
    assert (world["root"] / "a_file.txt").read_text() == MINE


def test_unexpected_errors_are_one_line_unless_debug(tmp_path, monkeypatch):
    """A bug (not a user error) still ends in one line with a hint; --debug shows the traceback."""
    import whaleid.data.catalog

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(whaleid.data.catalog, "read_catalog", broken)
    result = invoke("summary", tmp_path / "x.csv")
    assert result.exit_code == 1 and "unexpected RuntimeError: boom" in result.output
    assert "--debug" in result.output
    result = invoke("--debug", "summary", tmp_path / "x.csv")
    assert isinstance(result.exception, RuntimeError)


def test_real_process_prints_no_traceback(world):
    """Outside the test runner too: stderr has the one line, nothing else."""
    env = {k: v for k, v in os.environ.items() if k != "WHALEID_DEBUG"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "whaleid",
            "embed",
            str(world["four"]),
            "--model",
            str(world["root"] / "empty.pt"),
            "--out",
            str(world["root"] / "e2"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Aborted" not in done.stderr + done.stdout
    assert done.stderr.strip().startswith("error:") and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_help_shows_no_type_noise():
    result = invoke("--help")
    assert result.exit_code == 0 and "<bool>" not in result.output


def _snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def test_no_command_writes_outside_its_output_folder(tmp_path, monkeypatch):
    """Absolute, `../`, 244-byte and extension-only-different names: crop, cache and explore keep to their folders."""
    import whaleid.preprocess.crops
    from conftest import centre_blob_masks

    monkeypatch.setattr(whaleid.preprocess.crops, "saliency_masks", centre_blob_masks)
    victims = tmp_path / "victims"
    photos(victims, ["w.png", "x.jpg"])
    work = tmp_path / "deep" / "er" / "work"
    photos(work, ["a.jpg", "b.jpg", "b.png", "n" * 240 + ".jpg"])
    names = [
        "a.jpg",
        "b.jpg",
        "b.png",
        "n" * 240 + ".jpg",
        str(victims / "images" / "w.png"),
        "../" * 40 + str(victims / "images" / "x.jpg").lstrip("/"),
    ]
    pd.DataFrame({"image": names, "species": "x", "individual_id": [f"i{i}" for i in range(len(names))]}).to_csv(
        work / "hostile.csv", index=False
    )
    before = _snapshot(victims)
    outside = _snapshot(tmp_path / "deep")
    for args in (
        ["crop", work / "hostile.csv", "--out", work / "crops"],
        ["cache", work / "hostile.csv", "--cache-root", work / "cache", "--sizes", "32,48"],
        ["explore", work / "hostile.csv", "--out", work / "explore", "--crops", work / "crops" / "crops.csv"],
    ):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output, result.exception)
    assert _snapshot(victims) == before
    written = set(_snapshot(tmp_path / "deep")) - set(outside)
    allowed = [work / "crops", work / "cache", work / "explore"]
    assert written and all(any(p.is_relative_to(a) for a in allowed) for p in written), sorted(written)
    crops = pd.read_csv(work / "crops" / "crops.csv", keep_default_na=False)
    assert (crops["status"] == "ok").sum() == len(names)  # every photo read, none overwritten
    assert crops.set_index("image").loc["b.jpg", "mask"] != crops.set_index("image").loc["b.png", "mask"]


def test_backbone_without_offline_weights_is_a_user_error(world, monkeypatch):
    """A hub-only backbone offline: the message said what to do, but in an "unexpected ... report it" frame."""
    import whaleid.model.pretrained

    monkeypatch.setattr(whaleid.model.pretrained, "_hub_reachable", lambda: False)
    for args in (
        ["embed", world["four"], "--zero-shot", "resnet18", "--out", world["root"] / "e"],
        [
            "train",
            world["four"],
            "--out",
            world["root"] / "t",
            "--backbone",
            "resnet18",
            "--pretrained",
            "--workers",
            0,
        ],
    ):
        result = invoke(*args)
        assert result.exit_code == 2 and "unexpected" not in result.output, result.output
        assert "huggingface.co is unreachable" in result.output and "tf_efficientnet_lite0" in result.output


def test_disk_full_while_embed_writes(world, tmp_path, monkeypatch):
    """numpy reports a full disk as a short write with no errno: it is the disk-full line, and no half folder."""

    def full(*args, **kwargs):
        raise OSError("15360 requested and 4064 written")

    monkeypatch.setattr(np, "save", full)
    out = tmp_path / "emb"
    result = invoke("embed", world["four"], "--model", world["tiny"], "--out", out)
    assert result.exit_code == 2, (result.output, result.exception)
    assert "disk full while writing" in result.output and "vectors.npy" in result.output
    assert "unexpected" not in result.output
    assert not any(out.iterdir())  # neither vectors.npy, its temp file, nor an embeddings.json claiming completeness


def test_two_cache_runs_started_together_both_finish(tmp_path):
    """Two `whaleid cache` processes on one folder: one waits on the other's lock, both end well."""
    csv_path = photos(tmp_path, [f"p{i}.jpg" for i in range(8)])
    env = {k: v for k, v in os.environ.items() if k != "WHALEID_DEBUG"}
    args = [sys.executable, "-m", "whaleid", "cache", str(csv_path), "--cache-root", str(tmp_path / "cache")]
    args += ["--crop", "none", "--sizes", "32", "--workers", "1"]
    runs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    done = [(run.wait(timeout=120), *run.communicate()) for run in runs]
    assert all(code == 0 for code, _, _ in done), done
    assert all("Traceback" not in err for _, _, err in done), done
    (crops,) = (tmp_path / "cache").glob("*/crops.csv")
    assert sorted(pd.read_csv(crops)["image"]) == [f"p{i}.jpg" for i in range(8)]


def test_a_name_with_a_carriage_return_is_one_row_of_crops_csv(tmp_path, monkeypatch):
    """Minimal quoting leaves a bare CR, which readers take for a line end: crops.csv had rows "CR" and "name.jpg"."""
    import whaleid.preprocess.crops
    from conftest import centre_blob_masks

    monkeypatch.setattr(whaleid.preprocess.crops, "saliency_masks", centre_blob_masks)
    photos(tmp_path, ["a.jpg", "CR\rname.jpg"])
    names = ["a.jpg", "CR\rname.jpg"]
    table = pd.DataFrame({"image": names, "species": "x", "individual_id": ["i0", "i1"]})
    table.to_csv(tmp_path / "cr.csv", index=False, quoting=csv.QUOTE_ALL)
    result = invoke("crop", tmp_path / "cr.csv", "--out", tmp_path / "crops")
    assert result.exit_code == 0, (result.output, result.exception)
    crops = pd.read_csv(tmp_path / "crops" / "crops.csv", keep_default_na=False)
    assert sorted(crops["image"]) == sorted(names)
    result = invoke(
        "explore", tmp_path / "cr.csv", "--out", tmp_path / "x", "--crops", tmp_path / "crops" / "crops.csv"
    )
    assert result.exit_code == 0, (result.output, result.exception)
