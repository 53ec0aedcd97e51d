"""Deployment commands: `xgate config check`, `xgate node init`, `xgate gateway init`, `xgate keys ...`,
`xgate policy init`.

A party's home directory has one conventional layout, which `init` writes into its config and
`config check` verifies (every path can be changed in the config afterwards):

    <home>/node.toml | gateway.toml     the config (written by `init`)
    <home>/tls/                         <kind>-<agency>.key.pem, .sign.pem (made here by `xgate pki request`),
                                        .cert.pem (from the CA, placed by `xgate pki install`)
    <home>/ca/                          ca.cert.pem, crl.pem, federation.json (distributed by the CA)
    <home>/keys/                        secrets: pseudonym.key, column.key, mask.key, audit.key.pem
    <home>/data/                        the store, the audit log, state
    <home>/policies/                    the federation's policy set (`xgate policy init`)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Annotated

import typer

from xgate.addresses import host_port
from xgate.cli_support import fail_on_error, plain_reason
from xgate.errors import ConfigError, InvalidInput, XgateError

config_app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Service configuration: check a config and its files",
)
keys_app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Secret keys, each written with mode 0600 and never overwritten",
)

Home = Annotated[Path, typer.Option("--home", help="this party's directory (config, tls/, ca/, keys/, data/)")]


# -- xgate config check ------------------------------------------------------------------------


@config_app.command("check")
def check_cmd(
    file: Annotated[Path, typer.Argument(help="a node or gateway config TOML")],
    before_load: Annotated[bool, typer.Option("--before-load", help="node: the store need not exist yet")] = False,
) -> None:
    """Validate a config and every file it names; print one line per problem (exit 1 if any)."""
    import tomllib

    with fail_on_error():
        try:
            tables = tomllib.loads(file.read_text(encoding="utf-8-sig"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: {exc}") from None
        except OSError as exc:
            raise InvalidInput(plain_reason(exc) or f"{file}: unreadable") from None
        except UnicodeDecodeError:
            raise InvalidInput(f"{file}: not UTF-8 text, so not a config file") from None
        if "node" in tables:
            from nodes.config import load_node_config
            from nodes.preflight import node_problems

            what, problems = "node", node_problems(load_node_config(file), for_serve=not before_load)
        elif "gateway" in tables:
            from gateway.config import load_gateway_config
            from gateway.preflight import gateway_problems

            what, problems = "gateway", gateway_problems(load_gateway_config(file))
        else:
            raise ConfigError(f"{file}: neither a [node] nor a [gateway] table: not an xgate service config")
    for line in problems.lines:
        typer.secho(f"{file}: {line}", fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{file}: ok ({what} config and every file it names)")


# -- xgate keys ... ----------------------------------------------------------------------------


def _refuse_existing(path: Path) -> None:
    if path.exists() or path.is_symlink():  # a dangling link was written through
        raise ConfigError(f"{path} already exists: refusing to overwrite a key (move it away first)")


@keys_app.command("pseudonym")
def pseudonym_key_cmd(out: Annotated[Path, typer.Option("--out", help="key file to create (0600)")]) -> None:
    """The federation pseudonym key: made once, held by every agency and requester client, never the gateway."""
    from crypto.pki import write_private
    from xgate.pseudonym import PSEUDONYM_KEY_BYTES

    with fail_on_error():
        _refuse_existing(out)
        write_private(out, os.urandom(PSEUDONYM_KEY_BYTES).hex().encode())
        typer.echo(f"{out}: federation pseudonym key (mode 0600); give it to agencies and clients only")


@keys_app.command("column")
def column_key_cmd(
    out: Annotated[Path, typer.Option("--out", help="key file to create (0600), outside the data directory")],
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="refuse a key inside this directory")] = None,
) -> None:
    """A node's column key (AES-256-GCM for core-class values at rest)."""
    from crypto.at_rest import generate_key_file

    with fail_on_error():
        key_id = generate_key_file(out, data_dir)
        typer.echo(f"{out}: column key {key_id} (mode 0600); keep it out of the data directory and its backups")


