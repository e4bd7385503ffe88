"""Counting what became of every row, per partition and for the run.

The invariant an operator relies on: for every partition, ``rows_read ==
ingested + duplicates + rejected``. Rows the Synap target already holds
unchanged are not read: they are ``unchanged``, so that for the run, rows
planned = read + unchanged. A partition report is what goes to XCom: counts
and reason codes only, never text.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from synap_backfill.common import counters
from synap_backfill.common.counters import counter
from synap_backfill.common.windows import window_key
from synap_backfill.delivery.results import BatchOutcome
from synap_backfill.privacy.turns import Reason as TurnReason


@dataclass
class PartitionReport:
    """What one partition did. Serialises to a small XCom dict."""

    label: str
    start: str | None
    end: str | None
    rows_read: int = counter()
    ingested: int = counter()
    duplicates: int = counter()
    rejected: Counter[str] = counter(add="tally", xcom="rejected_by_reason")
    # Refused for Synap's own trouble (results.py): not held, so the next run of the range
    # sends them again; by reason.
    retrying: Counter[str] = counter(add="tally", xcom="retrying_by_reason")
    # Their buckets (by number): held short of them, which the summary's check expects.
    retry_buckets: Counter[str] = counter(add="tally")
    not_sent: int = counter()  # documents built but held back: a dry run
    # Of ``ingested``: found already stored when sent again after a lost answer
    # or a stopped attempt; this run's write, unless it was in Synap before the run.
    ingested_on_resend: int = counter()
    batches: int = counter()
    # Time the partition's attempts took (a resumed attempt adds its own to the last one's).
    seconds: float = counter(0.0, digits=3, resumed=False)
    started_at: float | None = counter(None, add="min", resumed=False)  # epoch s: first attempt
    finished_at: float | None = counter(None, add="max")
    # From the plan: rows held unchanged inside this partition's span (not read), and the
    # rows it planned to read (what the read is checked against).
    unchanged: int = counter(resumed=False)
    rows_planned: int | None = counter(None, add=None, resumed=False)
    rate_limited: int = counter()  # batch requests Synap answered 429
    # Seconds its requests waited for slots of the shared schedule, added up (concurrent
    # requests' waits overlap, so this can exceed the run's time), and the longest one wait.
    paced_seconds: float = counter(0.0, digits=1)
    paced_longest: float = counter(0.0, add="max", digits=1)
    # Of ``duplicates``: turns of a changed bucket not sent, as the ledger knows the target
    # holds them (held_turns.py).
    known_held: int = counter()
    # From the plan: turns in its span the target holds that the source has edited or deleted
    # since (``changes.py``); whether they were applied is the run's ``source_changes``.
    edited: int = counter(resumed=False)
    deleted: int = counter(resumed=False)
    # Read and not sent: the turn's person was erased (synap_erase); counted, never lost.
    suppressed: int = counter()
    # redact_pii: values replaced in the documents built, by kind, and the turns holding them.
    # Not a fate: a redacted turn is ingested, a duplicate or rejected like any other.
    redacted: Counter[str] = counter(add="tally", xcom="redacted_by_kind")
    turns_redacted: int = counter()

    @property
    def key(self) -> str:
        return window_key(self.start, self.end)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def retrying_total(self) -> int:
        return sum(self.retrying.values())

    @property
    def accounted(self) -> int:
        return (self.ingested + self.duplicates + self.rejected_total + self.retrying_total
                + self.not_sent + self.suppressed)

    @property
    def balanced(self) -> bool:
        return self.rows_read == self.accounted

    def add(self, outcome: BatchOutcome) -> None:
        self.ingested += outcome.ingested
        self.ingested_on_resend += outcome.recovered
        self.duplicates += outcome.duplicates
        self.rejected.update(outcome.rejected)
        self.retrying.update(outcome.retrying)

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] += n

    def to_xcom(self) -> dict[str, Any]:
        return {**counters.to_xcom(self), "rejected": self.rejected_total,
                "retrying": self.retrying_total}

    @classmethod
    def from_xcom(cls, raw: Mapping[str, Any]) -> "PartitionReport":
        report = counters.from_xcom(cls, raw)
        if report.rejected_total != raw.get("rejected", report.rejected_total):
            # Trust the total over the breakdown if they ever disagree.
            report.rejected["unexplained"] += raw["rejected"] - report.rejected_total
        return report


@dataclass
class RunSummary:
    """The run's totals, and every reason it must fail."""

    partitions: list[PartitionReport]
    missing: list[str]
    sample_of: dict[str, Any] | None = None  # a sample run: the whole plan's partitions, rows, credits
    max_rejected_share: float = 1.0  # above it, the run has a problem
    rows_planned: int | None = None  # what the plan counted: to read, plus held unchanged
    unchanged_outside: int = 0  # held unchanged, in no partition's span (windows not read at all)
    notes: list[str] = field(default_factory=list)  # what the run found, one line each
    found: list[str] = field(default_factory=list)  # problems found by checking the reads
    # Held turns the plan found emptied in the source (a deletion, changes.py): their empty
    # rows are rejected, and are not dirty data.
    emptied_in_source: int = 0

    @property
    def wall_seconds(self) -> float | None:
        """From the first partition's start to the last one's end."""
        starts = [p.started_at for p in self.partitions if p.started_at is not None]
        ends = [p.finished_at for p in self.partitions if p.finished_at is not None]
        return max(ends) - min(starts) if starts and ends and max(ends) > min(starts) else None

    @property
    def turns_per_s(self) -> float | None:
        wall = self.wall_seconds
        return self.total.rows_read / wall if wall else None

    @property
    def estimated_seconds_for_all(self) -> float | None:
        """A sample run's rate, applied to the whole plan's rows."""
        rate = self.turns_per_s
        return self.sample_of["rows"] / rate if self.sample_of and rate else None

    @property
    def total(self) -> PartitionReport:
        total = counters.add_up(PartitionReport("TOTAL", None, None), self.partitions)
        total.unchanged += self.unchanged_outside
        return total

    @property
    def problems(self) -> list[str]:
        out = [f"partition {label} did not finish (failed or upstream failed)"
               for label in self.missing]
        out += [f"partition {p.label}: read {p.rows_read} but accounted for {p.accounted}"
                for p in self.partitions if not p.balanced]
        total = self.total
        # Turns the operator's document_transform left out are a choice, not dirty data; so
        # are turns a user emptied (a deletion the plan found).
        refused = Counter({r: n for r, n in total.rejected.items() if r != TurnReason.DROPPED})
        from synap_backfill.delivery.documents import RejectReason

        if self.emptied_in_source and refused[RejectReason.EMPTY_TURN]:
            refused[RejectReason.EMPTY_TURN] -= min(refused[RejectReason.EMPTY_TURN], self.emptied_in_source)
            refused = +refused
        n_refused = sum(refused.values())
        if total.rows_read and n_refused > self.max_rejected_share * total.rows_read:
            reason, n = refused.most_common(1)[0]
            out.append(f"{n_refused} of {total.rows_read} rows rejected"
                       f" ({n_refused / total.rows_read:.1%}), more than"
                       f" max_rejected_share {self.max_rejected_share:.1%}; most often:"
                       f" {reason} ({n})"
                       + (" (turns dropped by document_transform, or emptied in the source,"
                          " not counted)" if n_refused != total.rejected_total else ""))
        return out + self.found

    def to_xcom(self) -> dict[str, Any]:
        total = self.total.to_xcom()
        return {**{k: total[k] for k in ("rows_read", "ingested", "duplicates", "rejected",
                                          "rejected_by_reason", "retrying", "retrying_by_reason",
                                          "not_sent", "ingested_on_resend",
                                          "batches", "unchanged", "known_held", "suppressed",
                                          "redacted_by_kind", "turns_redacted")},
                "rows_planned": self.rows_planned,
                "partitions": len(self.partitions) + len(self.missing),
                "partitions_failed": len(self.missing), "problems": self.problems,
                "turns_per_s": round(self.turns_per_s, 1) if self.turns_per_s else None,
                "sample_of": self.sample_of,
                "estimated_seconds_for_all": round(self.estimated_seconds_for_all)
                if self.estimated_seconds_for_all else None}

    def render(self, rejects_at: str | None = None) -> str:
        """One readable table: a row per partition, then the total and the problems.

        ``rejects_at``: where the rejected rows are recorded (a query to run).
        """
        dry = any(p.not_sent for p in self.partitions)
        held = bool(self.total.unchanged)
        header: tuple[str, ...] = ("partition", "read", "ingested", "duplicates", "rejected",
                                   "batches", "seconds")
        if dry:
            header = header[:5] + ("not sent (dry run)",) + header[5:]
        if held:
            header = (*header[:-2], "unchanged", *header[-2:])
        rows = [_row(p, dry, held) for p in self.partitions]
        rows += [(label, *["-"] * (len(header) - 2), "FAILED") for label in self.missing]
        if self.unchanged_outside:
            rows.append(("held unchanged, not read", *["-"] * (len(header) - 4),
                         self.unchanged_outside, "-", "-"))
        total = _row(self.total, dry, held)
        widths = [max(len(str(r[i])) for r in [header, total, *rows]) for i in range(len(header))]

        def line(cells: Iterable[Any]) -> str:
            cells = list(cells)
            return "  ".join([str(cells[0]).ljust(widths[0])]
                             + [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:])])

        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
        out = [line(header), rule, *map(line, rows), rule, line(total)] if rows else [
            "no partition: nothing to read"]
        if self.rows_planned is not None:
            out.append(f"rows planned: {self.rows_planned} = read {self.total.rows_read}"
                       f" + unchanged {self.total.unchanged}"
                       + ("" if self.rows_planned == self.total.rows_read + self.total.unchanged
                          else " (partitions that did not finish read none)"
                          if self.missing else " (the source changed while the run read it)"))
        out += self.notes
        if self.total.rejected:
            out.append("")
            out.append("rejected rows by reason:")
            out += [f"  {n:>8}  {reason}" for reason, n in self.total.rejected.most_common()]
            if rejects_at:
                out.append(f"each one is recorded (row key, reason; no text): {rejects_at}")
        if self.total.retrying:
            out.append("")
            out.append(f"{self.total.retrying_total} turns wait for a retry: Synap refused them for"
                       " its own trouble, not the row's; they are not held, and the next run of"
                       " their range sends them again (no resend_unchanged needed):")
            out += [f"  {n:>8}  {reason}" for reason, n in self.total.retrying.most_common()]
        if self.total.turns_redacted:
            kinds = ", ".join(f"{kind} {n}" for kind, n in self.total.redacted.most_common())
            out.append(f"personal data redacted: {sum(self.total.redacted.values())} values in"
                       f" {self.total.turns_redacted} turns ({kinds}); those turns were sent"
                       " redacted, and are counted as any other")
        if self.total.suppressed:
            out.append(f"{self.total.suppressed} rows were held back: their person was erased"
                       " (synap_erase); they stay in the source and are never sent")
        if self.total.ingested_on_resend:
            out.append(f"{self.total.ingested_on_resend} of the ingested documents were already"
                       " stored when sent again after a lost answer or a stopped attempt: counted"
                       " as this run's writes (one that was in Synap before this run would be a"
                       " duplicate; the contract gives no way to tell)")
        if self.turns_per_s:
            out.append(f"{self.total.rows_read} rows in {describe_duration(self.wall_seconds)} from the first"
                       f" partition's start to the last one's end: {self.turns_per_s:.0f} turns/s")
        if self.sample_of:
            estimate = self.estimated_seconds_for_all
            out.append(f"sample run: {len(self.partitions) + len(self.missing)} of"
                       f" {self.sample_of['partitions']} partitions, {self.total.rows_read} of about"
                       f" {self.sample_of['rows']} rows. "
                       + (f"At this rate the whole table takes about {describe_duration(estimate)}."
                          if estimate else "Too little ran to estimate the whole table.")
                       + (f" Credits for the whole table: {self.sample_of['credits']}."
                          if self.sample_of.get("credits") else ""))
        out.append("")
        if self.problems:
            out.append("PROBLEMS:")
            out += [f"  - {p}" for p in self.problems]
        elif dry:
            out.append("dry run: nothing was sent; every row accounted for: "
                       "read = not sent + rejected")
        elif not self.partitions:
            out.append("nothing to send: the target holds every row of the range unchanged")
        else:
            out.append("every row accounted for: read = ingested + duplicates + rejected"
                       + (" + waiting for a retry" if self.total.retrying else "")
                       + (" + suppressed" if self.total.suppressed else ""))
        return "\n".join(out)


