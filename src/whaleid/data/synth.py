"""Synthetic sea photos of dolphin dorsal fins, so the demo and the end-to-end tests run without real data.

Identity lives only in the fin's *shape and marks*: a trailing-edge nick pattern (the feature real
photo-ID catalogues rely on), a few light scars/spots at fixed places on the fin, and the fin's outline.
Everything a photographer cannot control varies per photo and is deliberately *not* tied to the
individual: fin grey, sea colour and waves, pose, light, sun glare, splash, blur, JPEG noise.  So a model
can only match individuals by learning the shape, as on real Happywhale photos.

All randomness flows from explicit seeds: the same seed gives the same bytes.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from whaleid.errors import UserError

__all__ = [
    "Nick",
    "Marking",
    "FinIdentity",
    "FinPhoto",
    "render_fin",
    "render_fin_photo",
    "fin_outline",
    "fin_silhouette",
    "canonical_matrix",
    "WIDTH_FRAC",
    "make_catalog",
]

_SUB = 16  # cv2 fixed-point sub-pixel factor (shift=4): sub-pixel accurate, anti-aliased edges
_SHIFT = 4


# ----------------------------------------------------------------------------------------------------
# Identity
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Nick:
    """A notch cut into the trailing edge; its place, depth and width are what identify the animal."""

    position: float  # along the trailing edge by arc length: 0 = tip, 1 = base
    depth: float  # in fin heights, measured inward from the edge
    width: float  # half-width, as a fraction of the trailing edge's length
    sharpness: float  # profile exponent: 1 = V notch, 2 = round bite, 4+ = square-cut


@dataclass(frozen=True)
class Marking:
    """A pale mark at a fixed place on the fin (healed wound, rake, spot): secondary identity cue."""

    kind: str  # "spot" | "scar" | "rake"
    u: float  # fin coordinates: u forward->back, v base->tip, both in fin heights
    v: float
    size: float  # spot radius or line length, in fin heights
    angle: float  # radians
    shape: float  # spot: aspect ratio; scar/rake: curvature (bend of the line)
    strength: float  # opacity of the pale mark, 0..1
    count: int = 1  # rake: number of parallel lines


@dataclass(frozen=True)
class FinIdentity:
    """Everything that stays the same across photos of one individual (and nothing that does not)."""

    base_width: float  # base length, in fin heights (the fin height is the unit)
    tip_x: float  # horizontal position of the tip over the base: sweep of the fin
    lead_x: float  # leading-edge Bezier control (fraction of tip_x): how early the edge bends back
    lead_y: float  # leading-edge Bezier control height: bulge of the leading edge
    falcate: float  # trailing-edge concavity: sickle shape
    tip_round: float  # fraction of each edge replaced by the rounded tip
    tip_cut: float  # fraction of the height missing at the tip (0 = intact)
    lead_fillet: float  # how far the leading edge blends forward into the back
    trail_fillet: float  # how far the trailing edge blends backward into the back
    nicks: tuple[Nick, ...]
    markings: tuple[Marking, ...]

    @classmethod
    def random(cls, rng: np.random.Generator) -> FinIdentity:
        """Draw one individual; nicks are spaced apart so each one stays resolvable at 128 px."""
        base_width = rng.uniform(1.0, 1.5)
        tip_x = base_width * rng.uniform(0.95, 1.25)
        tip_cut = float(rng.uniform(0.05, 0.12)) if rng.random() < 0.2 else 0.0

        n_nicks = int(rng.choice([2, 3, 3, 4, 4, 5]))
        positions: list[float] = []
        for _ in range(200):
            if len(positions) == n_nicks:
                break
            p = rng.uniform(0.2 if tip_cut else 0.08, 0.75)  # not in the part of the tip that is gone
            if all(abs(p - q) > 0.12 for q in positions):
                positions.append(float(p))
        nicks = tuple(
            Nick(
                position=p,
                depth=float(rng.uniform(0.08, 0.16)),
                width=float(rng.uniform(0.035, 0.075)),
                sharpness=float(rng.choice([1.0, 1.3, 1.6, 2.0, 2.0, 3.0])),
            )
            for p in sorted(positions)
        )

        identity = cls(
            base_width=float(base_width),
            tip_x=float(tip_x),
            lead_x=float(rng.uniform(0.02, 0.3)),
            lead_y=float(rng.uniform(0.55, 0.9)),
            falcate=float(rng.uniform(0.05, 0.3)),
            tip_round=float(rng.uniform(0.03, 0.1)),
            tip_cut=tip_cut,
            lead_fillet=float(rng.uniform(0.15, 0.35)),
            trail_fillet=float(rng.uniform(0.15, 0.4)),
            nicks=nicks,
            markings=(),
        )
        markings = tuple(_random_marking(identity, rng) for _ in range(int(rng.integers(1, 5))))
        return replace(identity, markings=markings)


def _random_marking(identity: FinIdentity, rng: np.random.Generator) -> Marking:
    """Place a mark well inside the fin, so that it survives any crop by the waterline."""
    outline = fin_outline(identity).astype(np.float32)
    kind = str(rng.choice(["spot", "spot", "scar", "rake"]))
    u = v = 0.0
    for _ in range(100):
        v = rng.uniform(0.2, 0.75)
        u = rng.uniform(-0.1, identity.base_width + 0.2)
        if cv2.pointPolygonTest(outline, (float(u), float(v)), True) > 0.07:
            break
    if kind == "spot":
        size, shape = rng.uniform(0.03, 0.06), rng.uniform(0.5, 1.0)
    elif kind == "scar":
        size, shape = rng.uniform(0.15, 0.35), rng.uniform(-0.4, 0.4)
    else:
        size, shape = rng.uniform(0.12, 0.25), rng.uniform(-0.2, 0.2)
    return Marking(
        kind=kind,
        u=float(u),
        v=float(v),
        size=float(size),
        angle=float(rng.uniform(0, math.pi)),
        shape=float(shape),
        strength=float(rng.uniform(0.45, 0.8)),
        count=int(rng.integers(2, 5)) if kind == "rake" else 1,
    )


# ----------------------------------------------------------------------------------------------------
# Geometry (fin coordinates: x forward -> back, y up, fin height = 1, base front at the origin)
# ----------------------------------------------------------------------------------------------------


def _bezier(points: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Bezier curve of any degree, vectorised over t."""
    n = len(points) - 1
    coeffs = np.stack([math.comb(n, k) * (1 - t) ** (n - k) * t**k for k in range(n + 1)], axis=1)
    return coeffs @ points


