"""Typed configuration: ``config.yaml`` → ``Settings``.

Every section is a pydantic model with ``extra="forbid"``: a misspelt key is an
error that names the key and its line in the file, never a silently ignored
setting. Relative paths resolve against the folder of the config file.

    ConfigError          the file cannot be read, parsed or validated; its
                         message names the file, the key and the line
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dicom_node.ruleset import Match, RoutingSettings, Rule
from dicom_node.state import is_postgres_url

__all__ = ["Match", "Rule", "RoutingSettings"]

DEFAULT_AE_TITLE = "DICOM-NODE"


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


def _check_ae_title(value: str) -> str:
    # PS3.5 AE VR: 1-16 characters, no backslash, no control characters,
    # leading/trailing spaces are not significant.
    stripped = value.strip()
    if not 1 <= len(stripped) <= 16:
        raise ValueError(f"an AE title has 1 to 16 characters, found {len(stripped)}")
    if "\\" in stripped or any(ord(c) < 32 or ord(c) > 126 for c in stripped):
        raise ValueError("an AE title has printable ASCII characters and no backslash")
    return stripped


AeTitle = Annotated[str, AfterValidator(_check_ae_title)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(ge=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Section):
    """DICOM TLS (PS3.15 Basic TLS Secure Transport; TLS 1.2 or later).

    On the SCP (``node.tls``): ``port`` listens with TLS beside ``node.port``, or
    instead of it with ``only: true``; a client must present a certificate signed
    by ``ca_file`` when ``require_client_certificate``. For a destination
    (``destinations.<name>.tls``): ``ca_file`` verifies the destination's
    certificate (the system's CAs when not given), ``certificate``/``key`` are
    ours when it asks for one; ``port`` and ``only`` do not apply.
    """

    port: Annotated[int, Field(ge=0, le=65535)] | None = None
    certificate: Path | None = None
    key: Path | None = None
    ca_file: Path | None = None
    require_client_certificate: bool = True
    only: bool = False
    verify_hostname: bool = False  # destinations: check the name in its certificate too


class NodeSettings(_Section):
    ae_title: AeTitle = DEFAULT_AE_TITLE
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 11112
    stable_after_seconds: Seconds = 30.0
    # After an association that brought instances of a series ended unfinished
    # (aborted, lost, failed stores), its series waits this long for the sender to
    # send again before a quiet or release trigger acts on it (0: no wait).
    interrupted_hold_seconds: Seconds = 300.0
    allowed_calling_aets: list[AeTitle] = Field(default_factory=list)
    require_called_aet: bool = True
    max_associations: Annotated[int, Field(ge=1, le=1000)] = 10
    uid_root: str = "1.2.826.0.1.3680043.8.498."
    tls: TlsSettings | None = None

    @field_validator("tls")
    @classmethod
    def _tls(cls, value: TlsSettings | None) -> TlsSettings | None:
        if value is not None:
            if value.port is None or value.certificate is None or value.key is None:
                raise ValueError("node.tls needs port, certificate and key")
            if value.require_client_certificate and value.ca_file is None:
                raise ValueError("node.tls.require_client_certificate needs ca_file")
        return value

    @field_validator("uid_root")
    @classmethod
    def _uid_root(cls, value: str) -> str:
        if not re.fullmatch(r"([0-9]+\.)+", value) or len(value) > 40:
            raise ValueError("a UID root is digits and dots, ends with a dot, ≤ 40 characters")
        return value


class Peer(_Section):
    """One allowed sender: its calling AE title and, optionally, its address or network."""

    ae_title: AeTitle
    network: str | None = None  # "10.1.2.3", "10.1.0.0/16", "fd00::/8"; None: any

    @field_validator("network")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an IP address or network: {exc}") from None
        return value


class ReceiveSettings(_Section):
    """Limits of the receiving edge (the SCP). Defaults measured on 2 cores; see
    docs/operations.md."""

    # Receiving processes sharing the port (the node's listening socket; with the
    # pynetdicom engine SO_REUSEPORT), each a full SCP on the
    # one spool and index. 1: the node process receives alone.
    processes: Annotated[int, Field(ge=1, le=64)] = 1
    # The DICOM upper layer that receives: ``native`` (dicom_node.ul, our own,
    # several times faster) or ``pynetdicom`` (the fallback; docs/operations.md).
    engine: Literal["native", "pynetdicom"] = "native"
    max_pdu_bytes: Annotated[int, Field(ge=0, le=2**32 - 1)] = 1048576  # 0: unlimited
    max_instance_mb: Annotated[float, Field(gt=0)] = 2048.0
    max_inflated_mb: Annotated[float, Field(gt=0)] = 2048.0
    acse_timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    dimse_timeout_seconds: Annotated[float, Field(gt=0)] = 60.0
    network_timeout_seconds: Annotated[float, Field(gt=0)] = 60.0
    # On stop (SIGTERM): new associations are refused at once, those in progress get
    # this long to end (native engine) before their connections are closed.
    drain_seconds: Annotated[float, Field(ge=0, le=3600)] = 10.0
    # Concurrent associations one calling AE title (at one address) may hold,
    # across all receiving processes.
    max_associations_per_peer: Annotated[int, Field(ge=1, le=1000)] = 4
    # Allowed senders. Empty (and node.allowed_calling_aets empty): any calling AE.
    peers: list[Peer] = Field(default_factory=list)


class StorageSettings(_Section):
    dir: Path = Path("var")
    min_free_mb: Annotated[int, Field(ge=0)] = 500
    retention_hours: Annotated[float, Field(ge=0)] = 72.0
    # The node's tables: a SQLite file (default <dir>/node.sqlite; keep it on a
    # local disk, never on NFS: workers never open it) or a PostgreSQL URL,
    # postgresql://user@host:5432/dbname, which several receiving nodes can share.
    database: str | None = None
    # False: files 0600 and folders 0700 (the node's user only); True: the
    # node's group may read them too (0640/0750), e.g. workers under another user.
    group_access: bool = False

    @field_validator("database")
    @classmethod
    def _database(cls, value: str | None) -> str | None:
        if value is not None and "://" in value and not is_postgres_url(value):
            raise ValueError("expected a SQLite file path or a postgresql://… URL")
        return value

    @property
    def database_target(self) -> str | Path:
        """A ``postgresql://`` URL, or the SQLite file's path."""
        if self.database is None:
            return self.dir / "node.sqlite"
        return self.database if is_postgres_url(self.database) else Path(self.database)


class BrokerSettings(_Section):
    url: str = "embedded"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value != "embedded" and not re.match(r"(redis|rediss|amqp|sqla\+[a-z]+)://", value):
            raise ValueError("expected 'embedded' or a broker URL such as redis://host:6379/0")
        return value

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"


class WorkerSettings(_Section):
    concurrency: Annotated[int, Field(ge=1, le=64)] = 1
    queue: str = "dicom-node"
    task_time_limit_seconds: Annotated[float, Field(gt=0)] = 1800.0
    heartbeat_seconds: Annotated[float, Field(gt=0)] = 10.0
    lease_seconds: Annotated[float, Field(gt=0)] = 120.0
    requeue_after_seconds: Annotated[float, Field(gt=0)] = 600.0
    max_attempts: Annotated[int, Field(ge=1)] = 5
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 120.0
    # TensorFlow thread pools per worker process; 0: TensorFlow's default (all cores).
    intra_op_threads: Annotated[int, Field(ge=0, le=256)] = 0
    inter_op_threads: Annotated[int, Field(ge=0, le=256)] = 0


class SendSettings(_Section):
    max_attempts: Annotated[int, Field(ge=1)] = 20
    initial_backoff_seconds: Annotated[float, Field(gt=0)] = 5.0
    max_backoff_seconds: Annotated[float, Field(gt=0)] = 600.0
    timeout_seconds: Annotated[float, Field(gt=0)] = 60.0


class Destination(_Section):
    ae_title: AeTitle
    host: str
    port: Port
    tls: TlsSettings | None = None


class Settings(_Section):
    node: NodeSettings = NodeSettings()
    receive: ReceiveSettings = ReceiveSettings()
    storage: StorageSettings = StorageSettings()
    broker: BrokerSettings = BrokerSettings()
    workers: WorkerSettings = WorkerSettings()
    send: SendSettings = SendSettings()
    destinations: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], Destination] = (
        Field(default_factory=dict)
    )
    routing: RoutingSettings = RoutingSettings()
    rules: list[Rule] = Field(default_factory=list)
    # Model folders (each holding model.yaml) beside the built-in pipelines.
    models: list[Path] = Field(default_factory=list)
    source: Literal["defaults"] | Path = "defaults"

    @model_validator(mode="after")
    def _references(self) -> Settings:
        names = set()
        for i, rule in enumerate(self.rules):
            if rule.name in names:
                raise ValueError(f"rules[{i}].name {rule.name!r} is used twice")
            names.add(rule.name)
            for dest in [*rule.destinations, *rule.forward]:
                if dest not in self.destinations:
                    known = ", ".join(sorted(self.destinations)) or "none"
                    raise ValueError(
                        f"rules[{i}] ({rule.name}) sends to destination {dest!r}, "
                        f"which is not under destinations: (known: {known})"
                    )
        return self


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc``, or of its nearest parent."""
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _describe(exc: ValidationError, root: yaml.Node | None, path: Path) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(root, loc)
        where = f"{path}:{line}" if line else str(path)
        lines.append(f"{where}: {key}: {err['msg']}")
    return "invalid configuration\n  " + "\n  ".join(lines)


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    models = raw.get("models")
    if isinstance(models, list):
        raw["models"] = [str(_absolute(m, base)) if isinstance(m, str) else m for m in models]
    storage = raw.get("storage")
    for key in ("dir", "database"):
        value = storage.get(key) if isinstance(storage, dict) else None
        if isinstance(value, str) and "://" not in value:
            storage[key] = str(_absolute(value, base))  # type: ignore[index]
    node = raw.get("node")
    tls_sections = [node.get("tls") if isinstance(node, dict) else None]
    destinations = raw.get("destinations")
    if isinstance(destinations, dict):
        tls_sections += [d.get("tls") for d in destinations.values() if isinstance(d, dict)]
    for tls in tls_sections:
        for key in ("certificate", "key", "ca_file"):
            if isinstance(tls, dict) and isinstance(tls.get(key), str):
                tls[key] = str(_absolute(tls[key], base))


def _absolute(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


RESTART_HINT = (
    "a change to models: takes effect when the node and its workers restart"
    " (e.g. systemctl restart dicom-node); until then rules may only name the"
    " pipelines it started with"
)


def check_pipeline_names(
    settings: Settings, known: set[str], after_restart: frozenset[str] = frozenset()
) -> None:
    """Every rule must name a pipeline the workers have. ``after_restart``: names
    the config's ``models:`` would add, which the running workers do not have."""
    for i, rule in enumerate(settings.rules):
        for j, run in enumerate(rule.runs):
            if run.pipeline in known:
                continue
            k = j - (rule.pipeline is not None)
            loc: tuple[str | int, ...] = (
                ("rules", i, "pipeline") if k < 0 else ("rules", i, "run", k, "pipeline")
            )
            where = _where(settings.source, loc)
            key = ".".join(str(p) for p in loc)
            if run.pipeline in after_restart:
                raise ConfigError(
                    f"{where}: {key}: rule {rule.name!r} names pipeline {run.pipeline!r},"
                    f" which comes from a models: folder the running node has not loaded;"
                    f" {RESTART_HINT}"
                )
            raise ConfigError(
                f"{where}: {key}: rule {rule.name!r} names unknown pipeline {run.pipeline!r}"
                f" (known: {', '.join(sorted(known))})"
            )


def _where(source: Literal["defaults"] | Path, loc: tuple[str | int, ...]) -> str:
    """``file:line`` of the key at ``loc`` in the config file (``file`` when the
    file cannot be read again)."""
    if source == "defaults":
        return "embedded defaults"
    try:
        root = yaml.compose(Path(source).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return str(source)
    line = _line_of(root, loc)
    return f"{source}:{line}" if line else str(source)


def load_settings(path: Path | None) -> Settings:
    """Read and validate ``path``; ``None`` gives the embedded defaults."""
    if path is None:
        return Settings(storage=StorageSettings(dir=Path("var").resolve()))
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from exc
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1: the configuration must be a mapping of sections")
    raw.setdefault("storage", {}).setdefault("dir", "var")
    _resolve_paths(raw, path.resolve().parent)
    raw["source"] = str(path.resolve())
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, root, path)) from None
