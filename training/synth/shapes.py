"""Fin silhouettes and identity marks: what makes one synthetic animal itself.

Everything here is in fin units: the fin's base runs along v = 0 from u = 0 (leading edge) to
u = base, and its tip is at v = 1, so 1 unit is the fin's height. A species is a family of
silhouettes (falcate, triangular, rounded) with per-species parameter ranges; an individual draws
its own silhouette from its species' ranges and carries its own marks: trailing-edge notches,
scars and pigment patches. The fin's base colour is deliberately NOT part of an individual:
photos pick it, so identity can only be learnt from shape and marks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "FAMILIES",
    "FinFamily",
    "Individual",
    "Notch",
    "Patch",
    "Scar",
    "Species",
    "make_individual",
    "make_species",
    "other_side",
    "stable_hex",
]

Range = tuple[float, float]


@dataclass(frozen=True)
class FinFamily:
    """Ranges a species' silhouettes are drawn from (all in fin heights)."""

    name: str
    base: Range  # length of the base along the back
    sweep: Range  # tip position along u, as a fraction of the base
    lead_bulge: Range  # leading edge bows outwards (convex) by this much
    trail_bow: Range  # trailing edge: < 0 concave (hooked back), > 0 convex
    tip_round: Range  # how much of each edge near the tip is rounded off


FAMILIES: dict[str, FinFamily] = {
    "falcate": FinFamily(
        "falcate", (0.95, 1.3), (0.95, 1.25), (0.1, 0.2), (-0.2, -0.1), (0.03, 0.1)
    ),
    "triangular": FinFamily(
        "triangular", (0.6, 0.85), (0.35, 0.6), (0.0, 0.06), (-0.04, 0.03), (0.02, 0.06)
    ),
    "rounded": FinFamily(
        "rounded", (1.4, 2.0), (0.55, 0.8), (0.12, 0.22), (0.05, 0.18), (0.2, 0.35)
    ),
}

# Readable names and the silhouette family each one's dorsal fin resembles; cycled with a suffix
# when a catalogue asks for more species than listed.
_SPECIES: tuple[tuple[str, str], ...] = (
    ("bottlenose_dolphin", "falcate"),
    ("killer_whale", "triangular"),
    ("humpback_whale", "rounded"),
    ("spinner_dolphin", "triangular"),
    ("false_killer_whale", "falcate"),
    ("short_finned_pilot_whale", "rounded"),
    ("common_dolphin", "falcate"),
    ("dusky_dolphin", "triangular"),
    ("minke_whale", "rounded"),
)


@dataclass(frozen=True)
class Species:
    name: str
    family: FinFamily


@dataclass(frozen=True)
class Notch:
    """A bite out of the trailing edge: where (0 tip … 1 base), how deep and wide, V or U."""

    position: float
    depth: float
    width: float
    rounded: bool


@dataclass(frozen=True)
class Scar:
    """A light stroke (single scar or one line of a rake mark) as a polyline in fin units."""

    points: tuple[tuple[float, float], ...]
    width: float
    tone: float  # multiplies the fin's colour; > 1 lighter


@dataclass(frozen=True)
class Patch:
    """A soft pigment ellipse: centre, semi-axes, angle in degrees, tone (< 1 darker)."""

    centre: tuple[float, float]
    radii: tuple[float, float]
    angle: float
    tone: float


@dataclass(frozen=True)
class Individual:
    id: str
    species: Species
    outline: np.ndarray  # (N, 2) float64 closed polygon in fin units, notches carved in
    base: float
    notches: tuple[Notch, ...]
    scars: tuple[Scar, ...]
    patches: tuple[Patch, ...]


def stable_hex(*parts: object, n: int = 12) -> str:
    """A short hex name that depends only on `parts` (Happywhale-style ids and file names)."""
    text = ":".join(str(p) for p in ("whaleid-synth", *parts))
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def make_species(count: int) -> list[Species]:
    """`count` species with readable names, cycling the list with `_2`, `_3`… suffixes."""
    out = []
    for k in range(count):
        name, family = _SPECIES[k % len(_SPECIES)]
        cycle = k // len(_SPECIES)
        out.append(Species(f"{name}_{cycle + 1}" if cycle else name, FAMILIES[family]))
    return out


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def _quad_bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _bowed_edge(start: np.ndarray, end: np.ndarray, bow: float, n: int) -> np.ndarray:
    """A curved edge from start to end, its middle pushed `bow` to the right of travel."""
    d = end - start
    normal = np.array([d[1], -d[0]]) / np.hypot(*d)  # right of the direction of travel
    return _quad_bezier(start, (start + end) / 2 + bow * normal, end, n)


