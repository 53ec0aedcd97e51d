"""A stand-in for an xgate service under app/launcher.py: announce readiness, then wait to be stopped."""

from __future__ import annotations

import json
import os
import time

if __name__ == "__main__":
    print(json.dumps({"event": "ready", "port": 0, "pid": os.getpid()}), flush=True)  # noqa: T201
    time.sleep(300)
