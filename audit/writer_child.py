"""Entry point of the audit writer child process (started by audit.writer_process.ProcessWriter).

A module of its own so that ``python -m`` does not re-run a module the ``audit`` package has
already imported.
"""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection
from pathlib import Path

from audit.writer_process import serve

if __name__ == "__main__":
    read_fd, write_fd, db, batch, linger_s = sys.argv[1:6]
    serve(
        Connection(int(read_fd), writable=False),
        Connection(int(write_fd), readable=False),
        Path(db),
        int(batch),
        float(linger_s),
    )
