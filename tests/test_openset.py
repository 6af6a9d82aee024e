import numpy as np
import pytest

from whaleid.errors import UserError
from whaleid.experiments.demo import format_report
from whaleid.search.openset import ceiling_map5, known_accuracy, leave_one_out, score_rankings
from whaleid.search.ranking import NEW_INDIVIDUAL, Ranking


def unit(*rows):
    v = np.array(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_leave_one_out_never_matches_a_photo_with_itself():
    vectors = unit([1, 0], [0.9, 0.1], [0, 1], [0.1, 1])
    rankings, truths = leave_one_out(vectors, ["a", "a", "b", "c"])
    assert truths == ["a", "a", NEW_INDIVIDUAL, NEW_INDIVIDUAL]  # b and c have no other photo
    assert [r.ids[0] for r in rankings] == ["a", "a", "c", "b"]
    # photo 0's own row is gone: its best "a" score is photo 1's, not 1.0
    assert rankings[0].scores[0] == pytest.approx(float(vectors[0] @ vectors[1]))


def test_scores_by_hand():
    vectors = unit([1, 0], [0.9, 0.1], [0, 1], [0.5, 1])
    rankings, truths = leave_one_out(vectors, ["a", "a", "b", "c"])
    assert known_accuracy(rankings, truths, 1) == 1.0  # both "a" photos find each other
    # cos(a0, a1) = 0.9/sqrt(0.82) = 0.994; cos(b, c) = 1/sqrt(1.25) = 0.894, each one's best.
    # A threshold between them keeps the a's known and makes b and c new: all right.
    m = score_rankings(rankings, truths, threshold=0.95)
    assert m["map5"] == pytest.approx(1.0) and m["new_recall"] == 1.0 and m["new_precision"] == 1.0
    # above both, the a's get new_individual first too: AP 1/2 each
    assert score_rankings(rankings, truths, threshold=0.999)["map5"] == pytest.approx((0.5 + 0.5 + 1 + 1) / 4)
    # at 0.5, b and c answer each other first; new_individual lands where scores drop below 0.5:
    # b: [c .894, new] -> AP 1/2; c: [b .894, a1 .543, new] -> AP 1/3 (cos(c, a1) = 0.55/(1.118*0.906))
    m = score_rankings(rankings, truths, threshold=0.5)
    assert m["map5"] == pytest.approx((1 + 1 + 1 / 2 + 1 / 3) / 4) and m["new_recall"] == 0.0


def test_ceiling_places_new_individual_perfectly():
    rankings = [
        Ranking(["a", "b"], [0.9, 0.8]),
        Ranking(["a", "b"], [0.9, 0.8]),
        Ranking(list("cdefgb"), [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]),
        Ranking(["a"], [0.2]),
    ]
    truths = ["b", NEW_INDIVIDUAL, "b", NEW_INDIVIDUAL]
    # b at rank 2 -> 1/2; a new animal -> 1 whatever its scores; b at rank 6 -> 0; new -> 1
    assert ceiling_map5(rankings, truths) == pytest.approx((0.5 + 1 + 0 + 1) / 4)
    # a real threshold must treat the first two queries alike (same scores): above 0.9 the
    # known one gets [new, a, b] -> 1/3, the best any threshold does here
    best = score_rankings(rankings, truths)
    assert best["map5"] == pytest.approx((1 / 3 + 1 + 0 + 1) / 4)
    assert best["map5_ceiling"] == pytest.approx(0.625)


def test_leave_one_out_refuses_sets_it_cannot_score():
    with pytest.raises(UserError, match=r"needs at least 2 photos \(each queries the others\), got 1"):
        leave_one_out(unit([1, 0]), ["a"])
    with pytest.raises(UserError, match="1 gallery ids for an index of 2 vectors"):
        leave_one_out(unit([1, 0], [0, 1]), ["a"])


def test_report_table_is_aligned_and_shows_undefined_metrics_as_a_dash():
    report = {
        "results": {
            "zero-shot": dict(
                map5=0.29,
                top1_known=0.5,
                top5_known=0.7,
                new_precision=float("nan"),
                new_recall=0.0,
                threshold=0.61,
                embed_photos_per_s=150.4,
            ),
            "fine-tuned": dict(
                map5=0.3914,
                top1_known=0.52,
                top5_known=0.8,
                new_precision=0.5,
                new_recall=0.25,
                threshold=0.7,
                train_seconds=250.0,
            ),
        },
        "embedding": {"engine": "onnx", "torch_photos_per_s": 50.0},
    }
    assert format_report(report).splitlines() == [
        "| features   | MAP@5 (held-out, val threshold) | top-1 known | top-5 known | new precision | new recall "
        "| threshold | CPU training |         embedding |",
        "|:-----------|--------------------------------:|------------:|------------:|--------------:|-----------:"
        "|----------:|-------------:|------------------:|",
        "| zero-shot  |                           0.290 |       0.500 |       0.700 |             \u2013 |      0.000 "
        "|     0.610 |            \u2013 | 150 photos/s onnx |",
        "| fine-tuned |                           0.391 |       0.520 |       0.800 |         0.500 |      0.250 "
        "|     0.700 |      4.2 min |                 \u2013 |",
        "",
        "embedding: 150 photos/s on onnx, 50 photos/s on torch eager (3.0x), zero-shot model",
    ]
