"""Federated training job files (TOML), validated at the edge into a frozen pydantic model.

A job names its purpose (checked by every data-owning node's admission), the data elements it
trains on, who holds the label, and the privacy settings. Everything the ServerApp/ClientApp
need travels as the Flower run config produced by `JobSpec.run_config()`.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import tomllib
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from xgate.errors import ConfigError, InvalidInput, PolicyDenied
from xgate.pseudonym import contains_national_id


def _no_national_id(value: str, info: ValidationInfo) -> str:
    # Job ids, purposes and references reach every node's and the gateway's append-only audit logs.
    if contains_national_id(value):
        raise ValueError(
            f"{info.field_name or 'value'} holds what looks like a resident identity number; "
            "use an identifier that carries no personal data"
        )
    return value


_NoNationalId = AfterValidator(_no_national_id)

JobId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_\-]{2,63}$"), _NoNationalId]
_AGENCY = r"[a-z][a-z0-9_]{1,31}"
AgencyName = Annotated[str, StringConstraints(pattern=rf"^{_AGENCY}$")]
OptionalAgencyName = Annotated[str, StringConstraints(pattern=rf"^({_AGENCY})?$")]
ElementName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,31}\.[a-z][a-z0-9_]{1,63}$")]
# References (legal basis, approval) and user ids: identifiers, never free text (they reach the audit log).
Reference = Annotated[str, StringConstraints(pattern=r"^([A-Za-z0-9][A-Za-z0-9_.:/\-]{0,127})?$"), _NoNationalId]
UserRef = Annotated[str, StringConstraints(pattern=r"^([A-Za-z0-9][A-Za-z0-9_.@\-]{0,127})?$")]
# What a job's purpose looks like; a node admitting purposes (`xgate train allow`) checks the same.
PURPOSE_PATTERN = r"^[a-z][a-z0-9_\-]{2,63}$"

# Job files are typed TOML (REST bodies typed JSON): a quoted "3" for rounds or "no" for secagg is a
# mistake, never coerced, and a NaN or infinity in any number is refused. Enums and tuples stay lax
# (they come in as strings and lists); their items are checked strictly by their own types.
_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# Vertical mini-batch rows when a job names none. On Census-Income (200k training rows) 10 steps of
# 16,384 rows reach the AUC of 10 full-batch steps with a tenth of the embeddings on the wire, and with
# record-level DP one such step beats two full ones (docs/FEDERATED.md, "Mini-batches").
VERTICAL_BATCH = 16_384


class Mode(StrEnum):
    HORIZONTAL = "horizontal"
    VERTICAL = "vertical"


class VerticalScheme(StrEnum):
    """How a vertical job trains (docs/FEDERATED.md, "Vertical"). `split`: split learning, the
    label holder's top and every node's bottom trained together over `rounds` exchanges of
    embeddings and gradients. `stacked`: one exchange; the label holder sends each feature node the
    training labels (sealed; randomized response under `label_dp`), each node trains a logistic
    regression on its own features (DP-SGD under record-level `dp`: its model is the only thing its
    training rows shape) and sends its held-out rows' scores; the label holder fits the top over
    the parts' scores on the `top_calibration` share of the held-out rows."""

    SPLIT = "split"
    STACKED = "stacked"


# A stacked job's defaults: DP-SGD as a horizontal record-DP node trains (batch 512, rate 4, clip 2),
# 5 epochs. `bench/dp_sweep.py --stacked` (validation AUC, mean over epsilon 1, 4, 8) puts five such
# settings within 0.0013 of each other; this one is 0.0009 below the best (15 epochs of batches of
# 1,024) for a third of its training time, so little rides on the choice.
STACKED_DEFAULTS = {"batch_size": 512, "learning_rate": 4.0, "local_epochs": 5}


class DPUnit(StrEnum):
    NODE = "node"  # noise on each node's clipped update: neighbouring datasets differ by one node's data
    RECORD = "record"  # DP-SGD at every node: neighbouring datasets differ by one person's record


def _record_defaults_documented(schema: dict[str, Any]) -> None:
    """The API document says what the job accepts: `delta` and `clip` may be left out (a record-level
    job takes DEFAULT_DELTA and DEFAULT_RECORD_CLIP; node-level DP is refused without its clip)."""
    schema["required"] = [k for k in schema.get("required", []) if k not in ("delta", "clip")]


