"""Container health check: GET $XGATE_HEALTH_URL (a node's /healthz, or the gateway's), exit 0 if 200.

Loopback only and liveness only, so the gateway's certificate (issued for its public name) is not
verified here; readiness (/readyz) is for the load balancer, not for restarting the container.
"""

import os
import ssl
import sys
import urllib.request

url = os.environ.get("XGATE_HEALTH_URL", "http://127.0.0.1:9464/healthz")
context = ssl._create_unverified_context() if url.startswith("https://") else None  # noqa: S323  # loopback liveness
try:
    with urllib.request.urlopen(url, timeout=4, context=context) as answer:  # noqa: S310  # our own URL
        sys.exit(0 if answer.status == 200 else 1)
except OSError as exc:
    print(f"unhealthy: {url}: {exc}", file=sys.stderr)  # noqa: T201
    sys.exit(1)
