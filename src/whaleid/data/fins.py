"""A synthetic dolphin's identity: the dorsal fin's shape, nicks and marks, and where it sits in a photo.

Identity lives only in the fin's *shape and marks*: a trailing-edge nick pattern (the feature real
photo-ID catalogues rely on), a few light scars/spots at fixed places on the fin, and the fin's outline.
:class:`FinIdentity` holds them; :func:`fin_outline` draws the outline in fin coordinates and
:func:`pose_matrix` places it in a photo. Photos are drawn in :mod:`whaleid.data.render`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

__all__ = [
    "CANONICAL_POSE",
    "WIDTH_FRAC",
    "FinIdentity",
    "Marking",
    "Nick",
    "canonical_matrix",
    "fill_polygons",
    "fin_extent",
    "fin_outline",
    "fin_silhouette",
    "pose_matrix",
    "stroke",
    "to_pixels",
]

_SUB = 16  # cv2 fixed-point sub-pixel factor (shift=4): sub-pixel accurate, anti-aliased edges
_SHIFT = 4


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
def fin_extent(identity: FinIdentity) -> tuple[float, float]:
    """Horizontal extent of the fin proper (not the thin fillets into the back), to frame it.
    Measured without nicks, so that a nick never changes the framing of the rest of the fin."""
    pts = fin_outline(replace(identity, nicks=(), markings=()))
    above = pts[pts[:, 1] > 0.1]
    return float(above[:, 0].min()), float(above[:, 0].max())


def pose_matrix(
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
    x0, x1 = fin_extent(identity)
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

CANONICAL_POSE = dict(width_frac=0.42, center_x=0.5, base_y=0.72, angle_deg=0.0, shear=0.0, aspect=1.0)


def canonical_matrix(identity: FinIdentity, size: int) -> np.ndarray:
    """The pose used when variation is switched off: fixed framing, useful to compare shapes."""
    return pose_matrix(identity, size, **CANONICAL_POSE)


def to_pixels(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Points in fin coordinates mapped by the 3x3 matrix ``m`` to pixels."""
    return pts @ m[:2, :2].T + m[:2, 2]


def fill_polygons(mask: np.ndarray, polys: list[np.ndarray], value: int = 255) -> None:
    """Fill polygons (pixel coordinates) anti-aliased, at sub-pixel accuracy."""
    cv2.fillPoly(mask, [np.round(p * _SUB).astype(np.int32) for p in polys], value, cv2.LINE_AA, _SHIFT)


def stroke(mask: np.ndarray, line: np.ndarray, value: int, thickness: int) -> None:
    """Draw an open polyline (pixel coordinates) anti-aliased, at sub-pixel accuracy."""
    pix = np.round(line * _SUB).astype(np.int32)
    cv2.polylines(mask, [pix], False, value, thickness, cv2.LINE_AA, _SHIFT)


def fin_silhouette(identity: FinIdentity, size: int = 128) -> np.ndarray:
    """Fin mask (float 0..1) at the canonical pose, without back or water: the pure identity shape."""
    mask = np.zeros((size, size), np.uint8)
    fill_polygons(mask, [to_pixels(canonical_matrix(identity, size), fin_outline(identity))])
    mask[int(round(CANONICAL_POSE["base_y"] * size)) :] = 0  # the base line: below it is the back
    return mask.astype(np.float32) / 255.0
