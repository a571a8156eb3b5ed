"""The compute device from a user's --device value, and how the network's work is spread on it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from wsi_frgnet.errors import InputError


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA if available else CPU; ``cpu``; ``cuda`` / ``cuda:N`` (must exist)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise InputError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device("cuda", index)


MAX_CPU_STREAMS = 4


def network_thread_shares(device: torch.device) -> list[int]:
    """Intra-op threads of each network stream (one list entry per stream) on ``device``.

    On CPU the cores are split among up to ``MAX_CPU_STREAMS`` streams that run batches
    independently: two single-threaded streams outrun one two-threaded stream (on 2 cores, 512²
    tiles in bf16: 14.1 vs 12.0 tiles/s), most likely because intra-op threads synchronise at
    every layer.
    The core count is torch's thread count (``OMP_NUM_THREADS`` or ``torch.set_num_threads``).
    On CUDA: one stream.
    """
    cores = torch.get_num_threads()
    if device.type != "cpu":
        return [cores]
    streams = max(1, min(MAX_CPU_STREAMS, cores))
    return [cores // streams + (index < cores % streams) for index in range(streams)]


def network_executor(shares: list[int]) -> ThreadPoolExecutor:
    """Threads that run the network, one per stream, each with its share of intra-op threads
    (from :func:`network_thread_shares`)."""
    return ThreadPoolExecutor(len(shares), thread_name_prefix="network", initializer=_take_thread_share, initargs=(iter(shares),))


def _take_thread_share(shares: Iterator[int]) -> None:
    """Thread initialiser: this stream's intra-op thread count (torch keeps one per thread)."""
    torch.set_num_threads(next(shares))
