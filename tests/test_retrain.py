"""`catalog retrain`: the next model trained on the confirmed photos, judged on held-out individuals against the
current model and an ImageNet-only start, registered with its report and not made active."""

import json
import time

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from webapp import PASSWORD, build_catalog, client, wait_for_job
from whaleid.__main__ import app
from whaleid.data.synth import make_catalog
from whaleid.errors import UserError
from whaleid.store.catalog import CatalogStore
from whaleid.train.retrain import recipe_trainer
from whaleid.web.users import add_user

runner = CliRunner()
TINY = {"model": {"backbone": "tf_efficientnet_lite0", "img_size": 64}, "epochs": 2, "batch_size": 8, "num_workers": 0}


def grown(folder, synth_csv, model, individuals: int | None = None) -> CatalogStore:
    """A catalog of the synthetic fins, every photo confirmed, on ImageNet features at 64 px (the ``model``)."""
    table = pd.read_csv(synth_csv)
    if individuals is not None:
        table = table[table["individual_id"].isin(sorted(table["individual_id"].unique())[:individuals])]
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "confirmed.csv", index=False)
    store = CatalogStore.create(folder / "catalog", model.parent)
    store.intake.import_catalog(folder / "confirmed.csv", synth_csv.parent / "images")
    return store


def test_a_retrained_version_is_registered_with_its_report_and_not_activated(tmp_path, synth_csv, model):
    store = grown(tmp_path, synth_csv, model)
    table, _ = store.retrain.split(0.5, seed=0)
    report = store.retrain.run(recipe_trainer(TINY), holdout=0.5, seed=0)
    parts = table.groupby("part")
    assert report["trained_on"] == {"photos": len(parts.get_group("train")), "individuals": 6}
    for part in ("calibration", "test"):
        group = parts.get_group(part)
        assert report["held_out"][part] == {"photos": len(group), "individuals": group["individual_id"].nunique()}
    assert sum(report["held_out"][p]["individuals"] for p in ("calibration", "test")) + 6 == 16
    # the catalog's model is ImageNet features at 64 px: the ImageNet-only start scores exactly as it does
    assert report["scores"]["current"] == report["scores"]["imagenet"]
    assert report["scores"]["new"] != report["scores"]["current"]
    assert report["better"] == (report["scores"]["new"]["map5"] > report["scores"]["current"]["map5"])
    assert (report["version"], report["from_version"], report["recipe"]["epochs"]) == (2, 1, 2)
    listed = store.models.listed()
    assert [(m["version"], m["active"]) for m in listed] == [(1, True), (2, False)]
    assert listed[1]["report"] == json.loads(json.dumps(report))
    assert listed[1]["threshold"] == pytest.approx(report["scores"]["new"]["threshold"], abs=1e-4)
    assert not list((store.dir / "cache").glob("retrain*"))  # the training folder is gone
    store.gallery.reindex(version=2)  # what the Model page's button queues: the new version proposes from now on
    assert [m["active"] for m in store.models.listed()] == [False, True]


def test_a_training_that_fails_registers_nothing_and_leaves_nothing(tmp_path, synth_csv, model):
    store = grown(tmp_path, synth_csv, model)

    def full_disk(catalog, out_dir, preprocess, progress):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        store.retrain.run(full_disk, holdout=0.5)
    assert [m["version"] for m in store.models.listed()] == [1]
    assert not list((store.dir / "cache").glob("retrain*")) and not (store.dir / "models" / "v2").exists()


def test_the_same_individuals_stay_held_out_as_the_catalog_grows(tmp_path, model):
    """A version trained earlier never saw the individuals a later one is judged on."""
    csv = make_catalog(tmp_path / "fins", n_individuals=30, photos_per_individual=(2, 3), size=64, seed=2)
    store = grown(tmp_path, csv, model, individuals=20)

    def parts(seed: int):
        return store.retrain.split(0.5, seed=seed)[0].groupby("individual_id")["part"].first()

    before = parts(3)
    table = pd.read_csv(csv)
    table[table["individual_id"].isin(sorted(table["individual_id"].unique())[20:])].to_csv(tmp_path / "more.csv")
    store.intake.import_catalog(tmp_path / "more.csv", csv.parent / "images")
    after = parts(3)
    assert after[before.index].tolist() == before.tolist() and len(after) == 30
    assert set(after) == {"train", "calibration", "test"}
    assert parts(4).tolist() != after.tolist()  # the seed chooses which


