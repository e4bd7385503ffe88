"""Command line of the local Synap API.

    python -m include.synap_local serve [--port 8765] [--db .local/synap.sqlite3]
    python -m include.synap_local counts [--db ...]
    python -m include.synap_local list [--db ...] [--instance-id ...] [--limit 20] [--text]

``list`` prints one JSON object a line; message text only with ``--text``.

``serve`` reads tenants from ``--tenant`` and from ``SYNAP_LOCAL_TENANTS``
(comma-separated specs: keys stay off the command line), and the control token
of ``/_local/*`` from ``SYNAP_LOCAL_CONTROL_TOKEN``: without it ``/_local/*``
answers 401 to everyone (``counts`` and ``list`` read the store directly).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from .faults import Controls, FaultRule
from .server import DEFAULT_API_KEY, TENANT_SPEC, LocalSynapServer, ServerSettings, Tenant
from .store import DocumentStore

DEFAULT_DB = Path(".local/synap.sqlite3")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.synap_local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API until interrupted")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    serve.add_argument("--db", type=Path, default=DEFAULT_DB)
    serve.add_argument("--tenant", action="append", default=[], metavar=TENANT_SPEC,
                       help=f"an API key this server accepts (default: {DEFAULT_API_KEY}, b2b);"
                            " *-unreported: whoami names no isolation")
    serve.add_argument("--max-batch", type=int, default=100)
    serve.add_argument("--max-body-bytes", type=int, default=64 * 1024 * 1024,
                       help="a longer request body is refused (413) unread")
    serve.add_argument("--on-duplicate", choices=["reject", "update"], default="reject")
    serve.add_argument("--duplicate-reports-original", action="store_true",
                       help="a duplicate's result carries the first write's queued_at and"
                            " ingestion_id (more than Synap's docs promise; default: this answer's)")
    serve.add_argument("--resend-after-delete", choices=["duplicate", "anew"], default="duplicate",
                       help="a document id whose memories were all deleted, sent again: refused as"
                            " a duplicate, or taken anew (the contract does not say)")
    serve.add_argument("--rate-limit-per-minute", type=float, default=0.0, help="0: no limit")
    serve.add_argument("--latency-ms", type=float, default=0.0)
    serve.add_argument("--extraction-seconds", type=float, default=0.0,
                       help="a stored document is queued, then processing, for this long (0: done at once)")
    serve.add_argument("--extraction-failed-share", type=float, default=0.0,
                       help="this share of documents fails extraction")
    serve.add_argument("--credits-balance", type=float, default=1_000_000.0)
    serve.add_argument("--credit-price", action="append", default=[], metavar="METRIC=PRICE",
                       help="credits per unit of a metric_type (default: documents=1)")
    serve.add_argument("--strict-batches", action="store_true",
                       help="refuse a whole batch (422) when one document is invalid")
    serve.add_argument("--fault", action="append", default=[], metavar="JSON",
                       help='e.g. \'{"kind": "status", "status": 503, "times": 2}\'')

    for name in ("counts", "list"):
        p = sub.add_parser(name, help=f"{name} stored documents (reads the store file)")
        p.add_argument("--db", type=Path, default=DEFAULT_DB)
        if name == "list":
            p.add_argument("--instance-id")
            p.add_argument("--limit", type=int, default=20)
            p.add_argument("--text", action="store_true", help="include message text")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    store = DocumentStore(args.db)
    if args.command == "counts":
        print(json.dumps(store.counts(), indent=2))
        return 0
    for doc in store.iter_documents(args.instance_id, args.limit):
        row = doc.as_dict()
        if not args.text:
            row.pop("document")
        print(json.dumps(row, ensure_ascii=False))
    return 0


def _env_tenants() -> list[str]:
    return [t.strip() for t in os.environ.get("SYNAP_LOCAL_TENANTS", "").split(",") if t.strip()]


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s synap-local %(message)s")
    controls = Controls(rate_limit_per_minute=args.rate_limit_per_minute, latency_ms=args.latency_ms,
                        strict_batches=args.strict_batches,
                        extraction_seconds=args.extraction_seconds,
                        extraction_failed_share=args.extraction_failed_share,
                        credits_balance=args.credits_balance,
                        credit_prices={m: float(p) for m, p in (c.split("=", 1) for c in args.credit_price)}
                        or {"documents": 1.0},
                        faults=[FaultRule.from_dict(json.loads(f)) for f in args.fault])
    settings = ServerSettings(
        db_path=args.db,
        tenants=[Tenant.parse(t) for t in [*args.tenant, *_env_tenants()]] or [Tenant(DEFAULT_API_KEY)],
        control_token=os.environ.get("SYNAP_LOCAL_CONTROL_TOKEN", ""),
        max_body_bytes=args.max_body_bytes,
        max_batch=args.max_batch, on_duplicate=args.on_duplicate,
        duplicate_reports_original=args.duplicate_reports_original,
        anew_after_delete=args.resend_after_delete == "anew", controls=controls)
    server = LocalSynapServer(settings, args.host, args.port)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # The first line is read by scripts and fixtures to learn the address.
    print(f"synap-local listening on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
