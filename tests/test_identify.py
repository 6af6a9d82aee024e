import json
import warnings

import numpy as np
import pytest

import whaleid.search.threshold as threshold_module
from whaleid.errors import UserError
from whaleid.search.identify import Identifier, IdentifyConfig
from whaleid.search.index import build_index
from whaleid.search.metrics import average_precision_at_5, map_at_5
from whaleid.search.ranking import NEW_INDIVIDUAL, Ranking, insert_new_individual, top_individuals
from whaleid.search.threshold import calibrate_per_species, calibrate_threshold

NEW = NEW_INDIVIDUAL


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test sees the once-per-process warnings afresh."""
    monkeypatch.setattr(threshold_module, "_warned", set())


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ids_of(rankings):
    return [r.ids for r in rankings]


# ------------------------------------------------------------------ top_individuals


def test_top_individuals_keeps_max_score_per_individual():
    gallery_ids = ["a", "a", "b", "c", "b", "d", "e", "f"]
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]], np.float32)
    indices = np.array([[1, 0, 4, 2, 3, 5, 6, 7]])
    (r,) = top_individuals(scores, indices, gallery_ids, top=5)
    assert r.ids == ["a", "b", "c", "d", "e"]
    assert r.scores == pytest.approx([0.9, 0.7, 0.5, 0.4, 0.3])


def test_top_individuals_unsorted_rows_and_missing_slots():
    gallery_ids = ["a", "b", "c"]
    scores = np.array([[0.1, 0.7, -np.inf, 0.9], [0.5, 0.4, -np.inf, -np.inf]], np.float32)
    indices = np.array([[0, 1, -1, 0], [2, 2, -1, -1]])
    r0, r1 = top_individuals(scores, indices, gallery_ids, top=5)
    assert r0.ids == ["a", "b"] and r0.scores == pytest.approx([0.9, 0.7])
    assert r1.ids == ["c"] and r1.scores == pytest.approx([0.5])  # fewer than top is fine


def test_top_individuals_validates():
    with pytest.raises(ValueError):
        top_individuals(np.zeros((2, 3)), np.zeros((2, 2), int), ["a"])
    with pytest.raises(IndexError):
        top_individuals(np.zeros((1, 1)), np.array([[5]]), ["a"])


# ------------------------------------------------------------------ insert_new_individual


R = Ranking(["a", "b", "c", "d", "e"], [0.9, 0.8, 0.6, 0.4, 0.2])


@pytest.mark.parametrize(
    "threshold, ids",
    [
        (0.95, [NEW, "a", "b", "c", "d"]),  # above every score: new first
        (0.7, ["a", "b", NEW, "c", "d"]),  # between
        (0.6, ["a", "b", "c", NEW, "d"]),  # equal score is not below
        (0.3, ["a", "b", "c", "d", NEW]),
        (0.1, ["a", "b", "c", "d", "e"]),  # below every score: no room left for new
    ],
)
def test_insert_new_individual_positions(threshold, ids):
    out = insert_new_individual(R, threshold)
    assert out.ids == ids
    assert len(out.ids) == 5
    if NEW in ids:
        assert out.scores[ids.index(NEW)] == threshold
    assert R.ids == ["a", "b", "c", "d", "e"]  # input untouched


def test_insert_new_individual_short_ranking_appends():
    out = insert_new_individual(Ranking(["a", "b"], [0.9, 0.8]), 0.5)
    assert out.ids == ["a", "b", NEW] and out.scores == pytest.approx([0.9, 0.8, 0.5])
    assert insert_new_individual(Ranking([], []), 0.5).ids == [NEW]
    assert insert_new_individual(R, 0.7, top=2).ids == ["a", "b"]


def test_insert_new_individual_does_not_duplicate_new():
    out = insert_new_individual(Ranking(["a", NEW, "b"], [0.9, 0.85, 0.3]), 0.5)
    assert out.ids == ["a", NEW, "b"]


def test_new_truth_scores_one_when_threshold_above_top_score():
    ranking = Ranking(["a", "b"], [0.42, 0.40])
    assert average_precision_at_5(insert_new_individual(ranking, 0.5).ids, NEW) == 1.0
    assert average_precision_at_5(insert_new_individual(ranking, 0.41).ids, NEW) == 0.5
    assert average_precision_at_5(insert_new_individual(ranking, 0.3).ids, NEW) == pytest.approx(1 / 3)
    # and a known individual pays for the same threshold with rank 2
    assert average_precision_at_5(insert_new_individual(ranking, 0.5).ids, "a") == 0.5


# ------------------------------------------------------------------ Identifier


@pytest.fixture
def gallery():
    """Three individuals on orthogonal axes, two photos each, in 8-D."""
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:3]
    vecs = np.repeat(centres, 2, axis=0) + 0.05 * rng.standard_normal((6, 8)).astype(np.float32)
    return unit(vecs), ["a", "a", "b", "b", "c", "c"]


def test_identifier_rank_and_identify(gallery):
    vectors, ids = gallery
    eye = np.eye(8, dtype=np.float32)
    queries = unit(np.stack([0.95 * eye[1] + 0.3 * eye[0], eye[7]]))  # b then a; nobody
    ident = Identifier(build_index(vectors), ids, IdentifyConfig(neighbours=4), threshold=0.5)
    ranked = ident.rank(queries)
    assert ranked[0].ids[0] == "b" and ranked[0].scores[0] > 0.9
    assert ranked[0].ids == ["b", "a"]  # 4 neighbours -> only 2 distinct individuals
    assert NEW not in ranked[1].ids
    identified = ident.identify(queries)
    assert identified[0].ids == ["b", NEW, "a"]
    assert identified[1].ids[0] == NEW
    assert map_at_5([r.ids for r in identified], ["b", NEW]) == 1.0
    no_threshold = Identifier(build_index(vectors), ids).identify(queries)
    assert all(NEW not in r.ids for r in no_threshold)


def test_identifier_validates(gallery):
    vectors, ids = gallery
    index = build_index(vectors)
    with pytest.raises(UserError, match="5 gallery ids for an index of 6 vectors"):
        Identifier(index, ids[:-1])
    with pytest.raises(UserError, match="reserved"):
        Identifier(index, ids[:-1] + [NEW])
    with pytest.raises(UserError, match="gallery photo 5 has individual_id None"):
        Identifier(index, ids[:-1] + [None])
    with pytest.raises(UserError, match="neighbours"):
        Identifier(index, ids, IdentifyConfig(neighbours=0))
    with pytest.raises(UserError, match="the gallery is empty"):
        Identifier(index, [])
    for threshold in (float("nan"), "high", {"*": float("inf")}, {"whale": 0.5}):
        with pytest.raises(UserError, match="threshold"):
            Identifier(index, ids, threshold=threshold)


def test_identify_refuses_nan_or_mismatched_queries_with_a_user_error(gallery):
    vectors, ids = gallery
    identifier = Identifier(build_index(vectors), ids)
    with pytest.raises(UserError, match="NaN"):
        identifier.identify(np.full((1, vectors.shape[1]), np.nan, np.float32))
    with pytest.raises(UserError, match="dim"):
        identifier.identify(vectors[:, :3].copy())


def test_an_empty_gallery_is_a_user_error():
    with pytest.raises(UserError, match="empty gallery"):
        build_index(np.zeros((0, 8), np.float32))


@pytest.mark.parametrize("kind", ["exact", "faiss"])
def test_identifier_save_load_roundtrip(tmp_path, gallery, kind):
    vectors, ids = gallery
    ident = Identifier(
        build_index(vectors, kind),
        ids,
        IdentifyConfig(neighbours=3, index=kind),
        threshold=0.61,
        metadata={"backbone": "tf_efficientnet_b0"},
    )
    out = ident.save(tmp_path / "ident")
    assert sorted(p.name for p in out.iterdir()) == ["gallery_ids.json", "identifier.json", "index.npz"]
    sidecar = json.loads((out / "identifier.json").read_text())
    assert sidecar["kind"] == ("exact" if kind == "exact" else "faiss-flat")
    assert (sidecar["dim"], sidecar["n"], sidecar["record"]["threshold"]) == (8, 6, 0.61)
    assert sidecar["created"].endswith("+00:00")
    loaded = Identifier.load(out)
    assert loaded.gallery_ids == ids and loaded.threshold == 0.61 and loaded.config.neighbours == 3
    assert loaded.metadata == {"backbone": "tf_efficientnet_b0"}
    queries = vectors[[0, 3]] + 0.01
    assert [r.ids for r in loaded.identify(queries)] == [r.ids for r in ident.identify(queries)]
    (out / "identifier.json").unlink()
    with pytest.raises(UserError, match="no identifier.json"):
        Identifier.load(out)


def test_an_identifier_saved_before_the_gallery_record_loads_and_ranks_the_same(tmp_path, gallery):
    """Versions 3 and 4 kept the scorer, fusion and threshold as loose keys of the sidecar."""
    vectors, ids = gallery
    ident = Identifier(build_index(vectors), ids, IdentifyConfig(neighbours=3), threshold=0.61)
    out = ident.save(tmp_path / "ident")
    sidecar = json.loads((out / "identifier.json").read_text())
    record = sidecar.pop("record")
    sidecar.update(version=4, config=record["scoring"], threshold=record["threshold"], fusion=None)
    (out / "identifier.json").write_text(json.dumps(sidecar))
    loaded = Identifier.load(out)
    assert loaded.record == ident.record and loaded.config.neighbours == 3 and loaded.threshold == 0.61
    queries = vectors[[0, 3]] + 0.01
    assert [r.ids for r in loaded.identify(queries)] == [r.ids for r in ident.identify(queries)]


# ------------------------------------------------------------------ calibrate_threshold


def _open_set_example(rng, known=60, new=40):
    rankings, truths = [], []
    for q in range(known):
        top = 0.9 + 0.03 * rng.standard_normal()
        rankings.append(Ranking([f"k{q}", "x", "y"], [top, top - 0.2, top - 0.3]))
        truths.append(f"k{q}")
    for _ in range(new):
        top = 0.3 + 0.03 * rng.standard_normal()
        rankings.append(Ranking(["x", "y", "z"], [top, top - 0.05, top - 0.1]))
        truths.append(NEW)
    return rankings, truths


def test_calibrate_sweep_separates_known_from_new():
    rankings, truths = _open_set_example(np.random.default_rng(0))
    t = calibrate_threshold(rankings, truths)
    top_known = min(r.scores[0] for r, x in zip(rankings, truths) if x != NEW)
    top_new = max(r.scores[0] for r, x in zip(rankings, truths) if x == NEW)
    assert top_new < t <= top_known
    assert 0.45 < t < 0.75  # middle of the gap, not its edge
    preds = [insert_new_individual(r, t).ids for r in rankings]
    assert map_at_5(preds, truths) == 1.0


def test_calibrate_sweep_with_explicit_grid():
    rankings, truths = _open_set_example(np.random.default_rng(1))
    assert calibrate_threshold(rankings, truths, thresholds=[0.1, 0.5, 0.95]) == 0.5


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_calibrate_rate_hits_requested_rate(rate):
    rng = np.random.default_rng(2)
    rankings = [Ranking(["a"], [float(s)]) for s in rng.uniform(0, 1, 200)]
    t = calibrate_threshold(rankings, None, method="rate", new_rate=rate)
    first_new = np.mean([insert_new_individual(r, t).ids[0] == NEW for r in rankings])
    assert first_new == pytest.approx(rate)


def test_calibrate_validates():
    rankings = [Ranking(["a"], [0.5])]
    with pytest.raises(UserError, match="unknown calibration method 'nope'"):
        calibrate_threshold(rankings, ["a"], method="nope")
    for rate in (1.5, -0.1, float("nan"), None, "half"):
        with pytest.raises(UserError, match=r"--new-rate must be the share of queries expected to be new, in \[0, 1\]"):
            calibrate_threshold(rankings, None, method="rate", new_rate=rate)
    with pytest.raises(UserError, match="needs the validation photos' truths"):
        calibrate_threshold(rankings, None)
    with pytest.raises(UserError, match="zero validation photos"):
        calibrate_threshold([], ["a"])
    with pytest.raises(UserError, match="1 rankings but 2 truths"):
        calibrate_threshold(rankings, ["a", "b"])
    with pytest.raises(UserError, match="finite"):
        calibrate_threshold(rankings, ["a"], thresholds=[0.1, float("nan")])


def test_the_no_new_truth_warning_comes_once_per_process():
    rankings, truths = [Ranking(["a"], [0.5]), Ranking(["b"], [0.7])], ["a", "b"]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):  # e.g. three epochs' validation
            calibrate_threshold(rankings, truths)
            with warnings.catch_warnings():  # what torch does between epochs, which resets Python's "once"
                warnings.simplefilter("ignore")
    assert [str(w.message) for w in record] == [threshold_module.NO_NEW_TRUTH]


# ------------------------------------------------------------------ per-species thresholds


def _two_species_example():
    """AP per query on the grid 0.2/0.4/0.6/0.8 (new goes before the first score < t):

    A: a1 [.9 .5]  known    1    1    1    1
       [.7 .3]     new      1/3  1/2  1/2  1
       a3 [.95 .1] known    1    1    1    1     sum 2.33 2.5 2.5 3    -> A: 0.8
    B: b1 [.5 .2]  known    1    1    1/2  1/2
       [.3 .1]     new      1/2  1    1    1
       b3 [.95 .1] known    1    1    1    1     sum 2.5  3   2.5 2.5  -> B: 0.4
    C: [.5 .3]     new      1/3  1/2  1    1
       c2 [.7 .1]  known    1    1    1    1/2   sum 1.33 1.5 2   1.5
    all                                          sum 6.17 7   7   7    -> *: middle of 0.4..0.8
    """
    rankings = [
        Ranking(["a1", "x"], [0.9, 0.5]),
        Ranking(["x", "y"], [0.7, 0.3]),
        Ranking(["a3", "x"], [0.95, 0.1]),
        Ranking(["b1", "x"], [0.5, 0.2]),
        Ranking(["x", "y"], [0.3, 0.1]),
        Ranking(["b3", "x"], [0.95, 0.1]),
        Ranking(["x", "y"], [0.5, 0.3]),
        Ranking(["c2", "x"], [0.7, 0.1]),
    ]
    truths = ["a1", NEW, "a3", "b1", NEW, "b3", NEW, "c2"]
    species = ["A"] * 3 + ["B"] * 3 + ["C"] * 2
    return rankings, truths, species


GRID = [0.2, 0.4, 0.6, 0.8]


def test_calibrate_per_species_by_hand():
    rankings, truths, species = _two_species_example()
    out = calibrate_per_species(rankings, truths, species, min_queries=3, thresholds=GRID)
    assert set(out) == {"A", "B", "*"}  # C has 2 < 3 queries: it uses "*"
    assert out["A"] == pytest.approx(0.8)
    assert out["B"] == pytest.approx(0.4)
    assert out["*"] == pytest.approx(0.6)
    assert out["*"] == calibrate_threshold(rankings, truths, thresholds=GRID)
    assert set(calibrate_per_species(rankings, truths, species, min_queries=2, thresholds=GRID)) == {"A", "B", "C", "*"}
    assert set(calibrate_per_species(rankings, truths, species, min_queries=4, thresholds=GRID)) == {"*"}


def test_calibrate_per_species_warns_only_globally():
    rankings, truths, species = _two_species_example()
    # species D: only known animals; its own sweep would warn, but that is expected
    rankings += [Ranking(["d1"], [0.6]), Ranking(["d2"], [0.7])]
    truths += ["d1", "d2"]
    species += ["D", "D"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = calibrate_per_species(rankings, truths, species, min_queries=2, thresholds=GRID)
    assert out["D"] == pytest.approx(0.4)  # plateau 0.2..0.6, where neither is sent to new
    known = [i for i, t in enumerate(truths) if t != NEW]
    with pytest.warns(UserWarning, match="no validation truth") as record:
        calibrate_per_species(
            [rankings[i] for i in known],
            [truths[i] for i in known],
            [species[i] for i in known],
            min_queries=1,
            thresholds=GRID,
        )
    assert len(record) == 1


def test_calibrate_per_species_validates():
    rankings, truths, species = _two_species_example()
    with pytest.raises(ValueError):
        calibrate_per_species(rankings, truths, species[:-1])
    with pytest.raises(ValueError):
        calibrate_per_species(rankings, truths, species[:-1] + ["*"])
    with pytest.raises(ValueError):
        calibrate_per_species(rankings, truths, species, min_queries=0)
    with pytest.raises(ValueError):
        calibrate_per_species(rankings, None, species)


@pytest.fixture
def species_gallery():
    """One photo each of a and b (dolphins) and c (a whale) on axes 0-2 of 4-D."""
    return np.eye(4, dtype=np.float32)[:3], ["a", "b", "c"], ["dolphin", "dolphin", "whale"]


# q0 scores b 0.6 and q1 scores c 0.6; every other cosine is 0 (ties go to the lower row).
SPECIES_QUERIES = unit([[0, 0.6, 0, 0.8], [0, 0, 0.6, 0.8]])
PER_SPECIES = {"dolphin": 0.7, "*": 0.3}


def test_identifier_per_species_threshold_from_top_candidate(species_gallery):
    vectors, ids, species = species_gallery
    ident = Identifier(build_index(vectors), ids, threshold=PER_SPECIES, gallery_species=species)
    q0, q1 = ident.identify(SPECIES_QUERIES)
    assert q0.ids == [NEW, "b", "a", "c"]  # top-1 b is a dolphin: 0.6 < 0.7
    assert q1.ids == ["c", NEW, "a", "b"]  # top-1 c is a whale: "*" = 0.3, next score is 0
    assert q0.scores[0] == 0.7 and q1.scores[1] == 0.3


def test_identifier_per_species_threshold_from_given_species(species_gallery):
    vectors, ids, species = species_gallery
    for gallery_species in (species, None):  # given species win over the inferred ones
        ident = Identifier(build_index(vectors), ids, threshold=PER_SPECIES, gallery_species=gallery_species)
        q0, q1 = ident.identify(SPECIES_QUERIES, species=["whale", "dolphin"])
        assert q0.ids == ["b", NEW, "a", "c"]
        assert q1.ids == [NEW, "c", "a", "b"]
    with pytest.raises(ValueError, match="species"):
        ident.identify(SPECIES_QUERIES)  # no gallery species to infer from
    with pytest.raises(ValueError):
        ident.identify(SPECIES_QUERIES, species=["whale"])
    # a single threshold ignores species
    ident.threshold = 0.7
    assert ident.identify(SPECIES_QUERIES, species=["whale", "dolphin"])[0].ids[0] == NEW


def test_identifier_validates_species_and_thresholds(species_gallery):
    vectors, ids, species = species_gallery
    index = build_index(vectors)
    with pytest.raises(ValueError, match="'\\*'"):
        Identifier(index, ids, threshold={"dolphin": 0.7})
    with pytest.raises(ValueError):
        Identifier(index, ids, threshold={"dolphin": float("nan"), "*": 0.3})
    with pytest.raises(ValueError):
        Identifier(index, ids, threshold=float("inf"))
    with pytest.raises(ValueError):
        Identifier(index, ids, gallery_species=species[:2])
    with pytest.raises(ValueError, match="both"):
        Identifier(index, ["a", "a", "c"], gallery_species=["dolphin", "whale", "whale"])
    ident = Identifier(index, ids)
    with pytest.raises(ValueError):
        ident.threshold = {"dolphin": 0.7}  # checked when set later, too


def test_identifier_save_load_per_species(tmp_path, species_gallery):
    vectors, ids, species = species_gallery
    ident = Identifier(build_index(vectors), ids, threshold=PER_SPECIES, gallery_species=species)
    out = ident.save(tmp_path / "ident")
    assert json.loads((out / "gallery_species.json").read_text()) == species
    loaded = Identifier.load(out)
    assert loaded.threshold == PER_SPECIES and loaded.gallery_species == species
    assert ids_of(loaded.identify(SPECIES_QUERIES)) == [[NEW, "b", "a", "c"], ["c", NEW, "a", "b"]]
    # saving without species over it must not leave the old species behind
    Identifier(build_index(vectors), ids, threshold=0.5).save(out)
    assert not (out / "gallery_species.json").exists()
    assert Identifier.load(out).gallery_species is None


def test_an_identifier_from_an_older_whaleid_asks_to_be_saved_again(tmp_path, species_gallery):
    """Versions 1-2 kept no scorer and pointed at pickled model files: saving again is the one safe way."""
    vectors, ids, _ = species_gallery
    out = Identifier(build_index(vectors), ids).save(tmp_path / "old")
    sidecar = json.loads((out / "identifier.json").read_text())
    del sidecar["per_photo_species"], sidecar["record"]  # what version 1 wrote
    sidecar.update(version=1, threshold=0.7)
    (out / "identifier.json").write_text(json.dumps(sidecar))
    with pytest.raises(UserError, match="written by an older whaleid: save the Identifier again"):
        Identifier.load(out)
