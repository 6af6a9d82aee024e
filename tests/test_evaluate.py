import json
import math

import numpy as np
import pandas as pd
import pytest

from whaleid.errors import UserError
from whaleid.search.metrics import (
    average_precision_at_5,
    cell,
    evaluate,
    map_at_5,
    per_species,
    plot_threshold_sweep,
    threshold_sweep,
    top_k_accuracy,
    truths_for,
    write_submission,
)
from whaleid.search.ranking import NEW_INDIVIDUAL, Ranking, insert_new_individual

NEW = NEW_INDIVIDUAL


def test_new_individual_constant():
    assert NEW == "new_individual"


@pytest.mark.parametrize(
    "preds, expected",
    [
        (["a", "b", "c", "d", "e"], 1.0),
        (["b", "a", "c", "d", "e"], 1 / 2),
        (["b", "c", "a", "d", "e"], 1 / 3),
        (["b", "c", "d", "e", "a"], 1 / 5),
        (["b", "c", "d", "e", "f"], 0.0),
        (["b", "c", "d", "e", "f", "a"], 0.0),  # rank 6 is beyond the cutoff
        ([], 0.0),
        (["a"], 1.0),
    ],
)
def test_average_precision_ranks(preds, expected):
    assert average_precision_at_5(preds, "a") == pytest.approx(expected)


def test_average_precision_duplicates_follow_kaggle():
    # Kaggle's examples: [A,A,A,A,A] and [A,B,A,C,A] both score 1 for truth A.
    assert average_precision_at_5(["a"] * 5, "a") == 1.0
    assert average_precision_at_5(["a", "b", "a", "c", "a"], "a") == 1.0
    # repeats of a wrong id before the hit still occupy ranks
    assert average_precision_at_5(["b", "b", "a"], "a") == pytest.approx(1 / 3)
    assert average_precision_at_5(["b"] * 5, "a") == 0.0


def test_average_precision_rejects_a_string():
    with pytest.raises(TypeError):
        average_precision_at_5("abcde", "a")


def test_map_at_5_by_hand():
    preds = [["a", "x", "y"], ["x", "b", "y"], ["x", "y", "z", "w", "c"], ["x"], [NEW, "d"]]
    truths = ["a", "b", "c", "d", NEW]
    # 1 + 1/2 + 1/5 + 0 + 1 = 2.7 over 5 images
    assert map_at_5(preds, truths) == pytest.approx(2.7 / 5)


def test_map_at_5_validates_lengths():
    with pytest.raises(ValueError):
        map_at_5([["a"]], ["a", "b"])
    with pytest.raises(ValueError):
        map_at_5([], [])


def test_top_k_accuracy_by_hand():
    preds = [["a", "b"], ["b", "a"], ["c", "d", "e", "f", "g", "a"], ["a"]]
    truths = ["a", "a", "a", "z"]
    assert top_k_accuracy(preds, truths, 1) == pytest.approx(1 / 4)
    assert top_k_accuracy(preds, truths, 2) == pytest.approx(2 / 4)
    assert top_k_accuracy(preds, truths, 5) == pytest.approx(2 / 4)
    assert top_k_accuracy(preds, truths, 6) == pytest.approx(3 / 4)
    with pytest.raises(ValueError):
        top_k_accuracy(preds, truths, 0)


