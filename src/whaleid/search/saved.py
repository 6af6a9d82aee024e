"""An Identifier's folder: index, labels, keypoints, its models copied in, and a JSON sidecar written last.

The sidecar goes last, so a folder with a sidecar is complete; models are named relative to
the folder, so it can be moved and still identify photos alone.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.model.checkpoint import checkpoint_files
from whaleid.model.keypoints import KeypointConfig, KeypointSet
from whaleid.search.config import IdentifyConfig
from whaleid.search.index import Index, load_index
from whaleid.search.record import GalleryRecord

SIDECAR = "identifier.json"
INDEX_FILE = "index.npz"
IDS_FILE = "gallery_ids.json"
SPECIES_FILE = "gallery_species.json"
KEYPOINTS_FILE = "keypoints.npz"
MODELS_DIR = "models"
FORMAT = "whaleid.identifier"
FORMAT_VERSION = 5  # 5: one GalleryRecord; 4: re-ranking (keypoints + fusion); 3: the scorer and threshold policy
READABLE = (3, 4, 5)  # a version-3 folder is a version 4 without re-ranking; both read as a record


def write_json(path: Path, value: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def read_sidecar(directory: Path) -> dict:
    path = directory / SIDECAR
    if not path.is_file():
        raise UserError(f"no {SIDECAR} in {directory} (not an Identifier, or its save was interrupted)")
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not readable JSON ({error}): save the Identifier again") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise UserError(f"{path} is not a whaleid identifier sidecar")
    if sidecar.get("version", 0) not in READABLE:
        raise UserError(
            f"{directory} was written by {'a newer' if sidecar.get('version', 0) > FORMAT_VERSION else 'an older'} "
            "whaleid: save the Identifier again with this version (`whaleid identify --save`)"
        )
    return sidecar


def checkpoint_members(source: dict) -> tuple[str, list[str]]:
    """The key of a model source that names checkpoint files, and those files."""
    if "checkpoint" in source:
        return "checkpoint", [source["checkpoint"]]
    if "checkpoints" in source:
        return "checkpoints", list(source["checkpoints"])
    return "", []  # a zero-shot backbone, or no model recorded


def copy_models(metadata: dict, directory: Path) -> dict:
    """The gallery's checkpoint(s) copied under ``directory/models/``; the metadata naming them relative to it."""
    key, members = checkpoint_members(metadata.get("source", {}))
    if not members:
        return dict(metadata)
    copied = []
    for i, member in enumerate(members):
        target = directory / MODELS_DIR / str(i)
        target.mkdir(parents=True, exist_ok=True)
        for path in checkpoint_files(member):
            if path.resolve() != (target / path.name).resolve():
                with atomic_path(target / path.name) as tmp:
                    shutil.copyfile(path, tmp)
        copied.append(f"{MODELS_DIR}/{i}/{checkpoint_files(member)[-1].name}")
    source = {**metadata["source"], key: copied[0] if key == "checkpoint" else copied}
    return {**metadata, "source": source}


def resolve_models(metadata: dict, directory: Path) -> dict:
    """Saved metadata with its relative checkpoint paths made absolute under the Identifier's folder."""
    key, members = checkpoint_members(metadata.get("source", {}))
    if not members:
        return metadata
    paths = [str(directory / p) for p in members]
    return {**metadata, "source": {**metadata["source"], key: paths[0] if key == "checkpoint" else paths}}


def save_folder(
    directory: str | os.PathLike,
    index: Index,
    ids: list[str],
    species: list[str] | None,
    keypoints: KeypointSet | None,
    sidecar: dict,
    metadata: dict,
    record: GalleryRecord,
) -> Path:
    """index.npz + gallery_ids.json (+ gallery_species.json, keypoints.npz) + models/ + identifier.json, each
    atomic; files of another save that this one lacks are removed, and the sidecar goes last."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SIDECAR).unlink(missing_ok=True)  # mark incomplete while rewriting
    index.save(directory / INDEX_FILE)
    write_json(directory / IDS_FILE, ids)
    if species is None:
        (directory / SPECIES_FILE).unlink(missing_ok=True)  # not another save's leftover
    else:
        write_json(directory / SPECIES_FILE, species)
    if keypoints is None:
        (directory / KEYPOINTS_FILE).unlink(missing_ok=True)
    else:
        keypoints.save(directory / KEYPOINTS_FILE)
    metadata = copy_models(metadata, directory)
    sidecar = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        **sidecar,
        "record": replace(record, source=dict(metadata.get("source") or {})).to_dict(),  # the copies, not the originals
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "metadata": metadata,
    }
    write_json(directory / SIDECAR, sidecar)
    return directory


@dataclass(frozen=True)
class Folder:
    """A saved Identifier's parts as read back, checked against its sidecar."""

    directory: Path
    sidecar: dict
    index: Index
    ids: list[str]
    species: list[str] | None
    metadata: dict

    @property
    def record(self) -> GalleryRecord:
        """The sidecar's record; versions 3 and 4 kept its scoring, fusion and threshold as loose keys."""
        if "record" in self.sidecar:
            return GalleryRecord.from_dict(self.sidecar["record"])
        loose = {
            "scoring": self.sidecar["config"],
            "fusion": self.sidecar.get("fusion"),
            "threshold": self.sidecar["threshold"],
        }
        meta = self.metadata
        return GalleryRecord.from_dict({**GalleryRecord.of(meta, IdentifyConfig()).to_dict(), **loose})

    def keypoints(self, config: KeypointConfig) -> KeypointSet:
        return KeypointSet.load(self.directory / KEYPOINTS_FILE, config)


def load_folder(directory: str | os.PathLike, threads: int | None = None) -> Folder:
    directory = Path(directory)
    sidecar = read_sidecar(directory)
    index = load_index(directory / INDEX_FILE, threads=threads)
    ids = json.loads((directory / IDS_FILE).read_text(encoding="utf-8"))
    if len(index) != sidecar["n"] or index.dim != sidecar["dim"]:
        raise UserError(
            f"{directory}: index (n={len(index)}, dim={index.dim}) does not match its sidecar "
            f"(n={sidecar['n']}, dim={sidecar['dim']})"
        )
    species = None
    if sidecar.get("per_photo_species"):
        species = json.loads((directory / SPECIES_FILE).read_text(encoding="utf-8"))
    metadata = resolve_models(dict(sidecar.get("metadata") or {}), directory)
    return Folder(directory, sidecar, index, ids, species, metadata)
