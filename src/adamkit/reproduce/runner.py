"""Independent training runs in parallel processes, with one progress bar and an ETA.

Every run is a call ``fn(**kwargs)`` of a module-level function (so it can be sent
to a worker process); results come back in submission order. ``jobs=1`` runs them
in this process (tests, ``--jobs 1``). Runs of a trial marked batchable (:mod:`.batched`) that
differ only in learning rate and seed go to its batched function together (where its mark says
batching pays), at most ``batch`` runs per call.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Sequence

BATCH = 10  # runs per batched call: a tuning grid's first five values × two tuning seeds, or the evaluation seeds
PER_RUN = ("lr", "seed")  # what the runs of one batched call may differ in


def _worker_init() -> None:
    import torch

    # One thread per process: the processes are the parallelism.
    torch.set_num_threads(1)


class Runner:
    """Maps module-level functions over keyword-argument sets, ``jobs`` processes at a time.

    ``progress(done, more)`` is called with increments: runs finished, and runs
    newly expected (an estimate; a tuning grid extended to bracket its optimum
    adds runs nobody announced, and the bar then grows).
    """

    def __init__(self, jobs: int = 1, progress: Callable[[int, int], Any] | None = None, batch: int = BATCH) -> None:
        self.jobs = max(1, int(jobs))
        self.batch = max(1, int(batch))
        self._progress = progress
        self._pool: ProcessPoolExecutor | None = None
        self.runs = 0

    def set_progress(self, progress: Callable[[int, int], Any] | None) -> None:
        self._progress = progress

    def announce(self, runs: int) -> None:
        """Tell the progress bar how many more runs to expect (an estimate; the bar grows if it is passed)."""
        if self._progress is not None:
            self._progress(0, runs)

    def map(self, fn: Callable[..., Any], kwargs_list: Sequence[dict[str, Any]]) -> list[Any]:
        if (getattr(fn, "batched", None) is not None and self.batch > 1 and len(kwargs_list) > 1
                and all(fn.batch_when(kwargs) for kwargs in kwargs_list)):
            return self._map_batched(fn.batched, kwargs_list)
        self.runs += len(kwargs_list)
        if self.jobs == 1 or len(kwargs_list) == 1:
            results = []
            for kwargs in kwargs_list:
                results.append(fn(**kwargs))
                self._tick()
            return results
        self._ensure_pool()
        futures = {self._pool.submit(fn, **kwargs): i for i, kwargs in enumerate(kwargs_list)}
        results: list[Any] = [None] * len(kwargs_list)
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            self._tick()
        return results

    def _map_batched(self, fn: Callable[..., list[Any]], kwargs_list: Sequence[dict[str, Any]]) -> list[Any]:
        """The runs in calls of :func:`batches`, results scattered back into submission order."""
        calls = batches(kwargs_list, self.jobs, self.batch)
        outputs = self.map(_call_batched, [{"fn": fn, "kwargs": kwargs_list[members[0]], "runs": [(kwargs_list[i]["lr"], kwargs_list[i]["seed"])
                                                                                                  for i in members]} for members in calls])
        total = len(kwargs_list)
        self.runs += total - len(calls)
        if self._progress is not None:
            self._progress(total - len(calls), 0)  # the progress bar counts runs, not calls
        results: list[Any] = [None] * total
        for members, output in zip(calls, outputs):
            for i, result in zip(members, output):
                results[i] = result
        return results

    def submit(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> "Pending":
        """Start one run without waiting (in a worker process when ``jobs`` > 1); ``.result()`` waits."""
        self.runs += 1
        if self.jobs == 1:
            return Pending(lambda: fn(**kwargs), self._tick)
        self._ensure_pool()
        future = self._pool.submit(fn, **kwargs)
        return Pending(future.result, self._tick)

    def _ensure_pool(self) -> None:
        if self._pool is None:
            context = multiprocessing.get_context("spawn" if sys.platform != "linux" else "forkserver")
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_worker_init)

    def _tick(self) -> None:
        if self._progress is not None:
            self._progress(1, 0)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def batches(kwargs_list: Sequence[dict[str, Any]], jobs: int, batch: int) -> list[list[int]]:
    """Indices of ``kwargs_list`` per batched call: runs grouped by everything but (lr, seed), each group
    cut into contiguous calls of near-equal size, at most ``batch`` runs and at least ``jobs`` calls in
    all where there are enough runs (so every process works)."""
    groups: dict[tuple, list[int]] = {}
    for i, kwargs in enumerate(kwargs_list):
        groups.setdefault(tuple(sorted((k, v) for k, v in kwargs.items() if k not in PER_RUN)), []).append(i)
    total = len(kwargs_list)
    size = math.ceil(total / (jobs * math.ceil(total / (jobs * batch))))
    calls = []
    for members in groups.values():
        parts = math.ceil(len(members) / size)
        bounds = [round(k * len(members) / parts) for k in range(parts + 1)]
        calls += [members[a:b] for a, b in zip(bounds, bounds[1:])]  # contiguous: a learning rate's seeds stay together
    return calls


def _call_batched(fn: Callable[..., list[Any]], kwargs: dict[str, Any], runs: list[tuple[float, int]]) -> list[Any]:
    rest = {k: v for k, v in kwargs.items() if k not in PER_RUN}
    return fn(runs=runs, **rest)


class Pending:
    """A run started by :meth:`Runner.submit`; ``result()`` waits for it (once)."""

    def __init__(self, get: Callable[[], Any], done: Callable[[], None]) -> None:
        self._get, self._done, self._value, self._has = get, done, None, False

    def result(self) -> Any:
        if not self._has:
            self._value, self._has = self._get(), True
            self._done()
        return self._value


class Progress:
    """A tqdm bar whose total can grow; ``callback`` is what :class:`Runner` calls."""

    def __init__(self, desc: str, disable: bool | None = None) -> None:
        from tqdm import tqdm

        interactive = sys.stderr.isatty()
        # not a terminal (a log file): still report, every 30 s, one line each
        self.bar = tqdm(total=0, desc=desc, unit="run", file=sys.stderr, dynamic_ncols=interactive, mininterval=0.5 if interactive else 30.0,
                        disable=disable if disable is not None else False, ascii=not interactive)
        self.started = time.perf_counter()

    def callback(self, done: int, more: int) -> None:
        if more:
            self.bar.total = (self.bar.total or 0) + more
            self.bar.refresh()
        if done:
            if self.bar.n + done > (self.bar.total or 0):
                self.bar.total = self.bar.n + done
            self.bar.update(done)

    def close(self) -> None:
        self.bar.close()
