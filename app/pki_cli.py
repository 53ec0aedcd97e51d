"""`xgate pki ...` commands: thin wrappers over crypto/pki.py and gateway/auth.py."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509

from xgate.cli_support import fail_on_error

app = typer.Typer(
    no_args_is_help=True, pretty_exceptions_show_locals=False, help="Federation PKI: CA, certificates, revocation"
)

CaDir = Annotated[Path, typer.Option("--ca", help="CA directory (holds ca.key.pem: keep it offline)")]


@app.command("init")
def init_cmd(
    ca: CaDir,
    name: Annotated[str, typer.Option(help="federation name")] = "xgate federation CA",
    days: Annotated[int, typer.Option(help="CA validity in days")] = 3650,
) -> None:
    """Create the federation CA, an empty CRL and an empty signed directory."""
    from crypto import pki

    with fail_on_error():
        created = pki.init_ca(ca, name, days)
        typer.echo(f"CA '{created.name}' created in {ca} (fingerprint {pki.fingerprint(created.cert)})")


@app.command("issue")
def issue_cmd(
    ca: CaDir,
    kind: Annotated[str, typer.Option(help="gateway|node|flower-superlink|flower-supernode|user")],
    agency: Annotated[str, typer.Option(help="agency id, e.g. tax")],
    out: Annotated[Path, typer.Option(help="directory for cert/key files")],
    dns: Annotated[list[str] | None, typer.Option(help="extra DNS SAN (repeatable)")] = None,
    ip: Annotated[list[str] | None, typer.Option(help="extra IP SAN (repeatable)")] = None,
    days: Annotated[int, typer.Option(help="validity in days (short-lived by design)")] = 30,
    address: Annotated[str, typer.Option(help="host:port published in the federation directory")] = "",
) -> None:
    """Issue a certificate (+ Ed25519 signing key for gateway/node) and publish it in the directory."""
    from crypto import pki

    with fail_on_error():
        issued = pki.issue(ca, kind, agency, out, dns or (), ip or (), days, address)
        typer.echo(
            json.dumps(
                {
                    "cert": str(issued.cert_path),
                    "key": str(issued.key_path),
                    "signing_key": str(issued.signing_key_path) if issued.signing_key_path else None,
                    "serial": str(issued.serial),
                    "fingerprint": issued.fingerprint,
                    "key_id": issued.key_id,
                },
                indent=2,
            )
        )


@app.command("revoke")
def revoke_cmd(ca: CaDir, serial: Annotated[str, typer.Option(help="certificate serial (decimal)")]) -> None:
    """Revoke a certificate: re-signs crl.pem and marks its signing key revoked in the directory."""
    from crypto import pki

    with fail_on_error():
        path = pki.revoke(ca, serial)
        typer.echo(f"revoked {serial}; distribute {path} and {ca / pki.DIRECTORY} to every party")


@app.command("crl")
def crl_cmd(ca: CaDir, days: Annotated[int, typer.Option(help="days until next update")] = 7) -> None:
    """Re-sign the CRL (run at least every `days`; parties refuse a CRL stale beyond its grace)."""
    from crypto import pki

    with fail_on_error():
        typer.echo(str(pki.write_crl(pki.load_ca(ca), days=days)))


@app.command("set-address")
def set_address_cmd(
    ca: CaDir,
    agency: Annotated[str, typer.Option()],
    address: Annotated[str, typer.Option()],
    kind: Annotated[str, typer.Option()] = "node",
) -> None:
    """Publish where a party listens (host:port) in the signed federation directory."""
    from crypto import pki

    with fail_on_error():
        pki.set_address(ca, agency, kind, address)
        typer.echo(f"{kind} of '{agency}' at {address}")


@app.command("show")
def show_cmd(path: Annotated[Path, typer.Argument(help="a certificate PEM, or a CA directory")]) -> None:
    """Show a certificate's identity and validity, or a CA's issued certificates and directory."""
    from crypto import pki

    with fail_on_error():
        if path.is_dir():
            ca = pki.load_ca(path)
            directory = pki.load_directory(path / pki.DIRECTORY, ca.cert)
            crl = pki.load_crl(path / pki.CRL)
            typer.echo(
                f"CA: {ca.name}  fingerprint {pki.fingerprint(ca.cert)}  "
                f"valid until {ca.cert.not_valid_after_utc:%Y-%m-%d}"
            )
            typer.echo(f"CRL: {len(list(crl))} revoked, next update {crl.next_update_utc:%Y-%m-%d %H:%M} UTC")
            for e in directory.entries:
                state = "REVOKED" if e.revoked else "valid"
                typer.echo(
                    f"  {e.kind:<17} {e.agency:<16} {state:<8} serial={e.serial} key_id={e.key_id} "
                    f"address={e.address or '-'}"
                )
            return
        cert = pki.load_cert(path)
        ident = pki.peer_identity(cert)
        now = dt.datetime.now(dt.UTC)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        typer.echo(
            json.dumps(
                {
                    "agency": ident.agency,
                    "kind": ident.kind,
                    "serial": str(ident.serial),
                    "fingerprint": ident.fingerprint,
                    "issuer": cert.issuer.rfc4514_string(),
                    "not_before": cert.not_valid_before_utc.isoformat(),
                    "not_after": cert.not_valid_after_utc.isoformat(),
                    "expired": now > cert.not_valid_after_utc,
                    "dns": san.get_values_for_type(x509.DNSName),
                    "ip": [str(i) for i in san.get_values_for_type(x509.IPAddress)],
                },
                indent=2,
            )
        )


def _user_store(users: Path | None, database: str | None) -> Any:
    """The replicas' shared database (gateway/user_store.py) or None for a users file; exactly one."""
    from xgate.errors import InvalidInput

    if (users is None) == (database is None):
        raise InvalidInput("give exactly one of --users (a users file) and --database (the replicas' PostgreSQL URL)")
    if database is None:
        return None
    from gateway.user_store import UserStore
    from xgate.db import PostgresDatabase, is_postgres_url

    if not is_postgres_url(database):
        raise InvalidInput("--database must be a postgresql:// URL (the replicas' [gateway] database)")
    return UserStore(PostgresDatabase(database, max_size=1))


