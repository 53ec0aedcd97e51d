"""Read a policy directory: data files, Cedar schema and policies, validated, hashed, located.

Everything that can be wrong with a file is found here, at load, and reported as ConfigError
naming the file and line; the engine never sees a half-valid set. Cedar's parser gives no source
positions, so we split files into statements ourselves and re-parse prefixes to find the line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import cedarpy
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from policies.types import DEFAULT_COHORT_EPSILON, DEFAULT_COHORT_EPSILON_PER_PERIOD
from xgate.errors import ConfigError
from xgate.tomlfile import load_model

DEFAULT_POLICY_DIR = Path(__file__).resolve().parent  # the shipped policy set (this package's directory)

Ident = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,63}$")]
ElementId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,31}\.[a-z][a-z0-9_]{1,63}$")]
UserId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,127}$")]
Classification = Literal["core", "important", "general"]
SCHEMA_FILE = Path("schema") / "xgate.cedarschema"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ElementEntry(_Strict):
    id: ElementId
    agency: Ident
    classification: Classification
    description: str = ""


class ElementsFile(_Strict):
    elements: tuple[ElementEntry, ...] = Field(min_length=1)


class UserEntry(_Strict):
    id: UserId
    agency: Ident
    role: Literal["caseworker", "analyst", "security_officer", "admin"]
    tier: Literal["gold", "silver", "bronze"]
    # base64 Ed25519 public key (`xgate train keygen`): every training job run in this user's name
    # must carry this key's signature over its definition (federated/signed_jobs.py)
    signing_key: str | None = None

    @field_validator("signing_key")
    @classmethod
    def _ed25519(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                raw = base64.b64decode(value, validate=True)
            except binascii.Error:
                raise ValueError("signing_key is not base64") from None
            if len(raw) != 32:
                raise ValueError("signing_key must be a base64 Ed25519 public key (32 bytes)")
        return value


class UsersFile(_Strict):
    users: tuple[UserEntry, ...] = ()


class PurposeEntry(_Strict):
    id: Ident
    description: str = ""
    consent_required: bool = False


class PurposesFile(_Strict):
    purposes: tuple[PurposeEntry, ...] = Field(min_length=1)


class DatasetEntry(_Strict):
    id: ElementId
    agency: Ident
    classification: Classification
    epsilon_cap: float = Field(gt=0, le=100)
    description: str = ""
    # The data elements this dataset holds: how a training job's features/label map to the
    # Dataset resources the `train` action is decided on (and whose ε budget it spends).
    elements: tuple[ElementId, ...] = ()


class DatasetsFile(_Strict):
    datasets: tuple[DatasetEntry, ...] = ()


class EngineSettings(_Strict):
    timezone: str = "Asia/Shanghai"


class TierSettings(_Strict):
    min_cohort: int = Field(default=10, ge=1, le=1_000_000)
    # bronze (cohort view): randomized response per slot, eps per criterion and query, and the
    # eps each requesting agency may spend per program and period (the program's epoch)
    bronze_epsilon_per_criterion: float = Field(default=DEFAULT_COHORT_EPSILON, gt=0, le=20)
    bronze_epsilon_per_period: float = Field(default=DEFAULT_COHORT_EPSILON_PER_PERIOD, gt=0, le=1_000_000)
    # silver (overall view): how long a person's silver result from one program bars the other
    # programs sharing a question with it, per requesting agency (policies/silver_claims.py)
    silver_claim_days: int = Field(default=365, ge=1, le=36_500)


class TrainingSettings(_Strict):
    # Refuse every training job that its requester did not sign (federated/signed_jobs.py). A user
    # with a registered signing_key needs a signature either way.
    require_signed_jobs: bool = False


class SettingsFile(_Strict):
    engine: EngineSettings = EngineSettings()
    tiers: TierSettings = TierSettings()
    training: TrainingSettings = TrainingSettings()


@dataclass(frozen=True)
class ProgramEntry:
    id: str
    requester_agencies: tuple[str, ...]
    purposes: tuple[str, ...]


@dataclass(frozen=True)
class PolicyInfo:
    """One Cedar policy as loaded: its @id, where it came from, annotations and EST (JSON AST)."""

    id: str
    file: str
    line: int
    effect: str
    annotations: dict[str, str]
    est: dict[str, Any]


@dataclass(frozen=True)
class Statement:
    text: str
    line: int  # 1-based line of the statement's first token
    text_line: int  # 1-based line where `text` begins (comments and blank lines before the token included)


@dataclass(frozen=True)
class LoadedDirectory:
    root: Path
    schema: cedarpy.Schema
    policy_set: cedarpy.PolicySet
    policies: tuple[PolicyInfo, ...]
    elements: dict[str, ElementEntry]
    users: dict[str, UserEntry]
    purposes: dict[str, PurposeEntry]
    datasets: dict[str, DatasetEntry]
    programs: dict[str, ProgramEntry]
    settings: SettingsFile
    sha256: str
    files: tuple[str, ...]


def split_statements(text: str) -> list[Statement]:
    """Split Cedar policy text at top-level ';' (outside strings and // comments)."""
    out: list[Statement] = []
    buf: list[str] = []
    line, start, begin = 1, 0, 1
    i, n = 0, len(text)
    in_str = False
    while i < n:
        ch = text[i]
        if in_str:
            buf.append(ch)
            if ch == "\\" and i + 1 < n:
                buf.append(text[i + 1])
                i += 1
            elif ch == '"':
                in_str = False
        elif ch == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            buf.append(" " * (end - i))  # keep columns, drop the comment
            i = end
            continue
        else:
            if not start and not ch.isspace():
                start = line
            buf.append(ch)
            if ch == '"':
                in_str = True
            elif ch == ";":
                out.append(Statement("".join(buf), start, begin))
                buf, start, begin = [], 0, line
        if ch == "\n":
            line += 1
        i += 1
    if "".join(buf).strip():
        out.append(Statement("".join(buf), start or line, begin))
    return out


_END_OF_INPUT = re.compile(r"end of input|unexpected end|eof", re.IGNORECASE)


def locate_parse_error(text: str, first_line: int, parse: Any) -> int:
    """The first line whose inclusion turns 'incomplete input' into a real syntax error."""
    lines = text.split("\n")
    for k in range(1, len(lines) + 1):
        try:
            parse("\n".join(lines[:k]))
        except ValueError as exc:
            if not _END_OF_INPUT.search(str(exc)):
                return first_line + k - 1
    return first_line


def _line_of_token(statement: Statement, message: str) -> int:
    """Best effort: the first statement line mentioning a `backticked` token from a validator message."""
    tokens = [t for t in re.findall(r"`([^`]+)`", message) if not re.fullmatch(r"policy\d+", t)]
    for token in tokens:
        short = token.split("::")[-1].strip('"')
        for offset, text in enumerate(statement.text.split("\n")):
            if short and short in text:
                return statement.text_line + offset
    return statement.line


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"policy file {path}: cannot read ({exc})", file=str(path)) from exc


