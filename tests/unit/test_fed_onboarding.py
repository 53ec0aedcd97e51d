"""Onboarding without code: text categories, row-counted errors, no store after a failed load,
`xgate train split` holdouts, `xgate train allow`, and re-decision of resubmitted job ids."""

from __future__ import annotations

import base64
import json
import shutil
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import app as xgate
from federated.admission import JOB_CHANGED, POLICY_CHANGED, LedgerAdmission, require_approval
from federated.jobs import parse_job
from nodes.loader import load_file
from nodes.store import NodeStore
from policies.catalogue import load_catalogue
from xgate.errors import PolicyDenied
from xgate.pseudonym import Pseudonymiser

BYO = Path(__file__).resolve().parents[1] / "data" / "byo"
KEY = b"\x07" * 32
runner = CliRunner()


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    work = tmp_path / "fed"
    shutil.copytree(BYO, work, ignore=shutil.ignore_patterns("*.py"))
    (work / "pseudonym.key").write_bytes(KEY)
    return work


def _invoke(*args: str | Path) -> Any:
    return runner.invoke(xgate, [str(a) for a in args])


def _load(work: Path, agency: str, data: Path | None = None) -> Any:
    return _invoke(
        "node", "load", "--config", work / f"{agency}.toml", "--data", data or work / f"{agency}.csv",
        "--mapping", work / f"{agency}.mapping.toml",
    )  # fmt: skip


def test_text_categories_map_to_catalogue_codes(fed: Path) -> None:
    catalogue, _ = load_catalogue(fed / "catalogue.toml")
    store = NodeStore.open(fed / "s.sqlite")
    first = (fed / "civil.csv").read_text().splitlines()[1].split(",")
    # Labels are matched exactly, case-folded, or given as their code.
    (fed / "c.csv").write_text(
        "national_id,age,sex,marital_status,household_size\n"
        f"{first[0]},30,Female,divorced,2\n"
        + (fed / "civil.csv").read_text().splitlines()[2].replace("single", "3")
        + "\n"
    )
    report = load_file(store, fed / "c.csv", fed / "civil.mapping.toml", catalogue, Pseudonymiser(KEY))
    assert report.rows == 2
    ps = Pseudonymiser(KEY).pseudonym(first[0])
    assert store.lookup("civil.sex", [ps]) == {ps: 0}  # "Female" -> female -> code 0
    assert store.lookup("civil.marital_status", [ps]) == {ps: 2}  # divorced
    second = Pseudonymiser(KEY).pseudonym((fed / "civil.csv").read_text().splitlines()[2].split(",")[0])
    assert store.lookup("civil.marital_status", [second]) == {second: 3}  # the code itself


def test_unknown_labels_refused_with_row_numbers_and_rows_counted_once(fed: Path) -> None:
    lines = (fed / "civil.csv").read_text().splitlines()
    lines[3] = ",".join([lines[3].split(",")[0], "40", "unknown", "engaged", "2"])
    cells = lines[5].split(",")
    lines[5] = ",".join([cells[0], "x", "y", "z", "0"])  # four bad cells in one row: one invalid row
    bad = fed / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    res = _load(fed, "civil", bad)
    assert res.exit_code == 1
    out = " ".join(res.output.split())
    assert "2 invalid row(s) of 600" in out and "row 4:" in out and "row 6:" in out
    assert "not one of the catalogue's categories" in out and "sex='unknown'" in out
    assert not (fed / "civil").exists()  # a refused load leaves no store behind


def test_failed_store_write_removes_a_store_it_created(fed: Path) -> None:
    catalogue = (fed / "catalogue.toml").read_text().replace('classification = "general"', 'classification = "core"')
    (fed / "catalogue.toml").write_text(catalogue)
    for agency in ("civil",):
        mapping = fed / f"{agency}.mapping.toml"
        mapping.write_text(mapping.read_text().replace('classification = "general"', 'classification = "core"'))
    res = _load(fed, "civil")
    assert res.exit_code == 1 and "column key" in res.output
    assert not (fed / "civil" / "store.sqlite").exists()


