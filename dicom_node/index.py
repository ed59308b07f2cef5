"""The index of received instances: studies, series and instances tables.

A study's ``revision`` counts the instances that changed it; the router plans a
study while its revision is newer than the one last routed (``router``). Each
series keeps the header facts rules test (``facts``), so routing never reads
a file. A duplicate SOP Instance UID replaces the stored file but is
counted once and does not change the revision.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from dicom_node import facts as header
from dicom_node.state import Connection, Database, lock_number

if TYPE_CHECKING:  # postgres imports this module (POSTGRES_FUNCTIONS)
    from dicom_node.postgres import PostgresDatabase


@dataclass(frozen=True)
class InstanceRecord:
    """What the index keeps of one received instance (UIDs and routing keys only)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    path: str
    size: int
    modality: str = ""
    body_part: str = ""
    description: str = ""
    protocol_name: str = ""
    manufacturer: str = ""
    facts: header.InstanceFacts = field(default_factory=dict)  # what rules may test


@dataclass(frozen=True)
class StudyState:
    study_uid: str
    revision: int
    routed_revision: int
    last_received: float
    pending_since: float | None = None  # the first instance not yet routed arrived


@dataclass(frozen=True)
class SeriesSummary:
    """What routing rules look at: one series, its attributes and its size."""

    study_uid: str
    series_uid: str
    modality: str
    body_part: str
    description: str
    protocol_name: str
    manufacturer: str
    sop_class_uid: str
    instances: int
    facts: header.SeriesFacts = field(default_factory=dict)
    first_received: float = 0.0
    last_received: float = 0.0
    released_at: float | None = None  # the last sending association was released
    # An association that brought instances ended unfinished, and none begun since
    # has been released: the sender may be about to send the rest again.
    interrupted_at: float | None = None

    def attribute(self, keyword: str) -> str:
        return {
            "Modality": self.modality,
            "BodyPartExamined": self.body_part,
            "SeriesDescription": self.description,
            "ProtocolName": self.protocol_name,
            "Manufacturer": self.manufacturer,
            "SOPClassUID": self.sop_class_uid,
        }[keyword]


