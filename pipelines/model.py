"""Models described by a manifest (``model.yaml``) and run through TensorFlow.

A manifest folder holds ``model.yaml`` and the exported model it names::

    name: lung-ct-threshold
    version: "1.0.0"
    format: tf-saved-model
    path: saved_model            # relative to the manifest folder
    signature: serving_default
    inputs:
      volume: {dtype: int16, shape: [null, null, null], description: "..."}
      spacing: {dtype: float32, shape: [3], description: "..."}
    outputs:
      labels: {dtype: uint8, shape: [null, null, null], description: "..."}

TensorFlow is imported only when a model is loaded, inside the process that
runs it (a Celery worker child), never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

# TensorFlow's CPU kernels require tensor buffers aligned to this many bytes.
TF_ALIGNMENT = 64


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dtype: str
    shape: list[int | None]
    description: str = ""


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    format: Literal["tf-saved-model"] = "tf-saved-model"
    path: str = "saved_model"
    signature: str = "serving_default"
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    description: str = ""


def read_manifest(folder: Path) -> ModelManifest:
    """Read and validate ``folder/model.yaml``."""
    with open(folder / "model.yaml", encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    return ModelManifest.model_validate(raw)


class SavedModel:
    """A loaded TensorFlow SavedModel called through its manifest's signature.

    Call with numpy arrays keyed by input name; returns numpy arrays keyed by
    output name. Inputs are cast to the dtypes the manifest declares.
    """

    def __init__(self, folder: Path, manifest: ModelManifest) -> None:
        import tensorflow as tf  # heavy; imported in the process that runs the model

        self.manifest = manifest
        self._tf = tf
        self._loaded = tf.saved_model.load(str(folder / manifest.path))
        self._fn = self._loaded.signatures[manifest.signature]

    @property
    def key(self) -> tuple[str, str]:
        return (self.manifest.name, self.manifest.version)

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        missing = set(self.manifest.inputs) - set(inputs)
        if missing:
            raise TypeError(f"model {self.manifest.name} needs inputs {sorted(missing)}")
        tensors = {
            name: self._tensor(np.asarray(inputs[name], dtype=spec.dtype))
            for name, spec in self.manifest.inputs.items()
        }
        result: dict[str, Any] = self._fn(**tensors)
        return {name: result[name].numpy() for name in self.manifest.outputs}

    def _tensor(self, array: np.ndarray) -> Any:
        """A tensor sharing ``array``'s memory where TensorFlow allows it.

        ``tf.convert_to_tensor`` copies (measured: +2x the array's size on a
        512x512x300 int16 volume); DLPack hands the buffer over without a copy,
        but TensorFlow's kernels need it 64-byte aligned (``aligned_empty``).
        """
        if array.flags.c_contiguous and array.ctypes.data % TF_ALIGNMENT == 0:
            try:
                return self._tf.experimental.dlpack.from_dlpack(array.__dlpack__())
            except (AttributeError, TypeError, ValueError, RuntimeError):
                pass
        return self._tf.convert_to_tensor(array)


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array whose data starts on a ``TF_ALIGNMENT`` boundary, so a
    model can read it without a copy. Same use as ``np.empty``."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + TF_ALIGNMENT, dtype=np.uint8)
    offset = -raw.ctypes.data % TF_ALIGNMENT
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def load_model(folder: Path) -> SavedModel:
    """Load the model a manifest folder describes."""
    return SavedModel(folder, read_manifest(folder))