def _trailing_profile(nicks: tuple[Nick, ...], s: np.ndarray) -> np.ndarray:
    """Inward displacement along the trailing edge: superellipse notches, deepest wins where they touch."""
    disp = np.zeros_like(s)
    for nick in nicks:
        x = np.abs(s - nick.position) / nick.width
        inside = x < 1
        bite = np.zeros_like(s)
        bite[inside] = nick.depth * (1 - x[inside] ** nick.sharpness) ** (1 / nick.sharpness)
        disp = np.maximum(disp, bite)
    return disp


@functools.lru_cache(maxsize=1024)
def fin_outline(identity: FinIdentity, n: int = 600) -> np.ndarray:
    """Closed fin polygon (N, 2) in fin coordinates; the part below y=0 is hidden by the back/water."""
    tip = np.array([identity.tip_x, 1.0])
    r = identity.tip_round

    lead_ctrl = np.array(
        [
            [-identity.lead_fillet, -0.04],
            [-0.4 * identity.lead_fillet, -0.02],
            [identity.lead_x * identity.tip_x, identity.lead_y],
            tip,
        ]
    )
    lead = _bezier(lead_ctrl, np.linspace(0.0, 1.0 - r, n // 3))

    # Trailing edge: leaves the tip downward and forward (hooked tip), then sweeps back to blend
    # into the back: the concave "falcate" edge where nicks show best.
    base_rear = np.array([identity.base_width + identity.trail_fillet, -0.04])
    trail_ctrl = np.array(
        [
            tip,
            tip + np.array([-0.1 - identity.falcate, -0.45]),
            [identity.base_width - 0.6 * identity.falcate, 0.2],
            base_rear,
        ]
    )
    trail = _bezier(trail_ctrl, np.linspace(r, 1.0, n))

    # Rounded tip: a quadratic from the end of the leading edge to the start of the trailing edge.
    rounded = _bezier(np.stack([lead[-1], tip, trail[0]]), np.linspace(0, 1, 24)[1:-1])

    # Nicks: displace the trailing edge inward along its local normal, by arc-length position.
    seg = np.linalg.norm(np.diff(trail, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)]) / seg.sum()
    tangent = np.gradient(trail, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    normal_in = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    # Near the hooked tip the fin is thin: a nick may take at most half of it, never cut through.
    thickness = np.sqrt(((trail[:, None, :] - lead[None, ::2, :]) ** 2).sum(-1)).min(axis=1)
    disp = np.minimum(_trailing_profile(identity.nicks, s), 0.5 * thickness)
    trail = trail + disp[:, None] * normal_in

    bottom = np.array([[base_rear[0], -0.6], [-identity.lead_fillet, -0.6]])
    outline = np.concatenate([lead, rounded, trail, bottom])
    if identity.tip_cut > 0:  # old injury: the tip is sliced off
        outline[:, 1] = np.minimum(outline[:, 1], 1.0 - identity.tip_cut)
    outline.setflags(write=False)
    return outline


@functools.lru_cache(maxsize=1024)
def _fin_extent(identity: FinIdentity) -> tuple[float, float]:
    """Horizontal extent of the fin proper (not the thin fillets into the back), to frame it.
    Measured without nicks, so that a nick never changes the framing of the rest of the fin."""
    pts = fin_outline(replace(identity, nicks=(), markings=()))
    above = pts[pts[:, 1] > 0.1]
    return float(above[:, 0].min()), float(above[:, 0].max())


def _pose_matrix(
    identity: FinIdentity,
    size: int,
    width_frac: float,
    center_x: float,
    base_y: float,
    angle_deg: float,
    shear: float,
    aspect: float,
) -> np.ndarray:
    """3x3 matrix from fin coordinates to pixels (y down)."""
    x0, x1 = _fin_extent(identity)
    scale = width_frac * size / (x1 - x0)
    uc = 0.5 * (x0 + x1)
    to_center = np.array([[1, 0, -uc], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    flip_scale = np.array([[scale, 0, 0], [0, -scale * aspect, 0], [0, 0, 1]], dtype=np.float64)
    shear_m = np.array([[1, -shear, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    place = np.array([[1, 0, center_x * size], [0, 1, base_y * size], [0, 0, 1]], dtype=np.float64)
    return place @ rot @ shear_m @ flip_scale @ to_center


# Fraction of the photo's width taken by the fin proper (fillets into the back add up to ~30% more):
# large enough that nicks stay a few pixels deep at 128 px, small enough to leave sea around the fin.
WIDTH_FRAC = (0.3, 0.5)

_CANONICAL_POSE = dict(width_frac=0.42, center_x=0.5, base_y=0.72, angle_deg=0.0, shear=0.0, aspect=1.0)


def canonical_matrix(identity: FinIdentity, size: int) -> np.ndarray:
    """The pose used when variation is switched off: fixed framing, useful to compare shapes."""
    return _pose_matrix(identity, size, **_CANONICAL_POSE)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:2, :2].T + m[:2, 2]


def _fill(mask: np.ndarray, polys: list[np.ndarray], value: int = 255) -> None:
    cv2.fillPoly(mask, [np.round(p * _SUB).astype(np.int32) for p in polys], value, cv2.LINE_AA, _SHIFT)


def fin_silhouette(identity: FinIdentity, size: int = 128) -> np.ndarray:
    """Fin mask (float 0..1) at the canonical pose, without back or water: the pure identity shape."""
    mask = np.zeros((size, size), np.uint8)
    _fill(mask, [_apply(canonical_matrix(identity, size), fin_outline(identity))])
    mask[int(round(_CANONICAL_POSE["base_y"] * size)) :] = 0  # the base line: below it is the back
    return mask.astype(np.float32) / 255.0


# ----------------------------------------------------------------------------------------------------
# Photo rendering
# ----------------------------------------------------------------------------------------------------


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
            _fill(mask, [_apply(m, pts + [mk.u, mk.v])], val)
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
            pix = np.round(_apply(m, line + [mk.u, mk.v]) * _SUB).astype(np.int32)
            cv2.polylines(mask, [pix], False, val, thick, cv2.LINE_AA, _SHIFT)
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
    width_frac = j.uniform(*WIDTH_FRAC, _CANONICAL_POSE["width_frac"])
    angle = j.uniform(-10.0, 10.0, 0.0)
    shear = j.uniform(-0.22, 0.22, 0.0)
    aspect = j.uniform(0.85, 1.15, 1.0)
    margin = 0.5 * width_frac + 0.06
    center_x = j.uniform(margin, 1.0 - margin, 0.5)
    base_y = j.uniform(0.62, 0.8, _CANONICAL_POSE["base_y"])
    m = _pose_matrix(identity, size, width_frac, center_x, base_y, angle, shear, aspect)
    x0, x1 = _fin_extent(identity)
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
    _fill(fin, [_apply(shot.m, fin_outline(identity))])
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
    _fill(body, [_apply(shot.m, arch)])
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
    x0, x1 = _fin_extent(shot.identity)
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
    fx = float(_apply(shot.m, np.array([[rng.uniform(0, shot.identity.base_width), 0.0]]))[0, 0])
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


# ----------------------------------------------------------------------------------------------------
# Catalog
# ----------------------------------------------------------------------------------------------------


def _photo_count(rng: np.random.Generator, photos_per_individual: int | tuple[int, int]) -> int:
    """Skewed toward few photos, like real catalogues where many animals are seen once or twice."""
    if isinstance(photos_per_individual, (int, np.integer)):
        return int(photos_per_individual)
    lo, hi = (int(x) for x in photos_per_individual)
    return lo + min(hi - lo, int((hi - lo + 1) * rng.random() ** 1.8))


def make_catalog(
    out_dir: str | Path,
    n_individuals: int = 40,
    photos_per_individual: int | tuple[int, int] = (2, 8),
    size: int = 256,
    seed: int = 0,
    species: str = "bottlenose_dolphin",
    progress: bool = False,
    variation: float = 1.0,
) -> Path:
    """Write a Happywhale-style catalog (images/*.jpg + train.csv) and return the CSV path.

    Each individual and each photo has its own seed stream derived from (seed, index), so a smaller
    catalog is a prefix of a larger one with the same seed.  File names are opaque hashes, as in
    Happywhale, so nothing about identity can leak through them. Lower `variation` gives easier
    photos (steadier pose and light), for runs that must learn in seconds.
    """
    lo, hi = (
        (photos_per_individual,) * 2 if isinstance(photos_per_individual, (int, np.integer)) else photos_per_individual
    )
    if not 1 <= lo <= hi:
        raise UserError(f"photos per individual must satisfy 1 <= min <= max, got {lo} and {hi}")
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(max(n_individuals - 1, 0))))

    jobs: list[tuple[int, int, FinIdentity]] = []
    for i in range(n_individuals):
        identity = FinIdentity.random(np.random.default_rng([seed, 0, i]))
        count = _photo_count(np.random.default_rng([seed, 1, i]), photos_per_individual)
        jobs.extend((i, k, identity) for k in range(count))

    iterator = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="synth photos", unit="img")

    rows: list[tuple[str, str, str]] = []
    for i, k, identity in iterator:
        rng = np.random.default_rng([seed, 2, i, k])
        name = hashlib.sha1(f"whaleid-synth:{seed}:{i}:{k}".encode()).hexdigest()[:14] + ".jpg"
        render_fin(identity, rng, size, variation).save(images_dir / name, format="JPEG", quality=90)
        rows.append((name, species, f"fin_{i:0{width}d}"))

    rows.sort()
    csv_path = out_dir / "train.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "species", "individual_id"])
        writer.writerows(rows)
    return csv_path