def test_a_catalog_too_small_to_train_on_says_so_and_keeps_its_model(tmp_path, synth_csv, model):
    store = grown(tmp_path, synth_csv, model, individuals=5)
    with pytest.raises(UserError, match="too small to train on.*model v1 stays"):
        store.retrain.run(recipe_trainer(TINY))
    result = runner.invoke(app, ["catalog", "retrain", str(store.dir)])
    assert result.exit_code == 2 and "too small to train on" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert [m["version"] for m in store.models.listed()] == [1]
    with pytest.raises(UserError, match="between 0 and 1"):
        store.retrain.split(1.5)


def test_the_command_line_retrains_with_a_recipe_file_and_prints_the_comparison(tmp_path, synth_csv, model):
    store = grown(tmp_path, synth_csv, model)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({"train": {**TINY, "epochs": 1}}))
    result = runner.invoke(app, ["catalog", "retrain", str(store.dir), "--recipe", str(recipe), "--holdout", "0.5"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "training: 1/1 epochs" in text and "scoring on held-out individuals" in text
    assert "ImageNet" in text and "v1 (active)" in text and "v2 (new)" in text
    assert f"catalog reindex {store.dir} --version 2" in text
    assert store.models.listed()[1]["report"]["recipe"]["epochs"] == 1


def test_an_admin_retrains_from_the_model_page_as_a_background_job(tmp_path, synth_csv, model):
    store = grown(tmp_path, synth_csv, model)
    add_user(store, "admin", PASSWORD, "admin")
    with client(store, "admin") as c:
        job = c.post("/api/models/retrain", json={"holdout": 0.5}).json()
        assert job["kind"] == "retrain"
        stages = set()
        while (state := c.get(f"/api/jobs/{job['id']}").json())["state"] not in ("done", "failed"):
            stages.add(state["progress"]["stage"])  # what the dashboard shows meanwhile
            time.sleep(0.1)
        done = wait_for_job(c.get, job["id"])
        assert done["state"] == "done", done
        assert "training" in stages and done["result"]["version"] == 2 and done["result"]["recipe"]["epochs"] == 10
        trained = json.loads((store.dir / "models" / "v2" / "0" / "model.json").read_text())["extra"]["train_config"]
        assert trained["num_workers"] == 0  # photos load in the job's thread: no loader forked beside the server's
        page = c.get("/users").text  # the Model page: the report beside the button that switches to v2
        new = done["result"]["scores"]["new"]
        assert page.count('<tr class="report"') == 1 and page.count("<td>ImageNet-only start</td>") == 1
        assert f"<td>v2 (this one)</td><td>{new['map5']:.3f}</td><td>{new['top1_known']:.3f}</td>" in page
        assert page.count('action="/models/2/activate"') == 1 and page.count('action="/models/retrain"') == 1


def test_the_web_refuses_to_queue_training_on_a_catalog_too_small(tmp_path, synth_csv, model):
    store = build_catalog(tmp_path, synth_csv, model)  # 5 individuals
    with client(store, "admin") as c:
        refused = c.post("/api/models/retrain")
        assert refused.status_code == 400 and "too small to train on" in refused.json()["detail"]
        form = c.post("/models/retrain", data={"csrf": c.headers["X-CSRF-Token"]}, follow_redirects=False)
        assert form.status_code == 303 and form.headers["location"] == "/users?error=retrain-refused"
        assert all(j["kind"] != "retrain" for j in c.get("/api/jobs").json())
    with client(store, "reviewer") as c:
        assert c.post("/api/models/retrain").status_code == 403


@pytest.mark.parametrize(("recipe", "says"), [("5", "must be a mapping"), ("{lr: 0.1, epoch: 3}", "epoch")])
def test_a_recipe_file_that_is_no_training_section_is_refused_in_one_line(tmp_path, synth_csv, model, recipe, says):
    store = grown(tmp_path, synth_csv, model, individuals=5)
    path = tmp_path / "recipe.yaml"
    path.write_text(f"train: {recipe}\n")
    result = runner.invoke(app, ["catalog", "retrain", str(store.dir), "--recipe", str(path), "--epochs", "2"])
    assert result.exit_code == 2 and says in result.output and "unexpected" not in result.output, result.output