def test_split_is_reproducible_pseudonymised_and_by_column(fed: Path) -> None:
    args = ["train", "split", "--config", fed / "tax.toml", "--data", fed / "tax.csv", "--id-column", "national_id"]
    assert _invoke(*args, "--out", fed / "a.txt", "--fraction", "0.25").exit_code == 0
    assert _invoke(*args, "--out", fed / "b.txt", "--fraction", "0.25").exit_code == 0
    assert _invoke(*args, "--out", fed / "c.txt", "--fraction", "0.25", "--seed", "1").exit_code == 0
    a, b, c = ((fed / f"{n}.txt").read_text().split() for n in "abc")
    assert a == b != c and 90 < len(a) < 190 and a == sorted(a)
    ps = Pseudonymiser(KEY)
    ids = [line.split(",")[0] for line in (fed / "tax.csv").read_text().splitlines()[1:]]
    assert set(a) <= {ps.pseudonym(i) for i in ids} and not set(ids) & set(a)
    res = _invoke(*args, "--out", fed / "d.txt", "--column", "sector", "--value", "public")
    assert res.exit_code == 0
    public = [ln.split(",")[0] for ln in (fed / "tax.csv").read_text().splitlines()[1:] if ",public," in ln]
    assert sorted((fed / "d.txt").read_text().split()) == sorted(ps.pseudonym(i) for i in public)


def test_split_by_column_matches_values_as_the_loader_reads_labels(fed: Path) -> None:
    """ "Public", " PUBLIC " and "public" all name --value public (matched exactly before, the
    first two were left out of the holdout without a word; thirteenth session's review)."""
    lines = (fed / "tax.csv").read_text().splitlines()
    public = [i for i, ln in enumerate(lines) if ",public," in ln]
    for k, i in enumerate(public):
        lines[i] = lines[i].replace(",public,", [",Public,", ", PUBLIC ,", ",public,"][k % 3])
    (fed / "mixed.csv").write_text("\n".join(lines) + "\n")
    args = ["train", "split", "--config", fed / "tax.toml", "--data", fed / "mixed.csv", "--id-column", "national_id"]
    assert _invoke(*args, "--out", fed / "h.txt", "--column", "sector", "--value", "public").exit_code == 0
    ps = Pseudonymiser(KEY)
    assert sorted((fed / "h.txt").read_text().split()) == sorted(ps.pseudonym(lines[i].split(",")[0]) for i in public)


def test_split_by_column_matches_numbers_by_value(fed: Path) -> None:
    """ "1", "1.0" and "+1.00" all name --value 1 (an exported train/test flag is often written
    "1.0"); "10" and "0.1" do not."""
    lines = (fed / "tax.csv").read_text().splitlines()
    header = lines[0] + ",is_test"
    cells = ["1", "1.0", " +1.00 ", "10", "0.1", "0", "1.", "-0"]
    rows = [f"{line},{cells[k % len(cells)]}" for k, line in enumerate(lines[1:])]
    (fed / "flagged.csv").write_text("\n".join([header, *rows]) + "\n")
    args = ["train", "split", "--config", fed / "tax.toml", "--data", fed / "flagged.csv", "--id-column", "national_id"]
    assert _invoke(*args, "--out", fed / "h.txt", "--column", "is_test", "--value", "1").exit_code == 0
    ps = Pseudonymiser(KEY)
    ones = [r.split(",")[0] for k, r in enumerate(rows) if k % len(cells) in (0, 1, 2, 6)]
    assert sorted((fed / "h.txt").read_text().split()) == sorted(ps.pseudonym(i) for i in ones)
    assert _invoke(*args, "--out", fed / "z.txt", "--column", "is_test", "--value", "0.0").exit_code == 0
    zeros = [r.split(",")[0] for k, r in enumerate(rows) if k % len(cells) in (5, 7)]
    assert sorted((fed / "z.txt").read_text().split()) == sorted(ps.pseudonym(i) for i in zeros)


def _marital_code_of_a_decomposed_cell(fed: Path, labels: dict[str, str], cell: str) -> int | None:
    """Load civil.csv with marital-status labels renamed (`labels`: old -> new, in the catalogue and
    in the file) and the first row's cell written as `cell` in decomposed form (NFD, as some exports
    write it); the code stored for that row."""
    catalogue = (fed / "catalogue.toml").read_text()
    lines = (fed / "civil.csv").read_text().splitlines()
    for old, new in labels.items():
        catalogue = catalogue.replace(f'"{old}"', f'"{new}"')
        lines = [ln.replace(f",{old},", f",{new},") for ln in lines]
    (fed / "catalogue.toml").write_text(catalogue)
    cells = lines[1].split(",")
    cells[3] = unicodedata.normalize("NFD", cell)
    lines[1] = ",".join(cells)
    (fed / "civil.csv").write_text("\n".join(lines) + "\n")
    res = _load(fed, "civil")
    assert res.exit_code == 0, res.output
    ps = Pseudonymiser(KEY).pseudonym(cells[0])
    return NodeStore.open(fed / "civil" / "store.sqlite").lookup("civil.marital_status", [ps]).get(ps)