class DPSpec(BaseModel):
    """Differential privacy of a job, at the unit it protects.

    node: fixed clipping, each node's update noised at the node (federated/dp.py); `clip` bounds one
    node's update (horizontal only). record: DP-SGD at each node (federated/dp_sgd.py); `clip`
    bounds one example's gradient, and each node's accountant keeps its dataset's epsilon within
    `epsilon`. In a vertical job, record DP protects the feature nodes' embeddings and bottom
    updates (federated/vertical_dp.py); `clip` bounds one embedding row and one update term. A
    record-level job may leave out `delta` and `clip` (DEFAULT_DELTA, DEFAULT_RECORD_CLIP).
    """

    model_config = ConfigDict(**_STRICT, json_schema_extra=_record_defaults_documented)

    epsilon: float = Field(gt=0, le=100)
    delta: float = Field(gt=0, lt=0.1, description="a record-level job may leave it out: 1e-6")
    clip: float = Field(
        gt=0,
        le=100,
        description="L2 norm bound of one node's update / one example's gradient; a record-level job may"
        " leave it out: 2.0 horizontal, 1.0 vertical",
    )
    unit: Annotated[DPUnit, Strict(False)] = DPUnit.NODE


# What a record-level DP job leaves out takes these (resolved into the job before it is digested,
# so every node decides on the values it will run with). The clips are the benchmark's, each chosen
# by bench/dp_sweep.py on a validation split of Census-Income: 2.0 for DP-SGD's per-example
# gradients (horizontal), 1.0 for a vertical node's embedding rows and update terms. 1e-6 is below
# 1/n for any dataset of up to a million rows (a node refuses a delta of 1/n or more).
DEFAULT_DELTA = 1e-6
# By how the job trains: horizontal and stacked parts clip per-example gradients (DP-SGD), split
# learning clips each embedding row and update term (federated/vertical_dp.py).
DEFAULT_RECORD_CLIP = {"horizontal": 2.0, "vertical": 1.0, "stacked": 2.0}


def _dp_defaults(dp: Any, mode: Any, scheme: Any = None) -> Any:
    """A record-level `dp` table with its delta and clip filled in where left out (node-level DP
    needs its clip: the bound of one node's whole update depends on the model, not on the data)."""
    if not isinstance(dp, dict) or dp.get("unit") != DPUnit.RECORD.value:
        return dp
    filled = {**dp, "delta": DEFAULT_DELTA} if dp.get("delta") is None else dp
    trains = (
        VerticalScheme.STACKED.value if mode == Mode.VERTICAL.value and scheme == VerticalScheme.STACKED.value else mode
    )
    if dp.get("clip") is None and trains in DEFAULT_RECORD_CLIP:
        filled = {**filled, "clip": DEFAULT_RECORD_CLIP[trains]}
    return filled


class Method(StrEnum):
    """How one feature is encoded (federated/model.py `encode`)."""

    STANDARDISE = "standardise"  # (x - mean) / sd: vertical over the node's rows, horizontal pooled
    MINMAX = "minmax"  # scaled to [0, 1] by the catalogue's declared range
    LOG = "log"  # log1p of the offset from the declared minimum, scaled to [0, 1]
    ONEHOT = "onehot"  # one column per declared code (categories, flags, small int ranges)
    BUCKETS = "buckets"  # one-hot of the bucket between the job's edges


MAX_ONEHOT_CODES = 256
MAX_BUCKET_EDGES = 64


class Encoding(BaseModel):
    """One feature's encoding: a method (a plain string in the job file), and edges for buckets."""

    model_config = _STRICT

    method: Annotated[Method, Strict(False)]
    edges: Annotated[tuple[Annotated[float, Strict()], ...], Strict(False)] = ()

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"method": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _edges(self) -> Encoding:
        if self.method is Method.BUCKETS:
            if not 1 <= len(self.edges) <= MAX_BUCKET_EDGES:
                raise ValueError(f"buckets need 1..{MAX_BUCKET_EDGES} edges")
            if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
                raise ValueError("bucket edges must be strictly increasing")
        elif self.edges:
            raise ValueError(f"edges apply to buckets only, not {self.method.value}")
        return self


