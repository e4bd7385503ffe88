"""Finding the person to erase in every Synap target: each instance asked who a person is
(whoami), each source read once for turns sent before the person key existed.

What it reads of the sources (ids in clear) stays in its ``Finder``; the erase tasks get
targets and held documents, never an id.
"""

from __future__ import annotations

from contextlib import closing
from typing import TYPE_CHECKING, Any

from synap_backfill.airflow.lineage import source_read
from synap_backfill.common.errors import describe_error
from synap_backfill.deletion.erase import (
    AmbiguousPerson,
    EraseTarget,
    HeldDocument,
    SourceMatch,
    find_in_source,
    resolve_target,
)
from synap_backfill.deletion.erase_config import ErasePlan
from synap_backfill.holdings.inventory import Holding, holdings
from synap_backfill.identity.keys import Keyring
from synap_backfill.preflight import PreflightError, check_synap_settings, who_is

if TYPE_CHECKING:
    from synap_backfill.extract.source_sql import SourceSQL


def instance_isolation(holding: Holding, *, changes: str = "nothing was deleted") -> str | None:
    """The holding's instance's user_context_isolation, through the connection its last run
    used (whoami); refused in one line if that connection opens another instance now."""
    from synap_backfill.airflow.compat import AirflowFailException

    conn_id = holding.synap_conn_id
    try:
        who = who_is(check_synap_settings(conn_id).hook, conn_id)
    except PreflightError as exc:
        raise AirflowFailException(f"Synap instance {holding.target} ({holding.source}): {exc};"
                                   f" {changes}") from None
    if str(who.get("instance_id") or "") != holding.target:
        raise AirflowFailException(
            f"connection {conn_id!r} now opens Synap instance {who.get('instance_id')}, not"
            f" {holding.target} that the ledger recorded; {changes}. Point it back at that"
            " instance and run again")
    return who.get("user_context_isolation") or None


class Finder:
    """Finds the person in every target: each instance's isolation asked once, each source
    read once. What it reads of the sources (ids in clear) stays in this object."""

    def __init__(self, plan: ErasePlan, keyring: Keyring) -> None:
        self.plan, self.keyring, self.ref = plan, keyring, plan.ref
        self._isolation: dict[str, str | None] = {}
        self._sources: dict[tuple[str, SourceSQL], SourceMatch] = {}

    def isolation(self, holding: Holding) -> str | None:
        """Who the instance says a person is (whoami); refused if it is another instance now."""
        if holding.synap_conn_id not in self._isolation:
            self._isolation[holding.synap_conn_id] = instance_isolation(holding)
        return self._isolation[holding.synap_conn_id]

    def source(self, holding: Holding) -> SourceMatch:
        """The person's rows in the holding's source; a source that cannot be read stops the
        erasure (turns sent before the person key existed are found only there)."""
        from synap_backfill.airflow.compat import AirflowFailException
        from synap_backfill.airflow.source_hook import source_hook

        key = (holding.postgres_conn_id, holding.sql)
        if key not in self._sources:
            try:
                hook = source_hook(holding.postgres_conn_id)
                with closing(hook.get_conn()) as conn:
                    self._sources[key] = find_in_source(conn, holding.sql, self.ref, self.keyring)
                source_read(hook, holding.source)
            except Exception as exc:
                raise AirflowFailException(
                    f"the source {holding.source} of Synap instance {holding.target} (connection"
                    f" {holding.postgres_conn_id!r}) could not be read ({describe_error(exc)}):"
                    " turns sent before the person key existed are found only there. Make it"
                    " readable and erase again; nothing was deleted") from None
        return self._sources[key]

    def target(self, conn: Any, holding: Holding, live: bool
               ) -> tuple[EraseTarget, list[HeldDocument]]:
        from maximem_synap.scoping import B2C_ISOLATION

        from synap_backfill.airflow.compat import AirflowFailException

        b2c = self.isolation(holding) == B2C_ISOLATION or not holding.columns.get("customer_id")
        try:
            return resolve_target(conn, self.plan.ledger_schema, holding, self.ref, self.keyring,
                                  self.source(holding), b2c=b2c, live=live)
        except AmbiguousPerson as exc:
            raise AirflowFailException(str(exc)) from None

    def targets(self, conn: Any) -> list[tuple[EraseTarget, list[HeldDocument]]]:
        """The targets holding documents of the person (and, for include_live_memories, one per
        instance whatever it holds)."""
        found = []
        asked: set[str] = set()
        for holding in holdings(conn, self.plan.ledger_schema):
            live = self.plan.include_live_memories and holding.target not in asked
            target, docs = self.target(conn, holding, live)
            # One whose source holds the id in another case: nothing to erase there, but the
            # summary says so.
            if docs or target.unattributed or target.in_source or target.other_case or live:
                asked |= {holding.target} if live else set()
                found.append((target, docs))
        return found
