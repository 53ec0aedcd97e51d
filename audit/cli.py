"""`xgate audit ...` commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from audit.checkpoints import CosignatureVerifier
from xgate.cli_support import fail_on_error
from xgate.errors import CryptoError, IntegrityError, InvalidInput

if TYPE_CHECKING:
    from audit.checkpoints import Signer
    from audit.store import AuditLog

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Tamper-evident audit log: verify, export, evidence bundles",
)

DB = typer.Option(..., "--db", help="audit SQLite database", exists=True, dir_okay=False)
KEY = typer.Option(..., "--key", help="log public key (PEM)", exists=True, dir_okay=False)
WITNESS = typer.Option(
    None,
    "--witness",
    help="witness cosigning key as NAME=PUBKEY.pem (repeatable); the checkpoint must then carry "
    "cosignatures from --quorum of them",
)
QUORUM = typer.Option(
    None, "--quorum", min=1, help="how many of the named witnesses must have cosigned (default: all named)"
)


def _witnesses(specs: list[str] | None) -> list[CosignatureVerifier]:
    from audit.checkpoints import load_public_key

    out: list[CosignatureVerifier] = []
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep:
            raise CryptoError("--witness must be NAME=PUBKEY.pem")
        out.append(CosignatureVerifier(name, load_public_key(Path(path))))
    return out


def _failed(what: str, exc: IntegrityError | CryptoError) -> None:
    typer.secho(f"FAILED: {what}: {exc.message}", fg=typer.colors.RED, err=True)
    if exc.details:
        typer.echo(f"  details: {json.dumps(exc.details, sort_keys=True, default=str)}", err=True)
    sys.exit(1)


@app.command("verify-log")
def verify_log_cmd(
    db: Path = DB,
    key: Path = KEY,
    witness: list[str] | None = WITNESS,
    quorum: int | None = QUORUM,
    checkpoint: list[Path] | None = typer.Option(
        None,
        "--checkpoint",
        exists=True,
        dir_okay=False,
        help="a signed checkpoint note you hold from earlier (repeatable): the log must contain it, "
        "and with --witness it must carry the quorum of cosignatures too",
    ),
) -> None:
    """Recompute the whole tree and check every stored node and checkpoint (and the witness quorum)."""
    from audit.checkpoints import load_public_key
    from audit.verify import verify_log

    with fail_on_error():
        pub = load_public_key(key)
        notes = [_read_note(p) for p in checkpoint or []]
        try:
            report = verify_log(db, pub, witnesses=_witnesses(witness), quorum=quorum, named=notes)
        except (IntegrityError, CryptoError) as exc:
            _failed("audit log does not verify", exc)
        quorum_text = (
            f"; latest checkpoint cosigned by {len(report.cosigned_by)} of the {report.quorum} witnesses "
            f"required ({', '.join(report.cosigned_by)})"
            if report.quorum
            else "; no witnesses named: a history re-signed with the log key would pass (name them with --witness)"
        )
        if report.checkpoints == 0 and report.size > 0:  # "OK" with any key at all, before
            typer.echo(
                f"OK, HASHES ONLY: {report.origin}: {report.size} entries, root {report.root.hex()}; no signed "
                "checkpoint yet, so --key was not used and nothing shows who wrote them (publish one: "
                "the gateway does every minute, `xgate audit bundle --sign-key` for a node's log)"
            )
            return
        typer.echo(
            f"OK: {report.origin}: {report.size} entries, root {report.root.hex()}; "
            f"{report.checkpoints} checkpoints verified (latest at size {report.latest_checkpoint_size}, "
            f"{report.unsigned_tail} entries not yet checkpointed); "
            f"{report.cosignatures_verified} cosignatures verified, "
            f"{report.cosignatures_unknown} from unknown witnesses"
            + (f"; {report.named_checkpoints} named checkpoints found in the log" if report.named_checkpoints else "")
            + quorum_text
        )


@app.command("verify-federation")
def verify_federation_cmd(
    manifest: Path = typer.Option(
        ...,
        "--manifest",
        exists=True,
        dir_okay=False,
        help="the federation manifest (GET /v1/audit/federation, xgate-audit-federation/1)",
    ),
    log: list[str] = typer.Option(
        ..., "--log", help="a replica's log as AUDIT_DB=PUBKEY.pem (repeatable; every log of the manifest)"
    ),
    witness: list[str] | None = WITNESS,
    quorum: int | None = QUORUM,
    entries_out: Path | None = typer.Option(
        None, "--entries-out", help="write the verified entries of all logs, merge-sorted by time, as JSON lines"
    ),
) -> None:
    """Verify the gateway replicas' logs as the federation's one log (docs/AUDIT.md "Replicas")."""
    from audit.checkpoints import load_public_key
    from audit.federation import merged_entries, parse_manifest, verify_federation

    with fail_on_error():
        listed = parse_manifest(manifest.read_bytes())
        given: list[tuple[Path, Any]] = []
        for spec in log:
            db, sep, key = spec.partition("=")
            if not sep or not db or not key:
                raise CryptoError("--log must be AUDIT_DB=PUBKEY.pem")
            given.append((Path(db), load_public_key(Path(key))))
        try:
            report = verify_federation(listed, given, witnesses=_witnesses(witness), quorum=quorum)
        except (IntegrityError, CryptoError) as exc:
            _failed("the federation's audit log does not verify", exc)
        if entries_out is not None:
            with entries_out.open("w", encoding="utf-8") as fh:
                for entry in merged_entries(report.sizes()):
                    fh.write(json.dumps(entry.view(), sort_keys=True) + "\n")
        for r in report.logs:
            typer.echo(
                f"OK: {r.origin}: {r.size} entries, {r.checkpoints} checkpoints "
                f"(latest at size {r.latest_checkpoint_size}, {r.unsigned_tail} not yet checkpointed)"
                + (f", cosigned by {', '.join(r.cosigned_by)}" if r.quorum else "")
            )
        typer.echo(
            f"OK: federation: {len(report.logs)} logs, {report.entries} entries, every log of the manifest verified"
            + ("" if witness else "; no witnesses named: a history re-signed with a log key would pass")
        )


def _read_note(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CryptoError(f"cannot read checkpoint note '{path.name}'") from exc


@app.command("export")
def export_cmd(db: Path = DB, out: Path = typer.Option(..., "--out", help="output directory")) -> None:
    """Write entries.jsonl, checkpoints.jsonl and manifest.json (no verification: run verify-log)."""
    from audit.export import export_log

    with fail_on_error():
        manifest = export_log(db, out)
        typer.echo(f"exported {manifest['size']} entries and {manifest['checkpoints']} checkpoints to {out}")


@app.command("bundle")
def bundle_cmd(
    request_id: str = typer.Argument(..., help="request id whose entries to collect"),
    db: Path = DB,
    out: Path = typer.Option(..., "--out", help="bundle JSON file to write"),
    sign_key: Path | None = typer.Option(
        None, "--sign-key", help="log private key: publish a checkpoint if none covers the entries yet"
    ),
) -> None:
    """Evidence bundle for one request: entries, inclusion proofs, signed checkpoint."""
    from audit.bundle import build_bundle, write_bundle
    from audit.checkpoints import Signer, load_private_key
    from audit.store import AuditLog, connect

    with fail_on_error():
        conn = connect(db, readonly=True)
        origin = conn.execute("SELECT value FROM meta WHERE key='origin'").fetchone()[0]
        conn.close()
        signer = Signer(origin, load_private_key(sign_key)) if sign_key else None
        # Without a signing key only read: a running gateway may be writing this log.
        with AuditLog.open(db, signer=signer, origin=origin, writer="thread" if signer else "none") as log:
            if signer is not None:  # another party's key would append a checkpoint no verifier accepts
                log.before_signing = lambda: _own_key(log, signer, sign_key)
            bundle = build_bundle(log, request_id, publish=signer is not None)
        write_bundle(bundle, out)
        typer.echo(f"wrote {len(bundle['entries'])} entries proven to checkpoint {bundle['origin']} to {out}")


def _own_key(log: AuditLog, signer: Signer, path: Path | None) -> None:
    """Refuse to sign with a key that did not sign the log's latest checkpoint (nothing is written)."""
    from audit.integrity import check_own_checkpoint
    from xgate.errors import AuditLogCompromised

    try:
        check_own_checkpoint(log, signer.verifier())
    except AuditLogCompromised as exc:
        if exc.details.get("reason") == "resigned":
            raise InvalidInput(
                f"--sign-key {path}: not this log's key (its checkpoints are signed by another)"
            ) from None
        raise


