"""Retention: purge received images once their work has ended.

An operator can purge a failed job's images at once (``dicom-node purge``).

A series is purged ``storage.retention_hours`` after its last instance when
its study is routed and none of its jobs is queued, running or failed
(failures are kept for inspection until an operator retries or purges them).
``retention_hours: 0`` keeps everything.
"""

from __future__ import annotations

import logging

from dicom_node.index import Index
from dicom_node.settings import StorageSettings
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)


def purge_sources(index: Index, spool: Spool, settings: StorageSettings, now: float) -> int:
    """Delete the files and index rows of expired series; returns how many series."""
    if settings.retention_hours <= 0:
        return 0
    purged = 0
    cutoff = now - settings.retention_hours * 3600
    for series_uid in index.purgeable_series(cutoff):
        # Checked again inside the purge's transaction: a series that received an
        # instance (or got a job) since it was picked is left alone, whole.
        if index.forget_series(series_uid, spool.remove_all, received_before=cutoff):
            purged += 1
    if purged:
        logger.info("retention: purged %d series", purged)
    return purged


def purge_series(index: Index, spool: Spool, series_uid: str) -> int:
    """Delete one series' received files and index rows now; returns how many files."""
    return index.forget_series(series_uid, spool.remove_all)
