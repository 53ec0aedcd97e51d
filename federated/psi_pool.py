"""PSI blinding spread over a node's cores: ``python -m federated.psi_pool`` is one worker.

X25519 costs about 35 us per tag and pyca/cryptography holds the GIL while it runs, so threads do
not help; worker processes do. The label holder finishes every other node's list (K - 1 lists,
against one list at each other node), so on its own it set the pace of alignment: with six
agencies and 100,000 subjects that was 500,000 scalar multiplications in one process.

Workers are plain subprocesses of this interpreter, not multiprocessing's: the ClientApp that
calls this talks gRPC to its SuperNode (forking a process with gRPC threads is unsafe), and
multiprocessing's spawn re-runs the caller's main module, which for a ClientApp is Flower's. A
worker reads the job key and its share of the tags on stdin and writes the finished tags on
stdout; the key never reaches a file, an argument or a log. Finishing is per tag, so the lists are
cut into contiguous pieces and the results joined back in order.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from federated import psi

# Below this many tags in all, one process finishes them sooner than starting workers would
# (a worker imports numpy and pyca/cryptography first: about 0.3 s).
PARALLEL_FROM = 40_000
_KEY_BYTES = 32
_WORKER = ("-m", "federated.psi_pool")  # run by this interpreter


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def finish_lists(key: bytes, lists: Sequence[bytes], workers: int | None = None) -> list[bytes]:
    """`psi.finish` of every list (same result, same order), over up to `workers` processes."""
    if len(key) != _KEY_BYTES:
        raise ValueError(f"a PSI key is {_KEY_BYTES} bytes")
    workers = cores() if workers is None else workers
    sizes = [psi.count(tags) for tags in lists]  # refuses a ragged list before any work
    total = sum(sizes)
    if workers <= 1 or total < PARALLEL_FROM:
        return [psi.finish(key, tags) for tags in lists]
    joined = b"".join(lists)
    step = -(-total // workers)
    pieces = [joined[i * psi.TAG_BYTES : (i + step) * psi.TAG_BYTES] for i in range(0, total, step)]
    with ThreadPoolExecutor(len(pieces)) as threads:  # each thread waits on one worker process
        finished = b"".join(threads.map(lambda piece: _in_worker(key, piece), pieces))
    out, at = [], 0
    for n in sizes:
        out.append(finished[at : at + n * psi.MATCH_BYTES])
        at += n * psi.MATCH_BYTES
    return out


def _in_worker(key: bytes, tags: bytes) -> bytes:
    worker = subprocess.run([sys.executable, *_WORKER], input=key + tags, capture_output=True, check=False)
    expected = psi.count(tags) * psi.MATCH_BYTES
    if worker.returncode != 0 or len(worker.stdout) != expected:
        why = worker.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {worker.returncode}"]
        raise RuntimeError(f"a PSI worker failed: {why[0][:200]}")
    return worker.stdout


def main() -> None:
    data = sys.stdin.buffer.read()
    sys.stdout.buffer.write(psi.finish(data[:_KEY_BYTES], data[_KEY_BYTES:]))


if __name__ == "__main__":
    main()