@keys_app.command("mask")
def mask_key_cmd(out: Annotated[Path, typer.Option("--out", help="key file to create (0600)")]) -> None:
    """The gateway's mask key (never shared with anyone)."""
    from crypto.masks import MASK_KEY_BYTES
    from crypto.pki import write_private

    with fail_on_error():
        _refuse_existing(out)
        write_private(out, os.urandom(MASK_KEY_BYTES).hex().encode())
        typer.echo(f"{out}: gateway mask key (mode 0600)")


@keys_app.command("audit")
def audit_key_cmd(
    out: Annotated[Path, typer.Option("--out", help="path prefix: PREFIX.key.pem (0600) and PREFIX.pub.pem")],
) -> None:
    """An Ed25519 key pair signing an audit log's checkpoints (gateway) or its cosignatures (node)."""
    from audit.checkpoints import generate_key, save_keypair

    with fail_on_error():
        _refuse_existing(Path(f"{out}.key.pem"))
        _refuse_existing(Path(f"{out}.pub.pem"))  # the half others verify with was replaced alone
        priv, pub = save_keypair(generate_key(), out)
        typer.echo(f"{priv}: private (0600)\n{pub}: public (give the gateway's to every node, a node's to the gateway)")


# -- xgate node init / gateway init ------------------------------------------------------------


