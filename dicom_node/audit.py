"""The configuration audit log, and noticing that the config file changed.

Every configuration that took effect (at start, and at each reload) is
appended to ``routing.audit_log`` as one JSON line: when, the event, the
file, its SHA-256 and which keys changed (``rules.<name>``,
``destinations.<name>``, ``node.port`` …). Only key names and hashes are
written: no values, so no patient data and no passwords in URLs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dicom_node.settings import Settings


@dataclass(frozen=True)
class FileState:
    """What tells a changed file: its modification time, size and inode."""

    mtime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileState | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return cls(st.st_mtime_ns, st.st_size, st.st_ino)


def file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json", by_alias=True) if isinstance(value, BaseModel) else value


def _named(items: dict[str, Any], prefix: str, old: dict[str, Any]) -> list[str]:
    keys = []
    for name in sorted(set(items) | set(old)):
        if name not in old:
            keys.append(f"{prefix}.{name} (added)")
        elif name not in items:
            keys.append(f"{prefix}.{name} (removed)")
        elif _dump(items[name]) != _dump(old[name]):
            keys.append(f"{prefix}.{name}")
    return keys


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """The keys whose values differ, by name; rules by rule name."""
    keys: list[str] = []
    for section in Settings.model_fields:
        if section in ("destinations", "rules", "source"):
            continue
        a, b = _dump(getattr(old, section)), _dump(getattr(new, section))
        if isinstance(a, dict) and isinstance(b, dict):
            keys += [f"{section}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            keys.append(section)
    keys += _named(dict(new.destinations), "destinations", dict(old.destinations))
    keys += _named({r.name: r for r in new.rules}, "rules",
                   {r.name: r for r in old.rules})  # fmt: skip
    if [r.name for r in old.rules] != [r.name for r in new.rules] and not any(
        k.startswith("rules.") and k.endswith(("(added)", "(removed)")) for k in keys
    ):
        keys.append("rules (order)")
    return keys


def audit_path(settings: Settings) -> Path:
    path = Path(settings.routing.audit_log).expanduser()
    return path if path.is_absolute() else settings.storage.dir / path


def append(settings: Settings, event: str, config: Path | None, keys: list[str],
           now: float | None = None) -> None:  # fmt: skip
    """Append one line; durable (fsync) because it is a record of what ran."""
    now = time.time() if now is None else now
    entry = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
        "event": event,
        "file": str(config) if config is not None else None,
        "sha256": file_hash(config) if config is not None else "",
        "changed": keys,
        "rules": len(settings.rules),
    }
    path = audit_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
