"""The task options a GPU worker relies on are explicit and the same in both modes."""

from __future__ import annotations

import pytest
from celery import Celery

from dicom_node.settings import Settings
from workers.app import TASK_NAME, make_app
from workers.tasks import register


def settings(tmp_path, url: str = "embedded") -> Settings:
    return Settings.model_validate({"storage": {"dir": str(tmp_path)}, "broker": {"url": url}})


@pytest.mark.parametrize("url", ["embedded", "redis://127.0.0.1:6399/0"])
def test_late_acks_prefetch_one_and_redelivery_on_worker_loss(tmp_path, url):
    s = settings(tmp_path, url)
    app: Celery = make_app(s)
    task = register(app, s)
    assert task.name == TASK_NAME
    assert task.acks_late and task.reject_on_worker_lost
    assert task.max_retries == 0, "attempts are counted by the node, not by Celery"
    assert task.soft_time_limit == s.workers.task_time_limit_seconds
    assert task.time_limit > task.soft_time_limit
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_default_queue == s.workers.queue
    assert app.conf.accept_content == ["json"]


def test_embedded_broker_is_a_file_transport_under_storage(tmp_path):
    app = make_app(settings(tmp_path))
    assert app.conf.broker_url.startswith("filesystem://")
    options = app.conf.broker_transport_options
    assert options["data_folder_in"] == str(tmp_path / "broker" / "queue")
    assert (tmp_path / "broker" / "queue").is_dir()


def test_redis_visibility_timeout_outlasts_the_task_time_limit(tmp_path):
    s = settings(tmp_path, "redis://127.0.0.1:6399/0")
    timeout = make_app(s).conf.broker_transport_options["visibility_timeout"]
    assert timeout > s.workers.task_time_limit_seconds + 30
