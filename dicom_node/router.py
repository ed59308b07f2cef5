"""From routing plans to actions: jobs for pipelines, forwards and discards.

Each round, every study with instances not yet routed is planned
(``routing.plan_study``); each matched rule that is ready acts once per study
revision:

- run: one queued job per pipeline the rule runs, carrying its queue, lane,
  priority and parameters (the job key includes the series' instances, so an
  unchanged series never runs twice);
- forward: a job named ``forward`` whose received files the dispatcher links
  into the outbox for the rule's ``forward`` destinations, unchanged;
- discard: the series' received files are deleted now (unless a job still
  uses them) and no later rule applies to it.

The late-instance policy (``trigger.late_instances``) decides what a study or
series that already acted gets when new instances arrive: ``rerun`` (a series
whose instances changed runs again on all of them), ``ignore`` (nothing more
for that rule on that study, or series when ``per: series``), ``new_series``
(only series the rule never acted on).

A study is marked routed once no matched rule is waiting any more.
"""

from __future__ import annotations

import logging

from dicom_node import routing
from dicom_node.index import Index, SeriesSummary, StudyState
from dicom_node.jobs import Jobs
from dicom_node.retention import purge_series
from dicom_node.ruleset import Rule
from dicom_node.settings import Settings
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)

FORWARD = "forward"


class Router:
    def __init__(self, settings: Settings, spool: Spool, index: Index, jobs: Jobs) -> None:
        self.settings = settings
        self.spool = spool
        self.index = index
        self.jobs = jobs
        self._acted: set[tuple[str, int, str, str]] = set()  # (study, revision, rule, series)

    def route(self, now: float) -> int:
        """Plan every study not yet routed; returns the number of jobs created."""
        created = 0
        for study in self.index.studies_to_route():
            if not self._may_be_ready(study, now):
                continue
            created += self._route_study(study, now)
        return created

    def _may_be_ready(self, study: StudyState, now: float) -> bool:
        """A cheap pre-check: with only per-study quiet triggers, nothing is ready
        before the shortest quiet period has passed since the study's last instance."""
        rules = [r for r in self.settings.rules if r.enabled]
        if not rules or any(r.trigger.wait_for != "quiet" or r.trigger.per != "study"
                            for r in rules):  # fmt: skip
            return True
        default = self.settings.node.stable_after_seconds
        shortest = min(default if r.trigger.quiet_seconds is None else r.trigger.quiet_seconds
                       for r in rules)  # fmt: skip
        forced = (study.pending_since or 0.0) + min(r.trigger.timeout_seconds for r in rules)
        return now - study.last_received >= shortest or now >= forced

    def _route_study(self, study: StudyState, now: float) -> int:
        series = self.index.series_of(study.study_uid, routing.needed_keys(self.settings.rules))
        plans = routing.plan_study(
            series,
            self.settings.rules,
            now,
            self.settings.routing.apply,
            self.settings.node.stable_after_seconds,
            study.pending_since,
            self.settings.node.interrupted_hold_seconds,
        )
        created, waiting = 0, 0
        for plan in plans:
            for applied in plan.applied:
                if not applied.ready:
                    waiting += 1
                    continue
                key = (study.study_uid, study.revision, applied.rule.name, plan.series.series_uid)
                if key in self._acted:
                    continue
                # Noted once it acted: a round cut short (the database away) acts
                # again next round, and a job already made is not made twice.
                created += self._act(applied.rule, plan.series)
                self._acted.add(key)
        if waiting == 0:
            self.index.mark_routed(study.study_uid, study.revision)
            self._acted = {k for k in self._acted if k[0] != study.study_uid}
            logger.info("study stable: %d job(s) created", created,
                        extra={"study": study.study_uid})  # fmt: skip
        return created

    def _late(self, rule: Rule, series: SeriesSummary, action: str) -> bool:
        """True when the late-instance policy says this rule must not act again."""
        policy = rule.trigger.late_instances
        if policy == "rerun":
            return False
        if policy == "ignore" and rule.trigger.per == "study":
            return self.jobs.ran(rule.name, study_uid=series.study_uid)
        return self.jobs.ran(rule.name, series_uid=series.series_uid, pipeline=action)

    def _act(self, rule: Rule, series: SeriesSummary) -> int:
        if rule.discard:
            self._discard(rule, series)
            return 0
        files = self.index.files_of(series.series_uid)
        sops, paths = [sop for sop, _ in files], [path for _, path in files]
        created = 0
        for i, run in enumerate(rule.runs):
            if self._late(rule, series, run.pipeline):
                continue
            job_id = self.jobs.create(
                study_uid=series.study_uid,
                series_uid=series.series_uid,
                rule=rule.name,
                pipeline=run.pipeline,
                sop_uids=sops,
                inputs=paths,
                destinations=rule.destinations,
                action="" if i == 0 else run.pipeline,
                queue=run.queue,
                lane=run.lane,
                priority=run.priority,
                parameters=dict(run.parameters),
            )
            if job_id is not None:
                created += 1
                logger.info("job %d queued: rule %s, pipeline %s, %d instances, queue %s,"
                            " lane %s", job_id, rule.name, run.pipeline, len(files), run.queue,
                            run.lane, extra={"job": job_id, "series": series.series_uid},
                            )  # fmt: skip
        if rule.forward and not self._late(rule, series, FORWARD):
            job_id = self.jobs.create(
                study_uid=series.study_uid,
                series_uid=series.series_uid,
                rule=rule.name,
                pipeline=FORWARD,
                sop_uids=sops,
                inputs=paths,
                destinations=rule.forward,
                action=FORWARD,
            )
            if job_id is not None:
                created += 1
                logger.info("job %d: forward %d instances to %s (rule %s)", job_id, len(files),
                            ", ".join(rule.forward), rule.name,
                            extra={"job": job_id, "series": series.series_uid})  # fmt: skip
        return created

    def _discard(self, rule: Rule, series: SeriesSummary) -> None:
        if self.jobs.busy_on(series.series_uid):
            logger.info("rule %s discards the series; a running job still uses it, so it is"
                        " kept until retention", rule.name,
                        extra={"series": series.series_uid})  # fmt: skip
            return
        count = purge_series(self.index, self.spool, series.series_uid)
        logger.info("rule %s discarded the series: %d instance(s) deleted", rule.name, count,
                    extra={"series": series.series_uid})  # fmt: skip
