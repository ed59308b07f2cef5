"""Trained models loaded from their manifest and run through TensorFlow.

Three formats (``model.format`` in ``model.yaml``):

- ``saved-model``: a SavedModel folder, called through one signature;
- ``keras``: a ``.keras`` file, called in inference mode;
- ``frozen-graph``: a TF1 frozen ``GraphDef`` (``.pb``), imported into a
  ``tf.compat.v1.wrap_function`` and pruned to the named input and output
  tensors; other placeholders are fed the manifest's ``constants``.

Each loaded model is wrapped in one ``tf.function`` whose input signature has
a free batch axis (and the item shape the model declares), so it is traced
once per (model, input signature) and never again per study or per batch size
(``Model.tracing_count``). The same code runs on CPU and GPU; on a GPU, a
manifest with ``mixed_precision: true`` turns on TensorFlow's automatic mixed
precision graph rewrite.

The model file's SHA-256 is checked against the manifest before loading
(``pipelines.manifest.read_manifest``). TensorFlow is imported only when a
model is loaded, inside the process that runs it, never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines.base import PipelineFailed
from pipelines.manifest import Manifest, read_manifest

# TensorFlow's CPU kernels require tensor buffers aligned to this many bytes.
TF_ALIGNMENT = 64


class ModelFormatError(PipelineFailed):
    """The model file does not have the tensors or shape the manifest names."""


class Model:
    """A loaded model: ``run(batch)`` for the generic pipeline, and for SavedModels
    also ``model(**named_inputs)`` returning the signature's named outputs."""

    def __init__(self, manifest: Manifest) -> None:
        import tensorflow as tf  # heavy; imported in the process that runs the model

        self.manifest = manifest
        self._tf = tf
        if manifest.model.mixed_precision and tf.config.list_physical_devices("GPU"):
            # A process-wide graph rewrite (float16 where safe); only on a GPU, where
            # the manifest allows it. CPU runs stay float32.
            tf.config.optimizer.set_experimental_options({"auto_mixed_precision": True})
        loader = {
            "saved-model": self._load_saved_model,
            "keras": self._load_keras,
            "frozen-graph": self._load_frozen_graph,
        }[manifest.model.format]
        call, item_shape = loader(Path(manifest.model_path))
        if manifest.model.input_shape is not None:
            item_shape = list(manifest.model.input_shape)
        self.item_shape: list[int | None] = item_shape
        spec = tf.TensorSpec([None, *item_shape], manifest.model.input_dtype)
        self._traced = tf.function(call, input_signature=[spec])

    @property
    def key(self) -> tuple[str, str]:
        return (self.manifest.name, self.manifest.version)

    @property
    def tracing_count(self) -> int:
        """How often the model's function was traced in this process (1 after use)."""
        return int(self._traced.experimental_get_tracing_count())

    def run(self, batch: np.ndarray) -> np.ndarray:
        """One call: ``batch`` has the batch axis first, then the item shape."""
        array = np.asarray(batch, dtype=self.manifest.model.input_dtype)
        return np.asarray(self._traced(self._tensor(array)))

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Call a SavedModel's signature with named inputs (cast to its dtypes)."""
        signature = getattr(self, "_signature", None)
        if signature is None:
            raise TypeError(f"model {self.manifest.name} takes one input: use run()")
        _, specs = signature.structured_input_signature
        missing = set(specs) - set(inputs)
        if missing:
            raise TypeError(f"model {self.manifest.name} needs inputs {sorted(missing)}")
        tensors = {
            name: self._tensor(np.asarray(inputs[name], dtype=spec.dtype.as_numpy_dtype))
            for name, spec in specs.items()
        }
        result: dict[str, Any] = signature(**tensors)
        return {name: value.numpy() for name, value in result.items()}

    def _load_saved_model(self, path: Path) -> tuple[Any, list[int | None]]:
        loaded = self._tf.saved_model.load(str(path))
        self._loaded = loaded  # keeps the signature's variables alive
        try:
            self._signature = loaded.signatures[self.manifest.model.signature]
        except KeyError:
            raise ModelFormatError(
                f"model.signature: {self.manifest.model.signature!r} is not in the SavedModel"
            ) from None
        _, specs = self._signature.structured_input_signature
        name = self.manifest.model.input or next(iter(specs))
        if name not in specs:
            raise ModelFormatError(f"model.input: the signature has no input {name!r}")
        output = self.manifest.model.output
        signature = self._signature

        def call(x: Any) -> Any:
            result = signature(**{name: x})
            return result[output] if output else next(iter(result.values()))

        return call, list(specs[name].shape)[1:]

    def _load_keras(self, path: Path) -> tuple[Any, list[int | None]]:
        import keras

        net = keras.saving.load_model(str(path), compile=False)
        self._net = net
        output = self.manifest.model.output

        def call(x: Any) -> Any:
            result = net(x, training=False)
            if isinstance(result, dict):
                return result[output] if output else next(iter(result.values()))
            if isinstance(result, (list, tuple)):
                return result[0]
            return result

        return call, list(net.inputs[0].shape)[1:]

    def _load_frozen_graph(self, path: Path) -> tuple[Any, list[int | None]]:
        tf = self._tf
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(path.read_bytes())
        wrapped = tf.compat.v1.wrap_function(
            lambda: tf.compat.v1.import_graph_def(graph_def, name=""), []
        )
        graph = wrapped.graph
        model = self.manifest.model
        try:
            image = graph.get_tensor_by_name(model.input)
            fixed = [graph.get_tensor_by_name(name) for name in model.constants]
            fetch = graph.get_tensor_by_name(model.output)
        except (KeyError, ValueError) as exc:
            raise ModelFormatError(
                f"a tensor the manifest names is not in the graph ({exc})"
            ) from None
        pruned = wrapped.prune(feeds=[image, *fixed], fetches=fetch)
        values = [
            tf.constant(value, dtype=tensor.dtype)
            for value, tensor in zip(model.constants.values(), fixed, strict=True)
        ]

        def call(x: Any) -> Any:
            return pruned(x, *values)

        shape = image.shape.as_list() if image.shape.rank is not None else []
        return call, shape[1:]

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


# The lung tests and the lung hook know the loaded model by this name.
SavedModel = Model


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array whose data starts on a ``TF_ALIGNMENT`` boundary, so a
    model can read it without a copy. Same use as ``np.empty``."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + TF_ALIGNMENT, dtype=np.uint8)
    offset = -raw.ctypes.data % TF_ALIGNMENT
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def load_model(folder: Path) -> Model:
    """Check and load the model a manifest folder describes."""
    return Model(read_manifest(folder))


def configure_threads(intra_op: int, inter_op: int) -> None:
    """TensorFlow's thread pools (0: TensorFlow's default). Must run before the
    first model loads in the process; later calls are ignored by TensorFlow."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:  # the runtime is already initialised in this process
        pass
