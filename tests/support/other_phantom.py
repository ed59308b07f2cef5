"""A second chest phantom, designed apart from ``phantom.py``, so the lung model is
not only checked against the phantom it was developed on.

Different on purpose: arms beside the body (with bones), a flat table with an
air core, lungs as clipped ellipsoids with a cardiac notch and domed bases,
straight vessel segments of random direction, a pleural nodule, a trachea that
splits into bronchi ending at each hilum, stomach gas under the left dome,
no fat gradient, a lung density and noise given by the caller.

Arrays are (z, y, x) in canonical LPS orientation: x toward the patient's left,
y toward posterior, z toward the head. ``truth``: 2 right lung, 3 left lung.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class OtherPhantom:
    hu: np.ndarray
    spacing: tuple[float, float, float]
    truth: np.ndarray
    gas: np.ndarray  # trachea, bronchi and stomach gas: air inside the body that is not lung


def _axes(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[np.ndarray]:
    return [(np.arange(n) - n / 2) * s for n, s in zip(shape, spacing, strict=True)]


def _ellipse(
    u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float
) -> np.ndarray:
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1


def make_other_phantom(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    scale: float = 1.0,
    lung_hu: float = -820,
    noise_hu: float = 25,
    seed: int = 0,
) -> OtherPhantom:
    rng = np.random.default_rng(seed)
    z, y, x = _axes(shape, spacing)
    Z, Y, X = np.meshgrid(z, y, x, indexing="ij", sparse=True)
    a, b = 170 * scale, 125 * scale
    plane = np.full((len(y), len(x)), -1000.0, np.float32)
    plane[_ellipse(X[0], Y[0], 0, 0, a, b)] = 30
    plane[~_ellipse(X[0], Y[0], 0, 0, a - 12 * scale, b - 12 * scale) & (plane == 30)] = -90
    for side in (-1, 1):
        cx = side * (a + 45 * scale)
        plane[_ellipse(X[0], Y[0], cx, -10, 38 * scale, 45 * scale)] = 20
        plane[_ellipse(X[0], Y[0], cx, -10, 10 * scale, 10 * scale)] = 700
    table = (Y[0] > b + 8) & (Y[0] < b + 25) & (np.abs(X[0]) < 1.3 * a)
    plane[table] = 150
    plane[table & (Y[0] > b + 12) & (Y[0] < b + 20)] = -1000
    plane[_ellipse(X[0], Y[0], 0, 95 * scale, 18 * scale, 18 * scale)] = 600  # spine
    hu = np.broadcast_to(plane, shape).copy()

    truth = np.zeros(shape, np.uint8)
    heart = (((X - 20 * scale) / (60 * scale)) ** 2 + ((Y + 35 * scale) / (55 * scale)) ** 2
             + ((Z + 40) / 75) ** 2) <= 1  # fmt: skip
    for label, cx, ax in ((2, -75 * scale, 62 * scale), (3, 78 * scale, 55 * scale)):
        r = ((X - cx) / ax) ** 2 + ((Y + 5) / (85 * scale)) ** 2 + ((Z - 20) / 125) ** 2
        lung = (r <= 1) & (Z > -90 + 0.004 * ((X - cx) ** 2 + (Y + 5) ** 2))
        truth[lung & ~heart] = label
    lungs = truth > 0
    hu[lungs] = lung_hu
    hu[np.broadcast_to(heart, shape) & ~lungs] = 45
    _vessels(hu, lungs, (z, y, x), spacing, rng, scale)
    for cz, cy, cx, rad in ((30, -20, -75 * scale, 9), (0, 40, 120 * scale, 12), (60, 0, 60, 6)):
        hu[(((Z - cz) ** 2 + (Y - cy) ** 2 + (X - cx) ** 2) <= rad**2) & lungs] = 35
    gas = _airways_and_gas(hu, lungs, Z, Y, X, scale)
    hu += rng.normal(0, noise_hu, shape).astype(np.float32)
    return OtherPhantom(np.clip(hu, -1024, 3000).astype(np.int16), spacing, truth, gas)


def _vessels(hu, lungs, axes, spacing, rng, scale) -> None:  # type: ignore[no-untyped-def]
    """60 straight tubes (radius 1–3.5 mm, 80 mm long), kept inside the lungs."""
    z, y, x = axes
    for _ in range(60):
        p0 = np.array([rng.uniform(-90, 120), rng.uniform(-120, 120) * scale,
                       rng.choice([-1, 1]) * rng.uniform(30, 110) * scale])  # fmt: skip
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        rad = rng.uniform(1.0, 3.5)
        ends = np.array([p0 - 40 * d, p0 + 40 * d])
        lo = [max(0, int(np.searchsorted(ax, ends[:, i].min() - rad))) for i, ax in enumerate(axes)]
        hi = [int(np.searchsorted(ax, ends[:, i].max() + rad)) for i, ax in enumerate(axes)]
        if any(h <= lo_ for h, lo_ in zip(hi, lo, strict=True)):
            continue
        box = tuple(slice(lo_, h) for lo_, h in zip(lo, hi, strict=True))
        P = np.stack(np.meshgrid(z[box[0]], y[box[1]], x[box[2]], indexing="ij"), -1) - p0
        t = np.clip(P @ d, -40, 40)
        dist2 = ((P - t[..., None] * d) ** 2).sum(-1)
        tube = (dist2 <= rad**2) & lungs[box]
        hu[box][tube] = 40


def _airways_and_gas(hu, lungs, Z, Y, X, scale) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Trachea down to a carina 60 mm above centre, bronchi to each hilum, stomach gas."""
    carina = 60.0
    air = np.broadcast_to((X**2 + (Y + 30 * scale) ** 2 <= (9 * scale) ** 2) & (Z >= carina),
                          hu.shape).copy()  # fmt: skip
    for side in (-1, 1):
        for tt in np.linspace(0, 1, 40):
            cx, cz = side * tt * 55 * scale, carina - tt * 25
            air |= (X - cx) ** 2 + (Y + 30 * scale) ** 2 + (Z - cz) ** 2 <= (6 * scale) ** 2
    stomach = ((X - 70 * scale) / 40) ** 2 + ((Y + 20) / 30) ** 2 + ((Z + 120) / 25) ** 2 <= 1
    gas = (air | stomach) & ~lungs
    hu[gas] = -1000
    return gas