@app.command("verify-bundle")
def verify_bundle_cmd(
    file: Path = typer.Argument(..., exists=True, dir_okay=False),
    key: Path = KEY,
    witness: list[str] | None = WITNESS,
    quorum: int | None = QUORUM,
) -> None:
    """Verify an evidence bundle offline (with --witness: the same quorum rule as verify-log)."""
    from audit.bundle import read_bundle, verify_bundle
    from audit.checkpoints import load_public_key

    with fail_on_error():
        pub = load_public_key(key)
        try:
            report = verify_bundle(read_bundle(file), pub, witnesses=_witnesses(witness), quorum=quorum)
        except (IntegrityError, CryptoError) as exc:
            _failed("bundle does not verify", exc)
        typer.echo(
            f"OK: request {report.request_id}: {report.entries} entries included in the tree of size "
            f"{report.checkpoint_size} (root {report.root.hex()}), signature verified"
            + (f", cosigned by {', '.join(report.witnesses)}" if report.witnesses else "")
        )


@app.command("keygen")
def keygen_cmd(
    out: Path = typer.Option(..., "--out", help="path prefix: writes PREFIX.key.pem and PREFIX.pub.pem"),
) -> None:
    """Generate an Ed25519 key pair for a log or a witness."""
    from audit.checkpoints import generate_key, save_keypair

    with fail_on_error():
        try:
            priv, pub = save_keypair(generate_key(), out)
        except FileExistsError as exc:
            raise CryptoError(f"{exc.filename or out} exists: refusing to overwrite a key") from None
        typer.echo(f"private key: {priv} (keep secret)\npublic key:  {pub}")


