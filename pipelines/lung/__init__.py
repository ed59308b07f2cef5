"""Lung CT pipeline: chest CT series -> right/left lung SEG + TID 1500 SR.

The model (``pipelines/models/lung_ct``, shipped as package data) labels each
voxel: 0 outside the body, 1 body but not lung, 2 right lung, 3 left lung.
From the labels this pipeline measures, per lung, its volume (ml) and its
emphysema index: the percentage of that lung's voxels below -950 HU (%LAA-950).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from pipelines.base import PipelineFailed, PipelineSpec, ResultUids, SeriesNotUsable, Volume
from pipelines.lung.encode import encode_results
from pipelines.seg import CHUNK_VOXELS
from pipelines.volume import load_ct_volume

LABEL_RIGHT_LUNG = 2
LABEL_LEFT_LUNG = 3
EMPHYSEMA_THRESHOLD_HU = -950
MODEL_FOLDER = "models/lung_ct"  # package data inside ``pipelines``

_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}


@dataclass(frozen=True)
class LungMeasures:
    """What was measured on one lung. ``side`` is "right" or "left"."""

    side: str
    label: int
    voxel_count: int
    volume_ml: float
    emphysema_percent: float


@dataclass
class LungPrediction:
    """``labels``: (z, y, x) uint8 in the volume's canonical order, values 0-3 as
    above. ``lungs``: the lungs that were found, right first; a lung the model did
    not find is absent."""

    labels: np.ndarray
    lungs: list[LungMeasures]
    model: str = ""  # "name version" of the model that made ``labels``, if known

    def summary(self) -> dict[str, dict[str, float]]:
        """Per lung volume and emphysema index, rounded; safe to log (no PHI)."""
        return {
            m.side: {
                "volume_ml": round(m.volume_ml, 1),
                "emphysema_percent": round(m.emphysema_percent, 2),
            }
            for m in self.lungs
        }


class LungCT:
    """The ``lung-ct`` pipeline (see ``pipelines.base.Pipeline``)."""

    spec = PipelineSpec(
        name="lung-ct",
        version="1.0.0",
        modalities=frozenset({"CT"}),
        min_instances=2,
        outputs=("seg", "sr"),
        description="Right and left lung segmentation with volume and emphysema index",
    )

    def load_model(self) -> Any:
        """Load the lung model from the installed package data."""
        from pipelines.model import load_model  # TensorFlow comes with it

        folder = resources.files("pipelines")
        for part in MODEL_FOLDER.split("/"):
            folder = folder.joinpath(part)
        with resources.as_file(folder) as path:
            return load_model(path)

    def prepare(self, datasets: Sequence[Dataset]) -> Volume:
        """Check the series is CT images (single- or multi-frame), then build the volume."""
        for index, ds in enumerate(datasets):
            _check_is_ct_image(ds, index)
        return load_ct_volume(datasets)

    def infer(self, model: Any, volume: Volume) -> LungPrediction:
        """Run the model on the volume and measure each lung it finds."""
        spacing = np.asarray(volume.spacing, dtype=np.float32)
        output = model(volume=volume.voxels, spacing=spacing)
        labels = np.asarray(output["labels"])
        if labels.shape != volume.voxels.shape:
            raise PipelineFailed(
                f"model returned labels of shape {labels.shape}, expected {volume.voxels.shape}"
            )
        prediction = measure_lungs(volume, labels.astype(np.uint8, copy=False))
        prediction.model = _model_id(model)
        return prediction

    def encode(self, volume: Volume, prediction: LungPrediction, uids: ResultUids) -> list[Dataset]:
        """The SEG and the SR, in that order."""
        return encode_results(volume, prediction, uids, self.spec)


def measure_lungs(volume: Volume, labels: np.ndarray) -> LungPrediction:
    """Volume (ml) and emphysema index (% voxels < -950 HU) of each labelled lung.

    ``labels``: (z, y, x) uint8 aligned with ``volume.voxels``. Raises
    ``SeriesNotUsable`` when neither lung is present. One pass over the volume,
    a few slices at a time (each slab's masks stay in the CPU cache).
    """
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    sides = (("right", LABEL_RIGHT_LUNG), ("left", LABEL_LEFT_LUNG))
    counts, low = [0, 0], [0, 0]
    step = max(1, CHUNK_VOXELS // max(1, labels[0].size))
    for z in range(0, len(labels), step):
        slab = labels[z : z + step]
        dark = volume.voxels[z : z + step] < EMPHYSEMA_THRESHOLD_HU
        for k, (_, label) in enumerate(sides):
            mask = slab == label
            counts[k] += int(np.count_nonzero(mask))
            low[k] += int(np.count_nonzero(mask & dark))
    lungs = [
        LungMeasures(
            side=side,
            label=label,
            voxel_count=counts[k],
            volume_ml=counts[k] * voxel_ml,
            emphysema_percent=100.0 * low[k] / counts[k],
        )
        for k, (side, label) in enumerate(sides)
        if counts[k]
    ]
    if not lungs:
        raise SeriesNotUsable("no lung found in the series; nothing to measure")
    return LungPrediction(labels=labels, lungs=lungs)


def _model_id(model: Any) -> str:
    manifest = getattr(model, "manifest", None)
    if manifest is None:
        return ""
    return f"{manifest.name} {manifest.version}"


def _check_is_ct_image(ds: Dataset, index: int) -> None:
    modality = ds.get("Modality", "")
    if modality != "CT":
        raise SeriesNotUsable(f"(0008,0060) Modality is {modality or 'missing'}; lung-ct needs CT")
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in _IMAGE_SOP_CLASSES:
        raise SeriesNotUsable(
            f"(0008,0016) SOPClassUID of instance #{index + 1} is {sop_class or 'missing'}; "
            f"lung-ct needs one of {', '.join(sorted(_IMAGE_SOP_CLASSES.values()))}"
        )


__all__ = ["LungCT", "LungMeasures", "LungPrediction", "measure_lungs"]
