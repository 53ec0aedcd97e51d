"""PSI blinding spread over a node's cores: ``python -m federated.psi_pool`` is one worker.

X25519 costs about 35 us per tag and pyca/cryptography holds the GIL while it runs, so threads do
not help; worker processes do. The label holder finishes every other node's list (K - 1 lists,
against one list at each other node), so on its own it set the pace of alignment: with six
agencies and 100,000 subjects that was 500,000 scalar multiplications in one process.

Workers are plain subprocesses of this interpreter, not multiprocessing's: the ClientApp that
calls this talks gRPC to its SuperNode (forking a process with gRPC threads is unsafe), and
multiprocessing's spawn re-runs the caller's main module, which for a ClientApp is Flower's. A
worker reads the job key and its share of the tags on stdin and writes the finished tags on
stdout: the pool puts the key in no new file, argument, environment variable or log. Workers start
with `-P`, so the ClientApp's working directory (the SuperNode's home) is not on their path: a
`federated/psi_pool.py` planted there is not what receives the key. Finishing is per tag, so the
lists are cut into contiguous pieces and the results joined back in order.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from federated import psi

# Below this many tags in all, one process finishes them sooner than starting workers would
# (a worker imports numpy and pyca/cryptography first: about 0.3 s); and no worker gets fewer.
PARALLEL_FROM = 40_000
_KEY_BYTES = 32
_WORKER = ("-P", "-m", "federated.psi_pool")  # run by this interpreter; -P: not from the working directory
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a container
    limited to 2 CPUs on a 64-core host sees 64 in its affinity)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    try:
        quota, period = _CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 here, or a line not as documented: the affinity stands
        pass
    return n


def finish_lists(
    key: bytes, lists: Sequence[bytes], workers: int | None = None, timeout_s: float = 3600.0
) -> list[bytes]:
    """`psi.finish` of every list (same result, same order), over up to `workers` processes, none
    given fewer than PARALLEL_FROM tags; a worker that fails or outlives `timeout_s` fails the call
    (RuntimeError), the others are stopped."""
    if len(key) != _KEY_BYTES:
        raise ValueError(f"a PSI key is {_KEY_BYTES} bytes")
    sizes = [psi.count(tags) for tags in lists]  # refuses a ragged list before any work
    total = sum(sizes)
    workers = min(cores() if workers is None else workers, total // PARALLEL_FROM)
    if workers <= 1:
        return [psi.finish(key, tags) for tags in lists]
    joined = b"".join(lists)
    step = -(-total // workers)
    pieces = [joined[i * psi.TAG_BYTES : (i + step) * psi.TAG_BYTES] for i in range(0, total, step)]
    finished = b"".join(_in_workers(key, pieces, timeout_s))
    out, at = [], 0
    for n in sizes:
        out.append(finished[at : at + n * psi.MATCH_BYTES])
        at += n * psi.MATCH_BYTES
    return out


def _in_workers(key: bytes, pieces: Sequence[bytes], timeout_s: float) -> list[bytes]:
    """Each piece finished by its own worker process, in order."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in pieces:  # inside the try: if one cannot start, those already started are stopped
            procs.append(
                subprocess.Popen(
                    [sys.executable, *_WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
            )
        with ThreadPoolExecutor(len(procs)) as threads:  # each thread feeds and drains one worker
            futures = [
                threads.submit(_finished_by, proc, key, piece, timeout_s)
                for proc, piece in zip(procs, pieces, strict=True)
            ]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [e for e in (f.exception() for f in done) if e is not None]
            if failed:  # the others' work is moot: stop them rather than wait for them
                _stop(procs)
                raise failed[0]  # the first failure, as it was raised
            return [f.result() for f in futures]
    finally:
        _stop(procs)


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _finished_by(proc: subprocess.Popen[bytes], key: bytes, tags: bytes, timeout_s: float) -> bytes:
    try:
        out, err = proc.communicate(key + tags, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError(f"a PSI worker took longer than {timeout_s:g} s") from None
    if proc.returncode != 0 or len(out) != psi.count(tags) * psi.MATCH_BYTES:
        why = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise RuntimeError(f"a PSI worker failed: {why[0][:200]}")
    return out


def main() -> None:
    data = sys.stdin.buffer.read()
    sys.stdout.buffer.write(psi.finish(data[:_KEY_BYTES], data[_KEY_BYTES:]))


if __name__ == "__main__":
    main()