@app.command("vkey")
def vkey_cmd(
    key: Path = KEY,
    name: str | None = typer.Option(None, "--name", help="key name (default: the log origin read from --db)"),
    db: Path | None = typer.Option(None, "--db", help="audit database whose origin names the key", dir_okay=False),
    cosigner: bool = typer.Option(False, "--cosigner", help="a witness key: cosignature/v1 type (0x04)"),
) -> None:
    """Print a verifier key in Go's note format (C2SP signed-note): NAME+KEYID+BASE64(TYPE||KEY)."""
    from audit.checkpoints import ALG_COSIGNATURE_V1, ALG_ED25519, load_public_key, raw_public, vkey
    from audit.store import connect

    with fail_on_error():
        if name is None:
            if db is None:
                raise CryptoError("give --name, or --db to take the name from the log's origin")
            conn = connect(db, readonly=True)
            try:
                row = conn.execute("SELECT value FROM meta WHERE key='origin'").fetchone()
            finally:
                conn.close()
            if row is None:
                raise CryptoError("the audit database has no origin")
            name = str(row[0])
        alg = ALG_COSIGNATURE_V1 if cosigner else ALG_ED25519
        typer.echo(vkey(name, alg, raw_public(load_public_key(key))))


FORMAT = typer.Option("table", "--format", help="table, json or csv")
TZ = typer.Option("Asia/Shanghai", "--tz", help="time zone for times given without one (and 'today')")


