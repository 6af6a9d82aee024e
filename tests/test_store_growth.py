"""The living catalog learns without retraining: a confirmed photo is an exemplar the next ``add`` ranks against.

Real right-whale photos, the zero-shot lite0 checkpoint (ImageNet GeM features, 128 px), the SQLite catalog.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from whaleid.model.checkpoint import save_checkpoint
from whaleid.model.network import EmbeddingModel, ModelConfig
from whaleid.store.catalog import CatalogStore
from whaleid.store.intake import EncounterInfo

N_INDIVIDUALS = 100  # with >= 4 photos; half are confirmed in each of the two catalogs
GALLERY_PHOTOS = 2  # imported per individual: most real individuals have few photos, where one more counts
IMG_SIZE = 128


def _reciprocal(rank: int | None) -> float:
    return 0.0 if rank is None else 1.0 / rank


def _summary(ranks: list[int | None]) -> dict:
    return {
        "mrr@5": round(float(np.mean([_reciprocal(r) for r in ranks])), 3),
        "top1": sum(r == 1 for r in ranks),
        "top5": sum(r is not None for r in ranks),
    }


def _add_and_rank(store: CatalogStore, images: Path, names: list[str], truth: dict[str, str]) -> dict:
    """Add photos as one sighting; for each, its photo id and the rank (1-5, None past 5) and score of its truth."""
    result = store.intake.add([images / n for n in names], EncounterInfo(date="2025-06-01", observer="growth test"))
    assert len(result.added) == len(names), (result.rejected, result.duplicates)
    queued = {item.photo: item for item in store.review.queue(limit=None)}
    out = {}
    for photo, name in zip(result.added, names):
        candidates = [c for c in queued[photo].candidates if c["individual"] != "new_individual"]
        ids = [c["individual"] for c in candidates]
        individual = truth[name]
        rank = ids.index(individual) + 1 if individual in ids else None
        out[individual] = (photo, rank, candidates[rank - 1]["score"] if rank else None)
    return out


@pytest.mark.data
def test_confirming_a_sighting_ranks_the_next_photo_of_that_animal_higher(shared_data, tmp_path):
    """The same photo ranked twice: in a catalog where its animal's earlier sighting was confirmed, and in one
    where it was not. Everything else is alike, so the difference is the confirmed exemplar alone.

    Design (a crossover): 100 right whales with >= 4 photos; each contributes 2 photos to an imported
    catalog and holds out two more, a first and a second sighting. The catalog is copied to X and Y, and the
    individuals split in halves A and B. In X the first sightings of A are added and confirmed by their truth
    (a stand-in reviewer); in Y, those of B. Then every second sighting is added to both. A second photo of
    an A animal is ranked AFTER its confirmation in X and BEFORE it in Y (and the reverse for B), while both
    galleries grew by about as many confirmed photos of other animals (49 and 50). Comparing a second photo with its
    own first photo instead would mix the exemplar with how hard each photo is (here the first photos rank
    worse than the unhelped second ones: MRR@5 0.087 vs 0.138).

    Nothing is sampled or trained, so the numbers do not vary between runs; the bounds below are set well
    inside the effect measured on this sample and on five other samples of 100 whales (the closing note).
    """
    data = shared_data / "right-whale-heads"
    images = data / "images"
    table = pd.read_csv(data / "train.csv").sort_values("image", kind="stable")
    counts = table["individual_id"].value_counts()
    eligible = sorted(counts[counts >= 4].index)
    # A fixed, unordered sample: the same whales on every numpy and pandas (no RNG stream involved).
    chosen = sorted(eligible, key=lambda i: hashlib.sha256(i.encode()).hexdigest())[:N_INDIVIDUALS]
    gallery, first, second = [], {}, {}
    for individual in chosen:
        photos = table.loc[table["individual_id"] == individual, "image"].tolist()
        gallery += photos[:GALLERY_PHOTOS]
        first[individual], second[individual] = photos[-2], photos[-1]
    truth = {name: ind for ind, name in first.items()} | {name: ind for ind, name in second.items()}
    csv = tmp_path / "known.csv"
    table[table["image"].isin(gallery)].to_csv(csv, index=False)

    model = EmbeddingModel(
        ModelConfig(backbone="tf_efficientnet_lite0", embedding_dim=0, img_size=IMG_SIZE), pretrained=True
    ).eval()
    checkpoint = save_checkpoint(model, tmp_path / "zero-shot" / "model", ["none"])
    x = CatalogStore.create(tmp_path / "x", checkpoint)
    imported = x.intake.import_catalog(csv, images)
    assert len(imported.added) == N_INDIVIDUALS * GALLERY_PHOTOS, imported.rejected
    x.engine.dispose()  # no open connection: the SQLite file (and its WAL) copies whole
    shutil.copytree(tmp_path / "x", tmp_path / "y")
    stores = {"x": x, "y": CatalogStore(tmp_path / "y")}
    half = {ind: "x" if k % 2 == 0 else "y" for k, ind in enumerate(chosen)}  # A confirmed in x, B in y

    first_rank, ranked = {}, {}
    for name, store in stores.items():
        mine = [ind for ind in chosen if half[ind] == name]
        sightings = _add_and_rank(store, images, [first[ind] for ind in mine], truth)
        for ind, (photo, rank, _) in sightings.items():
            first_rank[ind] = rank
            store.review.decide(photo, confirm=ind, reviewer="truth")
        ranked[name] = _add_and_rank(store, images, [second[ind] for ind in chosen], truth)
    other = {"x": "y", "y": "x"}
    after = [ranked[half[ind]][ind] for ind in chosen]
    before = [ranked[other[half[ind]]][ind] for ind in chosen]

    firsts = _summary([first_rank[ind] for ind in chosen])
    without, with_ = _summary([b[1] for b in before]), _summary([a[1] for a in after])
    better = sum(_reciprocal(a[1]) > _reciprocal(b[1]) for a, b in zip(after, before))
    worse = sum(_reciprocal(a[1]) < _reciprocal(b[1]) for a, b in zip(after, before))
    print(f"\nfirst sightings:                     {firsts}")
    print(f"second sightings, first unconfirmed: {without}")
    print(f"second sightings, first confirmed:   {with_}")
    print(f"paired: {better} ranked higher, {worse} lower, {len(chosen) - better - worse} the same")

    # Exact, whatever the model: the truth's score is its best photo's cosine, and confirming only adds a photo.
    for a, b in zip(after, before):
        if a[2] is not None and b[2] is not None:
            assert a[2] >= b[2] - 1e-5
    # Empirical (see the closing note): conservative bounds on effects measured far larger.
    assert with_["mrr@5"] > without["mrr@5"]
    assert with_["top1"] >= without["top1"]
    assert with_["top5"] > without["top5"]
    assert better > 2 * worse


# Closing note: what this test measured (2 CPU cores, torch 2 threads; the test takes 19 s alone and 31 s
# beside another job's test suite; ranks are 1-5 among the candidates, None past 5, counted 0 in MRR@5):
#
#                                          MRR@5   top-1   top-5   (of 100 second photos)
#   first sightings (against the import)   0.087      6      15    (different photos: context only)
#   second, first sighting unconfirmed     0.138     11      19
#   second, first sighting confirmed       0.222     18      31
#   paired, same photo: 15 ranked higher, 2 lower, 83 the same
#
# The two "lower" are other animals' confirmed photos overtaking the truth; the truth's own score never
# drops (asserted exactly). Five other samples of 100 whales (numpy default_rng(0..4) instead of the hash
# order; same design) gave MRR@5 +0.049, +0.062, +0.070, +0.044, +0.029; top-1 +5, +5, +6, +3, +1; top-5
# +5, +8, +7, +8, +6; paired higher/lower 10/4, 12/1, 12/3, 10/1, 11/1. Every empirical bound held on all six,
# and on this sample each has a margin of several photos: top-1 18 vs 11, top-5 31 vs 19, 15 > 2 * 2.
