"""Pure parts of the deployment across machines: `--node-config` strings (read back by Flower's own
parser), `flwr supernode list` JSON, participant selection, the catalogue-derived model width,
node-attested digests, the ServerApp's node filter, and the coordinator's remote settings."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from flwr.common.config import parse_config_args
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from federated.grid_io import allowed_nodes
from federated.horizontal_server import BoundedClientManager
from federated.job_run import write_app
from federated.jobs import parse_job
from federated.node import NodeConfig, node_config, node_config_arg
from federated.pooled_stats import infos_from_config
from federated.remote import (
    RemoteNode,
    attested_digests,
    catalogue_infos,
    catalogue_width,
    select_participants,
)
from federated.remote_runner import RemoteMode, job_shape
from federated.runner import run_job
from gateway.config import TrainingSettings
from policies.catalogue import Catalogue, DataElement
from xgate.errors import ConfigError, IntegrityError

# -- --node-config -------------------------------------------------------------------------------


def test_node_config_arg_round_trips_through_flowers_parser(tmp_path: Path) -> None:
    nc = NodeConfig(tmp_path / "my store.sqlite", "region0", tmp_path / "ledger.sqlite", None, tmp_path / "policies")
    arg = node_config_arg(nc)
    assert "holdout" not in arg
    parsed = parse_config_args([arg])
    assert parsed["store"] == str(tmp_path / "my store.sqlite") and parsed["agency"] == "region0"
    assert node_config(parsed) == NodeConfig(
        (tmp_path / "my store.sqlite").resolve(), "region0", tmp_path / "ledger.sqlite", None, tmp_path / "policies"
    )


QUOTE_FREE = st.characters(blacklist_characters="'/\x7f", blacklist_categories=("Cs",), min_codepoint=32)


@given(st.text(alphabet=QUOTE_FREE, min_size=1, max_size=20).filter(lambda n: n not in (".", "..")))
def test_any_quote_free_path_survives(name: str) -> None:
    store = Path("/srv") / name
    arg = node_config_arg(NodeConfig(store, "tax", Path("/srv/ledger"), Path("/srv/holdout"), None))
    parsed = parse_config_args([arg])
    assert Path(parsed["store"]) == store.resolve() and parsed["holdout"] == "/srv/holdout"


@pytest.mark.parametrize("bad", ["it's.sqlite", "a\nb.sqlite", "a\x7fb.sqlite"])
def test_node_config_arg_refuses_what_flower_cannot_carry(bad: str) -> None:
    with pytest.raises(ConfigError, match="'store' must not contain quotes or control characters"):
        node_config_arg(NodeConfig(Path("/srv") / bad, "tax", Path("/srv/l"), None, None))


# -- what the coordinator decides without the stores ---------------------------------------------


def test_select_participants() -> None:
    a = RemoteNode("tax", Path("a.pub"), datasets=("tax.income_2025",))
    b = RemoteNode("region0", Path("b.pub"), datasets=("medical.claims_2025",))
    c = RemoteNode("region1", Path("c.pub"))  # serves every job
    assert select_participants([a, b, c], ["medical.claims_2025"]) == [b, c]
    assert select_participants([a, b, c], ["tax.income_2025", "medical.claims_2025"]) == [a, b, c]
    assert select_participants([a, b, c], []) == [c]
    assert select_participants([a, b, c], None) == [a, b, c]


CATALOGUE = Catalogue(
    elements=(
        DataElement(id="tax.age", agency="tax", type="int", unit="y", min=0, max=130, classification="general"),
        DataElement(id="tax.flag", agency="tax", type="flag", unit="-", min=0, max=1, classification="general"),
        DataElement(
            id="tax.region",
            agency="tax",
            type="category",
            unit="-",
            min=0,
            max=3,
            classification="general",
            categories=("a", "b", "c", "d"),
        ),
    )
)


def test_catalogue_width_is_the_encoded_width() -> None:
    assert catalogue_width(CATALOGUE, ["tax.age", "tax.flag", "tax.region"]) == 1 + 1 + 4
    with pytest.raises(ConfigError, match=r"'tax\.missing' is not in the federation catalogue"):
        catalogue_width(CATALOGUE, ["tax.age", "tax.missing"])


def _job(**kw: Any) -> Any:
    base = {
        "job_id": "j-1",
        "purpose": "fraud-model",
        "mode": "horizontal",
        "features": ["tax.age", "tax.region"],
        "label": "tax.flag",
        "label_holder": "tax",
        "rounds": 1,
        "secagg": False,
        "min_nodes": 1,
    }
    return parse_job({**base, **kw})


def test_job_shape_needs_a_weight_bound_for_horizontal_jobs() -> None:
    mode = RemoteMode(link=None, catalogue=CATALOGUE)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs max_weight"):
        job_shape(_job(), mode)
    assert job_shape(_job(max_weight=500), mode) == (5, 500)
    assert job_shape(_job(), RemoteMode(None, CATALOGUE, max_weight=300)) == (5, 300)  # type: ignore[arg-type]
    assert job_shape(_job(max_weight=500), RemoteMode(None, CATALOGUE, max_weight=300)) == (5, 500)  # type: ignore[arg-type]


def test_attested_digests_follow_the_registration() -> None:
    ids = {7: "region0", 9: "region1"}
    summary = {
        "data_digests": {
            "7": {"agency": "region0", "data_sha256": "aa"},
            "9": {"agency": "region1", "data_sha256": "bb"},
        }
    }
    assert attested_digests(summary, ids) == {"region0": "aa", "region1": "bb"}
    assert attested_digests({}, ids) == {}
    lying = {"data_digests": {"7": {"agency": "region1", "data_sha256": "aa"}}}
    with pytest.raises(IntegrityError, match="registered for agency 'region0' reports agency 'region1'"):
        attested_digests(lying, ids)
    with pytest.raises(IntegrityError, match="not part of this job"):
        attested_digests({"data_digests": {"8": {"agency": "x", "data_sha256": "cc"}}}, ids)


# -- the ServerApp uses only the job's nodes -----------------------------------------------------


class _Proxy:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.cid = str(node_id)


def test_run_config_node_ids() -> None:
    assert allowed_nodes({"node-ids": "1,18446744073709551615"}) == {1, 18446744073709551615}
    assert allowed_nodes({"node-ids": ""}) is None and allowed_nodes({}) is None


def test_client_manager_never_samples_other_nodes() -> None:
    cm = BoundedClientManager(5.0, allowed={1, 2})
    for i in (1, 2, 3):
        assert cm.register(_Proxy(i))  # type: ignore[arg-type]  # Flower's updater fails on a refusal
    assert sorted(cm.all()) == ["1", "2"] and cm.num_available() == 2
    everyone = BoundedClientManager(5.0)
    assert everyone.register(_Proxy(3)) and everyone.num_available() == 1  # type: ignore[arg-type]


def test_run_job_remote_refuses_coordinator_admission(tmp_path: Path) -> None:
    mode = RemoteMode(link=None, catalogue=CATALOGUE)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="remote nodes decide admission themselves"):
        run_job(_job(), [], job_dir=tmp_path, remote=mode, admission=lambda j, a: None)  # type: ignore[arg-type,return-value]


# -- the gateway's [training] settings -----------------------------------------------------------

REMOTE = {
    "superlink_host": "0.0.0.0",
    "superlink_port": 9092,
    "superlink_cert": "link.cert.pem",
    "superlink_key": "link.key.pem",
    "ca_cert": "ca.cert.pem",
    "max_weight": 100000,
}


def test_remote_training_settings() -> None:
    s = TrainingSettings.model_validate(
        {
            **REMOTE,
            "nodes": [
                {
                    "agency": "region0",
                    "public_key": "r0.pub",
                    "certificate": "r0.cert.pem",
                    "datasets": ["medical.claims_2025"],
                }
            ],
        }
    )
    assert s.nodes[0].store is None and s.nodes[0].datasets == ["medical.claims_2025"]
    local = TrainingSettings.model_validate({"nodes": [{"agency": "tax", "store": "s", "ledger": "l"}]})
    assert local.superlink_port is None  # local mode unchanged


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"nodes": [{"agency": "tax", "public_key": "t.pub"}]}, "remote training needs superlink_host/superlink_port"),
        ({**REMOTE, "nodes": [{"agency": "tax", "store": "s", "ledger": "l"}]}, "need public_key"),
        ({**REMOTE, "superlink_cert": None, "nodes": []}, "needs superlink_cert"),
        ({**REMOTE, "ca_dir": "ca", "nodes": []}, "ca_dir issues per-job material"),
        ({"nodes": [{"agency": "tax", "store": "s"}]}, "needs store and ledger (local) or public_key"),
        ({"nodes": [{"agency": "tax", "public_key": "t.pub", "store": "s"}], **REMOTE}, "keeps store, ledger"),
        ({"nodes": [{"agency": "tax", "store": "s", "ledger": "l", "certificate": "c"}]}, "describe a remote node"),
        ({**REMOTE, "superlink_port": 0, "nodes": []}, "greater than or equal to 1"),
    ],
)
def test_training_settings_refuse_mixed_or_incomplete_modes(settings: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        TrainingSettings.model_validate(settings)


def test_a_standardising_job_carries_the_catalogues_declared_ranges_to_its_serverapp(tmp_path: Path) -> None:
    """The remote coordinator has no store: the ServerApp turns pooled moments into means and spreads
    with the catalogue's declared ranges, which the App's run config carries (only when it standardises)."""
    infos = catalogue_infos(CATALOGUE, ["tax.age", "tax.region"])
    standardising = _job(encodings={"tax.age": "standardise"})
    app = write_app(standardising, tmp_path / "a", n_nodes=2, max_weight=10, feature_infos=infos)
    config = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert infos_from_config(config["feature-infos"]) == infos
    plain = write_app(_job(), tmp_path / "b", n_nodes=2, max_weight=10, feature_infos=infos)
    assert "feature-infos" not in tomllib.loads((plain / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    with pytest.raises(ConfigError, match=r"'tax\.missing' is not in the federation catalogue"):
        catalogue_infos(CATALOGUE, ["tax.missing"])
