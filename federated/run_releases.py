"""What a node has released in one run of a job, on disk beside its ledger.

Flower builds a fresh client for every message, so a node keeps no memory of a run in process
(both ClientApps claim here: the horizontal one its rounds, the vertical one its steps).
A coordinator could then ask it for the same release again (a DP-SGD update of a round it already
answered, the statistics round twice): each answer draws fresh noise, and averaging k answers cuts
the noise by √k while the node's ledger counted one. So each release is claimed here first, under
a file lock: a once-per-run release once, a numbered one once each and in increasing order, never
past the job's last. Refusals raise InvalidInput naming what was out of turn.
"""

from __future__ import annotations

import fcntl
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from xgate.errors import InvalidInput


class RunReleases:
    """The releases of one (job, run) at this node, in `directory` (made if missing)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold this run's lock while a handler reads, computes and saves its state: two copies of
        one message answered at once would otherwise both pass the order check and both release."""
        with self._locked():
            yield

    def _numbers(self, kind: str) -> list[int]:
        return sorted(int(p.name.rsplit("-", 1)[1]) for p in self.dir.glob(f"{kind}-*"))

    def once(self, kind: str, *, before: str | None = None) -> None:
        """Claim a release made once per run (and, with `before`, ahead of any numbered `before`)."""
        with self._locked():
            if (self.dir / kind).exists():
                raise InvalidInput(f"this node already answered '{kind}' in this run")
            if before is not None and self._numbers(before):
                raise InvalidInput(f"'{kind}' comes before any '{before}' in a run")
            (self.dir / kind).touch()

    def refuse_if_claimed(self, kind: str) -> None:
        """Refuse as `once` would, before the work that precedes the claim (its answer cannot change)."""
        if (self.dir / kind).exists():
            raise InvalidInput(f"this node already answered '{kind}' in this run")

    def numbered(self, kind: str, number: int, most: int) -> None:
        """Claim release `number` of `kind` (1..most), once, after every earlier one it answered."""
        with self._locked():
            done = self._numbers(kind)
            last = done[-1] if done else 0
            if not last < number <= most:
                raise InvalidInput(
                    f"{kind} round {number} is out of turn: this node answered up to round {last} of {most}"
                )
            (self.dir / f"{kind}-{number}").touch()

    def value(self, kind: str, draw: Callable[[], float]) -> float:
        """A noisy value released once per run: drawn by the first message that needs it, kept, and
        the same for every later message of the run (a fresh draw per message would average away)."""
        path = self.dir / f"value-{kind}"
        with self._locked():
            if path.exists():
                kept = float(path.read_text())
                if not math.isfinite(kept):
                    raise InvalidInput(f"this run's kept '{kind}' is not a number: remove the run's directory")
                return kept
            drawn = float(draw())
            tmp = path.with_suffix(".tmp")
            tmp.write_text(repr(drawn))
            os.replace(tmp, path)
            return drawn