def _subject(subject_id: str | None, pseudonym: str | None, pseudonym_key: Path | None) -> str | None:
    """The subject's pseudonym; a national id is pseudonymised here, with the officer's key."""
    from xgate.errors import InvalidInput
    from xgate.pseudonym import Pseudonymiser, load_key, validate_pseudonym

    if subject_id is not None and pseudonym is not None:
        raise InvalidInput("give --subject-id or --pseudonym, not both")
    if subject_id is not None:
        return Pseudonymiser(load_key(pseudonym_key)).pseudonym(subject_id)  # key from file or env
    return validate_pseudonym(pseudonym) if pseudonym is not None else None


SUBJECT_ID = typer.Option(
    None,
    "--subject-id",
    help="national id, pseudonymised here with the federation key (--pseudonym-key or "
    "XGATE_PSEUDONYM_KEY); neither leaves this machine",
)
PSEUDONYM = typer.Option(None, "--pseudonym", help="subject pseudonym (26 base32 characters)")
PSEUDONYM_KEY = typer.Option(None, "--pseudonym-key", help="federation pseudonym key file", dir_okay=False)


@app.command("query")
def query_cmd(
    db: Path | None = typer.Option(None, "--db", help="audit SQLite database (read-only)", dir_okay=False),
    gateway: str | None = typer.Option(
        None, "--gateway", help="gateway URL: ask its REST API (API key in XGATE_API_KEY)"
    ),
    ca: Path | None = typer.Option(None, "--ca", help="CA certificate for the gateway's TLS", dir_okay=False),
    subject_id: str | None = SUBJECT_ID,
    pseudonym: str | None = PSEUDONYM,
    pseudonym_key: Path | None = PSEUDONYM_KEY,
    user: str | None = typer.Option(None, "--user"),
    agency: str | None = typer.Option(None, "--agency"),
    program: str | None = typer.Option(None, "--program"),
    purpose: str | None = typer.Option(None, "--purpose"),
    kind: str | None = typer.Option(None, "--kind", help="record kind (request, policy_decision, result, ...)"),
    decision: str | None = typer.Option(None, "--decision", help="allow or deny"),
    request_id: str | None = typer.Option(None, "--request-id", help="everything about one request"),
    refused: bool = typer.Option(False, "--refused", help="requests answered with a refusal (4xx)"),
    status: int | None = typer.Option(None, "--status", help="requests answered with this HTTP status"),
    since: str | None = typer.Option(None, "--since", help="from (ISO 8601, 'today', 'yesterday')"),
    until: str | None = typer.Option(None, "--until", help="until, exclusive"),
    limit: int = typer.Option(1000, "--limit", min=1, max=100_000, help="at most this many rows"),
    fmt: str = FORMAT,
    tz: str = TZ,
) -> None:
    """Who did what: entries matching every filter given, as a table, JSON or CSV.

    With --subject-id/--pseudonym it answers "who accessed this person in this period and why":
    one row per access with user, agency, program, purpose, legal basis and outcome.
    """
    from audit.query import ACCESS_COLUMNS, ROW_COLUMNS, Filters, parse_when, render, time_zone
    from xgate.errors import InvalidInput

    with fail_on_error():
        if fmt not in ("table", "json", "csv"):
            raise InvalidInput("--format must be table, json or csv")
        time_zone(tz)  # refused even when no time is given, rather than ignored
        if (db is None) == (gateway is None):
            raise InvalidInput("give exactly one of --db (a database file) or --gateway (the REST API)")
        if db is not None and not db.is_file():
            raise InvalidInput(f"audit database '{db.name}' does not exist")
        subject = _subject(subject_id, pseudonym, pseudonym_key)
        filters = Filters(
            subject=subject, user=user, agency=agency, program=program, purpose=purpose, kind=kind,
            decision=decision, request_id=request_id, status=status, refused=refused,
            since=parse_when(since, tz) if since else None, until=parse_when(until, tz) if until else None,
        )  # fmt: skip
        accesses = subject is not None and filters.active().keys() <= {"subject", "since", "until"}
        if db is not None:
            rows = _query_db(db, filters, accesses, limit)
        else:
            assert gateway is not None
            rows = _query_gateway(gateway, ca, filters, accesses, limit)
        typer.echo(render(rows, ACCESS_COLUMNS if accesses else ROW_COLUMNS, fmt), nl=False)  # type: ignore[arg-type]


