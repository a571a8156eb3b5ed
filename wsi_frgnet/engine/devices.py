"""The compute device from a user's --device value, the precision the network runs in on it,
and how the network's work is spread on it. The one place that decides these, for training
and inference alike."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from wsi_frgnet.config import PRECISIONS
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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX); emulated bf16 is slower
    than fp32. On MoNuSeg validation bf16 gave the same PQ as fp32 (0.5567 vs 0.5564)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe is not None and probe() for probe in probes)


def autocast_dtype(precision: str, device: torch.device, training: bool = False) -> torch.dtype | None:
    """The autocast dtype for a ``--precision`` value on ``device`` (None: plain fp32).

    ``auto`` for inference: bf16 on CUDA GPUs that compute it natively, else fp16; bf16 on CPUs
    with native bf16, else fp32. ``auto`` for training: bf16 where the GPU or CPU computes it
    natively, else fp32 (fp16 training, which needs loss scaling, only when asked for). On a
    2-core CPU with AVX-512 BF16, bf16 trains 1.4 times as many crops per second as fp32, to the
    same validation accuracy (docs/RESULTS.md). Asking for bf16 or fp16 on a CUDA device that
    lacks it is an InputError.
    """
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    native_bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    if precision == "auto":
        if cuda:
            return torch.bfloat16 if native_bf16 else (None if training else torch.float16)
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if cuda and precision == "bf16" and not native_bf16:
        raise InputError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no native bf16; use fp16 or fp32")
    if cuda and precision == "fp16" and torch.cuda.get_device_capability(device) < (5, 3):
        raise InputError(f"--precision fp16: {torch.cuda.get_device_name(device)} has no fp16 arithmetic; use fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


MAX_CPU_STREAMS = 4


def core_count() -> int:
    """The cores this process computes on: torch's thread count (``OMP_NUM_THREADS``,
    ``torch.set_num_threads``, else the machine's cores)."""
    return torch.get_num_threads()


def network_thread_shares(device: torch.device) -> list[int]:
    """Intra-op threads of each network stream (one list entry per stream) on ``device``.

    On CPU the cores are split among up to ``MAX_CPU_STREAMS`` streams that run batches
    independently: two single-threaded streams outrun one two-threaded stream (on 2 cores, 512²
    tiles in bf16: 14.1 vs 12.0 tiles/s), most likely because intra-op threads synchronise at
    every layer.
    The core count is :func:`core_count`. On CUDA: one stream.
    """
    cores = core_count()
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
