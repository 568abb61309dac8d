"""Data parallelism with MLX's own distributed engine: the same step on more data.

Started by ``mlx.launch``, every process (a *rank*) holds a full copy of the model, takes its own
rows of each global batch, and the gradients are averaged over the group (one all-reduce) before
the optimizer step, so every copy takes the same step. Started plainly, the group has size 1 and
every helper here does nothing. Built in Appendix, Data-parallel training.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map


class RanksDisagree(RuntimeError):
    """The ranks of one run were started with different settings, data or tokenizer."""


def world() -> mx.distributed.Group:
    """The group this process belongs to: the ring (or MPI) group under ``mlx.launch``,
    else size 1."""
    return mx.distributed.init()


def is_main(group: mx.distributed.Group) -> bool:
    """Rank 0 alone writes checkpoints, metrics and progress bars."""
    return group.rank() == 0


def check_divisible(batch_size: int, group: mx.distributed.Group) -> None:
    """Each rank takes ``batch_size / size`` rows of every global batch: the split must be exact."""
    if batch_size % group.size():
        raise ValueError(f"batch_size {batch_size} cannot be split evenly over {group.size()} "
                         f"ranks; use a multiple of {group.size()} (the global batch is shared "
                         "out, not repeated per rank)")


def shard_rows(batch: mx.array, group: mx.distributed.Group) -> mx.array:
    """This rank's disjoint slice of the rows (axis -2) of a (..., B, T) global batch
    → (..., B / size, T)."""
    rows = batch.shape[-2] // group.size()
    return batch[..., group.rank() * rows:(group.rank() + 1) * rows, :]


def all_mean(x: mx.array, group: mx.distributed.Group) -> mx.array:
    """The mean of ``x`` over the ranks (``x`` itself when alone): equal shards make it the
    global mean."""
    return x if group.size() == 1 else mx.distributed.all_sum(x, group=group) / group.size()


def digest(*parts) -> bytes:
    """sha256 of the parts: strings and bytes as they are, arrays by their raw bytes."""
    sha = hashlib.sha256()
    for part in parts:
        if isinstance(part, (mx.array, np.ndarray)):
            part = np.ascontiguousarray(part).tobytes()
        sha.update(part.encode() if isinstance(part, str) else bytes(part))
    return sha.digest()


def check_same_everywhere(digests: dict[str, bytes], group: mx.distributed.Group) -> None:
    """All-gather each rank's digests and stop every rank with one message if any of them differ.

    Every rank raises the same ``RanksDisagree``, so none is left waiting in a later all-reduce.
    """
    if group.size() == 1:
        return
    mine = mx.array(np.frombuffer(b"".join(digests.values()), dtype=np.uint8))  # (K · 32,)
    everyone = np.array(mx.distributed.all_gather(mine[None], group=group))  # (size, K · 32)
    for k, name in enumerate(digests):
        column = everyone[:, 32 * k:32 * (k + 1)]
        if differ := [rank for rank in range(group.size()) if (column[rank] != column[0]).any()]:
            raise RanksDisagree(f"rank{'s' * (len(differ) > 1)} {', '.join(map(str, differ))} "
                                f"{'have' if len(differ) > 1 else 'has'} a different {name} "
                                "than rank 0; every rank must run the same command on the same "
                                "data, tokenizer and checkpoint")


def broadcast_from_main(tree, group: mx.distributed.Group):
    """Rank 0's copy of every array in ``tree``, on every rank (an all-sum where the others
    add zeros)."""
    if group.size() == 1:
        return tree
    keep = is_main(group)
    return tree_map(lambda x: mx.distributed.all_sum(x if keep else mx.zeros_like(x), group=group),
                    tree)


# --------------------------------------------------------------------------------------------------
# Trying it on one machine: several ranks over loopback (the tests and the Appendix use this).


@dataclass
class LaunchResult:
    returncodes: list[int | None]  # per rank, as mlx.launch reports them (None: it did not say)
    stdout: str
    stderr: str


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive free TCP ports on 127.0.0.1 (the ring listens on port,
    port + 1, ...)."""
    for _ in range(100):
        first = random.randrange(20000, 60000 - n)
        try:
            with ExitStack() as sockets:
                for port in range(first, first + n):
                    sockets.enter_context(socket.socket()).bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise RuntimeError(f"found no {n} consecutive free ports on 127.0.0.1")


def launcher() -> Path | None:
    """The ``mlx.launch`` script of this Python's environment (or on PATH), if installed."""
    beside = Path(sys.executable).with_name("mlx.launch")
    found = beside if beside.is_file() else shutil.which("mlx.launch")
    return Path(found) if found else None


def launch_local(command: list[str], n: int = 2, timeout: float = 120.0, **popen) -> LaunchResult:
    """Run ``command`` as ``n`` ranks on this machine: ``mlx.launch -n n --backend ring``
    over loopback.

    mlx.launch (0.32) exits 0 even when a rank fails, so each rank's exit code is read from its log.
    Past ``timeout`` seconds the launcher and every rank are killed and TimeoutError is raised.
    """
    if (script := launcher()) is None:
        raise FileNotFoundError(f"mlx.launch is neither next to {sys.executable} nor on PATH; "
                                "install mlx here")
    args = [str(script), "--verbose", "-n", str(n), "--backend", "ring", "-p", str(free_ports(n)),
            "--", *command]
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True, **popen)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # the launcher and its ranks share a new process group
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise TimeoutError(f"{' '.join(command)} on {n} ranks did not finish in {timeout:.0f} s; "
                           "killed") from None
    codes: list[int | None] = [None] * n
    for rank, code, killed in re.findall(r"Node with rank (\d+) "
                                         r"(?:exited with code (-?\d+)|completed|(was killed))",
                                         stderr):
        codes[int(rank)] = -9 if killed else int(code or 0)
    return LaunchResult(codes, stdout, stderr)