def _query_db(db: Path, filters: object, accesses: bool, limit: int) -> list[dict[str, object]]:
    from audit.query import Filters, access, find_all, row
    from audit.store import AuditLog, connect

    assert isinstance(filters, Filters)
    conn = connect(db, readonly=True)
    try:
        origin = conn.execute("SELECT value FROM meta WHERE key='origin'").fetchone()[0]
    finally:
        conn.close()
    with AuditLog.open(db, origin=origin, writer="none") as log:
        found = find_all(log, filters, cap=limit)
        return [access(log, e) if accesses else row(e) for e in found]


def _gateway(url: str, ca: Path | None) -> Any:
    """An HTTPS client for the gateway's REST API with the officer's key (XGATE_API_KEY)."""
    import os

    import httpx

    from xgate.errors import ConfigError

    api_key = os.environ.get("XGATE_API_KEY")
    if not api_key:
        raise ConfigError("set XGATE_API_KEY to the officer's API key")
    return httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {api_key}"}, verify=str(ca) if ca else True, timeout=60
    )


def _get(client: Any, path: str, params: dict[str, Any] | None = None) -> Any:
    import httpx

    from xgate.errors import ConfigError, InvalidInput, XgateError

    try:
        resp = client.get(path, params=params or {})
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot reach the gateway: {type(exc).__name__}") from None
    if resp.status_code != 200:
        body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
        message = f"gateway answered {resp.status_code}: {body.get('message', resp.reason_phrase)}"
        rid = resp.headers.get("x-request-id")
        raise InvalidInput(message, request_id=rid) if resp.status_code < 500 else XgateError(message, request_id=rid)
    return resp.json()


def _query_gateway(url: str, ca: Path | None, filters: object, accesses: bool, limit: int) -> list[dict[str, object]]:
    from audit.query import Filters, row_from_view

    assert isinstance(filters, Filters)
    params = filters.active()
    subject = params.pop("subject", None)
    path = f"/v1/subjects/{subject}/accesses" if accesses else "/v1/audit/entries"
    if subject is not None and not accesses:
        params["subject"] = subject
    params = {k: ("true" if v is True else v) for k, v in params.items()}
    out: list[dict[str, object]] = []
    with _gateway(url, ca) as client:
        offset: int | None = 0
        while offset is not None and len(out) < limit:
            page = _get(client, path, {**params, "offset": offset, "limit": min(1000, limit - len(out))})
            out += page["accesses"] if accesses else [row_from_view(v) for v in page["entries"]]
            offset = page.get("next_offset")
    return out[:limit]


def _report_views(url: str, ca: Path | None, subject: str, since: Any, until: Any) -> tuple[list[Any], dict[str, Any]]:
    """The entries naming the subject and each request's result entries, each with its proof."""
    from audit.report import REPORT_CAP

    period = {k: v.isoformat() for k, v in (("since", since), ("until", until)) if v is not None}
    decisions: list[Any] = []
    results: dict[str, Any] = {}
    with _gateway(url, ca) as client:
        offset: int | None = 0
        while offset is not None and len(decisions) < REPORT_CAP:
            page = _get(client, f"/v1/subjects/{subject}/accesses", {**period, "offset": offset, "limit": 1000})
            for access in page["accesses"]:
                decisions.append(_get(client, f"/v1/audit/entries/{access['index']}"))
                rid = access.get("request_id")
                if access.get("kind") == "policy_decision" and rid and rid not in results:
                    found = _get(client, "/v1/audit/entries", {"request_id": rid, "kind": "result", "limit": 1000})
                    results[rid] = [_get(client, f"/v1/audit/entries/{e['index']}") for e in found["entries"]]
            offset = page.get("next_offset")
    return decisions, results