class Index:
    FACTS_CACHE = 256  # series whose facts a receiver keeps in memory

    def __init__(self, db: Database) -> None:
        self.db = db
        self._facts: dict[str, tuple[int, header.SeriesFacts]] = {}

    def record(
        self,
        rec: InstanceRecord,
        now: float | None = None,
        place: Callable[[], None] | None = None,
        remove: Callable[[str], None] | None = None,
    ) -> tuple[bool, str | None]:
        """Index a stored instance. Returns (new, replaced_path): ``new`` is False
        for a duplicate SOP Instance UID; ``replaced_path`` is an older file of the
        same instance filed under another series, left for the caller to remove
        when no ``remove`` was given.

        ``place`` (the file's move into the spool) runs inside the write
        transaction, and so does ``remove`` of an older copy of the instance filed
        under another series: a purge, which holds the same lock while it deletes
        files and rows, never runs between a file's move and its row. A crash
        after the move and before the commit leaves a sealed file without a row,
        which ``reconcile_spool`` files at the next start.

        Two nodes storing one instance take turns on a lock of the instance, and
        writers of one series' counts and facts (and a purge of it) on a lock of
        the series: SQLite's write transactions are serial anyway; PostgreSQL
        takes both as transaction-scoped advisory locks, first thing in
        ``index_record`` (``_record_in_server``), before ``place`` runs.
        """
        now = time.time() if now is None else now
        return self.record_batch([(rec, place)], now, remove)[0]

    def record_batch(
        self,
        items: list[tuple[InstanceRecord, Callable[[], None] | None]],
        now: float | None = None,
        remove: Callable[[str], None] | None = None,
        ready: Callable[[], None] | None = None,
        durable: bool = True,
    ) -> list[tuple[bool, str | None]]:
        """``record`` for several instances in one write transaction (a group
        commit: one commit, and so one fsync of the index, for all of them), in
        order.
        ``ready`` runs before any ``place`` (the received files' fsyncs): on
        PostgreSQL once the batch's calls are on their way, so the server works
        while the files are synced; on SQLite before the transaction begins.
        ``durable=False``: the commit does not wait for the disk (for instances
        the spool can give back, see ``commit`` and ``epoch``). Any exception
        rolls back all of them."""
        now = time.time() if now is None else now
        if self.db.dialect == "postgresql":
            return self._record_in_server(items, now, remove, ready, durable)
        if ready is not None:
            ready()
        with self.db.transaction(durable=durable) as conn:
            # Two nodes storing one instance, or one series' facts, take turns; the
            # locks are taken in one order (instances, then series) so batches of
            # two processes never wait on each other in a cycle.
            for key in sorted({f"instance {rec.sop_uid}" for rec, _ in items}):
                self.db.lock(conn, key)
            for key in sorted({f"series {rec.series_uid}" for rec, _ in items}):
                self.db.lock(conn, key)
            results = [self._record(conn, rec, now, place, remove) for rec, place in items]
            return results

    def _record(
        self,
        conn: Connection,
        rec: InstanceRecord,
        now: float,
        place: Callable[[], None] | None,
        remove: Callable[[str], None] | None,
    ) -> tuple[bool, str | None]:
        if place is not None:
            place()
        old = conn.execute(
            "SELECT path, series_uid FROM instances WHERE sop_uid = ?", (rec.sop_uid,)
        ).fetchone()
        conn.execute(
            "INSERT INTO instances (sop_uid, series_uid, study_uid, sop_class_uid, path,"
            " size, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(sop_uid) DO UPDATE SET series_uid = excluded.series_uid,"
            " study_uid = excluded.study_uid, sop_class_uid = excluded.sop_class_uid,"
            " path = excluded.path, size = excluded.size,"
            " received_at = excluded.received_at",
            (
                rec.sop_uid,
                rec.series_uid,
                rec.study_uid,
                rec.sop_class_uid,
                rec.path,
                rec.size,
                now,
            ),
        )
        if old is not None and old["series_uid"] == rec.series_uid:
            conn.execute(
                "UPDATE series SET last_received = ? WHERE series_uid = ?",
                (now, rec.series_uid),
            )
            return False, None
        if old is not None:
            conn.execute(
                "UPDATE series SET instances = instances - 1 WHERE series_uid = ?",
                (old["series_uid"],),
            )
        replaced = old["path"] if old is not None and old["path"] != rec.path else None
        if replaced is not None and remove is not None:
            remove(replaced)
            replaced = None
        self._count(conn, rec, now)
        return True, replaced

    def _record_in_server(
        self,
        items: list[tuple[InstanceRecord, Callable[[], None] | None]],
        now: float,
        remove: Callable[[str], None] | None,
        ready: Callable[[], None] | None,
        durable: bool = True,
    ) -> list[tuple[bool, str | None]]:
        """``record_batch`` on PostgreSQL: ``_record``'s statements run in the
        server, one ``index_record`` call per instance (``POSTGRES_FUNCTIONS``),
        all sent at once with BEGIN and the batch's locks; then the files are
        placed and the facts merged here, and their updates sent with COMMIT. Two
        round trips for the batch instead of about ten per instance: a receiver
        waits on each, and on a busy machine each waits for the server's process
        to be scheduled."""
        db = cast("PostgresDatabase", self.db)
        with db.pipeline(durable) as conn:
            if len(items) > 1:
                # In one order for every batch, so two nodes' batches never wait on
                # each other in a cycle; index_record takes its two again (a no-op).
                # One instance: index_record takes them in that order itself.
                keys = sorted({lock_number(f"instance {rec.sop_uid}") for rec, _ in items})
                keys += sorted({lock_number(f"series {rec.series_uid}") for rec, _ in items})
                conn.execute(
                    "SELECT pg_advisory_xact_lock(k) FROM unnest(?::bigint[])"
                    " WITH ORDINALITY AS t(k, n) ORDER BY n",
                    (keys,),
                )
            # By study too: the calls update their studies' rows in this order.
            order = sorted(range(len(items)), key=lambda i: items[i][0].study_uid)
            rows = [conn.execute(_CALL, self._arguments(items[i][0], now)) for i in order]
            conn.flush()
            if ready is not None:
                ready()  # while the server runs the calls (their locks held until COMMIT)
            fetched = [cursor.fetchone() for cursor in rows]  # the first round trip
            results: list[tuple[bool, str | None]] = [(False, None)] * len(items)
            seen: dict[str, tuple[int, header.SeriesFacts]] = {}
            changed: set[str] = set()
            for i, row in zip(order, fetched, strict=True):
                rec, place = items[i]
                if place is not None:
                    place()
                results[i] = self._after_call(rec, row, remove, seen, changed)
            for series_uid in sorted(changed):
                rev, facts = seen[series_uid]
                conn.execute(
                    "UPDATE series SET facts = ?, facts_rev = ? WHERE series_uid = ?",
                    (json.dumps(facts), rev, series_uid),
                )
        for series_uid, (rev, facts) in seen.items():  # committed
            self._cache(series_uid, rev, facts)
        return results

    def _arguments(self, rec: InstanceRecord, now: float) -> tuple[Any, ...]:
        cached = self._facts.get(rec.series_uid)
        # NULL: the facts are not needed; -1: no copy here, send them.
        want = None if not rec.facts else (cached[0] if cached is not None else -1)
        return (rec.sop_uid, rec.series_uid, rec.study_uid, rec.sop_class_uid, rec.path,
                rec.size, now, rec.modality, rec.body_part, rec.description,
                rec.protocol_name, rec.manufacturer, lock_number(f"instance {rec.sop_uid}"),
                lock_number(f"series {rec.series_uid}"), want)  # fmt: skip

    def _after_call(
        self,
        rec: InstanceRecord,
        row: Any,
        remove: Callable[[str], None] | None,
        seen: dict[str, tuple[int, header.SeriesFacts]],
        changed: set[str],
    ) -> tuple[bool, str | None]:
        """One instance's ``index_record`` answer: remove a replaced file, merge
        its facts into ``seen`` (series → its facts and their revision as of this
        batch; ``changed``: those to write before the commit)."""
        if not row["is_new"]:
            return False, None
        replaced = row["replaced"]
        if replaced is not None and remove is not None:
            remove(replaced)
            replaced = None
        if rec.facts:
            first, rev = row["first"], row["facts_rev"]
            cached = self._facts.get(rec.series_uid)
            if rec.series_uid in seen and not first:
                rev, facts = seen[rec.series_uid]  # newer than the call's answer
            elif first:
                facts = {}
            elif row["facts"] is None and cached is not None:
                # A copy (the cache changes only once committed): lists of str.
                facts = {key: list(values) for key, values in cached[1].items()}
            else:
                facts = json.loads(row["facts"])
            if header.merge(facts, rec.facts, first) and rec.series_uid not in changed:
                rev += 1
                changed.add(rec.series_uid)
            seen[rec.series_uid] = (rev, facts)
        return True, replaced

    def _count(self, conn: Connection, rec: InstanceRecord, now: float) -> None:
        conn.execute(
            "INSERT INTO studies (study_uid, revision, first_received, last_received,"
            " pending_since) VALUES (?, 1, ?, ?, ?) ON CONFLICT(study_uid) DO UPDATE SET"
            " revision = studies.revision + 1, last_received = excluded.last_received,"
            " pending_since = COALESCE(studies.pending_since, excluded.last_received)",
            (rec.study_uid, now, now, now),
        )
        conn.execute(
            "INSERT INTO series (series_uid, study_uid, modality, body_part, description,"
            " protocol_name, manufacturer, sop_class_uid, instances, last_received)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?) ON CONFLICT(series_uid) DO UPDATE SET"
            " instances = series.instances + 1, last_received = excluded.last_received",
            (
                rec.series_uid,
                rec.study_uid,
                rec.modality,
                rec.body_part,
                rec.description,
                rec.protocol_name,
                rec.manufacturer,
                rec.sop_class_uid,
                now,
            ),
        )
        self._merge_facts(conn, rec, now)

    def _merge_facts(self, conn: Connection, rec: InstanceRecord, now: float) -> None:
        """Merge an instance's facts into its series' row. The series' facts are
        cached by revision: they are read again only when another process changed
        them, and written only when they changed (see ``facts.merge``)."""
        row = conn.execute(
            "SELECT instances, facts_rev, first_received FROM series WHERE series_uid = ?",
            (rec.series_uid,),
        ).fetchone()
        first = row["instances"] <= 1 or row["first_received"] is None
        if first:
            conn.execute(
                "UPDATE series SET first_received = COALESCE(first_received, ?)"
                " WHERE series_uid = ?",
                (now, rec.series_uid),
            )
        if not rec.facts:
            return
        cached = self._facts.get(rec.series_uid)
        if first:
            facts: header.SeriesFacts = {}
        elif cached is not None and cached[0] == row["facts_rev"]:
            facts = cached[1]
        else:
            text = conn.execute(
                "SELECT facts FROM series WHERE series_uid = ?", (rec.series_uid,)
            ).fetchone()["facts"]
            facts = json.loads(text)
        rev = row["facts_rev"]
        if header.merge(facts, rec.facts, first):
            rev += 1
            conn.execute(
                "UPDATE series SET facts = ?, facts_rev = ? WHERE series_uid = ?",
                (json.dumps(facts), rev, rec.series_uid),
            )
        self._cache(rec.series_uid, rev, facts)

    def _cache(self, series_uid: str, rev: int, facts: header.SeriesFacts) -> None:
        if len(self._facts) >= self.FACTS_CACHE and series_uid not in self._facts:
            self._facts.clear()
        self._facts[series_uid] = (rev, facts)

    def mark_released(
        self, series_uids: list[str], started: float = 0.0, now: float | None = None
    ) -> None:
        """The association (begun at ``started``) that sent instances of these series
        was released; it clears an interruption older than itself."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE series SET released_at = ?, interrupted_at = CASE WHEN"
                " interrupted_at < ? THEN NULL ELSE interrupted_at END"
                " WHERE series_uid = ? AND last_received <= ?",
                [(now, started, uid, now) for uid in series_uids],
            )

    def mark_interrupted(self, series_uids: list[str], now: float | None = None) -> None:
        """An association that sent instances of these series ended unfinished."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE series SET interrupted_at = ? WHERE series_uid = ?",
                [(now, uid) for uid in series_uids],
            )

    def studies_to_route(self) -> list[StudyState]:
        rows = self.db.query(
            "SELECT study_uid, revision, routed_revision, last_received, pending_since"
            " FROM studies WHERE revision > routed_revision"
        )
        return [StudyState(**dict(r)) for r in rows]

    def mark_routed(self, study_uid: str, revision: int) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE studies SET routed_revision = ?, pending_since = CASE WHEN revision = ?"
                " THEN NULL ELSE pending_since END WHERE study_uid = ?",
                (revision, revision, study_uid),
            )

    def series_of(self, study_uid: str, keys: Sequence[str] | None = None) -> list[SeriesSummary]:
        """The series of a study; with ``keys``, only those facts are read (SQLite
        extracts them, which is much cheaper than decoding every fact)."""
        select, params = _select(keys, self.db.dialect)
        rows = self.db.query(
            f"{select} WHERE study_uid = ? ORDER BY series_uid", (*params, study_uid)
        )
        return [_summary(r, keys) for r in rows]

    def recent_studies(
        self, limit: int, keys: Sequence[str] | None = None
    ) -> list[list[SeriesSummary]]:
        """The series of the ``limit`` studies received last, newest study first."""
        select, params = _select(keys, self.db.dialect)
        rows = self.db.query(
            f"{select} WHERE study_uid IN (SELECT study_uid FROM studies"
            " ORDER BY last_received DESC LIMIT ?)",
            (*params, limit),
        )
        by_study: dict[str, list[SeriesSummary]] = {}
        for r in rows:
            by_study.setdefault(r["study_uid"], []).append(_summary(r, keys))
        order = self.db.query(
            "SELECT study_uid FROM studies ORDER BY last_received DESC LIMIT ?", (limit,)
        )
        return [sorted(by_study[r["study_uid"]], key=lambda s: s.series_uid)
                for r in order if r["study_uid"] in by_study]  # fmt: skip

    def study(self, study_uid: str) -> StudyState | None:
        rows = self.db.query(
            "SELECT study_uid, revision, routed_revision, last_received, pending_since"
            " FROM studies WHERE study_uid = ?",
            (study_uid,),
        )
        return StudyState(**dict(rows[0])) if rows else None

    def files_of(self, series_uid: str) -> list[tuple[str, str]]:
        """(SOP Instance UID, relative path) of every instance of a series, sorted by UID."""
        rows = self.db.query(
            "SELECT sop_uid, path FROM instances WHERE series_uid = ? ORDER BY sop_uid",
            (series_uid,),
        )
        return [(r["sop_uid"], r["path"]) for r in rows]

    def counts(self) -> dict[str, int]:
        row = self.db.query(
            "SELECT (SELECT COUNT(*) FROM studies) AS studies,"
            " (SELECT COUNT(*) FROM series) AS series,"
            " (SELECT COUNT(*) FROM instances) AS instances"
        )[0]
        return dict(row)

    def purgeable_series(self, older_than: float) -> list[str]:
        """Series received before ``older_than`` whose study is routed and has no
        job still queued, running or kept for inspection (failed)."""
        rows = self.db.query(
            "SELECT s.series_uid FROM series s JOIN studies st ON st.study_uid = s.study_uid"
            " WHERE s.last_received < ? AND st.routed_revision = st.revision"
            " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.series_uid = s.series_uid"
            "   AND j.state IN ('queued', 'running', 'failed'))",
            (older_than,),
        )
        return [r["series_uid"] for r in rows]

    def forget_series(
        self,
        series_uid: str,
        remove: Callable[[list[str]], None] | None = None,
        received_before: float | None = None,
    ) -> int:
        """Delete a series' rows (and, with ``remove``, its files: ``Spool.remove_all``,
        durable before the rows go) in one transaction;
        returns how many instances. With ``received_before``, nothing happens unless
        the series is still purgeable then (no instance came since, no job pending):
        an instance that arrives while a series is purged is never removed with it."""
        self._facts.pop(series_uid, None)
        with self.db.transaction() as conn:
            self.db.lock(conn, f"series {series_uid}")  # the lock ``record`` takes
            if received_before is not None:
                row = conn.execute(
                    "SELECT 1 FROM series s JOIN studies st ON st.study_uid = s.study_uid"
                    " WHERE s.series_uid = ? AND s.last_received < ?"
                    " AND st.routed_revision = st.revision"
                    " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.series_uid = s.series_uid"
                    "   AND j.state IN ('queued', 'running', 'failed'))",
                    (series_uid, received_before),
                ).fetchone()
                if row is None:
                    return 0
            row = conn.execute(
                "SELECT study_uid FROM series WHERE series_uid = ?", (series_uid,)
            ).fetchone()
            paths = [
                r["path"]
                for r in conn.execute(
                    "SELECT path FROM instances WHERE series_uid = ?", (series_uid,)
                ).fetchall()
            ]
            if remove is not None:
                remove(paths)
            conn.execute("DELETE FROM instances WHERE series_uid = ?", (series_uid,))
            conn.execute("DELETE FROM series WHERE series_uid = ?", (series_uid,))
            if row is not None:
                conn.execute(
                    "DELETE FROM studies WHERE study_uid = ? AND NOT EXISTS"
                    " (SELECT 1 FROM series WHERE study_uid = ?)",
                    (row["study_uid"], row["study_uid"]),
                )
            return len(paths)

    def unindexed(self, paths: Iterable[str]) -> list[str]:
        """Those of ``paths`` (spool files) that no instance row names."""
        known = {r["path"] for r in self.db.query("SELECT path FROM instances")}
        return [p for p in paths if p not in known]

    def path_of(self, sop_uid: str) -> str | None:
        """Where the index files an instance, or None."""
        rows = self.db.query("SELECT path FROM instances WHERE sop_uid = ?", (sop_uid,))
        return str(rows[0]["path"]) if rows else None


