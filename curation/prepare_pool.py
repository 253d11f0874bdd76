"""Image preparation (decode, resize, encode, hashes) in a pool of worker processes.

Why: the in-memory DirectRunner (`curate run`'s default) is one Python process, so decoding, resizing and
hashing on its fetch threads share one GIL: measured on 2 cores, the fetch stage of 2,868 rows ran at one
core (19.5 s wall, 20 s CPU) however many threads prepared at once. A pool of one process per core gives
the preparation every core, while the runner's process keeps the downloads (threads, I/O) and the Beam
stages. On a distributed runner each worker machine already runs one SDK process per core, so there the
pool is off by default (``download.prepare_processes``, resolved by `resolve`).

What crosses to a pool process: the downloaded bytes (at most ``download.max_bytes``); what comes back: the
`PreparedImage` (the stored image, ~30 kB, and its metadata) or a drop reason. Both are built by this
project's code in this project's processes; nothing a server sent is unpickled as an object.

One pool per Python process, shared by every `FetchUnit` instance (a runner may run several DoFn instances
per process, one per thread), created on first use and shut down (its processes joined, so their CPU time
is accounted to the parent) when the last user releases it. Memory: ``processes`` x (one decoded download,
bounded by ``download.max_pixels``) in the pool, and at most 2 x ``processes`` downloads queued for it.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import threading

from curation.config import ResizeConfig

_STATE: dict = {}            # in a pool process: its ImagePreparer
_LOCK = threading.Lock()
_POOLS: dict = {}            # in the runner's process: settings -> [pool, users, queue slots]


def resolve(prepare_processes: int, in_process_runner: bool) -> int:
    """-1 (auto): one per core when the whole job runs in this one process, else 0 (prepare on the fetch
    threads of each worker process)."""
    if prepare_processes >= 0:
        return prepare_processes
    return (os.cpu_count() or 1) if in_process_runner else 0


def _init(resize: ResizeConfig, max_pixels: int) -> None:
    from curation.fetch import ImagePreparer
    _STATE["preparer"] = ImagePreparer(resize, max_pixels)


def _prepare(data: bytes):
    return _STATE["preparer"].prepare(data)


def _ready() -> bool:
    return "preparer" in _STATE


class PreparePool:
    """``prepare(data)`` from any thread: the result of `ImagePreparer.prepare` computed in a pool process."""

    def __init__(self, resize: ResizeConfig, max_pixels: int, processes: int):
        self.key = (repr(resize), max_pixels, processes)
        with _LOCK:
            entry = _POOLS.get(self.key)
            if entry is None:
                pool = concurrent.futures.ProcessPoolExecutor(
                    processes, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init, initargs=(resize, max_pixels))
                entry = _POOLS[self.key] = [pool, 0, threading.BoundedSemaphore(2 * processes)]
            entry[1] += 1
        self.pool, self.slots = entry[0], entry[2]

    def submit(self, data: bytes) -> concurrent.futures.Future:
        """Queue one download; blocks while 2 x processes are already queued (bounds the downloads held
        for the pool, whatever the thread count), so the calling fetch thread can download the next URL
        meanwhile rather than wait for this one to be prepared."""
        self.slots.acquire()
        try:
            future = self.pool.submit(_prepare, data)
        except BaseException:
            self.slots.release()
            raise
        future.add_done_callback(lambda _f: self.slots.release())
        return future

    def prepare(self, data: bytes):
        return self.submit(data).result()

    def start(self) -> None:
        """Start the processes now, without waiting for them. A spawned process imports the image stack
        (numpy, OpenCV, Pillow: about a second of CPU) before its first image; started while the driver
        builds and translates the graph, that happens on cores the driver leaves idle, not when the first
        downloads are already waiting. The executor starts all its processes on the first submit."""
        self.pool.submit(_ready)

    def release(self) -> None:
        with _LOCK:
            entry = _POOLS.get(self.key)
            if entry is None or entry[0] is not self.pool:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _POOLS[self.key]
        self.pool.shutdown(wait=True, cancel_futures=True)


def shutdown_all() -> None:
    """Join every pool of this process: after a job, whether or not the runner tore its DoFns down."""
    with _LOCK:
        pools = [entry[0] for entry in _POOLS.values()]
        _POOLS.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)
