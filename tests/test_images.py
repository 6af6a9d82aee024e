"""open_image / check_image on the tiny synthetic files made by fixtures/make_fixtures.py."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image, ImageFile

from conftest import BROKEN
from whaleid.data.images import ImageError, check_image, open_image


@pytest.fixture
def images(fixtures):
    return fixtures / "images"


def close(pixel, expected, tol=6):
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


@pytest.mark.parametrize("name,reason", sorted(BROKEN.items()))
def test_broken_file_gives_its_reason(images, name, reason):
    """People read these reasons in the problems table; each must say what is wrong."""
    with pytest.raises(ImageError) as err:
        open_image(images / name)
    assert err.value.reason == reason
    assert err.value.path == images / name
    assert isinstance(err.value, ValueError)
    assert check_image(images / name) == reason


def test_folder_is_not_a_photo(images):
    """A folder where a photo should be must be reported, not crash Image.open."""
    assert check_image(images) == "not a file"


def test_truncated_stays_an_error_when_pil_flag_was_switched_on(images, monkeypatch):
    """Another library switching LOAD_TRUNCATED_IMAGES on must not make cut photos load grey-padded."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="truncated JPEG"):
        open_image(images / "truncated.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_check_without_decode_misses_truncation_but_not_missing(images):
    """decode=False is the fast mode: it can only see the file, not its content."""
    assert check_image(images / "truncated.jpg", decode=False) is None
    assert check_image(images / "empty.jpg", decode=False) == "empty file"
    assert check_image(images / "nope.jpg", decode=False) == "missing file"


def test_plain_rgb_is_usable_after_the_file_is_closed(images):
    """open_image closes the file; the image it returns must still hold its pixels."""
    im = open_image(images / "rgb.jpg")
    assert (im.mode, im.size) == ("RGB", (32, 24))
    assert close(im.getpixel((2, 12)), (255, 0, 0))
    assert close(im.getpixel((29, 12)), (0, 0, 255))
    assert np.asarray(im).shape == (24, 32, 3)


def test_exif_orientation_6_is_applied(images):
    """A phone photo stored sideways must reach the model upright (stored red-left, shown red-top)."""
    im = open_image(images / "rotated.jpg")
    assert im.size == (20, 40)
    assert close(im.getpixel((10, 3)), (255, 0, 0))
    assert close(im.getpixel((10, 36)), (0, 0, 255))


def test_cmyk_becomes_rgb_with_the_right_colour(images):
    """CMYK JPEGs come from print workflows; pure red must stay red, not turn cyan."""
    im = open_image(images / "cmyk.jpg")
    assert im.mode == "RGB"
    assert close(im.getpixel((8, 8)), (255, 0, 0))


def test_grayscale_becomes_three_equal_channels(images):
    im = open_image(images / "gray.jpg")
    assert im.mode == "RGB"
    assert close(im.getpixel((8, 8)), (128, 128, 128), tol=2)


def test_16bit_grayscale_is_scaled_not_clipped(images):
    """Clipping I;16 at 255 would turn a half-grey photo white."""
    assert Image.open(images / "gray16.png").mode == "I;16"
    im = open_image(images / "gray16.png")
    assert im.mode == "RGB"
    assert close(im.getpixel((3, 3)), (128, 128, 128), tol=1)


@pytest.mark.parametrize("name,opaque", [("alpha.png", (0, 0, 255)), ("palette.png", (255, 0, 0))])
def test_transparency_is_composited_on_black(images, name, opaque):
    """Transparent pixels hide arbitrary colours (here green); they must become the documented black."""
    im = open_image(images / name)
    assert im.mode == "RGB"
    assert im.getpixel((2, 8)) == (0, 0, 0)
    assert im.getpixel((12, 8)) == opaque


def test_background_can_be_white(images):
    im = open_image(images / "alpha.png", background=(255, 255, 255))
    assert im.getpixel((2, 8)) == (255, 255, 255)
    assert im.getpixel((12, 8)) == (0, 0, 255)


@pytest.mark.parametrize(
    "name", ["rgb.jpg", "rotated.jpg", "cmyk.jpg", "gray.jpg", "gray16.png", "alpha.png", "palette.png"]
)
def test_valid_files_pass_the_check(images, name):
    assert check_image(images / name) is None


def test_fixtures_are_tiny_and_reproducible(images, fixtures, tmp_path):
    """The committed files must stay small, and the script must still make files that fail the same way."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixtures", fixtures / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    made = mod.make(tmp_path)
    committed = {p.name for p in images.iterdir()}
    assert set(made) <= committed
    for name in made:
        assert (images / name).stat().st_size < 8_000, name
        assert check_image(tmp_path / name) == check_image(images / name), name


def test_zeroed_tail_is_found_but_padding_after_the_end_marker_is_fine(images, tmp_path):
    """A zeroed tail decodes without error (black or grey rows); bytes after EOI/IEND are legal and common."""
    for name in ("rgb.jpg", "alpha.png"):
        padded = tmp_path / name
        padded.write_bytes((images / name).read_bytes() + bytes(500))
        assert check_image(padded) is None and open_image(padded).size == open_image(images / name).size
    rgb, noise = (images / "rgb.jpg").read_bytes(), (images / "zero_tail.jpg").read_bytes()
    trailer = tmp_path / "motion.jpg"  # a phone appends a video after EOI: any bytes, FF DA included
    trailer.write_bytes(rgb + b"ftypmp42\xff\xda\x00\x0c" + bytes(range(256)).replace(b"\xd9", b""))
    assert check_image(trailer) is None
    thumb = tmp_path / "thumb.jpg"  # an APP1 thumbnail ends with its own EOI; the zeroed image must still fail
    app1 = b"Exif\x00\x00" + rgb
    thumb.write_bytes(noise[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + noise[2:])
    assert check_image(thumb) == "truncated JPEG (zeroed or cut tail)"
    cut = tmp_path / "cut.png"
    cut.write_bytes((images / "zero_tail.png").read_bytes()[:-700])
    assert check_image(cut).startswith("truncated PNG")
    flipped = tmp_path / "flipped.png"  # one byte changed in the pixel data, the end intact
    data = bytearray((images / "alpha.png").read_bytes())
    data[-20] ^= 0x01
    flipped.write_bytes(bytes(data))
    assert check_image(flipped).startswith("corrupt PNG")


def test_file_system_oddities_are_reasons_not_exceptions(images, tmp_path):
    """Each used to raise (or block) inside a worker thread and stop the whole catalog."""
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block forever
    os.symlink("/dev/null", tmp_path / "null.jpg")
    assert check_image(tmp_path / "pipe.jpg") == "not a regular file"
    assert check_image(tmp_path / "null.jpg") == "not a regular file"
    assert check_image(tmp_path / ("x" * 300 + ".jpg")) == "file name too long"
    assert check_image(tmp_path / "nul\x00.jpg") == "control character in file name"
    assert check_image(tmp_path / ("x" * 300 + ".jpg"), decode=False) == "file name too long"
    with pytest.raises(ImageError, match="file name too long"):
        open_image(tmp_path / ("x" * 300 + ".jpg"))


@pytest.mark.data
def test_every_real_photo_passes(shared_data):
    """The end-marker and checksum checks must not reject any real photo (2,836 in ../shared/data)."""
    photos = [p for p in shared_data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    assert len(photos) > 2800
    failed = {str(p): r for p in photos if (r := check_image(p))}
    assert failed == {}
