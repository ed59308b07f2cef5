"""Retention: purge received images once their work has ended.

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
    for series_uid in index.purgeable_series(now - settings.retention_hours * 3600):
        for _, path in index.files_of(series_uid):
            spool.remove(path)
        index.forget_series(series_uid)
        purged += 1
    if purged:
        logger.info("retention: purged %d series", purged)
    return purged
