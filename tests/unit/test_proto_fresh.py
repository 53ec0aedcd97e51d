"""Generated protobuf code is checked in; this fails when it no longer matches node.proto."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATED = ("node_pb2.py", "node_pb2.pyi", "node_pb2_grpc.py")


def test_generated_code_matches_proto(tmp_path):
    (tmp_path / "protos" / "xgate" / "v1").mkdir(parents=True)
    shutil.copy(REPO / "protos/xgate/v1/node.proto", tmp_path / "protos/xgate/v1/node.proto")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            "--python_out=.",
            "--pyi_out=.",
            "--grpc_python_out=.",
            "protos/xgate/v1/node.proto",
        ],
        cwd=tmp_path,
        check=True,
    )
    for name in GENERATED:
        fresh = (tmp_path / "protos/xgate/v1" / name).read_text()
        checked_in = (REPO / "protos/xgate/v1" / name).read_text()
        assert fresh == checked_in, f"protos/xgate/v1/{name} is stale: run `make proto` and commit"


def test_generated_code_imports_from_its_own_path():
    from protos.xgate.v1 import node_pb2, node_pb2_grpc

    assert node_pb2.EncryptRequest.DESCRIPTOR.full_name == "xgate.v1.EncryptRequest"
    assert hasattr(node_pb2_grpc, "AgencyNodeStub")