class JobSpec(BaseModel):
    model_config = _STRICT

    job_id: JobId
    purpose: Annotated[str, Field(pattern=PURPOSE_PATTERN), _NoNationalId]
    # Policy context. Empty is allowed for local runs under a node's own ledger; the Cedar
    # decision points refuse a job without a legal basis (baseline-legal-basis-required).
    legal_basis: Reference = ""
    approval_ref: Reference = ""
    # The registered user the job runs for. Set by the gateway from the authenticated caller,
    # never taken from a REST body; nodes decide their own policy for this principal.
    requester: UserRef = ""
    mode: Annotated[Mode, Strict(False)]
    features: tuple[ElementName, ...] = Field(min_length=1, max_length=512, strict=False)
    label: ElementName
    # Vertical: the agency holding the label (required). Horizontal: every node holds its own.
    label_holder: OptionalAgencyName = ""
    rounds: int = Field(ge=1, le=1000)
    secagg: bool = True
    dp: DPSpec | None = None
    min_nodes: int = Field(default=2, ge=1, le=1000)
    # Horizontal: local SGD epochs/step size/batch per round. Vertical: `rounds` exchange steps of
    # preconditioned step size `learning_rate` on batches of `batch_size` aligned rows.
    local_epochs: int = Field(default=1, ge=1, le=100)
    learning_rate: float = Field(default=0.0, gt=0, le=100)  # unset: mode default (0.5 / 2.0)
    batch_size: int = Field(default=0, ge=1, le=10_000_000)  # unset: mode default (256 / VERTICAL_BATCH)
    l2: float = Field(default=1e-4, ge=0, le=10)
    embedding_dim: int = Field(default=4, ge=1, le=64)
    # xgate's own bound on each coordinate of a model update before SecAgg+ (must be <= the
    # SecAgg+ clipping range, which Flower enforces by silently clipping).
    update_bound: float = Field(default=1.0, gt=0, le=8.0)
    # Largest per-node example weight; larger nodes are capped (logged) so SecAgg+'s weight
    # ratio stays <= 1. None: the runner derives it from the node stores' subject counts.
    max_weight: int | None = Field(default=None, ge=1, le=10_000_000)
    round_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    job_timeout_s: float = Field(default=1800.0, gt=0, le=86400)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    # Per-feature encoding; a feature not named gets the catalogue's default for its type
    # (category/flag: one-hot/0-1; int: log when the declared range is wide, else min-max).
    encodings: dict[ElementName, Encoding] = Field(default_factory=dict)
    # Vertical only: epsilon of randomized response on the training labels at the label holder
    # (federated/label_dp.py): protects each label from the feature nodes and the coordinator.
    label_dp: float | None = Field(default=None, gt=0, le=20)
    # Vertical record-level DP or stacked only: the share of the held-out rows the label holder fits
    # its top model on, from their clean embeddings; it scores the rest (federated/top_calibration.py).
    top_calibration: float | None = Field(default=None, ge=0.05, le=0.9)
    # Vertical only: split learning, or stacked parts (VerticalScheme).
    vertical_scheme: Annotated[VerticalScheme, Strict(False)] = VerticalScheme.SPLIT
    # When the job stops being runnable (ISO 8601 with a UTC offset, e.g. 2026-12-13T00:00:00Z):
    # every node refuses it afterwards, the gateway too. Signed, it binds the coordinator: a job its
    # analyst signed for a week cannot be run again next year (federated/signed_jobs.py).
    valid_until: str = Field(default="", max_length=40)
    # The requester's signature over everything above (federated/signed_jobs.py, `xgate train sign`):
    # an xgate-training-job/1 artefact. Not part of the digest: signing does not change the job.
    signature: str = Field(default="", max_length=256 * 1024)

    @model_validator(mode="before")
    @classmethod
    def _mode_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("valid_until"), date):  # a TOML date-time, unquoted
            data = {**data, "valid_until": data["valid_until"].isoformat()}
        if isinstance(data, dict):
            # Only an absent (or JSON null) value takes the mode's default: 0 is refused by the bounds.
            vertical = data.get("mode") == Mode.VERTICAL.value
            if vertical and data.get("vertical_scheme") == VerticalScheme.STACKED.value:
                data = {**data, **{k: v for k, v in STACKED_DEFAULTS.items() if data.get(k) is None}}
            if data.get("learning_rate") is None:
                data = {**data, "learning_rate": 2.0 if vertical else 0.5}
            if data.get("batch_size") is None:
                data = {**data, "batch_size": VERTICAL_BATCH if vertical else 256}
            if "dp" in data:
                data = {**data, "dp": _dp_defaults(data["dp"], data.get("mode"), data.get("vertical_scheme"))}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.valid_until:
            self.valid_until_time()  # a clear error now, not at the first node
        if self.label in self.features:
            raise ValueError("the label element must not also be a feature")
        if self.mode is Mode.VERTICAL and not self.label_holder:
            raise ValueError("a vertical job names its label_holder: the agency that holds the label")
        if len(set(self.features)) != len(self.features):
            raise ValueError("features must be unique")
        if self.mode is Mode.VERTICAL and self.dp is not None and self.dp.unit is not DPUnit.RECORD:
            raise ValueError(
                'vertical jobs support record-level DP only (dp.unit = "record"): node-level DP protects'
                " one node's whole update, which vertical nodes do not aggregate"
            )
        if self.mode is Mode.HORIZONTAL and self.secagg and self.min_nodes < 2:
            raise ValueError("SecAgg+ needs min_nodes >= 2")
        if self.label_dp is not None and self.mode is not Mode.VERTICAL:
            raise ValueError("label_dp protects the label holder's labels in vertical jobs; use dp here")
        if self.vertical_scheme is VerticalScheme.STACKED:
            self._check_stacked()
        elif self.top_calibration is not None and not (
            self.mode is Mode.VERTICAL and self.dp is not None and self.dp.unit is DPUnit.RECORD
        ):
            raise ValueError(
                "top_calibration fits a vertical record-level DP or stacked job's top model on held-out rows;"
                ' this job\'s top is trained on clean embeddings already (it needs mode = "vertical" and'
                ' dp.unit = "record", or vertical_scheme = "stacked")'
            )
        if stray := sorted(set(self.encodings) - set(self.features)):
            raise ValueError(f"encodings name element(s) that are not features: {', '.join(stray)}")
        if self.mode is Mode.HORIZONTAL and self.standardises() and self.dp is not None and self.dp.unit is DPUnit.NODE:
            raise ValueError(
                "standardise in a horizontal job pools the features' means and spreads before training, a "
                'release node-level DP does not cover: use dp.unit = "record" (which accounts for it), or '
                "minmax or log"
            )
        if self.mode is Mode.VERTICAL and self.standardises() and self.dp is not None:
            # A feature node would standardise with its own rows' exact mean and sd: one person's value
            # moves both, so every other row's encoding, and a release's sensitivity is many times
            # the 2 x clip its noise is calibrated for (16 against 2 on an income column).
            raise ValueError(
                "standardise in a vertical record-level DP job scales every row by the node's own mean and"
                " spread, which one record moves: its embeddings and updates would be DP for a much larger"
                f" epsilon than {self.dp.epsilon:g}; encode "
                + ", ".join(sorted(e for e, enc in self.encodings.items() if enc.method is Method.STANDARDISE))
                + " with minmax or log over its declared range instead"
            )
        return self

    def _check_stacked(self) -> None:
        if self.mode is not Mode.VERTICAL:
            raise ValueError(
                "vertical_scheme applies to vertical jobs; a horizontal job trains one model at every node"
            )
        if self.rounds != 1:
            raise ValueError(
                f"a stacked job trains its parts in one exchange: rounds = 1, not {self.rounds}"
                " (each part's epochs are local_epochs)"
            )
        if self.top_calibration is None:
            raise ValueError(
                "a stacked job fits its top over the parts' scores on held-out rows: set top_calibration,"
                " the share of the held-out rows it is fitted on (e.g. 0.5)"
            )

    def part_width(self) -> int:
        """Columns each node sends the label holder per row: its embedding, or a stacked part's score."""
        return 1 if self.vertical_scheme is VerticalScheme.STACKED else self.embedding_dim

    def valid_until_time(self) -> datetime | None:
        """`valid_until` as an aware datetime (None: no end)."""
        if not self.valid_until:
            return None
        try:
            when = datetime.fromisoformat(self.valid_until)
        except ValueError:
            raise ValueError(f"valid_until '{self.valid_until}' is not an ISO 8601 date and time") from None
        if when.tzinfo is None:
            raise ValueError(f"valid_until '{self.valid_until}' needs a UTC offset (e.g. Z or +08:00)")
        return when

    def standardises(self) -> bool:
        """Whether a feature is encoded with its data's mean and spread (not declared metadata)."""
        return any(e.method is Method.STANDARDISE for e in self.encodings.values())

    def elements(self) -> tuple[str, ...]:
        """Every data element the job reads: its features, then its label."""
        return (*self.features, self.label)

    def digest(self) -> str:
        """SHA-256 of the canonical job (what nodes approve and the audit log records).

        A job without encodings, label DP, top calibration or valid_until (or with node-level DP, or
        split learning) digests as before those fields existed;
        its signature is never part of it.
        """
        omitted = (
            {"signature"}
            | (set() if self.encodings else {"encodings"})
            | (set() if self.valid_until else {"valid_until"})
        )
        dumped = self.model_dump(mode="json", exclude=omitted)
        for optional in ("label_dp", "top_calibration"):
            if dumped[optional] is None:
                del dumped[optional]
        if self.vertical_scheme is VerticalScheme.SPLIT:
            del dumped["vertical_scheme"]  # as before the field existed: recorded decisions stay valid
        if self.dp is not None and self.dp.unit is DPUnit.NODE:
            del dumped["dp"]["unit"]  # as before the unit existed: recorded decisions stay valid
        canon = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    def run_config(self, job_dir: Path) -> dict[str, Any]:
        """Flat run config for `flwr run --run-config` (scalars only). Nothing in it can switch off a
        node's own admission check: the coordinator writes it."""
        return {
            "job-json": json.dumps(self.model_dump(mode="json"), sort_keys=True),
            "job-dir": str(job_dir),
        }


