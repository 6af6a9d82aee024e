"""Counts of a catalog for a report: photos, individuals, species, photos per individual, problems."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from whaleid.data.catalog import Catalog

__all__ = ["format_summary", "summary"]


def summary(catalog: Catalog) -> dict[str, Any]:
    """Counts for a report: photos, individuals, species, photos per individual, problems.

    ``photos_per_individual`` always has the keys 1..9 and ``"10+"`` (zeros included),
    counting individuals, so reports line up across catalogs.
    """
    t = catalog.table
    per = t["individual_id"].value_counts(dropna=True)
    hist: dict[int | str, int] = {i: int((per == i).sum()) for i in range(1, 10)}
    hist["10+"] = int((per >= 10).sum())
    return {
        "photos": len(t),
        "individuals": int(len(per)),
        "unlabelled": int(t["individual_id"].isna().sum()),
        "species": {str(k): int(v) for k, v in t["species"].value_counts().items()},
        "photos_per_individual": hist,
        "problems": len(catalog.problems),
        "problem_reasons": {str(k): int(v) for k, v in catalog.problems["reason"].value_counts().items()},
    }


def format_summary(s: Mapping[str, Any]) -> str:
    """Plain-text rendering of :func:`summary` for the CLI."""
    lines = [
        f"photos       {s['photos']:>8,}",
        f"individuals  {s['individuals']:>8,}",
    ]
    if s.get("unlabelled"):
        lines.append(f"unlabelled   {s['unlabelled']:>8,}")
    lines.append(f"problems     {s['problems']:>8,}")
    for reason, n in s.get("problem_reasons", {}).items():
        lines.append(f"  {reason:<30} {n:>6,}")
    lines += ["", "species                          photos"]
    for name, n in s["species"].items():
        lines.append(f"  {name:<30} {n:>6,}")
    lines += ["", "photos per individual       individuals"]
    for bucket, n in s["photos_per_individual"].items():
        lines.append(f"  {str(bucket):<30} {n:>6,}")
    return "\n".join(lines)
