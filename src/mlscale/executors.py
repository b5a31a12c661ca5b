"""Where the work of a data stage runs: in this process, in local worker processes, or on Ray.

Every data stage (curate, tokenize, ...) runs `fn(context, task)` for many independent
tasks through one of these executors. Two ways to run them:

- `map` / `run` (curate): a list of tasks; yields `(task, result)` pairs as they finish,
  in any order. The caller records each result (curate: in a completion marker), so what
  a stage produces never depends on the executor, the worker count or the finishing order.
- `imap` (tokenize): a stream of tasks, possibly endless; yields the results in input
  order with at most `window` tasks in flight, so memory stays bounded.

`fn` must be a module-level function (it is pickled for the workers); `context` is sent
with every task, so keep it small (a path, a config).
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from tqdm import tqdm

from mlscale.errors import ConfigError

T = TypeVar("T")
TaskFn = Callable[[Any, T], Any]


def available_cores() -> int:
    """CPU cores this process may use (respects affinity masks and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def _progress(total: int, desc: str) -> tqdm:
    # redraw at most every 2 s when stderr is a log file rather than a terminal
    return tqdm(total=total, desc=desc, unit="task", dynamic_ncols=True, leave=True,
                file=sys.stderr, mininterval=0.1 if sys.stderr.isatty() else 2.0)


class Executor(ABC):
    """Runs the tasks of one stage; use as a context manager so workers are released."""

    name: str = "executor"
    workers: int = 1

    @abstractmethod
    def map(self, fn: TaskFn, context: Any, tasks: Sequence[T]) -> Iterator[tuple[T, Any]]:
        """Yield `(task, fn(context, task))` for every task as it completes."""

    def imap(self, fn: TaskFn, context: Any, tasks: Iterable[T], window: int = 0) -> Iterator[Any]:
        """Yield `fn(context, task)` for every task in input order, with at most `window`
        tasks in flight (0: twice the workers). This base version runs them one by one here."""
        for task in tasks:
            yield fn(context, task)

    def run(self, fn: TaskFn, context: Any, tasks: Sequence[T], desc: str,
            done: int = 0) -> Iterator[tuple[T, Any]]:
        """`map` with a progress bar over the stage's work units (`done` already finished)."""
        bar = _progress(done + len(tasks), desc)
        bar.update(done)
        try:
            for item in self.map(fn, context, tasks):
                bar.update(1)
                yield item
        finally:
            bar.close()

    def close(self) -> None:
        """Release workers (called once, after the last stage)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class InProcessExecutor(Executor):
    """Runs tasks one after the other in this process (`--workers 1`): simplest to debug."""

    name = "local"

    def map(self, fn: TaskFn, context: Any, tasks: Sequence[T]) -> Iterator[tuple[T, Any]]:
        for task in tasks:
            yield task, fn(context, task)


def _process_gone(pid: int) -> bool:
    """True once process `pid` has exited (a zombie awaiting its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except FileNotFoundError:
        return True
    except OSError:  # pragma: no cover - no /proc (macOS): ask the kernel instead
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False


def _exit_with_coordinator(coordinator: int) -> None:
    """Worker initializer: leave when the coordinating process dies (even by SIGKILL).

    A pool worker blocks on its task queue and would otherwise outlive a killed
    coordinator, holding a core and possibly writing into the output directory of the
    next run. (Its parent is the fork server, which itself waits for its workers, so the
    coordinator is watched by process id.)
    """

    def watch() -> None:
        while not _process_gone(coordinator):
            time.sleep(0.25)
        os._exit(1)

    threading.Thread(target=watch, name="mlscale-coordinator-watch", daemon=True).start()


class ProcessExecutor(Executor):
    """A pool of local worker processes (`--workers N`), started once for all stages.

    By default workers are forked from a fork server that has imported the `preload`
    modules once, so N workers cost one import, not N; the coordinator itself is never
    forked (its threads, e.g. progress bars, could leave locks held in a child).
    `start_method="fork"` forks the coordinator instead (where the platform has fork,
    else spawn): no fork server and no re-import of the caller's `__main__` script, for a
    caller that has made forking itself safe; "spawn" starts fresh interpreters. Workers
    leave when the coordinator dies.
    """

    name = "local"

    def __init__(self, workers: int, preload: Sequence[str] = (), start_method: str = "forkserver"):
        if start_method not in ("forkserver", "fork", "spawn"):
            raise ValueError(f"start_method: {start_method!r} is not one of forkserver, fork, spawn")
        self.workers = workers
        self.preload = list(preload)
        self.start_method = start_method
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context(self.start_method if self.start_method in methods
                                                  else "spawn")
            if self.preload and context.get_start_method() == "forkserver":
                context.set_forkserver_preload(self.preload)
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context,
                                             initializer=_exit_with_coordinator,
                                             initargs=(os.getpid(),))
        return self._pool

    def map(self, fn: TaskFn, context: Any, tasks: Sequence[T]) -> Iterator[tuple[T, Any]]:
        if not tasks:
            return
        pool = self._get_pool()
        futures: dict[Future, tuple[int, T]] = {
            pool.submit(fn, context, t): (i, t) for i, t in enumerate(tasks)}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                # yield in submission order among those finished together: steadier logs
                for fut in sorted(finished, key=lambda f: futures[f][0]):
                    yield futures[fut][1], fut.result()
        finally:
            for fut in pending:
                fut.cancel()

    def imap(self, fn: TaskFn, context: Any, tasks: Iterable[T], window: int = 0) -> Iterator[Any]:
        pool = self._get_pool()
        window = window or 2 * self.workers
        in_flight: deque[Future] = deque()
        try:
            for task in tasks:
                in_flight.append(pool.submit(fn, context, task))
                if len(in_flight) >= window:
                    yield in_flight.popleft().result()
            while in_flight:
                yield in_flight.popleft().result()
        finally:
            for fut in in_flight:
                fut.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor(Executor):
    """Tasks as Ray remote functions, one CPU each, on a local or remote Ray cluster.

    Joins `address` (e.g. `auto` or `ray://head:10001`); with no address it reuses a Ray
    already initialised in this process, else starts a local one with `workers` CPUs.
    The output directory must be on storage that every Ray node sees.
    """

    name = "ray"

    def __init__(self, address: str | None, workers: int):
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "executor: 'ray' needs the ray package; install it with "
                "pip install 'mlscale[ray]' or use --executor local") from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if address:
                kwargs["address"] = address
            elif workers > 0:
                kwargs["num_cpus"] = workers
            ray.init(**kwargs)
            self._started = True
        self.workers = int(ray.cluster_resources().get("CPU", 1))
        self._remote: dict[Callable, Any] = {}

    def _remote_fn(self, fn: TaskFn) -> Any:
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(num_cpus=1, max_retries=0)(fn)
        return remote

    def _result(self, ref: Any) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as e:
            # surface the task's own error (e.g. a user error naming a file)
            cause = getattr(e, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise

    def map(self, fn: TaskFn, context: Any, tasks: Sequence[T]) -> Iterator[tuple[T, Any]]:
        if not tasks:
            return
        ray = self._ray
        remote = self._remote_fn(fn)
        context_ref = ray.put(context)
        refs = {remote.remote(context_ref, t): t for t in tasks}
        pending = list(refs)
        try:
            while pending:
                finished, pending = ray.wait(pending, num_returns=1)
                for ref in finished:
                    yield refs[ref], self._result(ref)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def imap(self, fn: TaskFn, context: Any, tasks: Iterable[T], window: int = 0) -> Iterator[Any]:
        remote = self._remote_fn(fn)
        context_ref = self._ray.put(context)
        window = window or 2 * self.workers
        in_flight: deque = deque()
        try:
            for task in tasks:
                in_flight.append(remote.remote(context_ref, task))
                if len(in_flight) >= window:
                    yield self._result(in_flight.popleft())
            while in_flight:
                yield self._result(in_flight.popleft())
        finally:
            for ref in in_flight:
                self._ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def make_executor(kind: str, workers: int, ray_address: str | None = None,
                  preload: Sequence[str] = ()) -> Executor:
    """The executor for `--executor kind --workers N` (N = 0: all cores; 1: this process).

    `preload`: modules the tasks need, imported once before local workers are forked.
    """
    if kind == "ray":
        return RayExecutor(ray_address, workers)
    if kind != "local":
        raise ConfigError(f"executor: {kind!r} is not one of local, ray")
    n = available_cores() if workers <= 0 else workers
    return InProcessExecutor() if n == 1 else ProcessExecutor(n, preload)
