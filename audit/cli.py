"""`xgate audit ...` commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from audit.checkpoints import CosignatureVerifier
from xgate.cli_support import fail_on_error
from xgate.errors import CryptoError, IntegrityError

app = typer.Typer(no_args_is_help=True, help="Tamper-evident audit log: verify, export, evidence bundles")

DB = typer.Option(..., "--db", help="audit SQLite database", exists=True, dir_okay=False)
KEY = typer.Option(..., "--key", help="log public key (PEM)", exists=True, dir_okay=False)
WITNESS = typer.Option(
    None, "--witness", help="witness cosigning key as NAME=PUBKEY.pem (repeatable); its cosignature is then required"
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
def verify_log_cmd(db: Path = DB, key: Path = KEY, witness: list[str] | None = WITNESS) -> None:
    """Recompute the whole tree and check every stored node and checkpoint."""
    from audit.checkpoints import load_public_key
    from audit.verify import verify_log

    with fail_on_error():
        pub = load_public_key(key)
        try:
            report = verify_log(db, pub, witnesses=_witnesses(witness))
        except (IntegrityError, CryptoError) as exc:
            _failed("audit log does not verify", exc)
        typer.echo(
            f"OK: {report.origin}: {report.size} entries, root {report.root.hex()}; "
            f"{report.checkpoints} checkpoints verified (latest at size {report.latest_checkpoint_size}, "
            f"{report.unsigned_tail} entries not yet checkpointed); "
            f"{report.cosignatures_verified} cosignatures verified, "
            f"{report.cosignatures_unknown} from unknown witnesses"
        )


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
            bundle = build_bundle(log, request_id, publish=signer is not None)
        write_bundle(bundle, out)
        typer.echo(f"wrote {len(bundle['entries'])} entries proven to checkpoint {bundle['origin']} to {out}")


@app.command("verify-bundle")
def verify_bundle_cmd(
    file: Path = typer.Argument(..., exists=True, dir_okay=False),
    key: Path = KEY,
    witness: list[str] | None = WITNESS,
) -> None:
    """Verify an evidence bundle offline."""
    from audit.bundle import read_bundle, verify_bundle
    from audit.checkpoints import load_public_key

    with fail_on_error():
        pub = load_public_key(key)
        try:
            report = verify_bundle(read_bundle(file), pub, witnesses=_witnesses(witness))
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
            raise CryptoError("refusing to overwrite an existing private key") from exc
        typer.echo(f"private key: {priv} (keep secret)\npublic key:  {pub}")
