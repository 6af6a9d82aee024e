"""What a model sees of a photo: train/eval transforms and the photo dataset."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from whaleid.data.images import ImageError, open_image


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((size, size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def train_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    hflip: bool = False,
    rotation: float = 10.0,
    crop_scale: tuple[float, float] = (0.7, 1.0),
    jitter: float = 0.2,
    cutout: float = 0.25,
    grayscale: float = 0.0,
) -> Callable:
    """The Happywhale notebooks' augmentations.

    Horizontal flip is off by default: it turns a left-side fin or a callosity
    pattern into another animal's, so it is a per-dataset choice. ``grayscale`` (a
    probability) hides the colour of the sea and the light, which differ by survey
    day rather than by animal.
    """
    # Geometry and colour run on the PIL image, before it becomes a tensor: PIL's C code does them
    # in half the time of the uint8 tensor ops (hue jitter above all), which on a 2-core machine
    # is time taken from the model (docs/benchmarks.md, training throughput).
    steps = [
        v2.RandomResizedCrop((size, size), scale=crop_scale, ratio=(0.85, 1.18), antialias=True),
        v2.RandomAffine(degrees=rotation),
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter / 4))
    if grayscale:
        steps.append(v2.RandomGrayscale(grayscale))
    steps += [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ]
    if cutout:
        steps.append(v2.RandomErasing(p=cutout, scale=(0.02, 0.15), value=0))
    return v2.Compose(steps)


class PhotoDataset(Dataset):
    """Photos by path, with integer targets; an unreadable photo yields None (see `collate_skipping`).

    ``choices`` (one per photo, ``(path, weight)`` pairs, e.g. body / fin / full-photo
    crops) makes each visit draw one of the photo's crops, so training sees them mixed.
    """

    def __init__(
        self,
        paths: Sequence[str],
        transform: Callable,
        targets: Sequence[int] | None = None,
        choices: Sequence[Sequence[tuple[str, float]]] | None = None,
    ):
        self.paths = list(paths)
        self.transform = transform
        self.targets = list(targets) if targets is not None else [-1] * len(self.paths)
        self.choices = list(choices) if choices is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> str:
        options = self.choices[i] if self.choices is not None else None
        if not options:
            return self.paths[i]
        files, weights = zip(*options)
        return random.choices(files, weights)[0]  # torch seeds `random` per worker and epoch

    def __getitem__(self, i: int):
        try:
            image = open_image(self.path(i))
        except ImageError:
            return None
        return self.transform(image), self.targets[i], i


def collate_skipping(batch: list):
    """Drop photos that failed to open so one bad file never stops a long job."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    images, targets, indices = zip(*kept)
    return torch.stack(images), torch.as_tensor(targets), torch.as_tensor(indices)
