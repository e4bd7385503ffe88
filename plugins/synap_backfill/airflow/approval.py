"""Approve before a big send: an Airflow human-in-the-loop approval showing the plan.

With ``require_approval``, the run stops after planning at ``approve_plan``
(Airflow 3.1+'s ``ApprovalOperator``: the task waits for a response in the
UI's Required Actions, or through the REST API), whose body states the plan:
rows, partitions, range, the least time it takes at the connection's rate
and the credits it costs. Approve: the partitions run. Reject: every task
after it is skipped and nothing is sent. Without ``require_approval`` the
task passes at once and asks nobody.
"""

from __future__ import annotations

from typing import Any, Sequence

from airflow.providers.standard.operators.hitl import ApprovalOperator

from synap_backfill.common.config import BackfillConfig


class AskFirst(ApprovalOperator):
    """The approval a big send or any delete waits at, the same for every DAG: it asks only
    when ``question`` gives a body (the figures to approve, in Markdown), and otherwise
    passes at once, its log saying why. Reject: every task after it is skipped."""

    SUBJECT = ""  # the question, in the UI's Required Actions
    ASKS_FOR = ""  # what is approved, for the log

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(subject=self.SUBJECT, ignore_downstream_trigger_rules=True, **kwargs)

    def question(self, context: Any) -> str | None:
        """The body to approve, or None (logged) when there is nothing to ask."""
        raise NotImplementedError

    def execute(self, context: Any) -> Any:
        body = self.question(context)
        if body is None:
            return None
        self.body = body
        self.log.info("asking for approval of %s:\n%s", self.ASKS_FOR, body)
        return super().execute(context)


class PlanApprovalOperator(AskFirst):
    """Asks a human to approve the plan before any partition sends, when ``require_approval``.

    :param config: the run's config (``resolve_config``'s XCom).
    :param plan: the planned windows (``plan_partitions``' XCom).
    """

    SUBJECT, ASKS_FOR = "Send this backfill to Synap?", "the plan"
    template_fields: Sequence[str] = (*ApprovalOperator.template_fields, "config", "plan")

    def __init__(self, *, config: Any, plan: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config, self.plan = config, plan

    def question(self, context: Any) -> str | None:
        config = BackfillConfig.from_dict(self.config)
        if not config.require_approval:
            self.log.info("require_approval is off: the plan goes ahead without asking")
            return None
        changes = any(int(w.get("edited") or 0) or int(w.get("deleted") or 0) for w in self.plan or [])
        if not any(int(w.get("rows") or 0) for w in self.plan or []) and not (
                changes and config.apply_source_changes == "apply"):
            self.log.info("nothing to send (the instance holds every row unchanged): nothing to approve")
            return None
        run = context["dag_run"]
        return describe_plan(config, list(self.plan or []), dag_id=run.dag_id, run_id=run.run_id)


def describe_plan(config: BackfillConfig, windows: list[dict[str, Any]], *, dag_id: str = "",
                  run_id: str = "") -> str:
    """The approval's body (Markdown): what will be sent (after what the instance already holds),
    how long it takes at least at the connection's rate, and what it costs."""
    import math
    from contextlib import closing

    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from synap_backfill.delivery.accounting import describe_duration
    from synap_backfill.delivery.credits import credits_for
    from synap_backfill.delivery.target import SynapTarget
    from synap_backfill.holdings.inventory import Inventory

    rows = sum(int(w.get("rows") or 0) for w in windows)
    unchanged = sum(int(w.get("unchanged") or 0) for w in windows)
    found: dict[str, Any] = {}
    if run_id:  # the plan's own figure, with the windows held whole
        ledger = PostgresHook(postgres_conn_id=config.ledger_conn_id or config.postgres_conn_id)
        with closing(ledger.get_conn()) as conn:
            record = Inventory(conn, config.ledger_schema).run(dag_id, run_id)
        if record is not None:
            unchanged = int(record.plan.get("unchanged") or unchanged)
            found = dict(record.plan.get("source_changes") or {})
    timed = [w for w in windows if w.get("start")]
    span = (f"{timed[0]['label'].split(' → ')[0]} → {timed[-1]['label'].split(' → ')[-1]}"
            if timed else "no timed rows")
    batches = sum(math.ceil(int(w.get("rows") or 0) / config.batch_size) for w in windows)
    synap = SynapTarget.connect(config.synap_conn_id)
    rate = synap.rate
    least = (f"at least {describe_duration(batches / rate * 60)} at the connection's {rate:,.0f}"
             f" batch requests a minute ({batches:,} batch request{_s(batches)})" if rate > 0
             else "unpaced: as fast as Synap answers")
    credits = credits_for(config, rows, synap).describe()  # the balance as it is when asking
    sample = (f" (a sample: {len(windows)} partition{_s(len(windows))} of the plan)"
              if any(w.get("sample_of") for w in windows) else "")
    instance = f" (instance `{config.target}`)" if config.target else ""
    held = (f" {unchanged:,} row{_s(unchanged)} the instance already holds unchanged"
            f" {'are' if unchanged != 1 else 'is'} not sent." if unchanged else "")
    return (f"**{rows:,} row{_s(rows)} to send** from `{config.source_table}` in"
            f" **{len(windows)} partition{_s(len(windows))}**{sample}, {span}, into Synap connection"
            f" `{config.synap_conn_id}`{instance} in `{config.mode}` mode, batches of"
            f" {config.batch_size}.{held}\n\n"
            f"- time: {least}\n- credits: {credits}\n- personal data: {_private_line(config)}\n"
            f"{_changes_line(config, found)}\n"
            "Approve: the partitions run. Reject: nothing is sent.")


def _private_line(config: BackfillConfig) -> str:
    """Whether the turns go as written, or what is taken out of them first."""
    if config.redact_pii:
        line = (f"**redacted** before sending ({', '.join(config.pii_entities)}), as"
                f" {config.pii_replacement}s")
    else:
        line = "sent as written (redact_pii is off)"
    if config.document_transform:
        line += f"; then each turn goes through `{config.document_transform}`"
    return line


def _changes_line(config: BackfillConfig, found: dict[str, Any]) -> str:
    """What the source changed in what the instance holds, and what approving does about it."""
    edited, deleted = int(found.get("edited") or 0), int(found.get("deleted") or 0)
    emptied = int(found.get("emptied") or 0)
    if not (edited or deleted):
        return ""
    if config.apply_source_changes == "apply":
        return (f"- source changes: **{edited:,} edited turn{_s(edited)} replaced** (their held"
                f" documents' memories deleted, their current text sent) and **{deleted:,} deleted"
                f" turn{_s(deleted)} forgotten**"
                + (f" ({emptied:,} of them emptied: both texts blank)" if emptied else "")
                + " (their memories deleted, permanently)\n")
    return (f"- source changes: {edited:,} edited and {deleted:,} deleted turn{_s(deleted)} found;"
            " reported only (apply_source_changes is report): Synap is left as it is\n")


def _s(n: int) -> str:
    return "" if n == 1 else "s"
