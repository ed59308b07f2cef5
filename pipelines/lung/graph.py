"""Lung segmentation of chest CT as a TensorFlow graph, without learned weights.

The graph maps a CT volume in Hounsfield units to a label map::

    0  outside the patient (air, table, blankets)
    1  body, not lung
    2  right lung (low x index; canonical LPS, x increases toward the patient's left)
    3  left lung

Method (TensorFlow ops only, dynamic shapes, so the same graph runs on CPU or GPU):

1. Coarse grid: blocks of about 3 mm (an integer number of voxels per axis, from
   ``spacing``). A block is air when most of its voxels are below -400 HU, and
   gas when most of its air is below -950 HU (airway lumen, bowel gas; lung
   tissue sits near -850 HU, so only emphysema also counts).
2. Outside air: air blocks joined to the image border within their axial slice.
   Body: the largest 3-D connected region of everything else, which leaves out
   the table.
3. Lung seeds: air inside the body, opened in-plane with a 10 mm disk (removes
   trachea, main bronchi and thin bridges), split into connected components. On
   each side of the body's midline the largest component that is big enough and
   is mostly not gas (stomach, bowel, a wide trachea) becomes that side's lung; a
   component lying across the midline is cut there.
4. Gas outside the seeds that reaches the top slice (trachea, oesophagus) or
   barely touches them (stomach, bowel) is "detached". What the opening shaved
   off is grown back through air, not detached gas, for about the opening radius
   (so growth does not climb the airways); holes up to 10 cm2 (vessels, nodules)
   are filled per axial slice.
5. Full resolution: the coarse lung interior is lung; in a one-block band around
   each lung a voxel is lung when below -400 HU, unless its block is detached gas
   (a bronchus, the stomach). The body outline is refined the same way.

Connected components and flood fills spread labels along runs of voxels (rows,
columns, slice stacks) with segment maxima, repeated until nothing changes:
a few passes for compact shapes.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

OUTSIDE, BODY, RIGHT_LUNG, LEFT_LUNG = 0, 1, 2, 3

AIR_HU = -400  # midway between lung parenchyma (about -850) and soft tissue (about 40)
GAS_HU = -950  # darker than lung tissue: gas (airways, bowel), or emphysema
COARSE_MM = 3.0  # target block size of the coarse grid
SLAB_SLICES = 32  # full-resolution slices handled at a time, to bound memory
MAX_FACTOR = 16  # coarsest block, in voxels per axis
OPEN_RADIUS_MM = 10.0
MIN_LUNG_ML = 30.0
MIN_LUNG_AREA_MM2 = 1000.0  # short scans: minimum lung volume per mm of scan length
MIN_LUNG_BODY_FRACTION = 0.02
MAX_GAS_SHARE = 0.5  # share of gas blocks above which a component is not lung
SPLIT_SHARE = 0.25  # a component with this share on each side of the midline is cut
MIN_CONTACT_SHARE = 0.1  # gas outside the seeds touching them less is not lung
MAX_HOLE_MM2 = 1000.0  # larger holes in an axial lung section are not filled

# Transposes that bring an axis last (each is its own inverse).
_PERMS = {0: [2, 1, 0], 1: [0, 2, 1], 2: None}


class LungSegmenter(tf.Module):
    """The exported module: ``labels = module(volume=..., spacing=...)["labels"]``."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None], tf.int16, name="volume"),
            tf.TensorSpec([3], tf.float32, name="spacing"),
        ]
    )
    def __call__(self, volume: tf.Tensor, spacing: tf.Tensor) -> dict[str, tf.Tensor]:
        """Segment the lungs.

        ``volume``: int16 (z, y, x), Hounsfield units, canonical LPS orientation
        (x toward patient left, y toward posterior, z toward head); any z >= 1.
        ``spacing``: float32 (3,), (z, y, x) voxel spacing in millimetres.
        Returns ``{"labels": uint8 (z, y, x)}`` with 0 outside, 1 body,
        2 right lung, 3 left lung.
        """
        return {"labels": segment(volume, spacing)}


def build() -> LungSegmenter:
    """A fresh module holding the segmentation graph (it has no variables)."""
    return LungSegmenter(name="lung_ct_threshold")


