"""The pipeline every manifest becomes: series -> model -> SEG + SR, no code.

    prepare   check the series against ``accepts`` (modality, SOP class, slices,
              attribute patterns), then build the volume in stored frame order
    infer     reorient to the model's orientation, resample (shape or spacing),
              normalise intensity, cut into items (whole volume, slices or
              patches) with the channel layout, run in batches sized from free
              memory, stitch, resample back to the source grid, undo the
              reorientation, then argmax / threshold, keep the largest
              component, drop small parts, fill holes, measure each segment
    encode    SEG + TID 1500 SR (``pipelines.results``), Contributing Equipment

A stage the manifest cannot describe may be a named code hook
(``hooks: {prepare: lung-ct.prepare}``), for built-in pipelines.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from pipelines.base import PipelineFailed, PipelineSpec, ResultUids, SeriesNotUsable, Volume
from pipelines.manifest import Manifest, Postprocessing, Preprocessing
from pipelines.postprocess import SegmentMeasures, clean, measure, to_labels
from pipelines.results import build_seg, build_sr, contribute, finding_groups, segment_groups
from pipelines.transform import (
    Reorientation,
    normalise,
    padded_to,
    resize,
    shape_for_spacing,
    tiles,
)
from pipelines.volume import load_image_stack

# Working memory a model needs per input item, as a multiple of the item's size
# (activations of a small U-Net); batches use at most BATCH_MEMORY_SHARE of the
# memory the system reports available.
ACTIVATION_FACTOR = 48
BATCH_MEMORY_SHARE = 0.25
MAX_BATCH = 64

Hooks = dict[str, Callable[..., Any]]


@dataclass
class ManifestPrediction:
    """``labels``: (slices, rows, columns) uint16 in the volume's grid (None for a
    findings model); ``found``: measures per segment present, manifest order;
    ``findings``: one value per manifest finding."""

    labels: np.ndarray | None
    found: list[SegmentMeasures] = field(default_factory=list)
    findings: list[float] = field(default_factory=list)
    model: str = ""
    measured: dict[str, tuple[str, ...]] = field(default_factory=dict)  # segment -> measures

    def summary(self) -> dict[str, Any]:
        """Per segment its volume (ml) and the other measures the manifest asks for
        (``mean_intensity``, ``max_diameter_mm``), per finding its value; safe to log
        (no PHI)."""
        out: dict[str, Any] = {}
        for m in self.found:
            wanted = self.measured.get(m.name, ("volume",))
            out[m.name] = {"volume_ml": round(m.volume_ml, 1)}
            if "mean_intensity" in wanted:
                out[m.name]["mean_intensity"] = round(m.mean_intensity, 1)
            if "max_diameter" in wanted:
                out[m.name]["max_diameter_mm"] = round(m.max_diameter_mm, 1)
        out.update({f"finding_{i}": round(v, 4) for i, v in enumerate(self.findings)})
        return out


def _tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword) or 0
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}"


class ManifestPipeline:
    """A pipeline made from a manifest (see ``pipelines.base.Pipeline``)."""

    def __init__(self, manifest: Manifest, hooks: Hooks | None = None) -> None:
        self.manifest = manifest
        self._hooks = {stage: (hooks or {})[name] for stage, name in manifest.hooks.items()}
        kind = manifest.outputs.kind
        self.spec = PipelineSpec(
            name=manifest.name,
            version=manifest.version,
            modalities=frozenset(manifest.accepts.modalities),
            min_instances=manifest.accepts.min_slices,
            outputs=("seg", "sr") if kind == "segmentation" else ("sr",),
            description=manifest.description,
        )

    def with_parameters(self, parameters: Mapping[str, Any]) -> ManifestPipeline:
        """This pipeline with a routing rule's run ``parameters`` over its manifest's
        ``outputs.postprocessing`` (threshold, method, largest_component, min_size_ml,
        fill_holes). A name it does not have or a value out of range raises
        ``PipelineFailed`` naming the parameter (the values come from the rules, not
        from a data set)."""
        name = self.manifest.name
        if not parameters:
            return self
        if "infer" in self._hooks:
            raise PipelineFailed(f"pipeline {name} takes no run parameters (its inference is code)")
        known = sorted(Postprocessing.model_fields)
        unknown = sorted(set(parameters) - set(known))
        if unknown:
            raise PipelineFailed(f"run parameter {unknown[0]!r} is not a setting of pipeline"
                                 f" {name}; it takes: {', '.join(known)}")  # fmt: skip
        current = self.manifest.outputs.postprocessing.model_dump()
        try:
            post = Postprocessing.model_validate({**current, **parameters})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise PipelineFailed(
                f"run parameter {where} of pipeline {name}: {first['msg']}"
            ) from None
        outputs = self.manifest.outputs.model_copy(update={"postprocessing": post})
        configured = copy.copy(self)
        configured.manifest = self.manifest.model_copy(update={"outputs": outputs})
        return configured

    def load_model(self) -> Any:
        from pipelines.model import Model  # TensorFlow comes with it

        return Model(self.manifest)

    def prepare(self, datasets: Sequence[Dataset]) -> Volume:
        check_accepts(self.manifest, datasets)
        if "prepare" in self._hooks:
            return self._hooks["prepare"](datasets)  # type: ignore[no-any-return]
        return load_image_stack(datasets)

    def infer(self, model: Any, volume: Volume) -> Any:
        if "infer" in self._hooks:
            return self._hooks["infer"](model, volume)
        return infer(self.manifest, model, volume)

    def encode(self, volume: Volume, prediction: Any, uids: ResultUids) -> list[Dataset]:
        if "encode" in self._hooks:
            results: list[Dataset] = self._hooks["encode"](volume, prediction, uids)
        else:
            results = encode(self.manifest, volume, prediction, uids)
        for ds in results:
            contribute(ds, self.manifest)
        return results


def check_accepts(manifest: Manifest, datasets: Sequence[Dataset]) -> None:
    """``SeriesNotUsable`` naming the first condition of ``accepts`` the series fails."""
    accepts, name = manifest.accepts, manifest.name
    slices = sum(int(ds.get("NumberOfFrames") or 1) for ds in datasets)  # frames of multi-frame
    if slices < accepts.min_slices:
        raise SeriesNotUsable(
            f"{name} needs at least {accepts.min_slices} slices, the series has {slices}"
        )
    for index, ds in enumerate(datasets):
        modality = str(ds.get("Modality", ""))
        if modality not in accepts.modalities:
            raise SeriesNotUsable(
                f"(0008,0060) Modality is {modality or 'missing'}; "
                f"{name} needs {' or '.join(accepts.modalities)}"
            )
        sop_class = str(ds.get("SOPClassUID", ""))
        if accepts.sop_classes and sop_class not in accepts.sop_classes:
            raise SeriesNotUsable(
                f"(0008,0016) SOPClassUID of instance #{index + 1} is {sop_class or 'missing'}; "
                f"{name} needs one of {', '.join(accepts.sop_classes)}"
            )
    first = datasets[0]
    for keyword, pattern in accepts.attributes.items():
        value = first.get(keyword, "")
        text = "\\".join(str(v) for v in value) if isinstance(value, list) else str(value or "")
        if not re.fullmatch(pattern, text):
            raise SeriesNotUsable(f"{_tag(keyword)} does not match what {name} accepts")


def infer(manifest: Manifest, model: Any, volume: Volume) -> ManifestPrediction:
    """Run the manifest's steps around ``model.run`` (see the module docstring)."""
    pre, post = manifest.preprocessing, manifest.outputs.postprocessing
    turn = Reorientation.between(volume.axes, pre.orientation)
    image = turn.apply(volume.voxels)
    grid = tuple(image.shape)
    if pre.shape is not None:
        target = tuple(pre.shape)
    elif pre.spacing is not None:
        target = shape_for_spacing(grid, turn.spacing(volume.spacing), tuple(pre.spacing))
    else:
        target = grid
    x = normalise(resize(image, target, order=1), pre.intensity)
    model_id = f"{manifest.name} {manifest.version}"
    if manifest.outputs.kind == "findings":
        return ManifestPrediction(None, findings=_findings(manifest, model, x), model=model_id)
    output = run_items(model, x, pre)
    if output.shape[:3] != x.shape:
        raise PipelineFailed(
            f"model returned an output of shape {output.shape[:3]}, expected {x.shape}"
        )
    output = turn.undo(resize(output, grid, order=0 if post.method == "labels" else 1))
    labels = clean(to_labels(output, post, manifest.outputs.segments), post, volume.spacing)
    found = measure(labels, volume.voxels, volume.spacing, manifest.outputs.segments)
    if not found:
        wanted = ", ".join(s.name for s in manifest.outputs.segments)
        raise SeriesNotUsable(f"{manifest.name} found none of its segments ({wanted})")
    measured: dict[str, tuple[str, ...]] = {
        s.name: tuple(s.measurements) for s in manifest.outputs.segments
    }
    return ManifestPrediction(labels, found, model=model_id, measured=measured)