# ``Index.record``'s statements as one PostgreSQL function (schema version 6),
# created by the node's migration (``postgres``). Arguments: the record's
# columns, ``now``, the two advisory lock numbers (``state.lock_number`` of
# "instance <uid>" and "series <uid>", the keys a purge locks too), and the
# facts revision the caller holds (NULL: it needs no facts; -1: none).
# ``replaced``: an older file of the instance filed under another series;
# ``facts``: the series' facts when the caller's revision is not current.
POSTGRES_RECORD = """
CREATE OR REPLACE FUNCTION index_record(
    p_sop TEXT, p_series TEXT, p_study TEXT, p_sop_class TEXT, p_path TEXT, p_size BIGINT,
    p_now DOUBLE PRECISION, p_modality TEXT, p_body_part TEXT, p_description TEXT,
    p_protocol_name TEXT, p_manufacturer TEXT, p_instance_lock BIGINT, p_series_lock BIGINT,
    p_facts_rev BIGINT,
    OUT is_new BOOLEAN, OUT replaced TEXT, OUT first BOOLEAN, OUT facts_rev BIGINT,
    OUT facts TEXT)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_old_series TEXT;
    v_old_path TEXT;
    v_instances BIGINT;
    v_first_received DOUBLE PRECISION;
BEGIN
    -- Two nodes storing one instance, or one series' facts, take turns.
    PERFORM pg_advisory_xact_lock(p_instance_lock);
    PERFORM pg_advisory_xact_lock(p_series_lock);
    SELECT i.series_uid, i.path INTO v_old_series, v_old_path
        FROM instances i WHERE i.sop_uid = p_sop;
    INSERT INTO instances AS i (sop_uid, series_uid, study_uid, sop_class_uid, path, size,
                                received_at)
        VALUES (p_sop, p_series, p_study, p_sop_class, p_path, p_size, p_now)
        ON CONFLICT (sop_uid) DO UPDATE SET series_uid = excluded.series_uid,
            study_uid = excluded.study_uid, sop_class_uid = excluded.sop_class_uid,
            path = excluded.path, size = excluded.size, received_at = excluded.received_at;
    IF v_old_series = p_series THEN
        UPDATE series s SET last_received = p_now WHERE s.series_uid = p_series;
        is_new := FALSE;
        RETURN;
    END IF;
    IF v_old_series IS NOT NULL THEN
        UPDATE series s SET instances = s.instances - 1 WHERE s.series_uid = v_old_series;
    END IF;
    is_new := TRUE;
    replaced := CASE WHEN v_old_path <> p_path THEN v_old_path END;
    INSERT INTO studies AS st (study_uid, revision, first_received, last_received,
                               pending_since)
        VALUES (p_study, 1, p_now, p_now, p_now)
        ON CONFLICT (study_uid) DO UPDATE SET revision = st.revision + 1,
            last_received = excluded.last_received,
            pending_since = COALESCE(st.pending_since, excluded.last_received);
    INSERT INTO series AS s (series_uid, study_uid, modality, body_part, description,
                             protocol_name, manufacturer, sop_class_uid, instances,
                             last_received)
        VALUES (p_series, p_study, p_modality, p_body_part, p_description, p_protocol_name,
                p_manufacturer, p_sop_class, 1, p_now)
        ON CONFLICT (series_uid) DO UPDATE SET instances = s.instances + 1,
            last_received = excluded.last_received
        RETURNING s.instances, s.facts_rev, s.first_received
        INTO v_instances, facts_rev, v_first_received;
    first := v_instances <= 1 OR v_first_received IS NULL;
    IF first THEN
        UPDATE series s SET first_received = COALESCE(s.first_received, p_now)
            WHERE s.series_uid = p_series;
    ELSIF p_facts_rev IS NOT NULL AND p_facts_rev <> facts_rev THEN
        SELECT s.facts INTO facts FROM series s WHERE s.series_uid = p_series;
    END IF;
END
$fn$
"""
POSTGRES_FUNCTIONS = (POSTGRES_RECORD,)
_CALL = "SELECT * FROM index_record(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