def segment(volume: tf.Tensor, spacing: tf.Tensor) -> tf.Tensor:
    """int16 (z, y, x) HU and float32 (3,) mm spacing -> uint8 (z, y, x) labels."""
    tf.debugging.assert_positive(spacing, message="spacing must be positive (mm)")
    factors = _factors(tf.shape(volume), spacing)
    block_mm = spacing * tf.cast(factors, tf.float32)
    fractions = _by_slabs(
        lambda slab, c0, c1: _block_fractions(slab, factors), volume, factors, tf.float32
    )
    air = fractions[..., 0] > 0.5
    gas = air & (fractions[..., 1] > 0.5 * fractions[..., 0])
    outside = _flood_from_border(air)
    body = _largest_component(tf.logical_not(outside))
    scan_mm = tf.cast(tf.shape(volume)[0], tf.float32) * spacing[0]
    seeds = _find_lungs(air & body, gas, body, block_mm, scan_mm)
    airways = _detached_gas(gas & body & tf.equal(seeds, 0), seeds)
    lungs = _grow_back(seeds, air & body & tf.logical_not(airways), block_mm)
    lungs = _fill_holes(lungs, block_mm)
    return _refine(volume, lungs, body, airways, factors)


def _factors(shape: tf.Tensor, spacing: tf.Tensor) -> tf.Tensor:
    """int32 (3,) block size per axis: about COARSE_MM, at least 1, at most the axis length."""
    wanted = tf.cast(tf.round(COARSE_MM / spacing), tf.int32)
    return tf.minimum(tf.clip_by_value(wanted, 1, MAX_FACTOR), shape)