@app.command("report")
def report_cmd(
    key: Path = KEY,
    db: Path | None = typer.Option(None, "--db", help="audit SQLite database (read-only)", dir_okay=False),
    gateway: str | None = typer.Option(
        None, "--gateway", help="gateway URL: fetch entries and proofs over REST and verify them here"
    ),
    ca: Path | None = typer.Option(None, "--ca", help="CA certificate for the gateway's TLS", dir_okay=False),
    out: Path = typer.Option(..., "--out", help="HTML file to write"),
    subject_id: str | None = SUBJECT_ID,
    pseudonym: str | None = PSEUDONYM,
    pseudonym_key: Path | None = PSEUDONYM_KEY,
    since: str | None = typer.Option(None, "--since", help="from (ISO 8601, 'today', 'yesterday')"),
    until: str | None = typer.Option(None, "--until", help="until, exclusive"),
    witness: list[str] | None = WITNESS,
    quorum: int | None = QUORUM,
    tz: str = TZ,
) -> None:
    """An access report for one person (HTML): who, when, which agency, program, purpose, legal
    basis and outcome, each access proven into a verified checkpoint, for the person who asked."""
    from datetime import UTC, datetime

    from audit.checkpoints import load_public_key, parse_signed_note
    from audit.query import parse_when, time_zone
    from audit.report import CHECKPOINT_MOVED, build_report, mask_national_id, render_html, report_from_views
    from audit.store import AuditLog, connect
    from audit.verify import verify_log
    from xgate.errors import InvalidInput
    from xgate.pseudonym import normalise_national_id

    with fail_on_error():
        time_zone(tz)  # the report's times are shown in it
        subject = _subject(subject_id, pseudonym, pseudonym_key)
        if subject is None:
            raise InvalidInput("give --subject-id (national id) or --pseudonym")
        if (db is None) == (gateway is None):
            raise InvalidInput("give exactly one of --db (a database file) or --gateway (the REST API)")
        if db is not None and not db.is_file():
            raise InvalidInput(f"audit database '{db.name}' does not exist")
        label = mask_national_id(normalise_national_id(subject_id)) if subject_id else None
        pub = load_public_key(key)
        start, end = (parse_when(since, tz) if since else None), (parse_when(until, tz) if until else None)
        common: dict[str, Any] = dict(
            since=start, until=end, generated=datetime.now(UTC), subject_label=label,
            witnesses=_witnesses(witness), quorum=quorum, timezone=tz,
        )  # fmt: skip
        try:
            if gateway is not None:
                for attempt in range(3):  # a checkpoint published while fetching: fetch again
                    decisions, results = _report_views(gateway, ca, subject, start, end)
                    notes = [d["checkpoint"]["note"] for d in decisions if d.get("checkpoint")]
                    if not notes:
                        raise IntegrityError("no checkpoint covers these entries yet; publish one and ask again")
                    origin = parse_signed_note(notes[0]).checkpoint.origin
                    try:
                        report = report_from_views(origin, pub, decisions, results, pseudonym=subject, **common)
                        break
                    except IntegrityError as exc:
                        if exc.details.get("reason") != CHECKPOINT_MOVED or attempt == 2:
                            raise
            else:
                assert db is not None
                # The report finds the subject's entries through the lookup index: the whole log,
                # index included, is verified first, so a deleted index row cannot hide an access.
                verify_log(db, pub, witnesses=common["witnesses"], quorum=quorum)
                conn = connect(db, readonly=True)
                try:
                    origin = conn.execute("SELECT value FROM meta WHERE key='origin'").fetchone()[0]
                finally:
                    conn.close()
                with AuditLog.open(db, origin=origin, writer="none") as log:
                    report = build_report(log, subject, pub, **common)
        except (IntegrityError, CryptoError) as exc:
            _failed("the evidence for this report does not verify", exc)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_html(report), encoding="utf-8")
        typer.echo(
            f"wrote {out}: {len(report.rows)} accesses, proven into checkpoint {report.checkpoint.checkpoint.size}"
        )
