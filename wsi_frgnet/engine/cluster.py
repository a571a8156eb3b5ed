"""Many slides on Ray: one task per slide, on this machine or on a cluster.

``address``: ``local`` starts Ray on this machine; ``auto`` joins the cluster this machine
belongs to; ``ray://HOST:PORT`` connects to a cluster's head. The model file is put in Ray's
object store once and every task loads it from there. A task asks for one GPU where the
cluster has GPUs, else ``cpus_per_task`` CPUs (and runs the network on that many threads).
Outputs are written by the workers, atomically, where the job says: on a cluster that path
must be on a filesystem every node shares. Done slides are skipped and interrupted ones
resumed by the jobs themselves (:mod:`~wsi_frgnet.engine.batch`); an unexpected failure is
retried ``retries`` times, then reported.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from wsi_frgnet.engine.batch import JobOutcome, JobSettings, SlideJob, run_job
from wsi_frgnet.errors import InputError

logger = logging.getLogger(__name__)

Thresholds = tuple[float | None, float | None, float | None]  # score, NMS, guide; None: the model's


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray, which is not installed: pip install -e \".[ray]\"") from None
    return ray


def _segment_task(job: SlideJob, model_name: str, model_bytes: bytes, settings: JobSettings, thresholds: Thresholds,
                  threads: int) -> JobOutcome:
    """Runs on a Ray worker: the model file rebuilt under its own name, then the job."""
    import torch

    from wsi_frgnet.engine.devices import resolve_device
    from wsi_frgnet.engine.inference import load_model

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / model_name
        path.write_bytes(model_bytes)
        model = load_model(path, resolve_device("auto"), *thresholds)
        return run_job(job, model, settings)


def run_on_ray(
    jobs: list[SlideJob], model_path: Path, settings: JobSettings, address: str, thresholds: Thresholds = (None, None, None),
    cpus_per_task: int = 2, retries: int = 2, on_outcome: Callable[[JobOutcome], None] | None = None,
) -> list[JobOutcome]:
    """Run every job as a Ray task; outcomes in the order of ``jobs`` (``on_outcome`` is called
    as each one arrives). ``thresholds``: score, NMS and guide thresholds (None: the model's).
    A task that failed ``retries`` + 1 times gives a ``failed`` outcome."""
    ray = _import_ray()
    if address == "local":
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    else:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        except ConnectionError as exc:
            raise InputError(f"--ray {address}: cannot reach the cluster ({' '.join(str(exc).split())})") from None
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        options = {"num_gpus": 1, "num_cpus": 1} if gpus >= 1 else {"num_cpus": cpus_per_task}
        task = ray.remote(max_retries=retries, retry_exceptions=True)(_segment_task).options(**options)
        model_ref = ray.put(Path(model_path).read_bytes())
        threads = 0 if gpus >= 1 else cpus_per_task
        logger.info("Ray: %d slide(s) as tasks of %s", len(jobs), "1 GPU each" if gpus >= 1 else f"{cpus_per_task} CPUs each")
        pending = {task.remote(job, Path(model_path).name, model_ref, settings, thresholds, threads): index for index, job in enumerate(jobs)}
        outcomes: list[JobOutcome | None] = [None] * len(jobs)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 (whatever the task raised, after its retries)
                cause = getattr(exc, "cause", None) or exc
                outcome = JobOutcome(jobs[index], "failed", message=f"{jobs[index].slide}: {type(cause).__name__}: {cause}")
            outcomes[index] = outcome
            if on_outcome is not None:
                on_outcome(outcome)
        return [outcome for outcome in outcomes if outcome is not None]
    finally:
        ray.shutdown()