def parse_job(data: dict[str, Any]) -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "job"
        got = first.get("input")
        shown = f" (got {got!r:.60})" if first["loc"] and isinstance(got, str | int | float | bool) else ""
        zero = where in ("learning_rate", "batch_size") and got == 0  # 0 once meant "the default": no longer
        unset = " (leave it out for the mode's default)" if zero else ""
        # A misspelt key ("rouds") shows up as the real one missing: name the unknown keys with it.
        unknown = [".".join(map(str, e["loc"])) for e in exc.errors() if e["type"] == "extra_forbidden"]
        also = f"; unknown key(s): {', '.join(unknown)}" if unknown and first["type"] != "extra_forbidden" else ""
        raise InvalidInput(f"invalid job: {where}: {first['msg']}{shown}{unset}{also}") from None


def load_job(path: Path) -> JobSpec:
    try:
        raw = path.read_bytes()
        bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0  # a BOM is not TOML: dropped
        data = tomllib.loads(raw[bom:].decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"job file '{path}' not found") from None
    except IsADirectoryError:
        raise ConfigError(f"job file '{path}' is a directory") from None
    except UnicodeDecodeError as exc:
        bad, at = exc.object[exc.start], bom + exc.start
        raise ConfigError(f"job file '{path}' is not UTF-8 text (byte 0x{bad:02x} at offset {at})") from None
    except OSError as exc:
        raise ConfigError(f"job file '{path}' cannot be read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"job file '{path}' is not valid TOML: {exc}") from None
    try:
        return parse_job(data)
    except InvalidInput as exc:
        raise InvalidInput(f"{exc.message} (job file '{path}')") from None


def job_from_run_config(cfg: dict[str, Any]) -> JobSpec:
    return JobSpec.model_validate_json(str(cfg["job-json"]))


def require_mode(job: JobSpec, mode: Mode) -> None:
    """Refuse a job through the other mode's ClientApp. The coordinator names the app in the bundle
    it writes, and the other mode's protocol releases what this job's approval never covered: a
    horizontal job's exact row count through the vertical alignment, its labels undisturbed through
    the vertical label holder's path, a vertical label-DP job's true labels through the horizontal one."""
    if job.mode is not mode:
        raise PolicyDenied(
            f"job '{job.job_id}' is a {job.mode.value} job: this node runs it only with the {job.mode.value} ClientApp"
        )