def test_per_species_table():
    preds = [["a", "x"], ["x", "b"], ["x"], ["d"]]
    truths = ["a", "b", "c", "d"]
    species = ["humpback", "humpback", "humpback", "beluga"]
    table = per_species(preds, truths, species)
    assert list(table.columns) == ["species", "n", "map5", "top1", "top5"]
    assert list(table["species"]) == ["humpback", "beluga", "all"]
    hb = table.set_index("species").loc["humpback"]
    assert hb["n"] == 3
    assert hb["map5"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert hb["top1"] == pytest.approx(1 / 3)
    assert hb["top5"] == pytest.approx(2 / 3)
    overall = table.set_index("species").loc["all"]
    assert overall["n"] == 4
    assert overall["map5"] == pytest.approx(2.5 / 4)
    assert overall["top1"] == pytest.approx(2 / 4)


def _loop_sweep(rankings, truths, thresholds):
    """Reference: the slow, obviously correct way."""
    rows = []
    for t in thresholds:
        preds = [insert_new_individual(r, t).ids for r in rankings]
        first_new = np.array([p[0] == NEW for p in preds])
        true_new = np.array([x == NEW for x in truths])
        rows.append(
            {
                "map5": map_at_5(preds, truths),
                "top1": top_k_accuracy(preds, truths, 1),
                "new_rate": first_new.mean(),
                "new_precision": (first_new & true_new).sum() / first_new.sum() if first_new.any() else np.nan,
                "new_recall": (first_new & true_new).sum() / true_new.sum(),
            }
        )
    return pd.DataFrame(rows)


def _random_rankings(rng, n=200, individuals=30):
    rankings, truths = [], []
    for _ in range(n):
        length = int(rng.integers(0, 8))
        ids = list(rng.choice([f"id{i}" for i in range(individuals)], size=length, replace=False))
        scores = sorted(rng.uniform(0, 1, size=length).round(2), reverse=True)
        rankings.append(Ranking(ids, [float(s) for s in scores]))
        u = rng.uniform()
        truths.append(
            NEW
            if u < 0.3
            else (ids[int(rng.integers(len(ids)))] if ids and u < 0.8 else f"id{int(rng.integers(individuals))}")
        )
    return rankings, truths


def test_threshold_sweep_matches_per_query_insertion():
    rng = np.random.default_rng(0)
    rankings, truths = _random_rankings(rng)
    thresholds = np.concatenate([np.linspace(-0.1, 1.1, 25), [0.5, 0.37]])  # 0.37 hits ties
    fast = threshold_sweep(rankings, truths, thresholds)
    slow = _loop_sweep(rankings, truths, thresholds)
    for col in ["map5", "top1", "new_rate", "new_precision", "new_recall"]:
        np.testing.assert_allclose(fast[col].to_numpy(), slow[col].to_numpy(), err_msg=col)


def test_threshold_sweep_columns_and_monotonic_rate():
    rng = np.random.default_rng(1)
    rankings, truths = _random_rankings(rng, n=80)
    sweep = threshold_sweep(rankings, truths)
    assert list(sweep.columns) == ["threshold", "map5", "top1", "new_precision", "new_recall", "new_rate"]
    assert len(sweep) > 10
    assert (np.diff(sweep["threshold"]) > 0).all()
    assert (np.diff(sweep["new_rate"]) >= 0).all()
    # default grid spans "nobody new" (except empty rankings) to "everybody new"
    empty = np.mean([len(r) == 0 for r in rankings])
    assert sweep["new_rate"].iloc[0] == pytest.approx(empty)
    assert sweep["new_rate"].iloc[-1] == 1.0


def test_threshold_sweep_by_hand():
    rankings = [Ranking(["a", "b"], [0.9, 0.5]), Ranking(["c", "d"], [0.4, 0.2])]
    truths = ["a", NEW]
    sweep = threshold_sweep(rankings, truths, [0.1, 0.45, 0.95]).set_index("threshold")
    # t=0.1: [a, b, new] / [c, d, new] -> AP 1 and 1/3
    assert sweep.loc[0.1, "map5"] == pytest.approx((1 + 1 / 3) / 2)
    # t=0.45: [a, new, b] / [new, c, d] -> AP 1 and 1
    assert sweep.loc[0.45, "map5"] == pytest.approx(1.0)
    assert sweep.loc[0.45, "new_precision"] == 1.0
    # t=0.95: both new first -> AP 1/2 and 1, new precision 1/2
    assert sweep.loc[0.95, "map5"] == pytest.approx(0.75)
    assert sweep.loc[0.95, "new_precision"] == pytest.approx(0.5)
    assert sweep.loc[0.95, "new_recall"] == 1.0
    assert sweep.loc[0.1, "new_rate"] == 0.0 and math.isnan(sweep.loc[0.1, "new_precision"])


def test_plot_threshold_sweep_writes_png(tmp_path):
    rankings = [Ranking(["a", "b"], [0.9, 0.5]), Ranking(["c", "d"], [0.4, 0.2])]
    sweep = threshold_sweep(rankings, ["a", NEW])
    out = plot_threshold_sweep(sweep, tmp_path / "sub" / "sweep.png", chosen=0.45)
    assert out == tmp_path / "sub" / "sweep.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000
    assert not [p for p in out.parent.iterdir() if p.name != "sweep.png"]  # no temp files left
    with pytest.raises(ValueError):
        plot_threshold_sweep(sweep.drop(columns="map5"), tmp_path / "x.png")


def test_write_submission_exact_format(tmp_path):
    path = write_submission(
        ["img1.jpg", "img2.jpg", "img3.jpg"],
        [["a", "b", "c", "d", "e", "f"], [NEW, "a"], []],
        tmp_path / "submission.csv",
    )
    assert path.read_text() == (
        "image,predictions\n"
        "img1.jpg,a b c d e\n"
        "img2.jpg,new_individual a a a a\n"
        "img3.jpg,new_individual new_individual new_individual new_individual new_individual\n"
    )
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["image", "predictions"]
    assert all(len(p.split(" ")) == 5 for p in frame["predictions"])


def test_submission_padding_is_ap_neutral():
    for preds in (["a", "b"], ["b", "c"], [NEW, "a"], ["x"]):
        padded = preds + [preds[-1]] * (5 - len(preds))
        for truth in ("a", "b", "c", NEW, "zz"):
            assert average_precision_at_5(padded, truth) == average_precision_at_5(preds, truth)


def test_write_submission_rejects_unwritable_ids(tmp_path):
    with pytest.raises(ValueError):
        write_submission(["img.jpg"], [["a b"]], tmp_path / "s.csv")
    with pytest.raises(ValueError):
        write_submission(["img,1.jpg"], [["a"]], tmp_path / "s.csv")
    with pytest.raises(ValueError):
        write_submission(["a.jpg", "b.jpg"], [["a"]], tmp_path / "s.csv")
    assert not list(tmp_path.iterdir())


def test_evaluate_report_and_json():
    preds = [["a", "x"], [NEW, "b"], [NEW, "c"], ["d", NEW]]
    truths = ["a", "b", NEW, NEW]
    species = ["s1", "s1", "s2", "s2"]
    report = evaluate(preds, truths, species)
    assert report.n == 4
    assert report.map5 == pytest.approx((1 + 0.5 + 1 + 0.5) / 4)
    assert report.top1 == pytest.approx(2 / 4)
    assert report.top5 == 1.0
    assert report.new_rate == pytest.approx(2 / 4)
    assert report.new_precision == pytest.approx(1 / 2)
    assert report.new_recall == pytest.approx(1 / 2)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["map5"] == pytest.approx(0.75)
    assert [row["species"] for row in d["per_species"]] == ["s1", "s2", "all"]
    # nobody predicted new -> precision undefined -> null in JSON, not NaN
    d2 = evaluate([["a"]], ["a"]).to_dict()
    assert d2["new_precision"] is None and "per_species" not in d2
    json.dumps(d2, allow_nan=False)


def test_scoring_mismatched_lengths_is_a_user_error():
    with pytest.raises(UserError, match="2 prediction lists but 3 truths: give one truth per predicted photo"):
        evaluate([["a"], ["b"]], ["a", "b", "c"])


def test_truths_for_matches_each_predicted_photo_once():
    truth = pd.DataFrame(
        {"image": ["x.jpg", "y.jpg", "z.jpg"], "species": ["s1", "s2", "s1"], "individual_id": ["a", "b", "c"]}
    )
    assert truths_for(["z.jpg", "x.jpg"], truth) == (["c", "a"], ["s1", "s1"])
    assert truths_for(["y.jpg"], truth.drop(columns="species")) == (["b"], None)
    with pytest.raises(UserError, match=r"in the truth CSV, 1 photo\(s\) appear more than once, e.g. \['x.jpg'\]"):
        truths_for(["x.jpg"], pd.concat([truth, truth.iloc[:1]]))
    with pytest.raises(UserError, match=r"in the predictions, 1 photo\(s\) appear more than once"):
        truths_for(["x.jpg", "y.jpg", "x.jpg"], truth)
    with pytest.raises(UserError, match=r"1 predicted photo\(s\) have no row in the truth CSV, e.g. \['w.jpg'\]"):
        truths_for(["x.jpg", "w.jpg"], truth)
    with pytest.raises(UserError, match=r"lacks column\(s\) \['individual_id'\]"):
        truths_for(["x.jpg"], truth.drop(columns="individual_id"))


def test_undefined_metrics_print_as_a_dash():
    assert [cell(x) for x in (float("nan"), None, 0.41249, 1.0)] == ["\u2013", "\u2013", "0.412", "1.000"]
    assert cell(0.41251, digits=4) == "0.4125"
