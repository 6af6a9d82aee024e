import json

import numpy as np
import pytest

from whaleid.errors import UserError
from whaleid.search.index import (
    ExactIndex,
    FaissIndex,
    Index,
    _top_k_rows,
    build_index,
    load_index,
)


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    gallery = unit(rng.standard_normal((500, 32)))
    queries = unit(rng.standard_normal((40, 32)))
    return gallery, queries


def brute(gallery, queries, k):
    sims = queries.astype(np.float64) @ gallery.T.astype(np.float64)
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


@pytest.mark.parametrize("chunk_bytes", [1, 500 * 4 * 7, 2**28])
def test_exact_matches_brute_force_at_any_chunking(data, chunk_bytes):
    gallery, queries = data
    index = ExactIndex(gallery, chunk_bytes=chunk_bytes)
    scores, idx = index.search(queries, 10)
    ref_scores, ref_idx = brute(gallery, queries, 10)
    assert scores.shape == idx.shape == (40, 10)
    assert scores.dtype == np.float32 and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


def _reference_top_k(sims, k):
    order = np.lexsort((np.broadcast_to(np.arange(sims.shape[1]), sims.shape), -sims), axis=1)
    order = order[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


@pytest.mark.parametrize("k", [1, 10, 100])
def test_top_k_rows_prefilter_is_exact_with_ties(k):
    rng = np.random.default_rng(3)
    # wide enough rows to take the sampled-threshold path; rounding makes many ties
    sims = np.round(rng.standard_normal((30, 20_000)).astype(np.float32) * 8) / 8
    vals, idx = _top_k_rows(sims, k)
    ref_vals, ref_idx = _reference_top_k(sims, k)
    np.testing.assert_array_equal(vals, ref_vals)
    np.testing.assert_array_equal(idx, ref_idx)  # ties go to the lowest gallery row
    assert idx.dtype == np.int64


def test_top_k_rows_falls_back_when_sample_overshoots():
    rng = np.random.default_rng(4)
    sims = rng.uniform(0, 1, (4, 20_000)).astype(np.float32)
    step = 20_000 // 4096
    sims[:2, ::step] += 10  # rows 0-1: the sampled columns are the largest -> too few pass
    vals, idx = _top_k_rows(sims, 200)
    ref_vals, ref_idx = _reference_top_k(sims, 200)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(vals, ref_vals)


def test_exact_index_on_wide_gallery_matches_faiss():
    rng = np.random.default_rng(5)
    gallery = unit(rng.standard_normal((12_000, 16)))
    queries = unit(rng.standard_normal((30, 16)))
    s1, i1 = ExactIndex(gallery, chunk_bytes=12_000 * 4 * 7).search(queries, 50)
    s2, i2 = FaissIndex(gallery).search(queries, 50)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    assert np.mean(i1 == i2) > 0.98


def test_exact_k_larger_than_gallery_and_ties():
    gallery = unit([[1, 0], [1, 0], [0, 1], [-1, 0]])
    scores, idx = ExactIndex(gallery).search(unit([[1, 0]]), 10)
    assert idx.shape == (1, 4)
    assert idx[0].tolist() == [0, 1, 2, 3]  # tie between rows 0 and 1 broken by row
    np.testing.assert_allclose(scores[0], [1, 1, 0, -1], atol=1e-6)


def test_exact_and_faiss_flat_agree(data):
    gallery, queries = data
    s1, i1 = build_index(gallery, "exact").search(queries, 25)
    s2, i2 = build_index(gallery, "faiss").search(queries, 25)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    # random data has no exact ties; allow for float noise swapping near-equal neighbours
    same = np.mean([len(set(a) & set(b)) / 25 for a, b in zip(i1, i2)])
    assert same > 0.99
    assert (i1[:, 0] == i2[:, 0]).all()


@pytest.mark.parametrize("kind", ["faiss-hnsw", "faiss-ivf"])
def test_approximate_indexes_find_clustered_neighbours(kind):
    rng = np.random.default_rng(1)
    centres = unit(rng.standard_normal((40, 32)))
    gallery = unit(np.repeat(centres, 25, axis=0) + 0.1 * rng.standard_normal((1000, 32)))
    queries = unit(centres + 0.1 * rng.standard_normal((40, 32)))
    index = build_index(gallery, kind)
    assert index.kind == kind
    scores, idx = index.search(queries, 10)
    assert scores.shape == (40, 10)
    assert ((idx // 25) == np.arange(40)[:, None]).mean() > 0.95
    _, exact_idx = build_index(gallery).search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, exact_idx)])
    assert recall > 0.9


def test_faiss_parameters():
    rng = np.random.default_rng(2)
    gallery = unit(rng.standard_normal((400, 16)))
    ivf = FaissIndex(gallery, method="ivf", nlist=4, nprobe=4, threads=1)
    assert ivf.params == {"nlist": 4, "nprobe": 4}
    # probing every list makes IVF exact
    s_exact, i_exact = ExactIndex(gallery).search(gallery[:5], 5)
    s_ivf, i_ivf = ivf.search(gallery[:5], 5)
    np.testing.assert_allclose(s_ivf, s_exact, atol=1e-5)
    with pytest.raises(TypeError):
        FaissIndex(gallery, method="hnsw", nlist=3)
    with pytest.raises(ValueError):
        FaissIndex(gallery, method="pq")
    with pytest.raises(ValueError):
        build_index(gallery, "annoy")