def _by_slabs(
    make: Callable[..., tf.Tensor], volume: tf.Tensor, factors: tf.Tensor, dtype: tf.DType
) -> tf.Tensor:
    """Concatenate, along z, ``make(slab, c0, c1)`` over z slabs of ``volume`` that
    hold whole blocks c0 .. c1 - 1 (about SLAB_SLICES slices each), so that
    full-resolution temporaries stay small. ``make`` returns ``dtype``."""
    fz = factors[0]
    blocks = (tf.shape(volume)[0] + fz - 1) // fz
    per = tf.maximum(1, SLAB_SLICES // fz)
    steps = (blocks + per - 1) // per
    parts = tf.TensorArray(dtype, size=steps, infer_shape=False)

    def step(i: tf.Tensor, parts: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
        c0 = i * per
        c1 = tf.minimum(c0 + per, blocks)
        return i + 1, parts.write(i, make(volume[c0 * fz : c1 * fz], c0, c1))

    _, parts = tf.while_loop(lambda i, _: i < steps, step, [tf.constant(0), parts])
    return parts.concat()


def _block_fractions(volume: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """Per block of ``volume`` (int16 (z, y, x) HU), the fractions of voxels below
    AIR_HU and below GAS_HU: float32 (zc, yc, xc, 2), zc = ceil(z / factor_z) etc.
    Partial blocks at the far ends count only the voxels they hold."""
    shape = tf.shape(volume)
    n = (shape + factors - 1) // factors
    pad = n * factors - shape
    classes = tf.cast(tf.stack([volume < AIR_HU, volume < GAS_HU], axis=-1), tf.uint8)
    classes = tf.pad(classes, [[0, pad[0]], [0, pad[1]], [0, pad[2]], [0, 0]])
    fz, fy, fx = factors[0], factors[1], factors[2]
    s = tf.reduce_sum(tf.reshape(classes, [n[0] * fz, n[1] * fy, n[2], fx, 2]), axis=3)
    s = tf.cast(s, tf.int32)
    s = tf.reduce_sum(tf.reshape(s, [n[0] * fz, n[1], fy, n[2], 2]), axis=2)
    s = tf.reduce_sum(tf.reshape(s, [n[0], fz, n[1], n[2], 2]), axis=1)
    counts = [_block_counts(shape[i], factors[i], n[i]) for i in range(3)]
    count = counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]
    return tf.cast(s, tf.float32) / count[..., None]


def _block_counts(length: tf.Tensor, factor: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """float32 (n,): how many voxels of an axis of ``length`` fall in each block."""
    starts = tf.range(n) * factor
    return tf.cast(tf.minimum(factor, length - starts), tf.float32)


def _runs(mask: tf.Tensor, axis: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Runs of ``mask`` (bool (a, b, c)) along ``axis``, in the layout of ``_PERMS``:
    int32 flat run ids (sorted; a voxel after a run shares its id) and int32 flat
    1 inside the mask, 0 outside."""
    perm = _PERMS[axis]
    if perm is not None:
        mask = tf.transpose(mask, perm)
    previous = tf.pad(mask[:, :, :-1], [[0, 0], [0, 0], [1, 0]])
    starts = tf.reshape(mask & tf.logical_not(previous), [-1])
    return tf.cumsum(tf.cast(starts, tf.int32)), tf.cast(tf.reshape(mask, [-1]), tf.int32)


def _run_max(values: tf.Tensor, runs: tf.Tensor, inside: tf.Tensor, axis: int) -> tf.Tensor:
    """Give every voxel of each run (see ``_runs``) along ``axis`` the run's maximum
    of ``values`` (int32 (a, b, c), >= 0); voxels outside the runs get 0."""
    perm = _PERMS[axis]
    if perm is not None:
        values = tf.transpose(values, perm)
    shape = tf.shape(values)
    best = tf.math.segment_max(tf.reshape(values, [-1]) * inside, runs)
    out = tf.reshape(tf.gather(best, runs) * inside, shape)
    return out if perm is None else tf.transpose(out, perm)


def _spread(values: tf.Tensor, mask: tf.Tensor, axes: tuple[int, ...]) -> tf.Tensor:
    """Spread the maximum of ``values`` over each region of ``mask`` connected along
    ``axes`` (face neighbours), until stable. int32 (a, b, c) in and out."""
    runs = [(axis, *_runs(mask, axis)) for axis in axes]

    def step(current: tf.Tensor, _: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        new = current
        for axis, ids, inside in runs:
            new = _run_max(new, ids, inside, axis)
        return new, tf.reduce_any(tf.not_equal(new, current))

    start = values * tf.cast(mask, tf.int32)
    result, _ = tf.while_loop(lambda v, changed: changed, step, [start, tf.constant(True)])
    return result


def _flood_from_border(mask: tf.Tensor) -> tf.Tensor:
    """bool (z, y, x): voxels of ``mask`` joined to the in-plane border of their slice."""
    shape = tf.shape(mask)
    rows = tf.range(shape[1])[:, None]
    cols = tf.range(shape[2])[None, :]
    edge = (rows == 0) | (rows == shape[1] - 1) | (cols == 0) | (cols == shape[2] - 1)
    seeds = tf.cast(mask & edge[None], tf.int32)
    return _spread(seeds, mask, (1, 2)) > 0


def _components(mask: tf.Tensor, axes: tuple[int, ...] = (2, 1, 0)) -> tf.Tensor:
    """int32 (z, y, x): one positive id per region of ``mask`` connected along ``axes``
    (face neighbours; all three axes: 6-connected in 3-D), 0 elsewhere."""
    ids = tf.reshape(tf.range(1, tf.size(mask) + 1), tf.shape(mask))
    return _spread(ids, mask, axes)


def _region_sizes(mask: tf.Tensor, axes: tuple[int, ...] = (2, 1, 0)) -> tf.Tensor:
    """int32 (z, y, x): voxel count of the region (see ``_components``) each voxel of
    ``mask`` belongs to, 0 outside the mask."""
    where = tf.where(mask)
    _, idx, counts = tf.unique_with_counts(tf.gather_nd(_components(mask, axes), where))
    return tf.scatter_nd(where, tf.gather(counts, idx), tf.shape(mask, out_type=tf.int64))


def _largest_component(mask: tf.Tensor) -> tf.Tensor:
    """bool (z, y, x): the largest 6-connected region of ``mask`` (empty if none)."""
    sizes = _region_sizes(mask)
    return mask & tf.equal(sizes, tf.reduce_max(sizes))


def _find_lungs(
    candidates: tf.Tensor, gas: tf.Tensor, body: tf.Tensor, block_mm: tf.Tensor, scan_mm: tf.Tensor
) -> tf.Tensor:
    """int32 (zc, yc, xc) coarse lung seeds: 2 right, 3 left, 0 elsewhere.

    ``candidates``: bool, air inside the body; ``gas``: bool, gas blocks;
    ``body``: bool; ``block_mm``: float32 (3,) block size; ``scan_mm``:
    scan length.
    """
    opened = _open_in_plane(candidates, block_mm)
    where = tf.where(opened)
    ids, idx, counts = tf.unique_with_counts(tf.gather_nd(_components(opened), where))
    n = tf.shape(ids)[0]
    size = tf.cast(counts, tf.float32)
    x = tf.cast(where[:, 2], tf.float32)
    midline = tf.reduce_mean(tf.cast(tf.where(body)[:, 2], tf.float32))

    def mean(values: tf.Tensor) -> tf.Tensor:
        return tf.math.unsorted_segment_sum(values, idx, n) / size

    centre = mean(x)
    right_share = mean(tf.cast(x < midline, tf.float32))
    gas_share = mean(tf.cast(tf.gather_nd(gas, where), tf.float32))
    block_ml = tf.reduce_prod(block_mm) / 1000.0
    body_ml = tf.reduce_sum(tf.cast(body, tf.float32)) * block_ml
    short_scan_ml = tf.minimum(MIN_LUNG_ML, MIN_LUNG_AREA_MM2 * scan_mm / 1000.0)
    min_ml = tf.maximum(MIN_LUNG_BODY_FRACTION * body_ml, short_scan_ml)
    valid = (size * block_ml >= min_ml) & (gas_share <= MAX_GAS_SHARE)
    across = (right_share >= SPLIT_SHARE) & (right_share <= 1.0 - SPLIT_SHARE)
    is_right = tf.gather(_largest(size, valid & (across | (centre < midline))), idx)
    is_left = tf.gather(_largest(size, valid & (across | (centre >= midline))), idx)
    by_position = tf.where(x < midline, RIGHT_LUNG, LEFT_LUNG)
    label = tf.where(
        is_right & is_left,
        by_position,
        tf.where(is_right, RIGHT_LUNG, tf.where(is_left, LEFT_LUNG, 0)),
    )
    return tf.scatter_nd(where, label, tf.shape(opened, out_type=tf.int64))


def _largest(size: tf.Tensor, allowed: tf.Tensor) -> tf.Tensor:
    """bool (n,): the largest allowed component (none if no component is allowed)."""
    score = tf.where(allowed, size, 0.0)
    return allowed & tf.equal(score, tf.reduce_max(score))


def _detached_gas(gas: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
    """bool (z, y, x): the 6-connected regions of ``gas`` (gas blocks outside the lung
    seeds) that reach the top slice (trachea, oesophagus) or border the seeds with
    less than MIN_CONTACT_SHARE of their blocks (stomach, bowel). Gas the opening
    cut from a lung (emphysema in a thin recess) borders it closely and is kept."""
    where = tf.where(gas)
    _, idx, counts = tf.unique_with_counts(tf.gather_nd(_components(gas), where))
    n = tf.size(counts)
    touching = tf.gather_nd(_max3(tf.cast(seeds > 0, tf.float32)), where)
    share = tf.math.unsorted_segment_sum(touching, idx, n) / tf.cast(counts, tf.float32)
    at_top = tf.cast(tf.equal(where[:, 0], tf.shape(gas, out_type=tf.int64)[0] - 1), tf.int32)
    reaches_top = tf.math.unsorted_segment_max(at_top, idx, n) > 0
    detached = tf.gather((share < MIN_CONTACT_SHARE) | reaches_top, idx)
    return tf.scatter_nd(where, detached, tf.shape(gas, out_type=tf.int64))


def _disk(radius_y: tf.Tensor, radius_x: tf.Tensor) -> tf.Tensor:
    """float32 (h, w, 1, 1) elliptical disk kernel with the given radii in voxels."""
    half_y = tf.cast(tf.floor(radius_y), tf.int32)
    half_x = tf.cast(tf.floor(radius_x), tf.int32)
    dy = tf.cast(tf.range(-half_y, half_y + 1), tf.float32)[:, None] / radius_y
    dx = tf.cast(tf.range(-half_x, half_x + 1), tf.float32)[None, :] / radius_x
    return tf.cast(dy * dy + dx * dx <= 1.0, tf.float32)[:, :, None, None]


def _open_in_plane(mask: tf.Tensor, block_mm: tf.Tensor) -> tf.Tensor:
    """bool (z, y, x): morphological opening of each axial slice with a disk of
    radius OPEN_RADIUS_MM (``block_mm``: float32 (3,) voxel size in mm)."""
    kernel = _disk(OPEN_RADIUS_MM / block_mm[1], OPEN_RADIUS_MM / block_mm[2])
    full = tf.reduce_sum(kernel) - 0.5
    images = tf.cast(mask, tf.float32)[..., None]
    eroded = tf.nn.conv2d(images, kernel, 1, "SAME") > full
    opened = tf.nn.conv2d(tf.cast(eroded, tf.float32), kernel, 1, "SAME") > 0.5
    return opened[..., 0] & mask


def _max3(labels: tf.Tensor) -> tf.Tensor:
    """float32 (z, y, x): maximum over each voxel's 3x3x3 neighbourhood."""
    return tf.nn.max_pool3d(labels[None, ..., None], 3, 1, "SAME")[0, ..., 0]


def _grow_back(lungs: tf.Tensor, allowed: tf.Tensor, block_mm: tf.Tensor) -> tf.Tensor:
    """int32 (z, y, x) lung labels grown inside ``allowed`` by about the opening radius,
    to restore apices, recesses and edges the opening removed. ``allowed`` leaves
    out detached gas, so that growth does not climb the airways or cross a thin
    diaphragm into stomach gas."""
    steps = tf.cast(tf.math.ceil(OPEN_RADIUS_MM / tf.reduce_min(block_mm[1:])), tf.int32) + 1

    def step(i: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        grown = tf.where(allowed & tf.equal(labels, 0.0), _max3(labels), labels)
        return i + 1, grown

    _, grown = tf.while_loop(
        lambda i, _: i < steps, step, [tf.constant(0), tf.cast(lungs, tf.float32)]
    )
    return tf.cast(grown, tf.int32)


def _fill_holes(lungs: tf.Tensor, block_mm: tf.Tensor) -> tf.Tensor:
    """int32 (z, y, x): each lung with the holes of its axial slices filled (vessels,
    nodules, airway walls), except holes larger than MAX_HOLE_MM2 (the top of a
    diaphragm dome, a large mass)."""
    holes = tf.zeros_like(lungs)
    for label in (RIGHT_LUNG, LEFT_LUNG):
        enclosed = tf.logical_not(_flood_from_border(tf.not_equal(lungs, label)))
        holes = tf.where(enclosed & tf.equal(lungs, 0), label, holes)
    area = tf.cast(_region_sizes(holes > 0, (2, 1)), tf.float32) * block_mm[1] * block_mm[2]
    return tf.where((holes > 0) & (area <= MAX_HOLE_MM2), holes, lungs)


def _refine(
    volume: tf.Tensor, lungs: tf.Tensor, body: tf.Tensor, airways: tf.Tensor, factors: tf.Tensor
) -> tf.Tensor:
    """uint8 (z, y, x) labels at full resolution from coarse ``lungs`` (int32),
    ``body`` and ``airways`` (bool, detached gas): block interiors keep their label,
    boundary bands follow the HU, airway and stomach blocks next to a lung stay body."""
    lung = tf.cast(lungs > 0, tf.float32)
    inner_lung = _max3(1.0 - lung) < 0.5
    lung_band = tf.cast(_max3(tf.cast(lungs, tf.float32)), tf.int32)
    inner_body = _max3(1.0 - tf.cast(body, tf.float32)) < 0.5
    outer_body = _max3(tf.cast(body, tf.float32)) > 0.5
    inner = tf.where(inner_lung, lungs, 0)
    body_or_out = tf.where(inner_body, BODY, OUTSIDE)
    lung_band = tf.where((lungs > 0) | tf.logical_not(airways), lung_band, 0)
    if_air = tf.where(inner > 0, inner, tf.where(lung_band > 0, lung_band, body_or_out))
    if_tissue = tf.where(inner > 0, inner, tf.where(outer_body, BODY, OUTSIDE))
    if_air, if_tissue = tf.cast(if_air, tf.uint8), tf.cast(if_tissue, tf.uint8)

    def label(slab: tf.Tensor, c0: tf.Tensor, c1: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(slab)
        air = _upsample(if_air[c0:c1], factors, shape)
        tissue = _upsample(if_tissue[c0:c1], factors, shape)
        return tf.where(slab < AIR_HU, air, tissue)

    return _by_slabs(label, volume, factors, tf.uint8)


def _upsample(coarse: tf.Tensor, factors: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """Repeat each block ``factors`` times per axis and crop to ``shape`` (z, y, x)."""
    for axis in range(3):
        coarse = tf.repeat(coarse, factors[axis], axis=axis)
    return coarse[: shape[0], : shape[1], : shape[2]]