def _findings(manifest: Manifest, model: Any, x: np.ndarray) -> list[float]:
    outputs = []
    for chunk, _ in _batches(model, x, manifest.preprocessing):
        outputs.append(np.asarray(chunk, np.float32).reshape(len(chunk), -1))
    values = np.concatenate(outputs)
    found = []
    for finding in manifest.outputs.findings:
        if finding.output >= values.shape[1]:
            raise PipelineFailed(
                f"model returned {values.shape[1]} values; the manifest reads value "
                f"{finding.output}"
            )
        column = values[:, finding.output]
        found.append(float(column.max() if finding.aggregate == "max" else column.mean()))
    return found


def run_items(model: Any, x: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Model output for ``x`` (d, h, w) as (d, h, w, channels) float32."""
    if pre.mode == "patches":
        assert pre.patch is not None
        patch = tuple(pre.patch)
        padded = padded_to(x, patch)
        places = tiles(padded.shape, patch)
        parts: list[np.ndarray] = []
        for chunk, _ in _batches(model, padded, pre, places):
            parts.extend(_channels_last(chunk, pre, 3))
        channels = parts[0].shape[-1]
        out = np.zeros((*padded.shape, channels), np.float32)
        for place, part in zip(places, parts, strict=True):
            out[place] = part
        return out[: x.shape[0], : x.shape[1], : x.shape[2]]
    rank = 2 if pre.mode == "slices" else 3
    parts = [_channels_last(chunk, pre, rank) for chunk, _ in _batches(model, x, pre)]
    joined = np.concatenate(parts)
    return joined if pre.mode == "slices" else joined[0]


def _channels_last(chunk: np.ndarray, pre: Preprocessing, rank: int) -> np.ndarray:
    """(batch, spatial..., channels) float32 from a model output."""
    out = np.asarray(chunk, dtype=np.float32)
    if out.ndim == rank + 1:
        return out[..., None]
    if pre.channels == "first":
        return np.moveaxis(out, 1, -1)
    return out


def _items(x: np.ndarray, pre: Preprocessing, places: list[Any] | None) -> list[np.ndarray]:
    if pre.mode == "volume":
        items = [x]
    elif pre.mode == "slices":
        items = list(x)
    else:
        assert places is not None
        items = [x[place] for place in places]
    if pre.channels == "last":
        return [item[..., None] for item in items]
    if pre.channels == "first":
        return [item[None] for item in items]
    return items


def _batches(
    model: Any, x: np.ndarray, pre: Preprocessing, places: list[Any] | None = None
) -> list[tuple[np.ndarray, int]]:
    """(model output, first item index) for each batch of items."""
    items = _items(x, pre, places)
    size = batch_size(pre, items[0].nbytes)
    out = []
    for start in range(0, len(items), size):
        batch = np.stack(items[start : start + size])
        out.append((np.asarray(model.run(batch)), start))
    return out


def batch_size(pre: Preprocessing, item_bytes: int) -> int:
    """Items per model call: the manifest's number, or sized from free memory."""
    if pre.batch_size != "auto":
        return int(pre.batch_size)
    budget = available_memory() * BATCH_MEMORY_SHARE
    return int(max(1, min(MAX_BATCH, budget // max(1, item_bytes * ACTIVATION_FACTOR))))


def available_memory() -> int:
    """Bytes the system reports available (MemAvailable); 1 GiB when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 30


def encode(
    manifest: Manifest, volume: Volume, prediction: ManifestPrediction, uids: ResultUids
) -> list[Dataset]:
    """[SEG, SR] for a segmentation model, [SR] for a findings model."""
    if prediction.labels is None:
        findings = finding_groups(prediction.findings, manifest, uids)
        return [build_sr(volume, manifest, uids, findings, volume.sources)]
    seg = build_seg(volume, prediction.labels, prediction.found, manifest, uids)
    groups = segment_groups(volume, seg, prediction.found, manifest, uids, prediction.labels)
    return [seg, build_sr(volume, manifest, uids, groups, [*volume.sources, seg])]