def load_schema(path: Path) -> cedarpy.Schema:
    text = _read_text(path)
    try:
        return cedarpy.Schema.from_str(text)
    except ValueError as exc:
        line = locate_parse_error(text, 1, cedarpy.Schema.from_str)
        raise ConfigError(f"schema {path}: line {line}: {exc}", file=str(path), line=line) from exc


def load_policy_file(path: Path, schema: cedarpy.Schema) -> list[PolicyInfo]:
    """Parse, validate against the schema and return one PolicyInfo per policy, each with an @id."""
    text = _read_text(path)
    statements = split_statements(text)
    for st in statements:  # parse statement by statement: the error then has a home
        try:
            cedarpy.PolicySet.from_str(st.text)
        except ValueError as exc:
            line = locate_parse_error(st.text, st.text_line, cedarpy.PolicySet.from_str)
            raise ConfigError(
                f"policy file {path}: line {line}: syntax error: {exc}", file=str(path), line=line
            ) from exc
    est = json.loads(cedarpy.policies_to_json_str(text))
    if est.get("templates"):
        raise ConfigError(f"policy file {path}: templates are not supported; write one policy per agreement")
    ests = [est["staticPolicies"][f"policy{i}"] for i in range(len(statements))]
    result = cedarpy.validate_policies(text, schema)
    if not result.validation_passed:
        err = result.errors[0]
        index = int(err.policy_id.removeprefix("policy")) if err.policy_id.startswith("policy") else 0
        st = statements[min(index, len(statements) - 1)] if statements else Statement("", 1, 1)
        line = _line_of_token(st, err.error)
        raise ConfigError(
            f"policy file {path}: line {line}: does not match the schema: {err.error}", file=str(path), line=line
        )
    infos = []
    for st, policy in zip(statements, ests, strict=True):
        annotations = {k: (v or "") for k, v in policy.get("annotations", {}).items()}
        pid = annotations.get("id", "")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}", pid):
            raise ConfigError(
                f'policy file {path}: line {st.line}: every policy needs an @id("...") without spaces',
                file=str(path),
                line=st.line,
            )
        infos.append(PolicyInfo(pid, str(path), st.line, policy["effect"], annotations, policy))
    return infos


