import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whaleid.errors import UserError
from whaleid.search.index import build_index
from whaleid.search.ranking import top_individuals
from whaleid.search.scoring import align, blend, knn_scores, logit_probabilities, rank_scores


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# Two individuals share axis-ish directions; "b" has two photos, so its max matters.
GALLERY = np.array([[1, 0], [0, 1], [0.6, 0.8], [-1, 0]], np.float32)
GALLERY_IDS = ["b", "a", "b", "c"]
QUERIES = np.array([[0.8, 0.6], [0, -1]], np.float32)
# columns a, b, c; b is max(q . [1,0], q . [0.6,0.8])
KNN = np.array([[0.6, max(0.8, 0.48 + 0.48), -0.8], [-1.0, max(0.0, -0.8), 0.0]], np.float32)


def ids_of(rankings):
    return [r.ids for r in rankings]


# ------------------------------------------------------------------ knn_scores


def test_knn_scores_max_cosine_per_individual_by_hand():
    scores, classes = knn_scores(QUERIES, GALLERY, GALLERY_IDS)
    assert classes == ["a", "b", "c"]
    np.testing.assert_allclose(scores, KNN, atol=1e-6)


def test_knn_scores_chunking_does_not_change_scores():
    rng = np.random.default_rng(0)
    gallery = unit(rng.standard_normal((40, 6)))
    ids = [f"id{i % 7}" for i in rng.permutation(40)]
    queries = unit(rng.standard_normal((9, 6)))
    big, classes = knn_scores(queries, gallery, ids, chunk=1000)
    for chunk in (1, 4):
        scores, same = knn_scores(queries, gallery, ids, chunk=chunk)
        assert same == classes
        np.testing.assert_allclose(scores, big, rtol=0, atol=1e-6)
    # and each column really is the max over that individual's photos
    sims = queries @ gallery.T
    labels = np.array(ids)
    expected = np.stack([sims[:, labels == c].max(axis=1) for c in classes], axis=1)
    np.testing.assert_allclose(big, expected, rtol=0, atol=1e-6)


def test_knn_scores_validates():
    with pytest.raises(UserError, match="3 gallery ids for 4 gallery vectors"):
        knn_scores(QUERIES, GALLERY, GALLERY_IDS[:-1])
    with pytest.raises(UserError, match="the gallery is empty"):
        knn_scores(QUERIES, GALLERY[:0], [])
    with pytest.raises(UserError, match=r"--blend\) must be in \[0, 1\]"):
        blend(KNN, KNN, 1.5)
    with pytest.raises(UserError, match="NaN"):
        rank_scores(np.array([[np.nan, 0.5]]), ["a", "b"])
    with pytest.raises(ValueError):
        knn_scores(QUERIES[:, :1].copy(), GALLERY, GALLERY_IDS)
    with pytest.raises(TypeError):
        knn_scores(QUERIES.astype(np.float64), GALLERY, GALLERY_IDS)
    with pytest.raises(ValueError):
        knn_scores(QUERIES, GALLERY, GALLERY_IDS, chunk=0)


# ------------------------------------------------------------------ logit_probabilities


def test_logit_probabilities_match_hand_softmax():
    cos = np.array([[0.0, np.log(2), np.log(3)], [np.log(3), 0.0, 0.0]])
    probs = logit_probabilities(cos, scale=1.0)
    np.testing.assert_allclose(probs, [[1 / 6, 2 / 6, 3 / 6], [3 / 5, 1 / 5, 1 / 5]])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # scale 2 squares the exponentials: 1, 4, 9
    np.testing.assert_allclose(logit_probabilities(cos, 2.0)[0], [1 / 14, 4 / 14, 9 / 14])


def test_logit_probabilities_stable_at_large_scale():
    # exp(1000) overflows; a naive softmax would give NaN here
    probs = logit_probabilities(np.array([[1.0, 0.0], [0.5, 0.5]], np.float32), scale=1000.0)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, [[1.0, 0.0], [0.5, 0.5]])


def test_logit_probabilities_validates():
    with pytest.raises(ValueError):
        logit_probabilities(np.zeros(3), 30.0)
    with pytest.raises(ValueError):
        logit_probabilities(np.zeros((1, 3)), 0.0)


# ------------------------------------------------------------------ align / blend


def test_align_reorders_and_fills_missing():
    m = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out = align(m, ["x", "y", "z"], ["z", "w", "x"], fill=-1.0)
    np.testing.assert_array_equal(out, [[3.0, -1.0, 1.0], [6.0, -1.0, 4.0]])
    np.testing.assert_array_equal(align(m, ["x", "y", "z"], ["w"]), [[0.0], [0.0]])
    with pytest.raises(ValueError):
        align(m, ["x", "y"], ["x"])
    with pytest.raises(ValueError):
        align(m, ["x", "x", "z"], ["x"])


def test_blend_validates():
    for weight in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            blend(KNN, KNN, weight)
    with pytest.raises(ValueError):
        blend(KNN, KNN[:, :2], 0.5)


# ------------------------------------------------------------------ rank_scores


