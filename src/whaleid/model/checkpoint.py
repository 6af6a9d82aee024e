"""Inference checkpoints that load without running code: safetensors weights + a JSON sidecar.

A checkpoint is a pair sharing a stem, ``model.safetensors`` (the network's state dict and
the ArcFace head's ``head.weight``) and ``model.json`` (format, model settings, labels, head
k/scale, preprocessing, training record, provenance, and the sha256 of the weights file).
The weights are written first and the JSON last, so a JSON means a complete checkpoint; the
recorded digest catches weights changed or cut short since. Old pickled ``model.pt`` files
are refused at load and converted once by :func:`convert_checkpoint` (tensors only, no code).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from whaleid import __version__
from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.model import DEFAULT_IMG_SIZE
from whaleid.model.network import EmbeddingModel, ModelConfig
from whaleid.settings import from_dict, to_dict

__all__ = [
    "Checkpoint",
    "checkpoint_files",
    "checkpoint_paths",
    "checkpoints",
    "convert_checkpoint",
    "load_checkpoint",
    "read_saved",
    "recorded_recipe",
    "save_checkpoint",
]

FORMAT = "whaleid.checkpoint"
VERSION = 1
OLD_FORMAT = "whaleid.model/1"  # the pickled model.pt of whaleid 0.1
STEM = "model"  # a run folder's checkpoint: model.safetensors + model.json
HEAD_KEY = "head.weight"  # the ArcFace head's weight among the safetensors tensors
ADVICE = "retrain, or point --model at the model.json that `whaleid train` wrote"


@dataclass
class Checkpoint:
    """What a checkpoint holds besides the network, for embedding and for the record."""

    path: Path  # the JSON
    weights: Path  # the safetensors file
    digest: str  # sha256 of the weights file: the same weights wherever the pair is copied
    labels: list[str]
    head: dict | None  # {"weight": (classes x k, dim) tensor, "k", "scale"}: the ArcFace class centres
    preprocess: dict | None  # how photos were prepared for training, as the trainer gave it
    extra: dict  # train_config, history, epoch, recipe...
    provenance: dict  # whaleid version, creation time, what it was converted from


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """The (JSON, weights) pair named by either file, an old ``.pt`` name, a folder (``model.*`` in it) or a stem."""
    path = Path(path)
    if path.suffix in (".json", ".safetensors", ".pt"):
        path = path.with_suffix("")
    elif path.is_dir():
        path = path / STEM
    return path.parent / f"{path.name}.json", path.parent / f"{path.name}.safetensors"


def checkpoint_files(path: str | Path) -> list[Path]:
    """The files of a checkpoint in the order to copy them: the weights, then the JSON that completes them."""
    meta, weights = checkpoint_paths(path)
    return [weights, meta]


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoints (their model.json) of a run folder: its own, or one per fold (``fold<i>/``) for an ensemble.

    A checkpoint's own path (either file, or their stem) gives that one checkpoint.
    """
    run_dir = Path(run_dir)
    advice = "point --model at a model.json or at the folder `whaleid train` wrote"
    if not run_dir.is_dir():
        meta = checkpoint_paths(run_dir)[0]
        if not (run_dir.exists() or meta.exists()):
            raise UserError(f"{run_dir} does not exist: {advice}")
        return [meta if run_dir.suffix != ".pt" else run_dir]  # loading an old model.pt says how to convert it
    folds = [p for p in run_dir.glob(f"fold*/{STEM}.json") if p.parent.name[4:].isdigit()]
    found = sorted(folds, key=lambda p: int(p.parent.name[4:])) or sorted(run_dir.glob(f"{STEM}.json"))
    if found:
        return found
    old = sorted(run_dir.glob("model.pt")) + sorted(run_dir.glob("fold*/model.pt"))
    if old:
        raise UserError(
            f"{run_dir} holds model.pt files of an older whaleid: convert each once, e.g. "
            f"`whaleid convert-checkpoint {old[0]}`"
        )
    raise UserError(f"no {STEM}.json in {run_dir} nor in its fold*/ folders: {advice}")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(
    model: EmbeddingModel,
    path: str | Path,
    labels: list[str],
    head: dict | None = None,
    preprocess: dict | None = None,
    extra: dict | None = None,
    provenance: dict | None = None,
) -> Path:
    """Write the checkpoint at ``path`` (a stem, either file or a folder); returns its JSON.

    ``head`` (``weight`` (classes x sub-centers, dim), ``k``, ``scale``) lets inference score
    photos against every training individual's class centre, for the kNN/logit blend. Any
    JSON of an earlier checkpoint goes first, so that no moment pairs it with the new weights.
    """
    meta_path, weights_path = checkpoint_paths(path)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    if head is not None:
        tensors[HEAD_KEY] = head["weight"].detach().float().cpu().contiguous()
    data = save_tensors(tensors)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "weights_sha256": _sha256(data),  # of the file next to this one with the same stem
        "model": to_dict(model.config),
        "labels": [str(label) for label in labels],
        "head": None if head is None else {"k": int(head["k"]), "scale": float(head["scale"])},
        "preprocess": preprocess,
        "extra": extra or {},
        "provenance": {
            "whaleid": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **(provenance or {}),
        },
    }
    text = json.dumps(meta, indent=1) + "\n"  # before any file changes: a value JSON cannot hold fails here
    meta_path.unlink(missing_ok=True)
    with atomic_path(weights_path) as tmp:
        with open(tmp, "wb") as f:  # through a file object, a full disk raises OSError(ENOSPC)
            f.write(data)
    with atomic_path(meta_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return meta_path


def _unreadable(path: Path, reason: str, advice: str = ADVICE) -> UserError:
    return UserError(f"{path} is not a readable whaleid model ({reason}): {advice}")


def _old_format(path: Path) -> UserError:
    return UserError(
        f"{path} is a model.pt of an older whaleid: convert it once with "
        f"`whaleid convert-checkpoint {path}` and use the model.json it writes"
    )


def _read_bytes(path: Path) -> bytes:
    """A file's bytes, or a UserError naming it (missing, a directory, unreadable, empty)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _unreadable(path, "no such file") from None
    except IsADirectoryError:
        raise _unreadable(path, "a directory") from None
    except PermissionError:
        raise _unreadable(path, "permission denied") from None
    except OSError as error:
        raise _unreadable(path, error.strerror or type(error).__name__) from None
    if not data:
        raise _unreadable(path, "empty file")
    return data


def _read_meta(path: Path) -> dict:
    if not path.exists() and path.with_suffix(".pt").is_file():
        raise _old_format(path.with_suffix(".pt"))
    try:
        meta = json.loads(_read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _unreadable(path, "not JSON: truncated or another program's file") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _unreadable(path, "not a whaleid checkpoint")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise _unreadable(
            path, f"format version {meta.get('version')!r}, newer than this whaleid reads", "upgrade whaleid"
        )
    labels, head, extra = meta.get("labels"), meta.get("head"), meta.get("extra")
    if not (
        isinstance(labels, list)
        and all(isinstance(label, str) for label in labels)
        and (head is None or isinstance(head, dict))
        and isinstance(extra, dict)
    ):
        raise _unreadable(path, "not a whaleid checkpoint: bad labels, head or extra")
    return meta


def _read_weights(path: Path, weights: Path, meta: dict) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors and the sha256 of exactly the bytes they were read from, checked against the JSON's."""
    data = _read_bytes(weights)
    digest = _sha256(data)
    if digest != meta.get("weights_sha256"):
        raise _unreadable(
            weights, f"its sha256 differs from the one {path.name} recorded: changed or cut short since it was saved"
        )
    try:
        return load_tensors(data), digest
    except (SafetensorError, ValueError, RuntimeError):  # a JSON pointing at another program's bytes
        raise _unreadable(weights, "not a safetensors file") from None


def _build(path: Path, meta: dict, tensors: dict[str, torch.Tensor]) -> tuple[EmbeddingModel, dict | None]:
    """The model with its weights loaded, and the ArcFace head; weights that do not fit are one UserError."""
    try:
        model = EmbeddingModel(from_dict(ModelConfig, meta.get("model"), "model"), pretrained=False)
    except (ValueError, RuntimeError) as error:  # bad settings (UserError), a backbone this timm does not know
        raise _unreadable(path, f"its model cannot be built: {str(error).splitlines()[0]}") from None
    head, head_weight = meta.get("head"), tensors.pop(HEAD_KEY, None)
    try:
        model.load_state_dict(tensors, strict=True)
        if head is not None:
            k = int(head["k"])
            rows = len(meta["labels"]) * k
            if head_weight is None or tuple(head_weight.shape) != (rows, model.embedding_dim):
                raise ValueError(f"head.weight should be {rows} x {model.embedding_dim}")
            head = {"weight": head_weight, "k": k, "scale": float(head["scale"])}
        elif head_weight is not None:
            raise ValueError("head.weight without head settings")
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise _unreadable(path, "its weights do not fit its settings") from error
    return model.eval(), head


def recorded_preparation(path: str | Path) -> tuple[int, dict | None]:
    """A checkpoint's input size and photo preparation, read without its weights: options are settled before the
    model loads."""
    meta = _read_meta(checkpoint_paths(path)[0])
    model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    return model.get("img_size", DEFAULT_IMG_SIZE), meta.get("preprocess")  # the settings are checked when it loads


def recorded_recipe(path: str | Path) -> dict:
    """How a checkpoint was trained (its training settings), read without its weights; for a network that whaleid
    did not train (ImageNet features saved as a checkpoint), its backbone and input size with the defaults."""
    meta = _read_meta(checkpoint_paths(path)[0])
    trained = (meta.get("extra") or {}).get("train_config")
    if isinstance(trained, dict):
        return trained
    model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    return {"model": {key: model[key] for key in ("backbone", "img_size") if key in model}}


def load_checkpoint(path: str | Path) -> tuple[EmbeddingModel, Checkpoint]:
    """Rebuild the model from a checkpoint (no pretrained download, no pickle); see :func:`checkpoint_paths`."""
    if Path(path).suffix == ".pt" and Path(path).is_file():
        raise _old_format(Path(path))
    meta_path, weights_path = checkpoint_paths(path)
    meta = _read_meta(meta_path)
    tensors, digest = _read_weights(meta_path, weights_path, meta)
    model, head = _build(meta_path, meta, tensors)
    return model, Checkpoint(
        meta_path,
        weights_path,
        digest,
        meta["labels"],
        head,
        meta.get("preprocess"),
        meta["extra"],
        meta.get("provenance", {}),
    )


def read_saved(path: str | Path, what: str, advice: str) -> Any:
    """A file this package saved with ``torch.save``, loaded as tensors and plain data only (no code runs).

    Whatever makes it unusable (missing, empty, cut short by a crash or a full disk, another
    program's file) becomes one UserError naming the file, never EOFError or a pickle error.
    """
    path = Path(path)
    if path.is_dir():
        reason = "a directory"
    elif not path.exists():
        reason = "no such file"
    elif path.stat().st_size == 0:
        reason = "empty file"
    else:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except PermissionError:
            reason = "permission denied"
        except pickle.UnpicklingError:  # holds Python objects that a whaleid file never has
            reason = "not a whaleid file"
        except Exception:  # EOFError, OSError, RuntimeError (zip), KeyError...: the bytes are cut short or damaged
            reason = "truncated or corrupt"
    raise UserError(f"{path} is not a readable whaleid {what} ({reason}): {advice}")


def convert_checkpoint(src: str | Path, dst: str | Path | None = None) -> Path:
    """An old pickled ``model.pt`` rewritten as a checkpoint at ``dst`` (default: next to it); returns its JSON.

    The old file is read with ``weights_only=True``, so a tampered pickle is refused, never run.
    Its ``extra["preprocess"]`` becomes the checkpoint's ``preprocess`` as it was.
    """
    src = Path(src)
    advice = "it must be a model.pt that `whaleid train` wrote"
    payload = read_saved(src, "model", advice)
    if not isinstance(payload, dict) or payload.get("format") != OLD_FORMAT:
        raise UserError(f"{src} is not a readable whaleid model (not an old whaleid checkpoint): {advice}")
    meta_path = checkpoint_paths(src if dst is None else dst)[0]
    if meta_path.exists():
        raise UserError(f"{meta_path} already exists: delete it or convert to another destination")
    try:
        model = EmbeddingModel(from_dict(ModelConfig, payload["config"], "model"), pretrained=False)
        model.load_state_dict(payload["state_dict"], strict=True)
        extra = dict(payload["extra"])
        preprocess = extra.pop("preprocess", None)
        labels, head = list(payload["labels"]), payload["head"]
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise UserError(
            f"{src} is not a readable whaleid model (its weights do not fit its config): {advice}"
        ) from error
    provenance = {"converted_from": src.name, "converted_from_sha256": _sha256(src.read_bytes())}
    try:
        return save_checkpoint(model, meta_path, labels, head, preprocess, extra, provenance)
    except TypeError as error:  # raised before any file is written
        raise UserError(f"{src} holds values a JSON checkpoint cannot store ({error}): {advice}") from None
