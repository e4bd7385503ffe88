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

from .config import BackfillConfig


class PlanApprovalOperator(ApprovalOperator):
    """Asks a human to approve the plan before any partition sends, when ``require_approval``.

    :param config: the run's config (``resolve_config``'s XCom).
    :param plan: the planned windows (``plan_partitions``' XCom).
    """

    template_fields: Sequence[str] = (*ApprovalOperator.template_fields, "config", "plan")

    def __init__(self, *, config: Any, plan: Any, **kwargs: Any) -> None:
        super().__init__(subject="Send this backfill to Synap?", ignore_downstream_trigger_rules=True,
                         **kwargs)
        self.config, self.plan = config, plan

    def execute(self, context: Any) -> Any:
        config = BackfillConfig.from_dict(self.config)
        if not config.require_approval:
            self.log.info("require_approval is off: the plan goes ahead without asking")
            return None
        self.body = describe_plan(config, list(self.plan or []))
        self.log.info("asking for approval of the plan:\n%s", self.body)
        return super().execute(context)


def describe_plan(config: BackfillConfig, windows: list[dict[str, Any]]) -> str:
    """The approval's body (Markdown): what will be sent, how long it takes at least, what it costs."""
    from synap_provider.hooks import SynapHook

    from .credits import credits_for

    rows = sum(int(w.get("rows") or 0) for w in windows)
    timed = [w for w in windows if w.get("start")]
    span = (f"{timed[0]['label'].split(' → ')[0]} → {timed[-1]['label'].split(' → ')[-1]}"
            if timed else "no timed rows")
    rate = float(SynapHook(synap_conn_id=config.synap_conn_id).settings["requests_per_minute"])
    least = (f"at least {rows / (rate * config.batch_size / 60) / 60:,.0f} min at the connection's"
             f" {rate:,.0f} batch requests a minute" if rate > 0 else "unpaced: as fast as Synap answers")
    credits = credits_for(config, rows).describe()  # the balance as it is when asking
    sample = (f" (a sample: {len(windows)} partitions of the plan)" if any(w.get("sample_of")
                                                                         for w in windows) else "")
    return (f"**{rows:,} rows** from `{config.source_table}` in **{len(windows)} partitions**{sample},"
            f" {span}, into Synap connection `{config.synap_conn_id}` in `{config.mode}` mode,"
            f" batches of {config.batch_size}.\n\n"
            f"- time: {least}\n- credits: {credits}\n\n"
            "Approve: the partitions run. Reject: nothing is sent.")