@pytest.mark.parametrize("kind", ["exact", "faiss", "faiss-hnsw", "faiss-ivf"])
def test_save_load_roundtrip(tmp_path, data, kind):
    gallery, queries = data
    index = build_index(gallery, kind)
    path = tmp_path / "nested" / "gallery.index"
    index.save(path)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["gallery.index"]  # no temp left
    loaded = load_index(path)
    assert isinstance(loaded, Index)
    assert type(loaded) is type(index) and loaded.kind == index.kind
    assert (len(loaded), loaded.dim) == (500, 32)
    s1, i1 = index.search(queries, 7)
    s2, i2 = loaded.search(queries, 7)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)


def test_save_overwrites_atomically(tmp_path, data):
    gallery, _ = data
    path = tmp_path / "g.npz"
    build_index(gallery[:10]).save(path)
    build_index(gallery[:20]).save(path)
    assert len(load_index(path)) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz"]


def test_load_rejects_foreign_files(tmp_path):
    with pytest.raises(UserError, match="no index file"):
        load_index(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not an index")
    with pytest.raises(ValueError):
        load_index(junk)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError):
        load_index(other)


def _index_file(path, meta: dict, **arrays):
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    return path


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda p: np.save(open(p, "wb"), np.ones(3)), "not a whaleid index file"),
        (
            lambda p: np.save(open(p, "wb"), np.array([{"a": 1}], dtype=object), allow_pickle=True),
            "not a whaleid index file",
        ),
        (lambda p: _index_file(p, ["not", "a", "dict"]), "not a whaleid index file"),
        (lambda p: p.write_bytes((b := _index_file(p, {}).read_bytes())[: len(b) // 2]), "not a whaleid index file"),
        (
            lambda p: _index_file(p, {"format": "whaleid.search.index", "version": 1, "kind": "annoy"}),
            "unknown index kind",
        ),
        (
            lambda p: _index_file(
                p, {"format": "whaleid.search.index", "version": 1, "kind": "exact", "n": 1, "dim": 2}
            ),
            "damaged index",
        ),
        (
            lambda p: _index_file(
                p,
                {"format": "whaleid.search.index", "version": 1, "kind": "exact", "n": 1, "dim": 2},
                vectors=np.array([[np.nan, 1]], np.float32),
            ),
            r"damaged index .*NaN",
        ),
        (
            lambda p: _index_file(
                p,
                {"format": "whaleid.search.index", "version": 1, "kind": "exact", "n": 5, "dim": 2},
                vectors=np.array([[0, 1]], np.float32),
            ),
            "inconsistent",
        ),
        (
            lambda p: _index_file(
                p,
                {"format": "whaleid.search.index", "version": 1, "kind": "faiss-flat", "n": 1, "dim": 2},
                faiss=np.frombuffer(b"junk", np.uint8),
            ),
            "damaged index",
        ),
    ],
)
def test_damaged_index_files_are_user_errors(tmp_path, make, pattern):
    path = tmp_path / "index.npz"
    make(path)
    with pytest.raises(UserError, match=pattern) as err:
        load_index(path)
    assert str(path) in str(err.value) and "--save" in str(err.value)


def test_gallery_copied_not_referenced(data):
    gallery, queries = data
    g = gallery.copy()
    index = ExactIndex(g)
    before = index.search(queries, 3)
    g[:] = 0
    after = index.search(queries, 3)
    np.testing.assert_array_equal(before[1], after[1])


@pytest.mark.parametrize("kind", ["exact", "faiss"])
def test_input_validation(data, kind):
    gallery, queries = data
    with pytest.raises(TypeError, match="float32"):
        build_index(gallery.astype(np.float64), kind)
    with pytest.raises(ValueError, match="2-D"):
        build_index(gallery[0], kind)
    with pytest.raises(ValueError, match="empty"):
        build_index(gallery[:0], kind)
    bad = gallery.copy()
    bad[[3, 7]] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in 2 row"):
        build_index(bad, kind)
    with pytest.raises(TypeError):
        build_index(gallery.tolist(), kind)
    index = build_index(gallery, kind)
    with pytest.raises(ValueError, match="dim 16"):
        index.search(queries[:, :16].copy(), 5)
    with pytest.raises(ValueError, match="k must be"):
        index.search(queries, 0)
    q = queries.copy()
    q[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        index.search(q, 5)
    s, i = index.search(queries[:0], 5)
    assert s.shape == i.shape == (0, 5)


def test_unnormalised_gallery_warns():
    with pytest.warns(UserWarning, match="not L2-normalised"):
        build_index(np.full((4, 3), 2.0, np.float32))


def test_non_contiguous_input_ok(data):
    gallery, queries = data
    index = build_index(np.asfortranarray(gallery), "faiss")
    s1, i1 = index.search(np.asfortranarray(queries), 3)
    s2, i2 = build_index(gallery).search(queries, 3)
    np.testing.assert_array_equal(i1, i2)
