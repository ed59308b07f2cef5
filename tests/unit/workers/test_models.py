"""The model cache: one load per process, and a load cut short marks the process broken."""

from __future__ import annotations

import gc

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from pipelines.base import PipelineFailed
from pipelines.lung import LungCT
from workers.models import ModelCache, ModelLoadFailed


class CutShort(LungCT):
    def load_model(self):  # type: ignore[no-untyped-def]
        raise SoftTimeLimitExceeded()


class Refuses(LungCT):
    def load_model(self):  # type: ignore[no-untyped-def]
        raise PipelineFailed("model file checksum does not match")


def test_a_model_load_cut_short_marks_the_process_broken():
    cache = ModelCache()
    with pytest.raises(ModelLoadFailed, match="SoftTimeLimitExceeded"):
        cache.get(CutShort())
    assert cache.broken


def test_a_model_the_pipeline_refuses_is_its_own_error_and_the_process_stays():
    cache = ModelCache()
    with pytest.raises(PipelineFailed, match="checksum"):
        cache.get(Refuses())
    assert not cache.broken


class Loads(LungCT):
    def load_model(self):  # type: ignore[no-untyped-def]
        return {"weights": [1.0, 2.0]}


def test_a_loaded_model_is_kept_out_of_the_collectors_way():
    cache = ModelCache()
    gc.unfreeze()
    try:
        model = cache.get(Loads())
        assert gc.get_freeze_count() > 0
        assert cache.get(Loads()) is model
    finally:
        gc.unfreeze()


def test_a_loaded_model_changed_on_disk_is_warned_about_once_and_kept(tmp_path, caplog):
    import shutil

    from pipelines.generic import ManifestPipeline
    from pipelines.manifest import read_manifest
    from pipelines.registry import BUILTIN, builtin_folder

    folder = tmp_path / "brain"
    shutil.copytree(builtin_folder(BUILTIN["brain-t1"]), folder)

    class Stub(ManifestPipeline):
        def load_model(self):  # type: ignore[no-untyped-def]
            return {"weights": [1.0]}

    pipeline = Stub(read_manifest(folder))
    cache = ModelCache()
    model = cache.get(pipeline)
    cache.get(pipeline)
    assert "changed on disk" not in caplog.text
    with open(folder / "graph.pb", "ab") as fh:  # new weights, written in place
        fh.write(b"\0")
    assert cache.get(pipeline) is model, "the running worker keeps the model it loaded"
    cache.get(pipeline)
    warnings = [r.getMessage() for r in caplog.records if "changed on disk" in r.getMessage()]
    assert len(warnings) == 1
    assert str(folder) in warnings[0] and "restart the node and its workers" in warnings[0]
    gc.unfreeze()