def describe_duration(seconds: float | None) -> str:
    """``20.0 s``, ``14 min``, ``2 h 05 min``."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def counts_label(report: Mapping[str, Any]) -> str:
    """A finished partition's label with its counts: ``2024-03-01 → 2024-03-02 · 812 ingested, ...``."""
    counts = (f"{report['ingested']} ingested, {report['duplicates']} duplicates,"
              f" {report['rejected']} rejected")
    if report.get("retrying"):
        counts += f", {report['retrying']} to retry"
    if report.get("suppressed"):
        counts += f", {report['suppressed']} suppressed (erased)"
    if report.get("not_sent"):
        counts = f"{report['not_sent']} not sent (dry run), {report['rejected']} rejected"
    if report.get("unchanged"):
        counts += f", {report['unchanged']} unchanged"
    if report.get("turns_redacted"):
        counts += f", {report['turns_redacted']} redacted"
    for name in ("edited", "deleted"):
        if report.get(name):
            counts += f", {report[name]} {name} in the source"
    return f"{report['label']} · {counts}"


def summarize(windows: Iterable[Mapping[str, Any]], reports: Iterable[Mapping[str, Any]],
              max_rejected_share: float = 1.0, unchanged_outside: int = 0) -> RunSummary:
    """Add up partition reports; name every planned window that sent none.

    ``unchanged_outside``: rows the plan found held unchanged in no partition's span.
    """
    parsed = [PartitionReport.from_xcom(r) for r in reports if r]
    seen = {p.key for p in parsed}
    windows = list(windows)
    order = {window_key(w.get("start"), w.get("end")): (i, w["label"]) for i, w in enumerate(windows)}
    parsed.sort(key=lambda p: order.get(p.key, (len(order), ""))[0])
    sample_of = next((w["sample_of"] for w in windows if w.get("sample_of")), None)
    missing = [w for w in windows if window_key(w.get("start"), w.get("end")) not in seen]
    # A partition that did not finish still knew its unchanged rows: they stay counted.
    outside = unchanged_outside + sum(int(w.get("unchanged") or 0) for w in missing)
    planned = sum(int(w.get("rows") or 0) + int(w.get("unchanged") or 0) for w in windows)
    return RunSummary(parsed, [w["label"] for w in missing], sample_of, max_rejected_share,
                      rows_planned=planned + unchanged_outside, unchanged_outside=outside)


def _row(p: PartitionReport, dry: bool = False, held: bool = False) -> tuple[Any, ...]:
    counts: tuple[int, ...] = (p.rows_read, p.ingested, p.duplicates, p.rejected_total)
    if dry:
        counts += (p.not_sent,)
    if held:
        counts += (p.unchanged,)
    return (p.label, *counts, p.batches, f"{p.seconds:.1f}")
