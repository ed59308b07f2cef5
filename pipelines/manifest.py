"""The model manifest: ``model.yaml`` beside a trained model makes it a pipeline.

A manifest says which model file to run (SavedModel folder, ``.keras`` file or
frozen graph ``.pb``, with its SHA-256), which series it accepts, how a series
becomes model input (orientation, resampling, intensity, slices / patches /
whole volume), how model output becomes DICOM SEG segments and SR findings, and
who made the algorithm. docs/models.md is the reference for every key.

    ManifestError      the manifest cannot be read or is invalid; the message
                       names the file, the key and its line
    ChecksumMismatch   (a ManifestError) the model file is not the one the
                       manifest's ``model.sha256`` describes

Everything here is pure data and validation: no TensorFlow.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

MANIFEST_FILE = "model.yaml"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_ORIENTATION_AXES = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}


class ManifestError(Exception):
    """The manifest cannot be used; the message says where (file:line, key) and why."""


class ChecksumMismatch(ManifestError):
    """The model's bytes differ from the manifest's ``model.sha256``."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class CodeItem(_Section):
    """A coded concept: ``{code: "12738006", scheme: SCT, meaning: Brain}``."""

    code: Annotated[str, Field(min_length=1, max_length=64)]
    scheme: Annotated[str, Field(min_length=1, max_length=16)]
    meaning: Annotated[str, Field(min_length=1, max_length=64)]


