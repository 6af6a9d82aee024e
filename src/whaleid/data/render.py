"""Synthetic sea photos of one dorsal fin: everything a photographer cannot control.

Fin grey, sea colour and waves, pose, light, sun glare, splash, blur, JPEG noise vary per photo
and are deliberately *not* tied to the individual (:class:`~whaleid.data.fins.FinIdentity`), so a
model can only match individuals by learning the shape, as on real Happywhale photos. All
randomness flows from the ``rng`` passed in: the same seed gives the same bytes.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from whaleid.data.fins import (
    CANONICAL_POSE,
    WIDTH_FRAC,
    FinIdentity,
    fill_polygons,
    fin_extent,
    fin_outline,
    pose_matrix,
    stroke,
    to_pixels,
)

__all__ = ["FinPhoto", "render_fin", "render_fin_photo"]


@dataclass(frozen=True)
class FinPhoto:
    """A rendered photo plus the ground truth the tests need to check that identity survived."""

    image: Image.Image
    fin_mask: np.ndarray  # float32 (size, size): fin above the waterline (before splash/blur)
    matrix: np.ndarray  # 3x3 fin coordinates -> pixels


class _Jitter:
    """Shrinks every random draw toward a neutral default, so that one knob (variation=0) gives a
    clean canonical photo of the fin, for checks and illustrations."""

    def __init__(self, rng: np.random.Generator, variation: float) -> None:
        self.rng = rng
        self.k = float(np.clip(variation, 0.0, 1.0))

    def uniform(self, lo: float, hi: float, default: float) -> float:
        return default + self.k * (float(self.rng.uniform(lo, hi)) - default)

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p * self.k)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, cells_y: int | None = None) -> np.ndarray:
    """Band-limited noise in about [-1, 1]: cheap large-scale texture (cubic upsampling of a grid);
    cells_y > cells gives horizontally stretched texture, like light on distant water."""
    cy = cells_y or cells
    grid = rng.standard_normal((cy + 3, cells + 3)).astype(np.float32)
    to_grid = np.array([[cells / size, 0.0, 1.0], [0.0, cy / size, 1.0]], np.float32)
    out = cv2.warpAffine(
        grid, to_grid, (size, size), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
    )
    return out / 1.5


_SEA_PALETTE = np.array(
    [
        [0.08, 0.22, 0.38],  # deep blue
        [0.10, 0.32, 0.38],  # teal
        [0.30, 0.38, 0.45],  # overcast grey-blue
        [0.16, 0.30, 0.26],  # green coastal water
        [0.05, 0.15, 0.28],  # dark navy
        [0.42, 0.50, 0.55],  # hazy, bright
    ],
    dtype=np.float32,
)


def _sea(j: _Jitter, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Sea surface: colour gradient, perspective wave bands, sparkle; nothing individual-specific."""
    rng = j.rng
    w = rng.dirichlet(np.full(len(_SEA_PALETTE), 0.6)).astype(np.float32)
    base = w @ _SEA_PALETTE * rng.uniform(0.8, 1.2, 3).astype(np.float32)
    base = (1 - j.k) * np.array([0.12, 0.28, 0.38], np.float32) + j.k * base
    top_light = j.uniform(1.0, 1.5, 1.25)  # farther water reflects more sky
    y = yy / size
    x = xx / size
    grad = top_light + (1.0 - top_light) * y
    img = grad[..., None] * base

    # Waves: bands mostly parallel to the horizon, compressed toward the top (farther away).
    depth = np.log1p(4.0 * y) / math.log(5.0)
    warp = _smooth_noise(rng, size, 3) * 1.5
    tex = np.zeros_like(y)
    n_waves = 5
    for _ in range(n_waves):
        ang = rng.normal(0.0, 0.35)
        freq = rng.uniform(10, 35)
        phase = rng.uniform(0, 2 * math.pi)
        tex += np.cos(2 * math.pi * freq * (math.cos(ang) * depth + math.sin(ang) * x * 0.6) + phase + warp)
    tex /= math.sqrt(n_waves / 2)
    tex += 0.5 * _smooth_noise(rng, size, max(3, size // 40), max(6, size // 8))
    amp = j.uniform(0.05, 0.16, 0.08)
    img = img * (1.0 + amp * tex)[..., None]

    # Sun sparkle on wave crests.
    sparkle_thr = rng.uniform(1.6, 2.4)
    sparkle = np.clip(tex - sparkle_thr, 0, None) * j.uniform(0.0, 0.8, 0.0)
    img = img + sparkle[..., None] * np.array([1.0, 0.97, 0.9], np.float32)
    return img


def _marking_mask(identity: FinIdentity, m: np.ndarray, scale: float, size: int) -> np.ndarray:
    """Pale marks drawn in photo space at their fixed fin coordinates."""
    mask = np.zeros((size, size), np.uint8)
    for mk in identity.markings:
        c, s = math.cos(mk.angle), math.sin(mk.angle)
        rot = np.array([[c, -s], [s, c]])
        val = int(round(255 * mk.strength))
        if mk.kind == "spot":
            t = np.linspace(0, 2 * math.pi, 20, endpoint=False)
            pts = np.stack([mk.size * np.cos(t), mk.size * mk.shape * np.sin(t)], axis=1) @ rot.T
            fill_polygons(mask, [to_pixels(m, pts + [mk.u, mk.v])], val)
            continue
        t = np.linspace(-0.5, 0.5, 12)
        width = 0.022 if mk.kind == "scar" else 0.014
        thick = max(1, int(round(width * scale)))
        spacing = 0.045
        for k in range(mk.count):
            off = (k - (mk.count - 1) / 2) * spacing
            # Tooth rakes are never a neat barcode: lengths and starts differ line to line (derived
            # from the mark's own parameters, so they stay fixed for the individual).
            wobble = ((k + 1) * 0.618034 + 7.0 * mk.u + 3.0 * mk.v) % 1.0 if mk.count > 1 else 0.5
            tk = t * (0.65 + 0.5 * wobble) + 0.3 * (wobble - 0.5)
            line = np.stack([tk * mk.size, mk.shape * mk.size * (0.25 - tk**2) + off], axis=1) @ rot.T
            stroke(mask, to_pixels(m, line + [mk.u, mk.v]), val, thick)
    return mask.astype(np.float32) / 255.0


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


@dataclass(frozen=True)
class _Shot:
    """The photo being rendered: every step draws from its jitter and places things by the fin's pose."""

    j: _Jitter
    identity: FinIdentity
    size: int
    yy: np.ndarray  # pixel row of every pixel
    xx: np.ndarray  # pixel column of every pixel
    m: np.ndarray  # 3x3 fin coordinates -> pixels
    scale: float  # pixels per fin height
    center_x: float  # fin centre, as a fraction of the photo's width
    base_y: float  # fin base, as a fraction of the photo's height
    aspect: float  # vertical stretch of the oblique view


def _frame_shot(identity: FinIdentity, j: _Jitter, size: int) -> _Shot:
    """Pose: where the fin sits, how big, leaning/rolled, seen slightly obliquely."""
    width_frac = j.uniform(*WIDTH_FRAC, CANONICAL_POSE["width_frac"])
    angle = j.uniform(-10.0, 10.0, 0.0)
    shear = j.uniform(-0.22, 0.22, 0.0)
    aspect = j.uniform(0.85, 1.15, 1.0)
    margin = 0.5 * width_frac + 0.06
    center_x = j.uniform(margin, 1.0 - margin, 0.5)
    base_y = j.uniform(0.62, 0.8, CANONICAL_POSE["base_y"])
    m = pose_matrix(identity, size, width_frac, center_x, base_y, angle, shear, aspect)
    x0, x1 = fin_extent(identity)
    scale = width_frac * size / (x1 - x0)
    yy, xx = _pixel_grid(size)
    return _Shot(j, identity, size, yy, xx, m, scale, center_x, base_y, aspect)


def _waterline(shot: _Shot) -> tuple[np.ndarray, np.ndarray]:
    """Waterline height per pixel column (pixels, y down: roughly horizontal, with a gentle swell) and
    how much of each pixel lies above it, so that the water can hide the fin's base."""
    j, size, xx = shot.j, shot.size, shot.xx
    water_v = j.uniform(-0.2, 0.06, -0.1)  # in fin heights below/above the fin base
    water_tilt = j.uniform(-0.04, 0.04, 0.0)
    swell = j.uniform(0.0, 0.015, 0.0) * size
    wl_y = (
        shot.base_y * size
        - water_v * shot.scale * shot.aspect
        + water_tilt * (xx[0] - shot.center_x * size)
        + swell * np.sin(xx[0] / size * j.rng.uniform(6, 14) + j.rng.uniform(0, 2 * math.pi))
    )
    return wl_y, np.clip(wl_y[None, :] - shot.yy + 0.5, 0.0, 1.0)


def _animal(shot: _Shot) -> tuple[np.ndarray, np.ndarray]:
    """Fin mask (uint8) and fin-plus-back coverage (float 0..1): the back's size is per photo (how high
    the dolphin surfaces), so it must not carry identity."""
    j, identity, size = shot.j, shot.identity, shot.size
    fin = np.zeros((size, size), np.uint8)
    fill_polygons(fin, [to_pixels(shot.m, fin_outline(identity))])
    body = np.zeros((size, size), np.uint8)
    # The back: a gentle arch, wide enough to hold the whole fin base, sinking into the water at both
    # sides (a parabola, so that it never ends in a visible lobe above the surface).
    left, right = -identity.lead_fillet, identity.base_width + identity.trail_fillet
    cx_body = 0.5 * (left + right) + j.uniform(-0.15, 0.15, 0.0) * (right - left)
    curve = j.uniform(0.03, 0.09, 0.06)
    reach = max(cx_body - left, right - cx_body)
    top = -0.02 + curve * reach**2 + j.uniform(0.0, 0.04, 0.02)
    ub = cx_body + np.linspace(-6.0, 6.0, 61)
    arch = np.stack([ub, top - curve * (ub - cx_body) ** 2], axis=1)
    fill_polygons(body, [to_pixels(shot.m, arch)])
    return fin, np.maximum(fin, body).astype(np.float32) / 255.0


def _skin(shot: _Shot, img: np.ndarray, fin: np.ndarray) -> np.ndarray:
    """Skin colour per pixel: grey per photo (light and wetness), lit from above, sheen along the top,
    mottled; none of it is tied to the individual."""
    j, size, yy, xx = shot.j, shot.size, shot.yy, shot.xx
    minv = np.linalg.inv(shot.m).tolist()  # python floats keep the arrays float32
    v = minv[1][0] * xx + minv[1][1] * yy + minv[1][2]
    u = minv[0][0] * xx + minv[0][1] * yy + minv[0][2]
    grey = j.uniform(0.14, 0.5, 0.3)
    if j.k > 0:  # photos kept in a catalogue show the fin: keep it apart from the water behind it
        behind = float(np.mean(cv2.mean(img, mask=(fin > 127).astype(np.uint8))[:3]))
        if abs(grey - behind) < 0.1:
            grey = behind - 0.1 if behind > 0.24 else behind + 0.1
    tint = np.array([0.95 + j.uniform(-0.04, 0.04, 0.0), 1.0, 1.05 + j.uniform(-0.04, 0.06, 0.0)], np.float32)
    light_u = j.uniform(-0.15, 0.15, 0.0)
    x0, x1 = fin_extent(shot.identity)
    shade = grey * (0.78 + 0.4 * np.clip(v, -0.3, 1.0)) * (1.0 + light_u * (u - 0.5 * (x0 + x1)))
    shade = shade * (1.0 + j.uniform(0.03, 0.1, 0.0) * _smooth_noise(j.rng, size, 8))
    return shade[..., None] * tint


def _add_marks(shot: _Shot, img: np.ndarray, fin_f: np.ndarray, above: np.ndarray) -> np.ndarray:
    """Pale marks: stay at their fin coordinates (identity), brighten toward a light grey."""
    j, size = shot.j, shot.size
    marks = _marking_mask(shot.identity, shot.m, shot.scale, size)
    marks = cv2.GaussianBlur(marks, (0, 0), max(0.4, 0.004 * size)) * fin_f * above
    mark_level = j.uniform(0.55, 0.85, 0.75)
    return img + (marks * j.uniform(0.7, 1.0, 0.9))[..., None] * (mark_level - img)


def _splash(shot: _Shot, img: np.ndarray, wl_y: np.ndarray) -> np.ndarray:
    """Sometimes splash / foam hides the base of the fin, as on many real photos."""
    if not shot.j.chance(0.35):
        return img
    rng, size, yy, xx = shot.j.rng, shot.size, shot.yy, shot.xx
    fx = float(to_pixels(shot.m, np.array([[rng.uniform(0, shot.identity.base_width), 0.0]]))[0, 0])
    ry_px = rng.uniform(0.08, 0.3) * shot.scale
    rx_px = rng.uniform(0.4, 1.0) * shot.scale
    rise = wl_y[None, :] - yy  # thrown up above the surface, spread thinly just below it
    dy = np.where(rise > 0, rise / ry_px, rise / (0.35 * ry_px))
    region = np.exp(-(((xx - fx) / rx_px) ** 2) - dy**2)
    foam_tex = 0.6 * _smooth_noise(rng, size, max(6, size // 10)) + 0.4 * _smooth_noise(rng, size, 4)
    foam = np.clip(region * 1.8 + foam_tex - 0.9, 0.0, 1.0) * np.clip(3.0 * region, 0.0, 1.0)
    return img + foam[..., None] * (np.array([0.88, 0.92, 0.95], np.float32) - img)


def _sun_glare(shot: _Shot, img: np.ndarray) -> np.ndarray:
    """Sun glare: large soft bright blobs (screen blend) that may wash out part of the fin."""
    j, rng, size, yy, xx = shot.j, shot.j.rng, shot.size, shot.yy, shot.xx
    for _ in range(int(rng.integers(0, 3))):
        if not j.chance(0.5):
            continue
        gx, gy = rng.uniform(0, size, 2).tolist()
        gr = rng.uniform(0.05, 0.25) * size
        g = np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * gr * gr)) * rng.uniform(0.15, 0.45)
        img = 1.0 - (1.0 - img) * (1.0 - g[..., None] * np.array([1.0, 0.96, 0.85], np.float32))
    return img


def _exposure(j: _Jitter, img: np.ndarray) -> np.ndarray:
    """Camera / exposure: brightness, contrast, colour temperature, gamma differ from photo to photo."""
    brightness = j.uniform(0.7, 1.3, 1.0)
    contrast = j.uniform(0.75, 1.25, 1.0)
    temp = j.uniform(-0.1, 0.1, 0.0)
    gamma = j.uniform(0.8, 1.25, 1.0)
    mean = float(img.mean())
    img = (img - mean) * contrast + mean
    img = img * brightness * np.array([1 + temp, 1.0, 1 - temp], np.float32)
    return np.clip(img, 0.0, 1.0) ** gamma


def _optics(j: _Jitter, img: np.ndarray, size: int) -> np.ndarray:
    """Optics: focus blur, sometimes motion blur, sensor noise; they soften the nicks a model must find."""
    rng = j.rng
    sigma = j.uniform(0.0, 1.1, 0.0) * size / 256
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    if j.chance(0.15):
        length = max(3, int(round(rng.uniform(2, 6) * size / 256)) | 1)
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        rmat = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rmat, (length, length))
        img = cv2.filter2D(img, -1, kernel / max(kernel.sum(), 1e-6))
    noise_sigma = j.uniform(0.0, 0.025, 0.0)
    if noise_sigma > 0:
        # Mostly luminance noise, as after a camera's denoiser; cheaper than per-channel noise too.
        img = img + rng.standard_normal((size, size, 1), dtype=np.float32) * noise_sigma
    return img


def _to_image(j: _Jitter, img: np.ndarray) -> Image.Image:
    """8-bit RGB with JPEG artefacts from whatever camera/phone/upload chain the photo went through."""
    out = Image.fromarray((np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), "RGB")
    quality = int(round(j.uniform(40, 95, 95)))
    if j.k > 0:
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out = Image.open(buf).convert("RGB")
    return out


def render_fin_photo(
    identity: FinIdentity, rng: np.random.Generator, size: int = 256, variation: float = 1.0
) -> FinPhoto:
    """One photo with its ground truth; `variation` in [0, 1] scales everything that is not identity.

    The steps run in a fixed order, each drawing from `rng` in turn: reordering them changes every photo.
    """
    j = _Jitter(rng, variation)
    shot = _frame_shot(identity, j, size)
    img = _sea(j, size, shot.yy, shot.xx)
    wl_y, above = _waterline(shot)
    fin, animal = _animal(shot)
    fin_f = fin.astype(np.float32) / 255.0

    # Submerged body darkens the water just below the surface.
    under = cv2.GaussianBlur(animal, (0, 0), max(1.0, 0.03 * size)) * (1.0 - above)
    img = img * (1.0 - j.uniform(0.1, 0.35, 0.2) * under)[..., None]

    skin = _skin(shot, img, fin)
    alpha = animal * above
    img = img * (1.0 - alpha[..., None]) + skin * alpha[..., None]

    img = _add_marks(shot, img, fin_f, above)
    img = _splash(shot, img, wl_y)
    img = _sun_glare(shot, img)
    img = _exposure(j, img)
    img = _optics(j, img, size)
    return FinPhoto(image=_to_image(j, img), fin_mask=fin_f * above, matrix=shot.m)


def render_fin(identity: FinIdentity, rng: np.random.Generator, size: int = 256, variation: float = 1.0) -> Image.Image:
    """One RGB photo of this individual; all non-identity conditions are drawn from `rng`."""
    return render_fin_photo(identity, rng, size, variation).image
