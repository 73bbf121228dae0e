"""``live-attention render --ray auto|ADDRESS``: the many-inputs job on a Ray cluster (optional extra
``live-attention[ray]``; Ray is imported only when asked for, so this module imports without it).

Who owns what:

* The **driver** (the process that runs ``render``, on its main thread) connects to Ray, sizes the pool
  of workers from the cluster's resources, hands the jobs to them through :class:`ray.util.ActorPool`
  (Ray places the workers on nodes and schedules them), retries a failed input once (one whose worker
  process died is retried by Ray, on the worker it restarts), reports it if it fails again, and prints
  one line per finished input and the summary, like a local run. It renders nothing itself.
* Each **worker** is a Ray actor (:class:`RayWorker`, a process on some node) that owns one
  :class:`~live_attention.offline.renderer.Renderer`: the engine loads once, then renders job after job
  through the same overlapped path as a local run (its decode, draw and encode threads included). On a
  GPU cluster each worker asks Ray for one GPU (``num_gpus=1``); Ray makes it the worker's only visible
  device, so every worker runs on its own GPU. Otherwise a worker takes up to :data:`CPUS_PER_WORKER`
  CPUs of one node, and Ray sizes its torch threads to them (``OMP_NUM_THREADS``).
* Configuration travels as plain data: the frozen :class:`~live_attention.config.Config` and the
  :class:`~live_attention.offline.renderer.Job` records pickle; workers import ``live_attention`` themselves.

What a cluster needs (``--ray auto`` on one machine has all of it already):

* ``live-attention`` installed on every node, the same version, in the Python environment Ray runs;
* inputs and outputs on a filesystem every node sees at the same path (NFS or the like): the driver
  sends paths, not pictures, and each worker writes its output where the driver says, as
  ``NAME.partial.EXT`` renamed when complete;
* the model's weights on every node (its cache, or ``--weights FILE`` on the shared filesystem), and
  the environment (``LIVE_ATTENTION_OFFLINE``, ``HF_HOME``) set where the cluster was started or in the
  job's ``runtime_env``: workers take their environment from the cluster, not from the driver.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from live_attention.config import Config
from live_attention.errors import SourceError, UserError
from live_attention.offline.renderer import Job, Renderer, failure_reason, report_lines, summary_line

logger = logging.getLogger(__name__)

CPUS_PER_WORKER = 4  # a CPU worker's share of a node: torch threads, drawing threads and the encoder
ATTEMPTS = 2  # an input whose render fails is tried once more, then reported
# A worker process that dies (a crash, the OOM killer) is restarted by Ray, this often at most; the
# input it was rendering is retried by Ray once (``max_task_retries=1``), which also holds back the jobs
# the pool hands to a worker while it restarts. An input that kills its worker twice is reported.
RESTARTS = 4
INSTALL_HINT = "pip install 'live-attention[ray]'"
POLL_S = 0.5  # the driver waits on Ray in slices this long: Ctrl-C and SIGTERM act within one


@dataclass(frozen=True)
class WorkerPlan:
    """How many workers, and what each asks Ray for."""

    count: int
    cpus: float
    gpus: float
    device: str  # the device each worker's engine uses (a GPU worker sees its one GPU as cuda:0)
    draw_threads: int | None  # None: the Renderer's default

    def describe(self) -> str:
        each = f"1 GPU ({self.device})" if self.gpus else f"{self.cpus:g} CPUs ({self.device})"
        return f"{self.count} worker{'s' if self.count != 1 else ''}, each {each}"


def plan_workers(nodes: list[dict[str, float]], device: str, jobs: int) -> WorkerPlan:
    """Size the pool from the alive nodes' resources (``{"CPU": n, "GPU": n}`` each).

    The engine runs on a GPU when ``device`` is ``cuda``/``cuda:N``, or ``auto`` and the cluster has
    GPUs: one worker per GPU. Otherwise one worker per :data:`CPUS_PER_WORKER` CPUs of a node. Never
    more workers than jobs.
    """
    dev = device.strip().lower()
    gpus = sum(int(n.get("GPU", 0)) for n in nodes)
    if dev.startswith("cuda") and gpus < 1:
        raise UserError(f"--device {device}: the Ray cluster has no GPUs (use --device auto or cpu)")
    if gpus >= 1 and (dev == "auto" or dev.startswith("cuda")):
        return WorkerPlan(count=max(1, min(jobs, gpus)), cpus=1, gpus=1, device="cuda", draw_threads=None)
    node_cpus = [int(n.get("CPU", 0)) for n in nodes if n.get("CPU", 0) >= 1]
    if not node_cpus:
        raise UserError("the Ray cluster has no CPUs to run workers on (is a worker node connected?)")
    cpus = min(CPUS_PER_WORKER, max(node_cpus))
    slots = sum(c // cpus for c in node_cpus)
    return WorkerPlan(count=max(1, min(jobs, slots)), cpus=cpus, gpus=0, device="cpu" if dev == "auto" else device,
                      draw_threads=max(1, min(4, cpus - 1)))


@dataclass(frozen=True)
class Outcome:
    """What a worker sends back for one job: frames written, or the one-line error."""

    job: Job
    worker: str | None  # the Ray actor id of the worker that ran it (None: called outside an actor, as tests do)
    frames: int = 0
    expected: int | None = None
    error: str | None = None
    detail: str | None = None  # the worker's traceback of an unexpected error: logged on the driver with -v
    notes: tuple[str, ...] = ()  # what the renderer told the user (the batch capped by memory)


class RayWorker:
    """One engine on one Ray worker process, reused for every job the pool sends it.

    A plain class: :func:`render_on_ray` wraps it with ``ray.remote`` and the resources of its plan. An
    engine that cannot load is not raised from ``__init__`` but kept for :meth:`ready`, so the driver
    can say it once, in one line.
    """

    def __init__(self, cfg: Config, hud: bool, batch_size: int | None, draw_threads: int | None) -> None:
        self.renderer: Renderer | None = None
        self.error: str | None = None
        self.notes: list[str] = []  # sent back with the next outcome, said once on the driver
        try:
            self.renderer = Renderer(cfg, hud=hud, batch_size=batch_size, workers=draw_threads, say=self.notes.append)
        except Exception as exc:
            if not isinstance(exc, UserError):
                logger.exception("the engine did not load")
            self.error = failure_reason(exc)

    def ready(self) -> tuple[str | None, str, str | None]:
        """(this worker's actor id, where it runs: node and device, why its engine did not load or None)."""
        import ray

        where = f"node {ray.util.get_node_ip_address()}"
        if self.renderer is not None:
            where += f", {self.renderer.engine.device}"
        return ray.get_runtime_context().get_actor_id(), where, self.error

    def render(self, job: Job) -> Outcome:
        import traceback

        import ray

        me = ray.get_runtime_context().get_actor_id()
        try:
            if self.renderer is None:
                raise UserError(self.error or "the engine did not load")
            _check_shared(job, ray.util.get_node_ip_address())
            frames, expected = self.renderer.render(job)
            return Outcome(job, me, frames, expected, notes=self._notes())
        except Exception as exc:  # every failure goes back to the driver, which retries once and reports it in
            # one line: nothing is logged here, where Ray would print each attempt's traceback to the driver
            detail = None if isinstance(exc, UserError) else traceback.format_exc()
            return Outcome(job, me, error=failure_reason(exc), detail=detail, notes=self._notes())

    def _notes(self) -> tuple[str, ...]:
        notes, self.notes[:] = tuple(self.notes), []
        return notes


def _check_shared(job: Job, node: str) -> None:
    """A path this node cannot see is a cluster without a shared filesystem: say so."""
    if not job.input.exists():
        raise SourceError(f"input not found on Ray node {node}: inputs must be on a filesystem every node shares")
    if not job.output.parent.is_dir():
        raise UserError(f"output folder {job.output.parent} not found on Ray node {node}: outputs must be on a "
                        "filesystem every node shares")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(f"--ray needs Ray, an optional extra: {INSTALL_HINT}") from None
    return ray


def _connect(ray: Any, address: str) -> bool:
    """Connect to Ray; True when this call did (and so must shut it down). ``auto``: ``RAY_ADDRESS``, else
    the cluster last started on this machine, else a new local one. A connection this process already
    has (a library caller's, the tests') is used as it is, for ``auto`` or its own address."""
    auto = address.strip().lower() == "auto"
    if not auto:
        _check_reachable(address)
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if not auto and address.split("://", 1)[-1].rstrip("/") != current:
            raise UserError(f"--ray {address}: this process is already connected to the Ray cluster at {current}")
        return False
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    on_main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if on_main else None
    try:
        ray.init(address=None if auto else address, include_dashboard=False,
                 logging_level=logging.INFO if verbose else logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        from live_attention.core.weights import first_sentence

        raise UserError(f"--ray {address}: cannot connect to a Ray cluster there ({first_sentence(exc)})") from None
    finally:
        # ray.init makes SIGTERM exit at once; the caller's own handler (render: SIGTERM acts as Ctrl-C,
        # so the workers are stopped and partial outputs reported) stays in charge.
        if callable(sigterm):
            signal.signal(signal.SIGTERM, sigterm)
    return True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Ray retries an unreachable address for minutes; a plain TCP connect says so in seconds."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--ray {address}: give auto, HOST:PORT (the head's GCS port, 6379 by default) "
                        "or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc}); start one with "
                        "`ray start --head` or use --ray auto") from None


def _absolute(job: Job) -> Job:
    """Workers do not share the driver's working folder: send absolute paths."""
    return replace(job, input=job.input.absolute(), output=job.output.absolute())


def _worker_config(cfg: Config, plan: WorkerPlan) -> Config:
    model = replace(cfg.model, device=plan.device)
    weights = Path(cfg.model.weights).expanduser()
    if weights.is_file():  # a checkpoint given by a relative path: absolute for the workers
        model = replace(model, weights=str(weights.absolute()))
    return replace(cfg, model=model)


def _say(line: str) -> None:
    print(f"live-attention: {line}", file=sys.stderr, flush=True)


def _report(job: Job, out: Outcome) -> None:
    for line in report_lines(job, out.frames, out.expected):
        _say(line)


def render_on_ray(jobs: list[Job], cfg: Config, address: str, hud: bool = True, batch_size: int | None = None,
                  failed_before: int = 0) -> int:
    """Render ``jobs`` on the Ray cluster at ``address`` (``auto``: see :func:`_connect`).

    Prints one line per finished input and a summary; returns the number of inputs that failed (each
    one tried twice), ``failed_before`` (inputs the caller already reported) included. Raises
    :class:`UserError` when Ray is missing, the cluster cannot be reached, or no worker can load the model.
    """
    ray = _import_ray()
    started = _connect(ray, address)
    try:
        return _render(ray, jobs, cfg, hud, batch_size, failed_before)
    finally:
        if started:
            ray.shutdown()


def _render(ray: Any, jobs: list[Job], cfg: Config, hud: bool, batch_size: int | None, failed_before: int) -> int:
    from ray.util import ActorPool

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    plan = plan_workers(nodes, cfg.model.device, len(jobs))
    # SPREAD: with fewer inputs than places, workers go to different nodes rather than share one.
    worker_cls = ray.remote(num_cpus=plan.cpus, num_gpus=plan.gpus, max_restarts=RESTARTS, max_task_retries=1,
                            scheduling_strategy="SPREAD")(RayWorker)
    wcfg = _worker_config(cfg, plan)
    original = {_absolute(j): j for j in jobs}
    n = len(jobs)
    _say(f"rendering {n} input{'s' if n != 1 else ''} on Ray: {plan.describe()}")
    actors = [worker_cls.remote(wcfg, hud, batch_size, plan.draw_threads) for _ in range(plan.count)]
    try:
        failed = _PoolRun(ray, ActorPool([]), actors, original).run()
    finally:
        for actor in actors:  # also on Ctrl-C: a worker stops mid-job, its output kept as NAME.partial.EXT
            ray.kill(actor)
    _say(summary_line(n + failed_before, failed + failed_before))
    return failed + failed_before


class _PoolRun:
    """Feeds the jobs (keys of ``original``: absolute paths; values: as the user gave them) to the workers
    as they come up, retries a failed input once, and counts the inputs that failed twice."""

    def __init__(self, ray: Any, pool: Any, actors: list[Any], original: dict[Job, Job]) -> None:
        self.ray, self.pool, self.original = ray, pool, original
        self.attempts = dict.fromkeys(original, 0)
        self.unfinished = set(original)
        # actor id -> its jobs, oldest first. The pool gives a worker one job at a time, but hands it the
        # next one (inside get_next_unordered) before the error of the one it died on reaches us.
        self.running: dict[str, deque[Job]] = {}
        self.ids: dict[int, str] = {}  # id(actor handle) -> actor id, once its engine has loaded
        self.starting = {actor.ready.remote(): actor for actor in actors}
        self.load_errors: list[str] = []  # why workers could not load the model: an error if none could
        self.warned = 0
        self.failed = 0
        self.said: set[str] = set()  # the workers' notes, each said once

    def start(self, actor: Any, job: Job) -> Any:
        self.running.setdefault(self.ids[id(actor)], deque()).append(job)
        self.attempts[job] += 1
        return actor.render.remote(job)

    def finish(self, job: Job, error: str | None) -> None:
        self.unfinished.discard(job)
        if error is not None:
            self.failed += 1
            _say(f"{self.original[job].input}: failed: {error}")

    def admit(self) -> None:
        """Workers join the pool as their engines load; block on them only when nothing runs."""
        from ray.exceptions import RayActorError

        busy = self.pool.has_next()
        came, _ = self.ray.wait(list(self.starting), num_returns=len(self.starting) if busy else 1,
                                timeout=0 if busy else POLL_S)
        for ref in came:
            actor = self.starting.pop(ref)
            try:
                aid, where, error = self.ray.get(ref)
            except RayActorError as exc:
                aid, where, error = "", "", f"the Ray worker died while loading the model ({type(exc).__name__})"
            if error is None:
                logger.info("Ray worker %s ready at %s", aid, where)
                self.ids[id(actor)] = aid
                self.pool.push(actor)  # takes a queued job at once
            else:
                self.load_errors.append(error + (f" (at {where})" if where else ""))
                self.ray.kill(actor)
        if self.ids:  # the others go on; a worker that cannot load is said once, not for every input
            for error in self.load_errors[self.warned:]:
                _say(f"warning: a Ray worker cannot load the model, the others go on: {error}")
            self.warned = len(self.load_errors)

    def take(self) -> None:
        """One finished job: reported, retried once, or counted as failed."""
        from ray.exceptions import RayActorError

        try:
            out: Outcome = self.pool.get_next_unordered(timeout=POLL_S)
        except TimeoutError:
            return
        except RayActorError as exc:  # its worker died on it, and again on Ray's retry
            jobs = self.running.get(exc.actor_id or "")
            if not jobs:  # Ray did not say which worker: the job cannot be told, so stop loudly
                raise
            self.finish(jobs.popleft(), f"the Ray worker rendering it died, also on the retry ({type(exc).__name__}: "
                        "a crash, or out of memory? see the worker's log)")
            return
        assert out.worker is not None  # the pool's jobs run in actors, which have ids
        self.running[out.worker].remove(out.job)
        for note in out.notes:
            if note not in self.said:
                self.said.add(note)
                _say(note)
        if out.detail:
            logger.debug("rendering %s failed on Ray worker %s:\n%s", out.job.input, out.worker, out.detail)
        if out.error is None:
            _report(self.original[out.job], out)
            self.finish(out.job, None)
        elif self.attempts[out.job] < ATTEMPTS:  # one line per failed input: the retry is said with -v only
            logger.info("%s: trying again after: %s", self.original[out.job].input, out.error)
            self.pool.submit(self.start, out.job)
        else:
            self.finish(out.job, out.error)

    def run(self) -> int:
        for job in self.original:
            self.pool.submit(self.start, job)  # no worker is ready yet: the pool queues them
        while self.unfinished:
            if self.starting:
                self.admit()
            if not self.pool.has_next():
                if self.starting:
                    continue
                if not self.ids:
                    raise UserError(f"the Ray workers cannot load the model: {self.load_errors[0]}")
                # Jobs are left but no worker runs them: every worker died and Ray gave up restarting them.
                for job in [j for j in self.original if j in self.unfinished]:
                    self.finish(job, "no Ray worker left to render it (they died: see their logs)")
                break
            self.take()
        return self.failed