class Algorithm(_Section):
    """Who made the algorithm; goes into TID 4019, the SEG's algorithm
    identification and the Contributing Equipment Sequence."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    version: Annotated[str, Field(min_length=1, max_length=64)]
    authors: list[str] = Field(default_factory=list)
    licence: str = ""
    intended_use: str = ""
    manufacturer: Annotated[str, Field(min_length=1, max_length=64)] = "dicom-node"


class ModelFile(_Section):
    format: Literal["saved-model", "keras", "frozen-graph"]
    path: Annotated[str, Field(min_length=1)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    # The image tensor: a signature input name (saved-model), a tensor name such as
    # "img:0" (frozen-graph); keras models take their single input.
    input: str = ""
    output: str = ""
    signature: str = "serving_default"
    # Other inputs fed a fixed value each call, e.g. {"training:0": false}.
    constants: dict[str, bool | int | float] = Field(default_factory=dict)
    # Shape of one input item without the batch axis, e.g. [128, 128, 128, 1];
    # null for any size. The batch axis is always first.
    input_shape: list[int | None] | None = None
    input_dtype: Literal["float32", "float16", "int16", "uint8"] = "float32"
    # May the model run in float16 on a GPU (TensorFlow's automatic mixed precision)?
    mixed_precision: bool = False

    @model_validator(mode="after")
    def _tensor_names(self) -> ModelFile:
        if self.format == "frozen-graph" and not (self.input and self.output):
            raise ValueError("a frozen-graph model needs input and output tensor names")
        if self.format != "frozen-graph" and self.constants:
            raise ValueError("constants are only fed to frozen-graph models")
        return self


class Accepts(_Section):
    """What series the model can use; any other is skipped with the reason."""

    modalities: list[Annotated[str, Field(pattern=r"^[A-Z]{2,4}$")]]
    sop_classes: list[Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)*$")]] = Field(
        default_factory=list
    )
    min_slices: Annotated[int, Field(ge=1)] = 1
    # Other attribute checks: keyword -> regular expression that must match the
    # whole value (a missing attribute is the empty string).
    attributes: dict[str, str] = Field(default_factory=dict)

    @field_validator("attributes")
    @classmethod
    def _patterns(cls, value: dict[str, str]) -> dict[str, str]:
        from pydicom.datadict import tag_for_keyword

        for keyword, pattern in value.items():
            if tag_for_keyword(keyword) is None:
                raise ValueError(f"{keyword!r} is not a DICOM attribute keyword")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{keyword}: not a valid regular expression: {exc}") from exc
        return value


class Intensity(_Section):
    """``window``: clip to [center - width/2, center + width/2] then scale to 0..1;
    ``zscore``: (v - mean) / std; ``minmax``: scale to 0..1; ``max``: divide by the
    maximum; ``percentile``: clip to the given percentiles then scale to 0..1;
    ``none``: values as stored (after the modality rescale)."""

    method: Literal["none", "window", "zscore", "minmax", "max", "percentile"] = "none"
    center: float | None = None
    width: Annotated[float, Field(gt=0)] | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)

    @model_validator(mode="after")
    def _window(self) -> Intensity:
        if self.method == "window" and (self.center is None or self.width is None):
            raise ValueError("the window method needs center and width")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise ValueError("percentiles must be two numbers with 0 <= low < high <= 100")
        return self


class Preprocessing(_Section):
    # Direction each array axis points to, in patient terms: "SPL" is (z, y, x)
    # with z toward the head, y toward posterior, x toward the patient's left;
    # "RAS" is nibabel's (x, y, z) order.
    orientation: str = "SPL"
    # Resample to a fixed shape (voxels per axis, in the orientation above), or to
    # a voxel spacing in mm; neither keeps the source grid.
    shape: list[Annotated[int, Field(ge=1)]] | None = None
    spacing: list[Annotated[float, Field(gt=0)]] | None = None
    intensity: Intensity = Intensity()
    # volume: the whole 3-D volume is one input item; slices: each 2-D slice along
    # the first axis is an item; patches: 3-D tiles of ``patch`` voxels.
    mode: Literal["volume", "slices", "patches"] = "volume"
    patch: list[Annotated[int, Field(ge=1)]] | None = None
    # Items per model call; "auto" sizes batches from free memory.
    batch_size: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    channels: Literal["last", "first", "none"] = "last"

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, value: str) -> str:
        value = value.upper()
        if len(value) != 3 or sorted(_ORIENTATION_AXES.get(c, -1) for c in value) != [0, 1, 2]:
            raise ValueError("expected three letters naming each patient axis once, e.g. SPL, RAS")
        return value

    @model_validator(mode="after")
    def _grid(self) -> Preprocessing:
        if self.shape is not None and self.spacing is not None:
            raise ValueError("give shape or spacing, not both")
        for key in ("shape", "spacing"):
            value = getattr(self, key)
            if value is not None and len(value) != 3:
                raise ValueError(f"{key} needs three values, one per axis")
        if self.mode == "patches" and (self.patch is None or len(self.patch) != 3):
            raise ValueError("mode patches needs patch: [d, h, w]")
        return self


Measure = Literal["volume", "mean_intensity", "max_diameter"]
_VOLUME: Measure = "volume"


class Segment(_Section):
    label: Annotated[int, Field(ge=1, le=65535)]
    name: Annotated[str, Field(min_length=1, max_length=64)]
    category: CodeItem
    type: CodeItem
    laterality: Literal["right", "left", "bilateral"] | None = None
    colour: tuple[int, int, int] | None = None
    measurements: list[Measure] = Field(default_factory=lambda: [_VOLUME])

    @field_validator("colour")
    @classmethod
    def _colour(cls, value: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if value is not None and not all(0 <= c <= 255 for c in value):
            raise ValueError("colour is three numbers 0-255 (red, green, blue)")
        return value


class Postprocessing(_Section):
    # argmax over the channel axis (label = channel index), or threshold a
    # single-channel probability; "labels": the model already returns labels.
    method: Literal["argmax", "threshold", "labels"] = "threshold"
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.5
    largest_component: bool = False
    min_size_ml: Annotated[float, Field(ge=0)] = 0.0
    fill_holes: bool = False


class Finding(_Section):
    """A classification or regression output reported as an SR measurement."""

    output: Annotated[int, Field(ge=0)] = 0  # index into the model's output vector
    concept: CodeItem
    units: CodeItem = CodeItem(code="1", scheme="UCUM", meaning="no units")
    # At or above this value the finding is reported present (a qualitative
    # evaluation beside the value); none: the value alone is reported.
    positive_threshold: float | None = None
    # How per-slice or per-patch values become one: max or mean.
    aggregate: Literal["max", "mean"] = "max"


class Outputs(_Section):
    kind: Literal["segmentation", "findings"] = "segmentation"
    postprocessing: Postprocessing = Postprocessing()
    segments: list[Segment] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    # CID 100 code for the SR's Procedure Reported.
    procedure: CodeItem = CodeItem(
        code="25045-6", scheme="LN", meaning="CT unspecified body region"
    )
    finding_site: CodeItem | None = None
    seg_series_description: str = ""
    sr_series_description: str = ""

    @model_validator(mode="after")
    def _something(self) -> Outputs:
        if self.kind == "segmentation" and not self.segments:
            raise ValueError("a segmentation model needs at least one segment")
        if self.kind == "findings" and not self.findings:
            raise ValueError("a findings model needs at least one finding")
        labels = [s.label for s in self.segments]
        if len(set(labels)) != len(labels):
            raise ValueError("two segments have the same label")
        return self


class Manifest(_Section):
    """A validated ``model.yaml``; ``folder`` is where it was read from."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    version: Annotated[str, Field(min_length=1, max_length=32)]
    description: str = ""
    algorithm: Algorithm
    model: ModelFile
    accepts: Accepts
    preprocessing: Preprocessing = Preprocessing()
    outputs: Outputs
    # Named code hooks for stages a manifest cannot describe (built-in pipelines
    # only): stage -> hook name from ``pipelines.hooks.HOOKS``.
    hooks: dict[Literal["prepare", "infer", "encode"], str] = Field(default_factory=dict)
    folder: Path = Path(".")

    @property
    def model_path(self) -> Path:
        return self.folder / self.model.path