@app.command("add-user")
def add_user_cmd(
    user: Annotated[str, typer.Option(help="user id")],
    agency: Annotated[str, typer.Option(help="agency id")],
    role: Annotated[str, typer.Option(help="caseworker|analyst|security_officer|admin")],
    tier: Annotated[str, typer.Option(help="gold|silver|bronze")],
    principals: Annotated[
        Path | None,
        typer.Option(help="the policy set's principals.toml: register the user there too (the engine reads it)"),
    ] = None,
    users: Annotated[Path | None, typer.Option(help="users file (JSON, only key hashes are stored)")] = None,
    database: Annotated[
        str | None, typer.Option(help="instead of --users: the replicas' PostgreSQL URL ([gateway] database)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="write the API key to this file (mode 0600) instead of printing it")
    ] = None,
    job_signing_key: Annotated[
        Path | None,
        typer.Option(
            help="with --principals: the file `xgate train keygen` printed for this analyst; every training"
            " job run in its name must then carry its signature"
        ),
    ] = None,
) -> None:
    """Register a REST user and print their API key ONCE (only its SHA-256 is stored)."""
    import os

    from gateway.auth import add_user, check_user_id
    from xgate.errors import InvalidInput

    with fail_on_error():
        check_user_id(user)  # before anything is written, principals.toml included
        signing_key = _job_signing_key(job_signing_key, principals) if job_signing_key is not None else None
        store = _user_store(users, database)
        # Created first (owner-only whatever the umask): a key is never issued that cannot be kept.
        fd = None
        if out is not None:
            try:
                # O_EXCL: an existing file may hold another user's key, shown once and never again.
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.fchmod(fd, 0o600)
            except FileExistsError:
                raise InvalidInput(f"--out {out}: already exists; an API key file is never overwritten") from None
            except OSError as exc:
                if fd is not None:
                    os.close(fd)
                raise InvalidInput(f"--out {out}: {exc.strerror}") from None
        try:
            if principals is not None:
                from app.principals import register_principal

                register_principal(principals, user, agency, role, tier, signing_key)
            if store is not None:
                key = store.add(user, agency, role, tier)
            else:
                assert users is not None
                key = add_user(users, user, agency, role, tier)
        except BaseException:
            if fd is not None:
                os.close(fd)
                out.unlink(missing_ok=True)  # type: ignore[union-attr]
            raise
        if fd is None:
            typer.echo(key)
            typer.secho("store this key now: it cannot be shown again", err=True, fg=typer.colors.YELLOW)
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(key + "\n")
            typer.secho(f"API key written to {out} (mode 0600): it cannot be shown again", err=True)


def _job_signing_key(path: Path, principals: Path | None) -> str:
    """The public key in the file `xgate train keygen` printed (`signing_key = "<base64>"`)."""
    import tomllib

    from crypto.artefacts import Signer
    from xgate.errors import CryptoError, InvalidInput

    if principals is None:
        raise InvalidInput("--job-signing-key needs --principals: the key is registered in principals.toml")
    try:
        value = tomllib.loads(path.read_text(encoding="utf-8-sig")).get("signing_key")
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"--job-signing-key {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(value, str):
        raise InvalidInput(f"--job-signing-key {path}: no signing_key line (the file `xgate train keygen` printed)")
    try:
        Signer.of("job-signing", value)
    except CryptoError as exc:
        raise InvalidInput(f"--job-signing-key {path}: {exc.message}") from None
    return value


@app.command("disable-user")
def disable_user_cmd(
    user: Annotated[str, typer.Option()],
    users: Annotated[Path | None, typer.Option(help="users file")] = None,
    database: Annotated[str | None, typer.Option(help="instead of --users: the replicas' PostgreSQL URL")] = None,
) -> None:
    """Disable every API key of a user."""
    from gateway.auth import disable_user

    with fail_on_error():
        store = _user_store(users, database)
        if store is not None:
            count = store.disable(user)
        else:
            assert users is not None
            count = disable_user(users, user)
        typer.echo(f"disabled {count} key(s) of '{user}'")


@app.command("request")
def request_cmd(
    kind: Annotated[str, typer.Option(help="gateway|node|flower-superlink|flower-supernode|user")],
    agency: Annotated[str, typer.Option(help="this party's agency id")],
    out: Annotated[Path, typer.Option(help="this party's tls/ directory (keys stay here)")],
    dns: Annotated[list[str] | None, typer.Option(help="DNS name to certify (repeatable)")] = None,
    ip: Annotated[list[str] | None, typer.Option(help="IP address to certify (repeatable)")] = None,
) -> None:
    """Make this party's private keys (0600, never sent anywhere) and a certificate request for the CA."""
    from crypto.csr import request

    with fail_on_error():
        made = request(kind, agency, out, dns or (), ip or ())
        note = " (renewal: new keys wait as *.next until `pki install`)" if made.renewal else ""
        typer.echo(f"{made.csr_path}: send this request to the CA{note}")


@app.command("sign")
def sign_cmd(
    ca: CaDir,
    request_file: Annotated[Path, typer.Option("--request", help="the party's .csr.pem")],
    kind: Annotated[str, typer.Option(help="the kind you expect this request to be for")],
    agency: Annotated[str, typer.Option(help="the agency you expect this request to be for")],
    out: Annotated[Path, typer.Option(help="directory for the certificate")],
    days: Annotated[int, typer.Option(help="validity in days (short-lived by design)")] = 30,
    address: Annotated[str, typer.Option(help="host:port published in the federation directory")] = "",
) -> None:
    """Check a certificate request (agency, kind, signatures) and issue it; re-signs federation.json."""
    from crypto.csr import sign_request

    with fail_on_error():
        signed = sign_request(ca, request_file, out, kind=kind, agency=agency, days=days, address=address)
        names = ", ".join([*signed.dns, *signed.ips]) or "no extra names"
        typer.echo(
            f"{signed.cert_path}: {kind} of '{agency}' serial {signed.serial} ({names})"
            + (f", signing key {signed.key_id}" if signed.key_id else "")
            + f"; send it back with {ca / 'ca.cert.pem'}, {ca / 'crl.pem'} and {ca / 'federation.json'}"
        )


@app.command("install")
def install_cmd(
    cert: Annotated[Path, typer.Option(help="the certificate the CA sent back")],
    out: Annotated[Path, typer.Option(help="this party's tls/ directory (where `pki request` left the keys)")],
    ca_cert: Annotated[Path, typer.Option("--ca-cert", help="the federation CA certificate")],
    directory: Annotated[
        Path | None, typer.Option(help="the distributed federation.json: a renewal waits until it lists the new key")
    ] = None,
) -> None:
    """Check a certificate against the CA and this party's own key, and put it (and a renewal's keys) in place."""
    from crypto.csr import install

    with fail_on_error():
        done = install(cert, out, ca_cert, directory)
        what = "renewed: new keys in force (running services switch within a second)" if done.renewed else "installed"
        typer.echo(f"{done.cert_path}: {what}" + (f"; signing key {done.key_id}" if done.key_id else ""))
