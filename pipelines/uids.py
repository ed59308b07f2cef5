"""Deterministic result UIDs.

A job that runs twice (redelivered task, operator retry) must write the very
same SOP Instance and Series Instance UIDs, so the archive stores the result
once. UIDs are derived from the source instance UIDs, the pipeline name and
version, the output name and the kind of UID.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.uid import PYDICOM_ROOT_UID, generate_uid


class DerivedUids:
    """UIDs derived from a job's identity; same inputs, same UIDs."""

    def __init__(
        self,
        source_uids: Iterable[str],
        pipeline: str,
        version: str,
        prefix: str = PYDICOM_ROOT_UID,
    ) -> None:
        self._sources = sorted(source_uids)
        self._pipeline = pipeline
        self._version = version
        self._prefix = prefix

    def uid(self, output: str, kind: str) -> str:
        """UID for ``kind`` ("series", "instance") of ``output`` ("seg", "sr", ...)."""
        return generate_uid(
            prefix=self._prefix,
            entropy_srcs=[*self._sources, self._pipeline, self._version, output, kind],
        )