_COLUMNS = (
    "study_uid, series_uid, modality, body_part, description, protocol_name,"
    " manufacturer, sop_class_uid, instances, first_received, last_received, released_at,"
    " interrupted_at"
)


def _select(keys: Sequence[str] | None, dialect: str) -> tuple[str, tuple[str, ...]]:
    """The series columns, and of the facts only ``keys`` (all when None): a JSON
    array of their values, extracted by the database without parsing the rest."""
    if keys is None:
        return f"SELECT {_COLUMNS}, facts FROM series", ()
    names = (header.PARTIAL, *keys, "00080060")  # two at least: an array comes back
    if dialect == "postgresql":
        values = ", ".join("facts::json -> ?" for _ in names)
        return f"SELECT {_COLUMNS}, json_build_array({values})::text AS facts FROM series", names
    marks = ", ".join("?" * len(names))
    paths = tuple(f'$."{key}"' for key in names)
    return f"SELECT {_COLUMNS}, json_extract(facts, {marks}) AS facts FROM series", paths


def _summary(row: Any, keys: Sequence[str] | None = None) -> SeriesSummary:
    # Positional, in _COLUMNS order then facts: this runs once per series of
    # `rules test --recent`, tens of thousands of times.
    text = row[13]
    if keys is None:
        facts = json.loads(text)
    else:
        values = json.loads(text) if text else ()
        facts = {k: v for k, v in zip((header.PARTIAL, *keys), values, strict=False) if v}
    first = row[9] if row[9] is not None else row[10]
    return SeriesSummary(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7],
                         row[8], facts, first, row[10], row[11], row[12])  # fmt: skip
