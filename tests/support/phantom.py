"""Synthetic chest CT phantoms with known lung masks.

``make_chest_phantom`` draws, in canonical LPS orientation (axis 2 toward the
patient's left, axis 1 toward posterior, axis 0 toward the head), a patient lying
on a curved CT table: an elliptical trunk (muscle with a fat layer), spine,
sternum and oblique ribs, two lungs that taper to an apex and sit on domed
hemidiaphragms, a heart that notches both lungs, a trachea that splits into main
bronchi reaching each lung, branching vessels, nodules (some against the pleura),
emphysema-like patches, a stomach gas bubble under the left diaphragm, partial
volume blurring and Gaussian noise.

Sizes are in millimetres and scale with ``body_scale`` (1.0 is an adult trunk,
about 320 x 230 mm). The lungs are placed in the scanned length: a long scan
holds them whole, a short one is a slab through their middle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Initial directions (z, y, x toward the lateral side) of each lung's vessel trees.
VESSEL_ROOTS = ((1.0, 0.0, 1.0), (-1.0, 0.2, 1.0), (-0.5, 0.8, 0.5), (0.3, -0.8, 0.6))

EVERY_OTHER = (slice(None), slice(None, None, 2), slice(None, None, 2))  # rows and columns

AIR, FAT, TISSUE, LIVER = -1000.0, -100.0, 40.0, 60.0  # HU
BONE, RIB, PARENCHYMA, EMPHYSEMA = 250.0, 600.0, -860.0, -975.0


@dataclass(frozen=True)
class Nodule:
    """A solid nodule: centre (z, y, x) and radius in mm (grid as in ``Phantom``);
    ``pleural``: it lies against the pleura, partly outside the lung."""

    centre: tuple[float, float, float]
    radius: float
    pleural: bool


@dataclass(frozen=True)
class Phantom:
    """``hu``: int16 (z, y, x) Hounsfield units. ``spacing``: (z, y, x) in mm.
    ``truth``: uint8 (z, y, x), 2 right lung, 3 left lung, 0 elsewhere (vessels,
    nodules and airways inside a lung belong to it; airways outside do not).
    ``body``: bool (z, y, x), the patient without table (a read-only broadcast view).
    ``gas``: bool (z, y, x), air in the body outside the lungs (trachea, bronchi
    before they enter a lung, stomach gas). ``nodules``: the nodules drawn.
    Voxel (k, j, i) has its centre at z = (k + 0.5) * dz from the scan's inferior
    end, and y, x measured from the centre of the slice.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    truth: np.ndarray
    body: np.ndarray
    gas: np.ndarray
    nodules: tuple[Nodule, ...] = ()

    def nodule_mask(self, nodule: Nodule) -> np.ndarray:
        """bool (z, y, x): the voxels of ``nodule``."""
        grid = _make_grid(self.hu.shape, self.spacing)
        z, y, x = grid.coords((slice(None), slice(None), slice(None)))
        cz, cy, cx = nodule.centre
        return (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= nodule.radius**2


@dataclass(frozen=True)
class _Grid:
    """Voxel centre coordinates in mm: z from the scan's inferior end, y and x from
    the in-plane centre (x negative = patient right, y negative = anterior)."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    spacing: tuple[float, float, float]

    def box(self, low: np.ndarray, high: np.ndarray) -> tuple[slice, slice, slice]:
        """Index slices of the voxels whose centres may lie in [low, high] (z, y, x mm)."""
        out = []
        for axis, coords in enumerate((self.z, self.y, self.x)):
            start = int(np.searchsorted(coords, low[axis], side="left"))
            stop = int(np.searchsorted(coords, high[axis], side="right"))
            out.append(slice(start, max(start, stop)))
        return out[0], out[1], out[2]

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, ...]:
        """Broadcastable (z, 1, 1), (1, y, 1), (1, 1, x) coordinates of a box."""
        return (
            self.z[box[0]][:, None, None],
            self.y[box[1]][None, :, None],
            self.x[box[2]][None, None, :],
        )


@dataclass(frozen=True)
class _Layout:
    """Key dimensions in mm."""

    a: float  # body half-width (x)
    b: float  # body half-depth (y)
    y0: float  # body centre (y)
    base: float  # lowest lung point (z)
    height: float  # lung height (z)
    dome: float  # height of the diaphragm domes


def make_chest_phantom(
    shape_zyx: tuple[int, int, int],
    spacing_zyx: tuple[float, float, float],
    body_scale: float = 1.0,
    seed: int = 0,
    noise_hu: float = 20,
    vessels: bool = True,
    nodules: bool = True,
    trachea: bool = True,
    table: bool = True,
    emphysema: int = 6,
    stomach_gas: bool = True,
    partial_volume: bool = True,
) -> Phantom:
    """A chest CT phantom of ``shape_zyx`` voxels of ``spacing_zyx`` mm (see module doc).

    ``emphysema`` is the number of low-attenuation patches (12 to 28 mm across at
    ``body_scale`` 1); ``noise_hu`` the standard deviation of the noise.
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    sz, sy, sx = (float(v) for v in spacing_zyx)
    grid = _make_grid(shape_zyx, (sz, sy, sx))
    lay = _layout(nz * sz, body_scale, fov_yx=(ny * sy, nx * sx))
    body2d, slice2d = _axial_template(grid, lay, table)
    hu = np.broadcast_to(slice2d, (nz, ny, nx)).astype(np.float32)
    _draw_ribs(hu, grid, lay, body2d)
    _draw_liver(hu, grid, lay, body2d)
    truth = np.zeros((nz, ny, nx), np.uint8)
    for side in (-1, 1):
        _draw_lung(hu, truth, grid, lay, side)
    lung = truth > 0
    for centre in _random_points(lung[EVERY_OTHER], grid, emphysema, rng):
        radius = rng.uniform(6.0, 14.0) * body_scale
        _draw_tube(hu, grid, centre, centre, radius, EMPHYSEMA, within=lung)
    if trachea:
        _draw_airways(hu, grid, lay)
    if vessels:
        _draw_vessels(hu, lung, grid, lay, rng)
    drawn: list[Nodule] = []
    if nodules:
        drawn = _draw_nodules(hu, truth, grid, lay, rng)
    if stomach_gas:
        _draw_stomach(hu, grid, lay)
    body = np.broadcast_to(body2d, (nz, ny, nx))
    gas = (hu < -400) & body & (truth == 0)
    hu16 = _finish(hu, noise_hu, partial_volume, rng)
    return Phantom(hu16, (sz, sy, sx), truth, body, gas, tuple(drawn))


def small_chest(seed: int = 3) -> Phantom:
    """A chest CT for tests that count a node's results rather than check them: the real
    lung model finds both lungs in about 0.55 s of CPU, a quarter of what a 24 x 192 x
    192 series takes (the end-to-end tests check results on a 60 x 384 x 384 one)."""
    return make_chest_phantom((16, 128, 128), (7.5, 1.8, 1.8), body_scale=0.55, seed=seed)


def _make_grid(shape: tuple[int, ...], spacing: tuple[float, ...]) -> _Grid:
    nz, ny, nx = shape
    sz, sy, sx = (float(v) for v in spacing)
    return _Grid(
        z=(np.arange(nz) + 0.5) * sz,
        y=(np.arange(ny) - (ny - 1) / 2) * sy,
        x=(np.arange(nx) - (nx - 1) / 2) * sx,
        spacing=(sz, sy, sx),
    )


def _layout(scan_mm: float, scale: float, fov_yx: tuple[float, float]) -> _Layout:
    """Dimensions for a scan ``scan_mm`` long; raises ValueError when the body does not
    fit in the field of view (``fov_yx`` mm)."""
    a, b = 160.0 * scale, 115.0 * scale
    if a > fov_yx[1] / 2 or 1.15 * b > fov_yx[0] / 2:
        raise ValueError(
            f"a body of {2 * a:.0f} x {2 * b:.0f} mm does not fit in a field of view "
            f"of {fov_yx[0]:.0f} x {fov_yx[1]:.0f} mm; lower body_scale"
        )
    height = 250.0 * scale
    if scan_mm >= height / 0.8:
        base = max(0.12 * scan_mm, 0.4 * (scan_mm - height))
    else:
        base = scan_mm / 2 - 0.45 * height
    return _Layout(a=a, b=b, y0=-0.1 * b, base=base, height=height, dome=0.2 * height)


def _axial_template(grid: _Grid, lay: _Layout, table: bool) -> tuple[np.ndarray, np.ndarray]:
    """The parts that do not change along z: body mask (bool) and HU (float32), (y, x)."""
    y = grid.y[:, None] - lay.y0
    x = grid.x[None, :]
    rho = np.sqrt((x / lay.a) ** 2 + (y / lay.b) ** 2)
    back = 0.92 * lay.b
    body = (rho <= 1.0) & (y <= back)
    depth = np.minimum(1.0 - rho, (back - y) / lay.b)
    hu = np.full(body.shape, AIR, np.float32)
    hu[body] = TISSUE
    hu[body & (depth < 0.07)] = FAT
    vertebra = np.hypot(x, y - 0.62 * lay.b) / (0.13 * lay.a)
    hu[vertebra <= 1.0] = BONE
    hu[(vertebra > 0.85) & (vertebra <= 1.0)] = RIB
    spinous = (np.abs(x) < 0.03 * lay.a) & (y > 0.7 * lay.b) & (y < 0.86 * lay.b)
    hu[spinous] = RIB
    hu[np.hypot(x, y - 0.78 * lay.b) < 0.05 * lay.a] = TISSUE  # spinal canal
    hu[(x / (0.1 * lay.a)) ** 2 + ((y + 0.86 * lay.b) / (0.05 * lay.b)) ** 2 <= 1] = BONE
    if table:
        _draw_table(hu, x, y, lay)
    return body, hu


def _draw_table(hu: np.ndarray, x: np.ndarray, y: np.ndarray, lay: _Layout) -> None:
    """A curved table under the patient: plastic shell with air pockets inside."""
    top = 0.92 * lay.b + 12.0 - 0.25 * lay.b * (x / lay.a) ** 2
    inside = y - top
    wide = np.abs(x) < 1.3 * lay.a
    hu[wide & (inside >= 0) & (inside < 16.0)] = 200.0
    ribs = np.abs(((x + 1000.0) % 40.0) - 20.0) > 3.0
    hu[wide & (inside >= 3.0) & (inside < 13.0) & ribs] = AIR


def _draw_ribs(hu: np.ndarray, grid: _Grid, lay: _Layout, body2d: np.ndarray) -> None:
    """Oblique ribs in a ring inside the body wall, varying with z."""
    y = grid.y[:, None] - lay.y0
    x = grid.x[None, :]
    rho = np.sqrt((x / lay.a) ** 2 + (y / lay.b) ** 2)
    ring = body2d & (rho > 0.85) & (rho < 0.91) & (np.abs(x) > 0.12 * lay.a)
    rows, cols = np.nonzero(ring)
    angle = np.abs(np.arctan2(y[rows, 0], x[0, cols])) / np.pi
    pitch = 28.0 * lay.a / 160.0
    phase = (grid.z[:, None] / pitch - 0.8 * angle[None, :]) % 1.0
    values = hu[:, rows, cols]
    hu[:, rows, cols] = np.where(phase < 0.3, RIB, values)


def _draw_liver(hu: np.ndarray, grid: _Grid, lay: _Layout, body2d: np.ndarray) -> None:
    """Liver under the right diaphragm dome, denser than muscle."""
    box = grid.box(np.array([-1e9, -1e9, -1e9]), np.array([lay.base + lay.dome, 1e9, 0.2 * lay.a]))
    z, y, x = grid.coords(box)
    inner = body2d[box[1], box[2]] & ((x / lay.a) ** 2 + ((y - lay.y0) / lay.b) ** 2 < 0.7)
    below = z < _dome_height(x, y, lay, -1) - 5.0
    region = hu[box]
    region[inner & below & (region < 100)] = LIVER


def _lung_axes(lay: _Layout, side: int) -> tuple[float, float, float, float]:
    """Centre x, centre y, half-width and half-depth (mm) of a lung's widest section."""
    return 0.45 * side * lay.a, lay.y0, 0.33 * lay.a, 0.62 * lay.b


def _dome_height(x: np.ndarray, y: np.ndarray, lay: _Layout, side: int) -> np.ndarray:
    """z (mm) of the lung base under each (y, x): a dome, highest at the lung's centre."""
    cx, cy, hx, hy = _lung_axes(lay, side)
    centre = cx - 0.35 * side * hx  # medial, so low sections of the dome open medially
    bump = 1.0 - ((x - centre) / (0.9 * hx)) ** 2 - ((y - cy) / (0.8 * hy)) ** 2
    lift = 0.04 * lay.height if side < 0 else 0.0  # the right dome sits higher
    return lay.base + lift + lay.dome * np.clip(bump, 0.0, 1.0)


def _heart(z: np.ndarray, y: np.ndarray, x: np.ndarray, lay: _Layout) -> np.ndarray:
    """bool: inside the heart (with pericardium), anterior, left of the midline."""
    return (
        ((x - 0.12 * lay.a) / (0.42 * lay.a)) ** 2
        + ((y - lay.y0 + 0.3 * lay.b) / (0.45 * lay.b)) ** 2
        + ((z - lay.base - 0.22 * lay.height) / (0.3 * lay.height)) ** 2
    ) <= 1.0


def _draw_lung(hu: np.ndarray, truth: np.ndarray, grid: _Grid, lay: _Layout, side: int) -> None:
    """One lung (side -1 right, +1 left): parenchyma in ``hu``, label in ``truth``."""
    cx, cy, hx, hy = _lung_axes(lay, side)
    low = np.array([lay.base, cy - hy, cx - hx])
    box = grid.box(low, np.array([lay.base + lay.height, cy + hy, cx + hx]))
    z, y, x = grid.coords(box)
    t = (z - lay.base) / lay.height
    taper = np.where(t > 0.5, 1.0 - ((t - 0.5) / 0.5) ** 2, 1.0)
    wobble = (1.0 + 0.05 * np.sin(3.0 * np.arctan2(y - cy, x - cx) + side)) ** 2
    inside = ((x - cx) / hx) ** 2 + ((y - cy) / hy) ** 2 <= taper * wobble
    lung = inside & (z > _dome_height(x, y, lay, side)) & ~_heart(z, y, x, lay)
    lung &= np.hypot(x - 0.12 * lay.a, y - lay.y0 - 0.45 * lay.b) > 0.09 * lay.a  # aorta
    gradient = PARENCHYMA + 60.0 * (y - lay.y0) / lay.b  # dependent lung is denser
    region = hu[box]
    region[lung] = np.broadcast_to(gradient, lung.shape)[lung]
    truth[box][lung] = 2 if side < 0 else 3


def _draw_airways(hu: np.ndarray, grid: _Grid, lay: _Layout) -> None:
    """Trachea from the top of the scan, carina, main bronchi into each lung hilum and
    lobar bronchi inside the lungs. Lumen is air, walls soft tissue."""
    s = lay.a / 160.0
    carina = np.array([lay.base + 0.62 * lay.height, lay.y0 - 0.12 * lay.b, 0.0])
    top = np.array([grid.z[-1] + 10.0, carina[1], 0.0])
    tubes = [(carina, top, 9.0 * s)]
    for side in (-1, 1):
        hilum = np.array([lay.base + 0.5 * lay.height, lay.y0 - 0.02 * lay.b, 0.3 * side * lay.a])
        upper = np.array([lay.base + 0.75 * lay.height, lay.y0 - 0.1 * lay.b, 0.45 * side * lay.a])
        lower = np.array([lay.base + 0.25 * lay.height, lay.y0 + 0.15 * lay.b, 0.5 * side * lay.a])
        tubes += [(carina, hilum, 6.0 * s), (hilum, upper, 4.0 * s), (hilum, lower, 4.0 * s)]
    for start, end, radius in tubes:
        _draw_tube(hu, grid, start, end, radius + 1.5, TISSUE)
    for start, end, radius in tubes:
        _draw_tube(hu, grid, start, end, radius, AIR)


def _draw_vessels(
    hu: np.ndarray, lung: np.ndarray, grid: _Grid, lay: _Layout, rng: np.random.Generator
) -> None:
    """Branching vessel trees from each hilum, kept inside the lungs."""
    s = lay.a / 160.0
    for side in (-1, 1):
        root = np.array([lay.base + 0.48 * lay.height, lay.y0 + 0.04 * lay.b, 0.28 * side * lay.a])
        for dz, dy, dx in VESSEL_ROOTS:
            stack = [(root, np.array([dz, dy, dx * side]), 4.5 * s, 36.0 * s, 0)]
            while stack:
                start, heading, radius, length, depth = stack.pop()
                heading = heading / np.linalg.norm(heading)
                end = start + heading * length * rng.uniform(0.8, 1.2)
                _draw_tube(hu, grid, start, end, radius, TISSUE, within=lung)
                if depth < 5:
                    for _ in range(2):
                        turn = heading + rng.normal(0.0, 0.5, 3)
                        child = (end, turn, max(0.7 * radius, 0.8), 0.8 * length, depth + 1)
                        stack.append(child)


def _draw_nodules(
    hu: np.ndarray, truth: np.ndarray, grid: _Grid, lay: _Layout, rng: np.random.Generator
) -> list[Nodule]:
    """Solid nodules: two well inside each lung (clear of pleura, airways and large
    vessels), one against its pleura (it bulges into the chest wall; only the part
    inside the lung is lung in ``truth``)."""
    s = lay.a / 160.0
    drawn = []
    for label, side in ((2, -1), (3, 1)):
        radius = rng.uniform(3.0, 8.0) * s
        near = hu[EVERY_OTHER]
        plain = (truth[EVERY_OTHER] == label) & (near > -950) & (near < -700)  # no airways
        for centre in _random_points(plain, grid, 2, rng, margin_mm=radius + 6.0):
            drawn.append(Nodule((centre[0], centre[1], centre[2]), radius, pleural=False))
        cx, cy, hx, hy = _lung_axes(lay, side)
        z = lay.base + rng.uniform(0.3, 0.5) * lay.height
        angle = rng.uniform(-0.6, 0.6) + (0.0 if side > 0 else np.pi)
        radius = rng.uniform(5.0, 8.0) * s
        edge = np.array([z, cy + hy * np.sin(angle), cx + hx * np.cos(angle)])
        inward = np.array([0.0, cy, cx]) - edge
        inward[0] = 0.0
        centre = edge + 0.6 * radius * inward / np.linalg.norm(inward)
        drawn.append(Nodule((centre[0], centre[1], centre[2]), radius, pleural=True))
    for nodule in drawn:
        centre = np.array(nodule.centre)
        _draw_tube(hu, grid, centre, centre, nodule.radius, 30.0)
    return drawn


def _draw_stomach(hu: np.ndarray, grid: _Grid, lay: _Layout) -> None:
    """Stomach under the left dome, at least 6 mm below the diaphragm: gas above a fluid
    level (a half ellipsoid of gas), fluid below."""
    s = lay.a / 160.0
    half = np.array([25.0 * s, 0.25 * lay.b, 0.18 * lay.a])
    cy, cx = lay.y0 - 0.15 * lay.b, 0.42 * lay.a
    rim_y = cy + half[1] * np.sin(np.linspace(0.0, 2.0 * np.pi, 64))
    rim_x = cx + half[2] * np.cos(np.linspace(0.0, 2.0 * np.pi, 64))
    top = float(_dome_height(rim_x, rim_y, lay, 1).min()) - 6.0
    centre = np.array([top - half[0], cy, cx])
    box = grid.box(centre - half, centre + half)
    z, y, x = grid.coords(box)
    d = sum(((c - m) / h) ** 2 for c, m, h in zip((z, y, x), centre, half, strict=True))
    stomach = d <= 1.0
    region = hu[box]
    region[stomach] = np.where(np.broadcast_to(z, stomach.shape)[stomach] > centre[0], AIR, 20.0)


def _random_points(
    inner: np.ndarray, grid: _Grid, count: int, rng: np.random.Generator, margin_mm: float = 0.0
) -> list[np.ndarray]:
    """``count`` random voxel centres (z, y, x mm) of a mask, given on every other row
    and column (``inner = mask[EVERY_OTHER]``), lying ``margin_mm`` or more inside
    it along each axis (none if there is no such voxel)."""
    step = 2
    sz, sy, sx = grid.spacing
    for axis, size in enumerate((sz, step * sy, step * sx)):
        reach = int(np.ceil(margin_mm / size))
        if reach > 0:
            view = np.moveaxis(inner, axis, 0)
            kept = np.zeros_like(view)
            kept[reach:-reach] = view[reach:-reach] & view[: -2 * reach] & view[2 * reach :]
            inner = np.moveaxis(kept, 0, axis)
    index = np.flatnonzero(inner)
    if index.size == 0:
        return []
    k, j, i = np.unravel_index(rng.choice(index, size=count), inner.shape)
    return [
        np.array([grid.z[a], grid.y[step * b], grid.x[step * c]])
        for a, b, c in zip(k, j, i, strict=True)
    ]


def _draw_tube(
    hu: np.ndarray,
    grid: _Grid,
    start: np.ndarray,
    end: np.ndarray,
    radius: float,
    value: float,
    within: np.ndarray | None = None,
) -> None:
    """Set ``value`` within ``radius`` mm of the segment start-end (z, y, x mm; a ball
    when they are equal), only where ``within`` if given."""
    box = grid.box(np.minimum(start, end) - radius, np.maximum(start, end) + radius)
    rel = [c - a for c, a in zip(grid.coords(box), start, strict=True)]
    d = end - start
    t = sum(r * k for r, k in zip(rel, d, strict=True)) / max(float(d @ d), 1e-12)
    t = np.clip(t, 0.0, 1.0)
    inside = sum((r - t * k) ** 2 for r, k in zip(rel, d, strict=True)) <= radius**2
    if within is not None:
        inside &= within[box]
    hu[box][inside] = value


def _finish(hu: np.ndarray, sigma: float, blur: bool, rng: np.random.Generator) -> np.ndarray:
    """int16 HU from float32 ``hu``: optional partial-volume blur ([1, 2, 1] / 4 along
    y and x), plus Gaussian noise of ``sigma`` HU, done slab by slab (``hu`` is
    overwritten). The noise is one random block reused at random in-plane offsets."""
    out = np.empty(hu.shape, np.int16)
    slab, margin = 16, 32
    _, ny, nx = hu.shape
    noise = rng.standard_normal((slab, ny + margin, nx + margin), dtype=np.float32)
    noise *= np.float32(sigma)
    for k in range(0, hu.shape[0], slab):
        part = hu[k : k + slab]
        if blur:
            _blur(part)
        if sigma > 0:
            dy, dx = rng.integers(0, margin, 2)
            part += noise[: part.shape[0], dy : dy + ny, dx : dx + nx]
        np.rint(part, out=part)
        out[k : k + slab] = part
    return out


def _blur(part: np.ndarray) -> None:
    """[1, 2, 1] / 4 along y then x, in place (edge rows and columns are kept)."""
    for axis in (1, 2):
        view = np.moveaxis(part, axis, 0)
        side = view[:-2] + view[2:]
        side *= np.float32(0.25)
        view[1:-1] *= np.float32(0.5)
        view[1:-1] += side
