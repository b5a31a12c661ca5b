"""Launch `python -m mlscale ...` as one process or as torchrun ranks (gloo, CPU), for the
tests that compare data parallelism with one process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(args: list[str], timeout: int = 300) -> None:
    """`python ARGS` in one process; raises with its stderr if it fails."""
    r = subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]


def run_ranks(args: list[str], nproc: int = 2, timeout: int = 300) -> None:
    """`python ARGS` as `nproc` torchrun ranks on this machine."""
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                        f"--master_port={free_port()}", "--master_addr=127.0.0.1", *args],
                       env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
