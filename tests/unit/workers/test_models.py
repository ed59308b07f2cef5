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