def read_manifest(folder: Path, verify: bool = True) -> Manifest:
    """Read and validate ``folder/model.yaml``; with ``verify``, check the model
    file exists and has the manifest's SHA-256. Raises ``ManifestError``."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror})") from None
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}:1: a manifest is a mapping of keys (name, model, ...)")
    raw["folder"] = str(folder.resolve())
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(describe_errors(exc, root, path)) from None
    if verify:
        lines = {key: _line_of(root, ("model", key)) for key in ("path", "sha256")}
        verify_model_file(manifest, path, lines)
    return manifest


def verify_model_file(
    manifest: Manifest, path: Path, lines: dict[str, int | None] | None = None
) -> None:
    """Raise ``ManifestError`` naming ``model.path`` when the model file is missing,
    ``ChecksumMismatch`` naming ``model.sha256`` when its bytes differ; ``lines``:
    the line of each of those keys in ``path``, for the message."""

    def where(key: str) -> str:
        line = (lines or {}).get(key)
        return f"{path}:{line}" if line else str(path)

    target = manifest.model_path
    if not target.exists():
        raise ManifestError(f"{where('path')}: model.path: {manifest.model.path} does not exist")
    actual = model_checksum(target)
    if actual != manifest.model.sha256:
        raise ChecksumMismatch(
            f"{where('sha256')}: model.sha256: the model file's SHA-256 is {actual}, "
            f"the manifest says {manifest.model.sha256}"
        )


def model_checksum(target: Path) -> str:
    """SHA-256 of a model file; of a folder (SavedModel): of each file's relative
    path and bytes, in sorted path order."""
    digest = hashlib.sha256()
    if target.is_file():
        _update(digest, target)
        return digest.hexdigest()
    for file in sorted(p for p in target.rglob("*") if p.is_file()):
        digest.update(file.relative_to(target).as_posix().encode() + b"\0")
        _update(digest, file)
    return digest.hexdigest()


def _update(digest: Any, file: Path) -> None:
    with open(file, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc``, or of its nearest parent."""
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def describe_errors(exc: ValidationError, root: yaml.Node | None, path: Path) -> str:
    """One line per error: ``file:line: key.path: what is wrong``."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(root, loc)
        where = f"{path}:{line}" if line else str(path)
        message = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {key}: {message}")
    return "invalid model manifest\n  " + "\n  ".join(lines)