def _check_dataset_elements(path: Path, datasets: DatasetsFile, elements: ElementsFile) -> None:
    """A dataset lists declared elements of its own agency; an element belongs to one dataset at most."""
    declared = {e.id: e for e in elements.elements}
    owner: dict[str, str] = {}
    for d in datasets.datasets:
        for eid in d.elements:
            problem = ""
            if eid not in declared:
                problem = f"lists data element '{eid}', which data_elements.toml does not declare"
            elif declared[eid].agency != d.agency:
                problem = f"lists data element '{eid}' of agency '{declared[eid].agency}'"
            elif eid in owner:
                problem = f"lists data element '{eid}', already in dataset '{owner[eid]}'"
            if problem:
                raise ConfigError(f"datasets file {path}: dataset '{d.id}' {problem}", file=str(path))
            owner[eid] = d.id


def _load_programs(directory: Path) -> tuple[dict[str, ProgramEntry], list[Path]]:
    """Only each program's header (id, requesting agencies, purposes): criteria are not our business."""
    programs: dict[str, ProgramEntry] = {}
    paths = sorted(directory.glob("*.toml")) if directory.is_dir() else []
    for path in paths:
        try:
            header = tomllib.loads(path.read_text(encoding="utf-8-sig"))["program"]
            entry = ProgramEntry(str(header["id"]), tuple(header["requester_agencies"]), tuple(header["purposes"]))
        except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"program file {path}: cannot read its [program] header ({exc})", file=str(path)) from exc
        programs[entry.id] = entry
    return programs, paths


def _digest(root: Path, paths: list[Path]) -> str:
    """SHA-256 over (relative path, SHA-256 of content) of every file, sorted by path."""
    h = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def load_directory(root: Path) -> LoadedDirectory:
    root = root.resolve()
    if not root.is_dir():
        raise ConfigError(f"policy directory {root} does not exist", file=str(root))
    schema = load_schema(root / SCHEMA_FILE)
    elements, _ = load_model(root / "data_elements.toml", ElementsFile, "data elements")
    users, _ = load_model(root / "principals.toml", UsersFile, "principals")
    purposes, _ = load_model(root / "purposes.toml", PurposesFile, "purposes")
    datasets_path, settings_path = root / "datasets.toml", root / "settings.toml"
    datasets = load_model(datasets_path, DatasetsFile, "datasets")[0] if datasets_path.exists() else DatasetsFile()
    settings = load_model(settings_path, SettingsFile, "settings")[0] if settings_path.exists() else SettingsFile()
    programs, program_paths = _load_programs(root / "programs")
    _check_dataset_elements(datasets_path, datasets, elements)

    policy_paths = sorted(root.glob("*.cedar")) + sorted((root / "agreements").glob("*.cedar"))
    if not policy_paths:
        raise ConfigError(f"policy directory {root}: no *.cedar policy files", file=str(root))
    infos: list[PolicyInfo] = []
    seen: dict[str, PolicyInfo] = {}
    for path in policy_paths:
        for info in load_policy_file(path, schema):
            if info.id in seen:
                first = seen[info.id]
                raise ConfigError(
                    f"policy file {path}: line {info.line}: @id '{info.id}' already used at {first.file}:{first.line}",
                    file=str(path),
                    line=info.line,
                )
            seen[info.id] = info
            infos.append(info)
    # One set keyed by @id, so Cedar's diagnostics name our ids instead of positional policyN.
    merged = {"staticPolicies": {i.id: i.est for i in infos}, "templates": {}, "templateLinks": []}
    policy_set = cedarpy.PolicySet.from_json_str(json.dumps(merged))

    data_paths = [root / SCHEMA_FILE, root / "data_elements.toml", root / "principals.toml", root / "purposes.toml"]
    data_paths += [p for p in (datasets_path, settings_path) if p.exists()]
    files = data_paths + policy_paths + program_paths
    return LoadedDirectory(
        root=root,
        schema=schema,
        policy_set=policy_set,
        policies=tuple(infos),
        elements={e.id: e for e in elements.elements},
        users={u.id: u for u in users.users},
        purposes={p.id: p for p in purposes.purposes},
        datasets={d.id: d for d in datasets.datasets},
        programs=programs,
        settings=settings,
        sha256=_digest(root, files),
        files=tuple(p.relative_to(root).as_posix() for p in files),
    )
