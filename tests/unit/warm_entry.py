"""A stand-in for Flower's `flwr-clientapp` main, for tests/unit/test_warm_clientapp.py: prints what
the forked child sees (argv, working directory, one environment variable, fresh randomness from
every generator a fork could share) and exits with the status its first argument names."""

from __future__ import annotations

import json
import os
import random
import secrets
import sys
import time

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def main() -> None:
    status = int(sys.argv[1])
    if status == 99:  # wait to be stopped
        sys.stdout.write(json.dumps({"pid": os.getpid()}) + "\n")
        sys.stdout.flush()
        time.sleep(60)
    sys.stdout.write(
        json.dumps(
            {
                "argv": sys.argv[1:],
                "cwd": os.getcwd(),
                "marker": os.environ.get("WARM_TEST_MARKER"),
                "secrets": secrets.token_hex(16),
                "openssl": X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex(),
                "numpy_global": float(np.random.random()),
                "python_random": random.random(),
            }
        )
        + "\n"
    )
    sys.stdout.flush()
    sys.exit(status)
