"""Screenshots of the console's main pages for docs/, from a real federation (run by hand).

    python -m tests.browser.screenshots [--out docs] [--jobs-from DIR ...]

Starts nodes and a gateway on loopback, sends real traffic (allowed HE and plaintext checks, a
wrong-purpose request, policy denials that raise an alert), collects the nodes' cosignatures,
then drives the system Chromium through every page. `--jobs-from` copies the small result files
(status, events, report, model metadata) of real federated training job directories into the
gateway's job directory, so the Training page shows real runs; without it the page is empty.
Finally one entry is tampered with in the store to show how the console flags it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from app.devfed import DEV_APPROVAL_REF, LEGAL_BASIS
from tests.browser.harness import CHROMIUM_ARGS, ConsoleFederation, find_chromium, running_federation, sign_in

VIEWPORT = {"width": 1440, "height": 900}
JOB_FILES = ("status.json", "events.jsonl", "report.json", "model.json")


def traffic(cf: ConsoleFederation) -> None:
    cf.allowed_check(5, mode="he", case="C-2026-0412")
    cf.allowed_check(8, mode="plaintext", case="C-2026-0413")
    with cf.client("hrss_caseworker") as c:
        c.check("pension_survival", cf.take(4), purpose="pension_survival", legal_basis=LEGAL_BASIS["pension_survival"],
                case_id="P-2026-0077", approval_ref=DEV_APPROVAL_REF, mode="plaintext")  # fmt: skip
    cf.refused_check(purpose="pension_survival", case="C-2026-0414")
    for i in range(5):
        cf.refused_check(legal_basis="SAR-2014-art-99", case=f"C-2026-05{i:02d}")
    cf.cosign()


def copy_jobs(sources: list[Path], jobs_dir: Path) -> list[tuple[int, str]]:
    """Copy job result files; returns (curve points, job id) per job."""
    copied: list[tuple[int, str]] = []
    for source in sources:
        for status in sorted(source.glob("**/status.json")):
            first = (
                (status.parent / "events.jsonl").read_text().split("\n", 1)[0]
                if (status.parent / "events.jsonl").exists()
                else ""
            )
            job_id = json.loads(first)["job_id"] if first else status.parent.name
            target = jobs_dir / job_id
            target.mkdir(parents=True, exist_ok=True)
            for name in JOB_FILES:
                if (status.parent / name).exists():
                    shutil.copy2(status.parent / name, target / name)
            report = json.loads((target / "report.json").read_text()) if (target / "report.json").exists() else {}
            copied.append((len(report.get("curve", [])), job_id))
    return copied


def shoot(page: Any, out: Path, name: str, *, full: bool = False) -> None:
    page.wait_for_timeout(400)  # let the last repaint land
    page.screenshot(path=str(out / f"console-{name}.png"), full_page=full)
    print("wrote", out / f"console-{name}.png")


def run(out: Path, jobs_from: list[Path]) -> None:
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xgate-shots-") as tmp, running_federation(Path(tmp) / "fed") as cf:
        traffic(cf)
        copied = copy_jobs(jobs_from, cf.fed.gateway_dir / "state" / "jobs")
        print(f"federation up at {cf.url}; {len(copied)} training job(s) copied")
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                str(Path(tmp) / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
                ignore_https_errors=True, viewport=VIEWPORT, device_scale_factor=1,
            )  # fmt: skip
            page = ctx.new_page()
            sign_in(page, cf)
            page.wait_for_selector("table.entries tbody tr")
            shoot(page, out, "exchanges")
            with cf.http() as h:
                allowed = h.get(
                    "/v1/audit/entries", params={"kind": "policy_decision", "decision": "allow", "order": "desc"}
                )
                index = allowed.json()["entries"][-1]["index"]
                denied = h.get(
                    "/v1/audit/entries", params={"kind": "policy_decision", "decision": "deny", "order": "desc"}
                )
                denied_index = denied.json()["entries"][0]["index"]
            page.goto(f"{cf.url}/console/#/entry/{index}")
            page.wait_for_selector("#browser-verdict .verdict-badge")
            shoot(page, out, "entry", full=True)
            page.goto(f"{cf.url}/console/#/entry/{denied_index}")
            page.wait_for_selector("#why-reasons li")
            shoot(page, out, "refused")
            page.goto(f"{cf.url}/console/#/integrity")
            page.get_by_role("button", name="Verify whole log").click()
            page.wait_for_selector("#verify-result :text('Whole log verified')", timeout=60_000)
            shoot(page, out, "integrity")
            page.goto(f"{cf.url}/console/#/alerts")
            page.wait_for_selector("#alerts-count")
            shoot(page, out, "alerts")
            page.goto(f"{cf.url}/console/#/federation")
            page.wait_for_selector("tr[data-agency='tax']")
            shoot(page, out, "federation")
            page.goto(f"{cf.url}/console/#/policies")
            page.wait_for_selector("#agreements table")
            shoot(page, out, "policies")
            page.get_by_label("Data element", exact=True).select_option("household.alive_resident")
            page.get_by_role("button", name="Who can?").click()
            page.wait_for_selector("#whocan-result table")
            page.locator("#who-can").screenshot(path=str(out / "console-policies-who-can.png"))
            longest = f"/{max(copied)[1]}" if copied else ""  # the job with the longest training curve
            page.goto(f"{cf.url}/console/#/training{longest}")
            page.wait_for_selector("text=Privacy budget per dataset")
            page.wait_for_timeout(800)
            shoot(page, out, "training", full=True)
            page.goto(f"{cf.url}/console/#/subject?pseudonym={cf.pseudonym(cf.people[0])}")
            page.wait_for_selector("#subject-summary")
            shoot(page, out, "subject")
            cf.tamper(index)
            page.goto(f"{cf.url}/console/#/entry/{index}")
            page.wait_for_selector("#browser-verdict .verdict-badge:has-text('NOT verified')")
            shoot(page, out, "tampered")
            ctx.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--jobs-from", type=Path, action="append", default=[], help="real training job directories")
    args = parser.parse_args()
    run(args.out, args.jobs_from)


if __name__ == "__main__":
    main()
