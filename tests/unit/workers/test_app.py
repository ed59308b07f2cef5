"""The task options a GPU worker relies on are explicit and the same in both modes."""

from __future__ import annotations

import pytest
from celery import Celery

from dicom_node.lanes import LANES, broker_priority, consumed, queue_name
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
    assert app.conf.task_default_queue == f"{s.workers.queue}.default.normal"
    assert app.conf.broker_transport_options["queue_order_strategy"] == "priority"
    assert app.conf.accept_content == ["json"]


def test_embedded_broker_is_a_file_transport_under_storage(tmp_path):
    app = make_app(settings(tmp_path))
    assert app.conf.broker_url.startswith("filesystem://")
    options = app.conf.broker_transport_options
    assert options["data_folder_in"] == str(tmp_path / "broker" / "queue")
    assert (tmp_path / "broker" / "queue").is_dir()


def test_redis_visibility_timeout_outlasts_the_task_time_limit(tmp_path):
    s = settings(tmp_path, "redis://127.0.0.1:6399/0")
    conf = make_app(s).conf
    timeout = conf.broker_transport_options["visibility_timeout"]
    assert timeout > s.workers.task_time_limit_seconds + 30
    assert conf.result_backend_transport_options["visibility_timeout"] == timeout
    assert conf.worker_enable_remote_control, "celery inspect and Flower need it"


def test_lanes_are_consumed_urgent_first_for_every_device_class():
    assert consumed("dicom-node", ["gpu", "cpu"]) == [
        "dicom-node.gpu.urgent", "dicom-node.cpu.urgent",
        "dicom-node.gpu.normal", "dicom-node.cpu.normal",
        "dicom-node.gpu.offpeak", "dicom-node.cpu.offpeak",
    ]  # fmt: skip
    assert consumed("q", ["cpu"], ("urgent",)) == ["q.cpu.urgent"]
    with pytest.raises(ValueError, match="device class"):
        queue_name("q", "GPU 1", "normal")
    with pytest.raises(ValueError, match="lane is one of"):
        queue_name("q", "gpu", "asap")


def test_priority_orders_jobs_within_a_lane_and_never_across_lanes():
    steps = {lane: [broker_priority(lane, p) for p in range(9, -1, -1)] for lane in LANES}
    for lane, order in steps.items():
        assert order == sorted(order), f"{lane}: a higher priority is taken first"
    assert max(steps["urgent"]) < min(steps["normal"])
    assert max(steps["normal"]) < min(steps["offpeak"]) and max(steps["offpeak"]) <= 9
