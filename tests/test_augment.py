"""The photo dataset: unreadable photos become None; per-photo crop choices are drawn by weight."""

import random

import torch

from conftest import BROKEN
from whaleid.model.augment import PhotoDataset, collate_skipping


def test_choices_are_drawn_by_weight(fixtures):
    rgb, gray = str(fixtures / "images" / "rgb.jpg"), str(fixtures / "images" / "gray.jpg")  # 32x24 and 16x16
    dataset = PhotoDataset(
        [rgb, rgb], transform=lambda im: im.size, targets=[3, 4], choices=[((rgb, 0.8), (gray, 0.2)), ()]
    )
    random.seed(0)
    sizes = [dataset[0][0] for _ in range(2000)]
    assert abs(sizes.count((16, 16)) / 2000 - 0.2) < 0.03
    assert dataset[1] == ((32, 24), 4, 1)  # no choices: the photo's own path


def test_unreadable_photo_is_skipped_in_the_batch(fixtures):
    broken = str(fixtures / "images" / next(iter(BROKEN)))
    dataset = PhotoDataset([broken, str(fixtures / "images" / "rgb.jpg")], transform=lambda im: torch.zeros(1))
    assert dataset[0] is None
    images, targets, indices = collate_skipping([dataset[0], dataset[1]])
    assert indices.tolist() == [1] and targets.tolist() == [-1]


def test_grey_views_have_equal_channels_and_colour_views_do_not(fixtures):
    from whaleid.data.images import open_image
    from whaleid.model.augment import train_transform

    photo = open_image(fixtures / "images" / "rgb.jpg")
    grey = train_transform(16, (0.5,) * 3, (0.5,) * 3, jitter=0.0, cutout=0.0, grayscale=1.0)(photo)
    colour = train_transform(16, (0.5,) * 3, (0.5,) * 3, jitter=0.0, cutout=0.0, grayscale=0.0)(photo)
    torch.testing.assert_close(grey[0], grey[1])
    torch.testing.assert_close(grey[1], grey[2])
    assert (colour[0] - colour[2]).abs().max() > 0.1