def test_a_label_in_another_unicode_form_is_the_catalogues_label(fed: Path) -> None:
    """A decomposed "ü" against the catalogue's composed one: refused before as an unknown label
    that printed exactly like the catalogue's (thirteenth session's review)."""
    assert _marital_code_of_a_decomposed_cell(fed, {"widowed": "verwitwet-Zürich"}, "verwitwet-zürich") == 3


def test_a_label_in_another_unicode_form_matches_exactly_before_case_is_folded(fed: Path) -> None:
    """With labels "Émigré" and "émigré", a decomposed "émigré" is exactly one of them once
    composed; it was refused as matching both (folded case), as the review of this fix found."""
    assert _marital_code_of_a_decomposed_cell(fed, {"divorced": "Émigré", "widowed": "émigré"}, "émigré") == 3


def test_split_refusals(fed: Path) -> None:
    args = ["train", "split", "--config", fed / "tax.toml", "--id-column", "national_id", "--out", fed / "h.txt"]
    bad = fed / "bad.csv"
    header, first = (fed / "tax.csv").read_text().splitlines()[:2]
    bad.write_text(f"{header}\n12345,100,public,0\n{first}\n")  # every row as many cells as the header
    res = _invoke(*args, "--data", bad)
    assert res.exit_code == 1 and "row 2" in res.output and "1 invalid row(s) of 2" in res.output
    res = _invoke(*args, "--data", fed / "tax.csv", "--column", "sector")
    assert res.exit_code == 1 and "--column and --value" in res.output
    res = _invoke(*args, "--data", fed / "tax.csv", "--column", "sector", "--value", "nobody")
    assert res.exit_code == 1 and "would hold 0" in res.output
    res = _invoke(*args[:-2], "--id-column", "nid", "--data", fed / "tax.csv", "--out", fed / "h.txt")
    assert res.exit_code == 1 and "missing column" in res.output
    res = _invoke(*args, "--data", fed / "tax.csv", "--fraction", "nan")  # passed typer's range check
    assert res.exit_code == 1 and "--fraction must be a share between 0 and 1, not nan" in res.output
    assert not (fed / "h.txt").exists()


def _job(job_id: str = "late-1", **kw: Any) -> Any:
    return parse_job(
        {
            "job_id": job_id,
            "purpose": "tax-compliance",
            "mode": "vertical",
            "features": ["civil.age", "tax.sector"],
            "label": "tax.late_filing",
            "label_holder": "tax",
            "rounds": 2,
            **kw,
        }
    )


def test_allow_configures_a_fresh_ledger_and_resubmissions_are_decided_again(fed: Path) -> None:
    assert _load(fed, "tax").exit_code == 0
    store, ledger = fed / "tax" / "store.sqlite", fed / "tax" / "ledger.sqlite"
    adm = LedgerAdmission(ledger, store)
    refused = adm(_job(), "tax")  # a fresh ledger allows no purpose
    assert not refused.approved and "purpose" in refused.reason and not refused.redecided
    assert adm(_job(), "tax") == refused  # same job, same policy: the recorded decision
    res = _invoke("train", "allow", "--ledger", ledger, "--store", store, "--purpose", "tax-compliance",
                  "--default-cap", "3")  # fmt: skip
    assert res.exit_code == 0 and "tax_extract=3" in res.output
    approved = adm(_job(), "tax")  # the node's policy changed: decided again
    assert approved.approved and approved.redecided == POLICY_CHANGED
    assert approved.audit_fields() == {"redecided": POLICY_CHANGED}
    require_approval(ledger, _job())
    assert adm(_job(), "tax") == approved.__class__(True, "approved", 0.0)  # recorded, not re-decided
    dp = {"epsilon": 2.0, "delta": 1e-6, "clip": 1.0}
    changed = _job(mode="horizontal", dp=dp, secagg=False, min_nodes=1)
    d = adm(changed, "tax")
    assert d.approved and d.redecided == JOB_CHANGED and adm.spent("tax_extract") == pytest.approx(2.0)
    with pytest.raises(PolicyDenied):
        require_approval(ledger, _job())  # the earlier definition lost its approval
    again = _job(mode="horizontal", dp=dp, secagg=False, min_nodes=1, rounds=3)
    assert not adm(again, "tax").approved  # re-decided and charged again: over the cap of 3
    assert adm.spent("tax_extract") == pytest.approx(2.0)