def _timezone(policy_dir: Path | None) -> str:
    import tomllib

    from policies.loader import DEFAULT_POLICY_DIR

    settings = (policy_dir or DEFAULT_POLICY_DIR) / "settings.toml"
    try:
        return str(tomllib.loads(settings.read_text(encoding="utf-8-sig"))["engine"]["timezone"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "Asia/Shanghai (the default)"


def _training_datasets(policy_dir: Path | None) -> dict[str, list[str]] | None:
    """agency -> ids of the datasets registered for training in the policy set (None: no readable set)."""
    import tomllib

    if policy_dir is None:
        return None
    try:
        entries = tomllib.loads((policy_dir / "datasets.toml").read_text(encoding="utf-8-sig")).get("datasets", [])
    except (OSError, tomllib.TOMLDecodeError):
        return None
    out: dict[str, list[str]] = {}
    for entry in entries:
        if isinstance(entry, dict) and "agency" in entry and "id" in entry:
            out.setdefault(str(entry["agency"]), []).append(str(entry["id"]))
    return out


def _training_nodes(agencies: list[tuple[str, str]], served: dict[str, list[str]] | None) -> list[str]:
    """[[training.nodes]] per agency serving a training dataset (every agency when the set is unknown)."""
    lines: list[str] = []
    for agency, _ in agencies:
        table = [
            "[[training.nodes]]",
            f'agency = "{agency}"',
            f'public_key = "training/supernode-{agency}.ssh.pub"',
            f'certificate = "training/flower-supernode-{agency}.cert.pem"',
        ]
        if served is None:
            lines += [*table, ""]
        elif served.get(agency):
            ids = ", ".join(f'"{d}"' for d in served[agency])
            lines += [*table, f"datasets = [{ids}]                 # it takes part in jobs reading these", ""]
        else:  # a node with no datasets listed would take part in every job, and refuse it
            lines += [f"# {agency}: serves no dataset registered for training (policies/datasets.toml)", ""]
    return lines


def _published(home: Path, agency: str, kind: str) -> str:
    from crypto.pki import load_directory

    directory = home / "ca" / "federation.json"
    if not directory.exists():
        return ""
    try:
        return load_directory(directory, home / "ca" / "ca.cert.pem").entry(agency, kind).address
    except XgateError:  # `config check` reports a bad directory; init only reads a default
        return ""


def node_config_text(home: Path, agency: str, *, column_key: bool, gateway_audit_key: bool,
                     superlink: str | None) -> str:  # fmt: skip
    """A complete, commented node config for `agency` in the conventional layout of `home`."""
    agency_id(agency)
    if superlink:
        host_port("--superlink", superlink)
    published = _published(home, agency, "node")
    policy_dir = home / "policies"
    tz = _timezone(policy_dir if policy_dir.is_dir() else None)
    lines = [
        f"# xgate node of agency '{agency}' (written by `xgate node init`; check with `xgate config check`).",
        "# Relative paths are relative to this file.",
        "",
        "[node]",
        f'agency = "{agency}"',
        "# Where to listen. Unset: the address the CA published for this node in ca/federation.json",
        f"# (now: {published or 'none published: set one with `xgate pki sign|set-address --address`'}).",
        '# listen = "0.0.0.0:7443"',
        'store = "data/store.sqlite"                 # created by `xgate node load`',
        'pseudonym_key_file = "keys/pseudonym.key"  # the federation pseudonym key (from the operator), 0600',
    ]
    if column_key:
        lines.append('column_key_file = "keys/column.key"        # `xgate keys column`: seals core-class values')
    else:
        lines.append('# column_key_file = "keys/column.key"      # needed for core-class data (`xgate keys column`)')
    lines += [
        "# civil_register = true  # this store lists every registered person (the household register):",
        "#                        # bronze cohorts naming anyone it does not know are refused",
        'audit_db = "data/audit.sqlite"              # this node\'s own audit log',
        'audit_key = "keys/audit.key.pem"            # `xgate keys audit --out keys/audit`: signs checkpoints',
    ]
    if gateway_audit_key:
        lines.append('gateway_audit_key = "ca/gateway-audit.pub.pem"  # the gateway log\'s key: we witness it')
    else:
        lines.append('# gateway_audit_key = "ca/gateway-audit.pub.pem"  # given: this node cosigns the gateway log')
    lines += [
        f'signing_key = "tls/node-{agency}.sign.pem"  # Ed25519 envelope key (`xgate pki request`)',
        'federation_directory = "ca/federation.json" # CA-signed: addresses and signing keys of every party',
        "# The policy set this node decides under. Office-hour windows in agreements are local time in",
        f"# the time zone of its settings.toml (now: {tz}).",
        'policy_dir = "policies"',
        "signed_policies = true  # start only on a CA-signed bundle: `xgate policy install --into policies`",
        "",
        "[tls]",
        f'cert = "tls/node-{agency}.cert.pem"',
        f'key = "tls/node-{agency}.key.pem"',
        'ca = "ca/ca.cert.pem"',
        'crl = "ca/crl.pem"                          # re-distributed by the CA at least weekly',
        'gateway_agency = "gateway"',
    ]
    if superlink:
        lines += [
            "",
            "# This agency's Flower SuperNode (`xgate node supernode --config ...`).",
            "[training]",
            f'superlink = "{superlink}"',
            'ca_cert = "ca/ca.cert.pem"',
            f'supernode_key = "tls/supernode-{agency}.ssh.key"',
            f'supernode_cert = "tls/flower-supernode-{agency}.cert.pem"',
            'crl = "ca/crl.pem"',
            'ledger = "data/ledger.sqlite"',
        ]
    return "\n".join(lines) + "\n"


def agency_id(value: str) -> str:
    from crypto.pki import AGENCY_ID

    if not AGENCY_ID.fullmatch(value):
        raise InvalidInput(f"--agency: '{value[:40]}' is not an agency id (^[a-z][a-z0-9_]{{1,31}}$, e.g. tax)")
    return value


def gateway_config_text(home: Path, listen: str, agencies: list[tuple[str, str]], superlink: str | None = None) -> str:
    policy_dir = home / "policies"
    tz = _timezone(policy_dir if policy_dir.is_dir() else None)
    host, port = host_port("--listen", listen, any_port=True)
    lines = [
        "# xgate gateway (written by `xgate gateway init`; check with `xgate config check`).",
        "# Relative paths are relative to this file.",
        "",
        "[gateway]",
        f'host = "{host}"',
        f"port = {port}",
        'mask_key_file = "keys/mask.key"    # `xgate keys mask`; never leaves this host',
        'users_file = "keys/users.json"     # `xgate pki add-user --users keys/users.json --principals policies/...`',
        'audit_db = "data/audit.sqlite"',
        'audit_key = "keys/audit.key.pem"   # `xgate keys audit --out keys/audit`; give audit.pub.pem to the nodes',
        'state_dir = "data/state"           # probing budgets, consents, training jobs',
        "# Office-hour windows in agreements are local time in settings.toml's time zone (now: " + tz + ").",
        'policy_dir = "policies"',
        "signed_policies = true  # start only on a CA-signed bundle: `xgate policy install --into policies`",
        "",
        "[tls]",
        'cert = "tls/gateway-gateway.cert.pem"',
        'key = "tls/gateway-gateway.key.pem"',
        'signing_key = "tls/gateway-gateway.sign.pem"',
        'ca = "ca/ca.cert.pem"',
        'crl = "ca/crl.pem"',
        'federation_directory = "ca/federation.json"',
        "",
        "# One table per agency node, from the addresses the CA published in ca/federation.json.",
    ]
    for agency, address in agencies:
        lines += [f"[nodes.{agency}]", f'address = "{address}"']
        # A node's cosigning key, once it has come (the node's `keys/audit.pub.pem`): it witnesses our log.
        witness = f'witness_key = "ca/witness-{agency}.pub.pem"'
        lines += [witness if (home / "ca" / f"witness-{agency}.pub.pem").is_file() else f"# {witness}", ""]
    if superlink:
        host, port = host_port("--superlink", superlink)
        lines += [
            "# Training across machines: one SuperLink behind the Fleet gate; each agency runs",
            "# `xgate node supernode` and is known here only by its SuperNode public key and certificate",
            "# (tls/ of the agency: supernode-<agency>.ssh.pub, flower-supernode-<agency>.cert.pem).",
            "[training]",
            f'superlink_host = "{host}"',
            f"superlink_port = {port}",
            'superlink_cert = "tls/flower-superlink-gateway.cert.pem"  # `pki request --kind flower-superlink`',
            'superlink_key = "tls/flower-superlink-gateway.key.pem"',
            'ca_cert = "ca/ca.cert.pem"',
            'crl = "ca/crl.pem"',
            "",
        ]
        lines += _training_nodes(agencies, _training_datasets(policy_dir if policy_dir.is_dir() else None))
    return "\n".join(lines)


def _write_new(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    for sub in ("tls", "ca", "keys", "data"):
        (path.parent / sub).mkdir(exist_ok=True)
    os.chmod(path.parent / "keys", 0o700)
    path.write_text(text)


def node_init(
    home: Home,
    agency: Annotated[str, typer.Option("--agency", help="this node's agency id, e.g. tax")],
    column_key: Annotated[bool, typer.Option("--column-key", help="core-class data: name keys/column.key")] = False,
    witness: Annotated[
        bool, typer.Option("--witness", help="cosign the gateway log (ca/gateway-audit.pub.pem)")
    ] = False,
    superlink: Annotated[str | None, typer.Option("--superlink", help="host:port: add [training]")] = None,
    force: Annotated[bool, typer.Option("--force")] = False,
) -> None:
    """Write <home>/node.toml: a complete, commented node config in the conventional layout."""
    with fail_on_error():
        path = home / "node.toml"
        _write_new(path, node_config_text(home, agency, column_key=column_key, gateway_audit_key=witness,
                                          superlink=superlink), force)  # fmt: skip
        typer.echo(f"{path}: written; next `xgate config check {path} --before-load`")


def gateway_init(
    home: Home,
    listen: Annotated[str, typer.Option("--listen", help="REST address host:port")] = "0.0.0.0:8443",
    superlink: Annotated[
        str | None, typer.Option("--superlink", help="host:port of the Fleet gate: add [training] (remote mode)")
    ] = None,
    force: Annotated[bool, typer.Option("--force")] = False,
) -> None:
    """Write <home>/gateway.toml with one [nodes.<agency>] per node published in ca/federation.json."""
    from crypto.pki import load_directory

    with fail_on_error():
        host_port("--listen", listen, any_port=True)  # what the user typed, before what the CA published
        if superlink:
            host_port("--superlink", superlink)
        directory = load_directory(home / "ca" / "federation.json", home / "ca" / "ca.cert.pem")
        agencies = sorted((e.agency, e.address) for e in directory.entries if e.kind == "node" and not e.revoked)
        missing = [a for a, address in agencies if not address]
        if not agencies or missing:
            raise ConfigError(
                "ca/federation.json publishes no node address"
                + (f" for {', '.join(missing)}" if missing else "")
                + ": the CA signs each node with --address host:port (or `xgate pki set-address`)"
            )
        path = home / "gateway.toml"
        _write_new(path, gateway_config_text(home, listen, agencies, superlink), force)
        typer.echo(f"{path}: written with nodes {', '.join(a for a, _ in agencies)}; next `xgate config check {path}`")


def policy_init(
    out: Annotated[Path, typer.Option("--out", help="directory for the federation's policy set")],
    all_day: Annotated[
        bool, typer.Option("--all-day", help="widen office-hour windows to 24 h (trials and tests only)")
    ] = False,
) -> None:
    """Copy the shipped policy set as the federation's own (edit it, then give every party the same copy)."""
    from app.devfed import write_dev_policies

    with fail_on_error():
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"{out} is not empty")
        if all_day:
            widened = write_dev_policies(out)
            note = f"{widened} agreements widened to 24 h"
        else:
            import shutil

            from policies.loader import DEFAULT_POLICY_DIR

            # Into an empty directory made beforehand too, as --all-day does (refused with "exists" before).
            ignore = shutil.ignore_patterns("*.py", "__pycache__")
            shutil.copytree(DEFAULT_POLICY_DIR, out, ignore=ignore, dirs_exist_ok=True)
            note = "office hours as shipped"
        _honour_umask(out)
        typer.echo(f"{out}: policy set ({note}; hours are local time in {_timezone(out)})")


def _honour_umask(root: Path) -> None:
    """Copies keep the installed package's modes (0644/0755), whatever the umask: under the deploy
    steps' `umask 077` the policy set (principals.toml names every user) is owner-only like the rest."""
    mask = os.umask(0)
    os.umask(mask)
    for path in (root, *root.rglob("*")):
        path.chmod(stat.S_IMODE(path.stat().st_mode) & ~mask)


def policy_publish(
    ca: Annotated[Path, typer.Option("--ca", help="CA directory (its key signs the bundle)")],
    policies: Annotated[Path, typer.Option("--policies", help="the federation's policy set")],
    version: Annotated[int, typer.Option("--version", help="bundle version: higher than every earlier one")],
    out: Annotated[Path, typer.Option("--out", help="bundle file to write (one JSON file)")],
) -> None:
    """Sign the policy set as a versioned bundle for every party (`xgate policy install`)."""
    from crypto import pki
    from crypto.policy_bundle import publish
    from policies.approvals import load_approvers
    from policies.consent import load_consent_managers
    from policies.requesters import load_requesters

    with fail_on_error():
        # The signer registries are read at every check: a malformed one is refused here, before
        # every party installs it (ConfigError names the file and the entry).
        for load in (load_requesters, load_approvers, load_consent_managers):
            load(policies)
        body = publish(pki.load_ca(ca).key, policies, version, out)
        typer.echo(f"{out}: policy bundle version {version}, {len(body['files'])} files, signed by the CA")


def policy_install(
    bundle: Annotated[Path, typer.Option("--bundle", help="the bundle the federation operator published")],
    ca_cert: Annotated[Path, typer.Option("--ca-cert", help="the federation CA certificate")],
    into: Annotated[Path, typer.Option("--into", help="this party's policy directory")],
) -> None:
    """Verify a bundle (CA signature, every file's digest) and install it; refuse an older or unsigned one.
    Running services pick up the new policy set without a restart."""
    from crypto.policy_bundle import install

    with fail_on_error():
        done = install(bundle, ca_cert, into)
        typer.echo(f"{into}: policy bundle version {done.version} ({done.files} files, issued {done.issued_at})")