def test_rank_scores_order_ties_and_short_rows():
    scores = np.array([[0.5, 0.9, 0.5, 0.9], [0.1, 0.2, 0.3, 0.4]])
    ids = ["p", "q", "r", "s"]
    r0, r1 = rank_scores(scores, ids, top=3)
    assert r0.ids == ["q", "s", "p"] and r0.scores == [0.9, 0.9, 0.5]  # ties: earlier id first
    assert r1.ids == ["s", "r", "q"] and r1.scores == pytest.approx([0.4, 0.3, 0.2])
    assert ids_of(rank_scores(scores, ids, top=10)) == [["q", "s", "p", "r"], ["s", "r", "q", "p"]]
    with pytest.raises(ValueError):
        rank_scores(scores, ids[:3])
    with pytest.raises(ValueError):
        rank_scores(np.array([[np.nan, 1.0, 0.0, 0.0]]), ids)


def test_rank_scores_ties_on_wide_rows():
    # >8k columns and top >= 8 take the sampled fast path of the top-k selection; ties
    # must still go to the earlier id, as a stable full sort says
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 50, size=(4, 9000)).astype(np.float32) / 50
    ids = [f"i{j:05d}" for j in range(9000)]
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    assert ids_of(rank_scores(scores, ids, top=10)) == [[ids[j] for j in row] for row in expected]


def test_rank_scores_of_knn_equals_top_individuals_on_exact_search():
    rng = np.random.default_rng(2)
    gallery = unit(rng.standard_normal((30, 8)))
    ids = [f"id{i % 8}" for i in rng.permutation(30)]
    queries = unit(rng.standard_normal((6, 8)))
    knn, classes = knn_scores(queries, gallery, ids)
    probs = logit_probabilities(rng.uniform(-1, 1, knn.shape), 30.0)
    ranked = rank_scores(blend(knn, probs, 0.0), classes)
    scores, indices = build_index(gallery, "exact").search(queries, k=len(gallery))
    expected = top_individuals(scores, indices, ids)
    assert ids_of(ranked) == ids_of(expected)
    for got, want in zip(ranked, expected):
        assert got.scores == pytest.approx(want.scores, abs=1e-6)
    # weight 1 is the head alone, whose ranking here is a different one
    head_only = rank_scores(blend(knn, probs, 1.0), classes)
    assert ids_of(head_only) == ids_of(rank_scores(probs, classes))
    assert ids_of(head_only) != ids_of(ranked)


def test_blended_ranking_by_hand():
    # Head knows c, a and d (not in the gallery) but not b; scale 1 makes exp easy.
    head_ids = ["c", "a", "d"]
    head_cos = np.array([[0.0, np.log(2), np.log(3)], [np.log(3), 0.0, 0.0]])
    knn, classes = knn_scores(QUERIES, GALLERY, GALLERY_IDS)
    probs = align(logit_probabilities(head_cos, 1.0), head_ids, classes)
    np.testing.assert_allclose(probs, [[2 / 6, 0, 1 / 6], [1 / 5, 0, 3 / 5]])

    assert ids_of(rank_scores(blend(knn, probs, 0.0), classes)) == [["b", "a", "c"], ["b", "c", "a"]]  # b, c tie at 0
    assert ids_of(rank_scores(blend(knn, probs, 1.0), classes)) == [["a", "c", "b"], ["c", "a", "b"]]
    # weight 0.5: row 0 a .3+1/6, b .48, c -.4+1/12; row 1 a -.5+.1, b 0, c .3
    half = rank_scores(blend(knn, probs, 0.5), classes)
    assert ids_of(half) == [["b", "a", "c"], ["c", "b", "a"]]
    assert half[0].scores == pytest.approx([0.48, 0.3 + 1 / 6, -0.4 + 1 / 12], abs=1e-6)
    assert half[1].scores == pytest.approx([0.3, 0.0, -0.4], abs=1e-6)


def test_equal_scores_go_to_the_photo_with_more_evidence_when_a_tiebreak_is_given():
    """Fused scores tie on an isotonic step: without a tiebreak the earlier photo wins, with one the larger."""
    scores = np.array([[0.0522, 0.0522, 0.0522, 0.9]])
    indices = np.array([[0, 1, 2, 3]])
    ids = ["a", "b", "c", "d"]
    assert top_individuals(scores, indices, ids)[0].ids == ["d", "a", "b", "c"]
    tiebreak = np.array([[3.0, 11.0, 7.0, 0.0]])  # verified matches (+ cosine): b, then c, then a
    ranked = top_individuals(scores, indices, ids, tiebreak=tiebreak)[0]
    assert ranked.ids == ["d", "b", "c", "a"] and ranked.scores == pytest.approx([0.9, 0.0522, 0.0522, 0.0522])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=2, max_size=12), st.integers(0, 2**31 - 1))
def test_a_tiebreak_orders_only_within_equal_scores(levels, seed):
    """Scores on a few steps, any tiebreak: every score stays in non-increasing order, and within one score
    the individuals come by their best tiebreak."""
    rng = np.random.default_rng(seed)
    scores = np.array([levels], np.float64) / 4
    tiebreak = rng.permutation(len(levels))[None].astype(np.float64)
    ids = [f"i{j}" for j in range(len(levels))]  # one photo per individual
    ranked = top_individuals(scores, np.arange(len(levels))[None], ids, top=len(levels), tiebreak=tiebreak)[0]
    assert ranked.scores == sorted(ranked.scores, reverse=True)
    by_id = {f"i{j}": (scores[0, j], tiebreak[0, j]) for j in range(len(levels))}
    keys = [by_id[i] for i in ranked.ids]
    assert keys == sorted(keys, reverse=True)
