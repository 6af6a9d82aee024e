"""Pseudo-labels keep only confident known-individual answers."""

import pandas as pd
import pytest

from whaleid.data.catalog import Catalog
from whaleid.errors import UserError
from whaleid.experiments.pseudo import pseudo_labels, with_pseudo_labels
from whaleid.search.ranking import NEW_INDIVIDUAL, Ranking

RANKINGS = [
    Ranking(["a", "b"], [0.91, 0.40]),  # confident: kept
    Ranking(["b", "a"], [0.55, 0.50]),  # below confidence 0.6: dropped
    Ranking([NEW_INDIVIDUAL, "a"], [0.7, 0.65]),  # answered new: dropped
    Ranking(["c"], [0.62]),  # kept with confidence 0.6 only; dropped by a 0.65 new threshold
    Ranking([], []),  # nothing to say
]
IMAGES = ["q1.jpg", "q2.jpg", "q3.jpg", "q4.jpg", "q5.jpg"]


def test_only_confident_known_answers_become_labels():
    labels = pseudo_labels(IMAGES, RANKINGS, confidence=0.6, species={"a": "beluga", "c": "orca"})
    assert labels.values.tolist() == [["q1.jpg", "beluga", "a", 0.91], ["q4.jpg", "orca", "c", 0.62]]
    strict = pseudo_labels(IMAGES, RANKINGS, confidence=0.6, threshold=0.65)
    assert strict["image"].tolist() == ["q1.jpg"]
    with pytest.raises(ValueError):
        pseudo_labels(IMAGES[:2], RANKINGS, confidence=0.5)


def test_pseudo_labelled_photos_join_the_training_catalog(tmp_path):
    train = Catalog(
        pd.DataFrame({"image": ["t1.jpg", "t2.jpg"], "species": "beluga", "individual_id": ["a", "b"]}), tmp_path
    )
    test = Catalog(pd.DataFrame({"image": IMAGES, "species": "?", "individual_id": None}), tmp_path)
    labels = pseudo_labels(IMAGES, RANKINGS, confidence=0.6, species={"a": "beluga", "c": "orca"})
    both = with_pseudo_labels(train, test, labels)
    assert both.table[["image", "individual_id", "species"]].values.tolist() == [
        ["t1.jpg", "a", "beluga"],
        ["t2.jpg", "b", "beluga"],
        ["q1.jpg", "a", "beluga"],
        ["q4.jpg", "c", "orca"],
    ]
    assert both.labels == ["a", "b", "c"] and both.table["label"].tolist() == [0, 1, 0, 2]
    assert both.table["path"].iloc[2] == str(tmp_path / "q1.jpg")
    with pytest.raises(ValueError, match="already"):
        with_pseudo_labels(both, test, labels)


def test_pseudo_labels_refuse_what_would_label_nothing_silently(tmp_path):
    with pytest.raises(UserError, match=r"confidence must be a score in \[0, 1\], got nan"):
        pseudo_labels(IMAGES, RANKINGS, confidence=float("nan"))
    train = Catalog(pd.DataFrame({"image": ["t1.jpg"], "species": "beluga", "individual_id": ["a"]}), tmp_path)
    test = Catalog(pd.DataFrame({"image": IMAGES, "species": "?", "individual_id": None}), tmp_path)
    with pytest.raises(UserError, match=r"lacks column\(s\) \['individual_id'\]"):
        with_pseudo_labels(train, test, pd.DataFrame({"image": ["q1.jpg"], "species": ["beluga"]}))