def _arc_param(points: np.ndarray) -> np.ndarray:
    seg = np.hypot(*np.diff(points, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    return s / s[-1]


def _round_tip(lead: np.ndarray, trail: np.ndarray, r: float) -> np.ndarray:
    """Cut each edge back by a fraction `r` of its length and join the cut ends with a quadratic
    curve through the old tip as control point: a rounded tip that stays inside the sharp one."""
    sl, st = _arc_param(lead), _arc_param(trail)
    lead_kept = lead[sl <= 1 - r]
    trail_kept = trail[st >= r]
    cap = _quad_bezier(lead_kept[-1], lead[-1], trail_kept[0], 24)
    return np.concatenate([lead_kept, cap[1:-1], trail_kept])


def _silhouette(rng: np.random.Generator, family: FinFamily) -> tuple[np.ndarray, float, int]:
    """Outline from the base's leading corner up the leading edge, round the tip and down the
    trailing edge; returns it, the base length and the index where the trailing edge starts."""
    base = _uniform(rng, family.base)
    tip = np.array([base * _uniform(rng, family.sweep), 1.0])
    # Bow to the left of travel going up the leading edge = outwards; the trailing edge is
    # travelled downwards, so bowing to its left is outwards as well (negative = concave).
    lead = _bowed_edge(np.array([0.0, 0.0]), tip, -_uniform(rng, family.lead_bulge), 200)
    trail = _bowed_edge(tip, np.array([base, 0.0]), -_uniform(rng, family.trail_bow), 400)
    r = _uniform(rng, family.tip_round)
    outline = _round_tip(lead, trail, r)
    trail_start = int(np.argmax(outline[:, 1]))  # the highest point: the tip
    return outline, base, trail_start


def _carve(outline: np.ndarray, trail_start: int, notches: list[Notch]) -> np.ndarray:
    """Push trailing-edge points inwards by each notch's profile (V or U) along the edge."""
    edge = outline[trail_start:]
    seg = np.hypot(*np.diff(edge, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    tangent = np.gradient(edge, axis=0)
    tangent /= np.maximum(np.hypot(*tangent.T), 1e-12)[:, None]
    # Right of travel: going down the trailing edge, that points into the fin.
    inward = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    push = np.zeros(len(edge))
    for n in notches:
        u = (arc - n.position * arc[-1]) / (n.width / 2)
        inside = np.clip(1 - u**2, 0, None)
        profile = np.sqrt(inside) if n.rounded else np.clip(1 - np.abs(u), 0, None)
        push = np.maximum(push, n.depth * profile)
    carved = outline.copy()
    carved[trail_start:] = edge + inward * push[:, None]
    return carved


def _inside(outline: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over points."""
    x, y = pts[:, 0:1], pts[:, 1:2]
    x0, y0 = outline[:, 0], outline[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (crosses & (x < xi)).sum(axis=1) % 2 == 1


def _points_inside(rng: np.random.Generator, outline: np.ndarray, n: int) -> np.ndarray:
    """`n` points inside the fin, kept clear of the base (hidden by body and water)."""
    lo, hi = outline.min(axis=0), outline.max(axis=0)
    found: list[np.ndarray] = []
    while sum(len(f) for f in found) < n:
        cand = rng.uniform([lo[0], 0.12], [hi[0], 0.85], size=(4 * n + 8, 2))
        found.append(cand[_inside(outline, cand)])
    return np.concatenate(found)[:n]


def _marks(
    rng: np.random.Generator, outline: np.ndarray
) -> tuple[list[Notch], list[Scar], list[Patch]]:
    notches = _notches(rng)
    scars, patches = _skin_marks(rng, outline)
    return notches, scars, patches


def _notches(rng: np.random.Generator) -> list[Notch]:
    notches = []
    for position in np.sort(rng.uniform(0.12, 0.9, size=int(rng.integers(1, 5)))):
        notches.append(
            Notch(
                position=float(position),
                depth=float(rng.uniform(0.03, 0.09)),
                width=float(rng.uniform(0.04, 0.12)),
                rounded=bool(rng.random() < 0.5),
            )
        )
    return notches


def _skin_marks(rng: np.random.Generator, outline: np.ndarray) -> tuple[list[Scar], list[Patch]]:
    """Scars, rake marks and pigment patches: marks of one face of the fin, unlike notches,
    which cut through it and show on both faces."""
    scars: list[Scar] = []
    n_scars = int(rng.integers(0, 4))
    n_rakes = int(rng.integers(0, 3))
    centres = _points_inside(rng, outline, n_scars + n_rakes + 3)
    for c in centres[:n_scars]:
        # A single curved scar: three points along a bent line.
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.12, 0.35)
        d = np.array([np.cos(angle), np.sin(angle)]) * length / 2
        bend = np.array([-d[1], d[0]]) * rng.uniform(-0.4, 0.4)
        pts = (c - d, c + bend, c + d)
        scars.append(
            Scar(
                tuple((float(p[0]), float(p[1])) for p in pts),
                float(rng.uniform(0.012, 0.025)),
                float(rng.uniform(1.5, 2.1)),
            )
        )
    for c in centres[n_scars : n_scars + n_rakes]:
        # A rake mark: 2-4 parallel teeth scratches.
        angle = rng.uniform(-0.5, 0.5) + (np.pi / 2 if rng.random() < 0.5 else 0.0)
        length = rng.uniform(0.15, 0.35)
        d = np.array([np.cos(angle), np.sin(angle)]) * length / 2
        perp = np.array([-d[1], d[0]]) / np.hypot(*d)
        gap = rng.uniform(0.035, 0.06)
        teeth = int(rng.integers(2, 5))
        width = float(rng.uniform(0.01, 0.018))
        tone = float(rng.uniform(1.4, 1.9))
        for k in range(teeth):
            o = c + perp * gap * (k - (teeth - 1) / 2)
            ends = (o - d, o + d)
            scars.append(Scar(tuple((float(p[0]), float(p[1])) for p in ends), width, tone))
    patches = []
    for c in centres[n_scars + n_rakes : n_scars + n_rakes + int(rng.integers(1, 4))]:
        tone = rng.uniform(0.35, 0.6) if rng.random() < 0.6 else rng.uniform(1.4, 1.8)
        patches.append(
            Patch(
                (float(c[0]), float(c[1])),
                (float(rng.uniform(0.06, 0.2)), float(rng.uniform(0.04, 0.12))),
                float(rng.uniform(0, 180)),
                float(tone),
            )
        )
    return scars, patches


def make_individual(rng: np.random.Generator, individual_id: str, species: Species) -> Individual:
    """Draw one animal: its own silhouette within its species' family, and its own marks."""
    outline, base, trail_start = _silhouette(rng, species.family)
    notches, scars, patches = _marks(rng, outline)
    carved = _carve(outline, trail_start, notches)
    return Individual(
        id=individual_id,
        species=species,
        outline=carved,
        base=base,
        notches=tuple(notches),
        scars=tuple(scars),
        patches=tuple(patches),
    )


def speckled(rng: np.random.Generator, ind: Individual, count: int) -> Individual:
    """`ind` with `count` fine marks added to its face: crisp dots and short dashes one to four
    hundredths of the fin across, dark or light, as the speckling of a Risso's dolphin's or a
    seal's skin. They make the identity lie in many marks a few pixels wide in a large photo:
    too small for a global model at a few hundred pixels, what local features are for."""
    marks = []
    for c in _points_inside(rng, ind.outline, count):
        angle = rng.uniform(0, np.pi)
        d = np.array([np.cos(angle), np.sin(angle)]) * rng.uniform(0.005, 0.02)
        tone = rng.uniform(0.3, 0.6) if rng.random() < 0.6 else rng.uniform(1.5, 1.9)
        ends = (c - d, c + d)
        width = float(rng.uniform(0.008, 0.016))
        marks.append(Scar(tuple((float(p[0]), float(p[1])) for p in ends), width, float(tone)))
    return replace(ind, scars=ind.scars + tuple(marks))


def other_side(rng: np.random.Generator, ind: Individual) -> Individual:
    """The other face of `ind`'s fin, drawn in the same fin units: the same silhouette and
    notches (they cut through the fin), its own scars and pigment (a face's skin is its own).
    Rendered mirrored, as the far side of a fin is seen."""
    scars, patches = _skin_marks(rng, ind.outline)
    return Individual(
        id=ind.id,
        species=ind.species,
        outline=ind.outline,
        base=ind.base,
        notches=ind.notches,
        scars=tuple(scars),
        patches=tuple(patches),
    )