def test_allow_refusals(fed: Path) -> None:
    assert _load(fed, "tax").exit_code == 0
    store, ledger = fed / "tax" / "store.sqlite", fed / "tax" / "ledger.sqlite"
    base = ["train", "allow", "--ledger", ledger, "--store", store, "--purpose", "p-1"]
    res = _invoke(*base, "--cap", "nosuch=1")
    assert res.exit_code == 1 and "nosuch" in res.output and "tax_extract" in res.output
    res = _invoke(*base, "--cap", "tax_extract=-1")
    assert res.exit_code == 1 and "DATASET=EPSILON" in res.output
    res = _invoke("train", "allow", "--ledger", ledger, "--store", fed / "none.sqlite", "--purpose", "p-1")
    assert res.exit_code == 1 and "does not exist" in res.output
    res = _invoke(*base, "--trust-key", "an-liu")
    assert res.exit_code == 1 and "must be USER=BASE64 with an Ed25519 public key" in res.output
    res = _invoke(*base, "--trust-key", "an-liu=bm90IGEga2V5")  # base64, but not 32 bytes
    assert res.exit_code == 1 and "must be USER=BASE64" in res.output


def test_allow_trusts_analysts_keys_and_can_require_signed_jobs(fed: Path) -> None:
    from crypto.envelope import SigningKey
    from federated.admission import ledger_signature_problem
    from federated.signed_jobs import sign_job

    assert _load(fed, "tax").exit_code == 0
    store, ledger = fed / "tax" / "store.sqlite", fed / "tax" / "ledger.sqlite"
    key = SigningKey.generate("tax", "job-signing")
    public = base64.b64encode(key.public_raw).decode()
    res = _invoke("train", "allow", "--ledger", ledger, "--store", store, "--purpose", "tax-compliance",
                  "--default-cap", "3", "--trust-key", f"an-liu={public}", "--require-signed")  # fmt: skip
    assert res.exit_code == 0 and "signing keys of an-liu; every job must be signed" in res.output, res.output
    signed = sign_job(_job(requester="an-liu"), key)
    assert ledger_signature_problem(ledger, signed) is None
    assert "differs from what its requester signed: rounds" in str(
        ledger_signature_problem(ledger, signed.model_copy(update={"rounds": 5}))
    )
    assert "requires signed training jobs" in str(ledger_signature_problem(ledger, _job(requester="bo-wu")))
    res = _invoke("train", "allow", "--ledger", ledger, "--store", store, "--purpose", "tax-compliance")
    assert res.exit_code == 0 and "signing keys of an-liu; every job must be signed" in res.output  # kept
    res = _invoke("train", "allow", "--ledger", ledger, "--store", store, "--purpose", "tax-compliance",
                  "--clear-trusted-keys", "--no-require-signed")  # fmt: skip
    assert res.exit_code == 0 and "no signing key trusted" in res.output and "must be signed" not in res.output
    assert "has no registered signing key" in str(ledger_signature_problem(ledger, signed))  # revoked
    res = _invoke("train", "allow", "--ledger", ledger, "--store", store, "--purpose", "tax-compliance",
                  "--clear-trusted-keys", "--trust-key", f"an-liu={public}")  # fmt: skip
    assert res.exit_code == 1 and "contradict" in res.output


def test_submit_accepts_a_refused_job_id_again_but_not_a_completed_one(fed: Path) -> None:
    root = fed / "jobs"
    (root / "late-filing-1").mkdir(parents=True)
    status = root / "late-filing-1" / "status.json"
    status.write_text(json.dumps({"state": "completed"}))
    args = ["train", "submit", "--job", fed / "job.toml", "--nodes", fed / "nodes.toml", "--root", root]
    res = _invoke(*args)
    assert res.exit_code == 1 and "already exists" in res.output
    status.write_text(json.dumps({"state": "refused"}))
    res = _invoke(*args)  # accepted for a new decision (which fails here: the nodes' stores do not exist)
    assert res.exit_code == 1 and "already exists" not in res.output and "does not exist" in res.output


def test_submit_through_a_gateway_reports_an_undefined_auc_without_a_traceback() -> None:
    """A held-out split with one class only has no AUC: the gateway answers null (NaN), which
    `train submit --gateway` printed as a TypeError traceback."""
    from app.train_cli import _auc_text

    assert _auc_text(0.85436) == "0.8544"
    assert _auc_text(None) == _auc_text(float("nan")) == "n/a (the held-out rows hold one class only)"


def test_an_auc_counted_against_label_dp_labels_is_called_an_estimate(tmp_path: Path) -> None:
    """It printed as a plain figure while report.json said `estimated_from_noisy_labels`; and
    `train status` on a root without jobs printed nothing (thirteenth session's review)."""
    from app.train_cli import _auc_text

    assert _auc_text(0.756, True) == "0.7560 (estimated from the label-DP held-out labels)"
    assert _auc_text(0.756, False) == "0.7560"
    res = _invoke("train", "status", "--root", tmp_path / "jobs")
    assert res.exit_code == 0 and f"no jobs in {tmp_path / 'jobs'}" in " ".join(res.output.split())
