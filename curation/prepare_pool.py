"""Image preparation (decode, resize, encode, hashes) in worker processes.

Why: the in-memory DirectRunner (`curate run`'s default) is one Python process, so decoding, resizing and
hashing on its fetch threads share one GIL: measured on 2 cores, the fetch stage of 2,868 rows ran at one
core (19.5 s wall, 20 s CPU) however many threads prepared at once. Worker processes, one per core, give
the preparation every core, while the runner's process keeps the downloads (threads, I/O) and the Beam
stages. On a distributed runner each worker machine already runs one SDK process per core, so there the
pool is off by default (``download.prepare_processes``, resolved by `resolve`).

Each worker process has a pipe of its own, and a fetch thread that has downloaded an image takes an idle
worker, sends the bytes, waits (without the GIL) for the answer and hands the worker back. No executor
sits in between: ``concurrent.futures.ProcessPoolExecutor`` pickles every call into a queue that a
management thread feeds to the workers, and routes each result back through futures and callbacks, all
of it on the runner's process, whose one Python thread also does the Beam work. Measured on 2 cores with
3,000 photo-like pictures (`tests/benchmarks/bench_prepare.py --pool`): 0.70 ms of the runner's CPU per
picture with the executor, 0.47 ms with these pipes.

What crosses: the downloaded bytes in (at most ``download.max_bytes``), and back a plain message: a JSON
header (the drop reason, or the prepared image's sizes and hashes) followed by the stored image and its
near-duplicate signature. Nothing is unpickled from a process that has touched downloaded bytes. A worker
that dies on an image (a decoder crash, the kernel's OOM killer) costs that image, counted as
``prepare_crashed``, and is replaced; the run goes on.

One set of workers per Python process and settings, shared by every `FetchUnit` instance (a runner may run
several DoFn instances per process, one per thread), started by the first user (`warm` starts it early,
while the graph is built) and shut down, its processes joined so that their CPU time is accounted to the
parent, when the last user releases it or at `shutdown_all`. Memory: ``processes`` x (one decoded
download, bounded by ``download.max_pixels``) in the workers, and the downloads of the fetch threads
waiting for one (at most ``download.threads``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import threading

from curation.config import ResizeConfig

_LOCK = threading.Lock()
_WORKERS: dict = {}          # settings -> _Workers, in the runner's process
CRASHED = "prepare_crashed"
_FIELDS = ("ext", "width", "height", "original_width", "original_height", "original_bytes", "sha256",
           "phash", "pixel_std")          # `PreparedImage`'s fields besides the image and the signature


def resolve(prepare_processes: int, in_process_runner: bool) -> int:
    """-1 (auto): one per core when the whole job runs in this one process, else 0 (prepare on the fetch
    threads of each worker process)."""
    if prepare_processes >= 0:
        return prepare_processes
    return (os.cpu_count() or 1) if in_process_runner else 0


# ---------------------------------------------------------------------------------------- worker side
def encode_result(result) -> bytes:
    """`ImagePreparer.prepare`'s result as one message: 4-byte header length, JSON header, image, signature."""
    if isinstance(result, tuple):
        head, tail = {"drop": [str(result[0]), str(result[1])]}, b""
    else:
        head = {k: getattr(result, k) for k in _FIELDS}
        head["image_bytes"] = len(result.image)
        tail = result.image + result.dedup_signature
    header = json.dumps(head).encode()
    return len(header).to_bytes(4, "big") + header + tail


def _serve(conn, resize: ResizeConfig, max_pixels: int) -> None:
    """A worker process: prepare each image received until the pipe closes."""
    from curation.fetch import ImagePreparer
    preparer = ImagePreparer(resize, max_pixels)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        conn.send_bytes(encode_result(preparer.prepare(data)))


# ---------------------------------------------------------------------------------------- runner side
def decode_result(msg: bytes):
    """The inverse of `encode_result` -> `PreparedImage` or (reason, detail)."""
    from curation.fetch import PreparedImage
    n = int.from_bytes(msg[:4], "big")
    head = json.loads(msg[4:4 + n])
    if "drop" in head:
        reason, detail = head["drop"]
        return reason, detail
    body = memoryview(msg)[4 + n:]
    k = head["image_bytes"]
    return PreparedImage(image=bytes(body[:k]), dedup_signature=bytes(body[k:]),
                         **{f: head[f] for f in _FIELDS})


class _Worker:
    def __init__(self, ctx, resize: ResizeConfig, max_pixels: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, resize, max_pixels), daemon=True,
                                name="curate-prepare")
        self.proc.start()
        child.close()

    def stop(self) -> None:
        self.conn.close()            # the worker reads EOF and returns
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class _Workers:
    """``processes`` worker processes and the queue of the idle ones."""

    def __init__(self, key: tuple, resize: ResizeConfig, max_pixels: int, processes: int):
        self.key, self.resize, self.max_pixels = key, resize, max_pixels
        self.ctx = multiprocessing.get_context("spawn")
        self.users = 0
        self.closed = False
        self.all = [_Worker(self.ctx, resize, max_pixels) for _ in range(processes)]
        self.idle: queue.SimpleQueue = queue.SimpleQueue()
        for w in self.all:
            self.idle.put(w)

    def _replace(self, dead: _Worker) -> _Worker:
        dead.stop()
        fresh = _Worker(self.ctx, self.resize, self.max_pixels)
        with _LOCK:
            self.all[self.all.index(dead)] = fresh
        return fresh

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("the prepare pool was shut down while the fetch stage still used it")

    def prepare(self, data: bytes):
        worker = self.idle.get()
        try:
            self._check_open()
            if not worker.proc.is_alive():
                worker = self._replace(worker)
            try:
                worker.conn.send_bytes(data)
                msg = worker.conn.recv_bytes()
            except (EOFError, OSError):
                self._check_open()       # a pipe closed by `shutdown`, not a worker that died
                worker.proc.join(5)
                code = worker.proc.exitcode
                worker = self._replace(worker)
                return CRASHED, f"the prepare process exited (code {code}) on this image"
            return decode_result(msg)
        finally:
            self.idle.put(worker)

    def shutdown(self) -> None:
        with _LOCK:
            if self.closed:
                return
            self.closed = True
            workers = list(self.all)
        for w in workers:
            w.stop()


def _workers(resize: ResizeConfig, max_pixels: int, processes: int, *, user: bool) -> _Workers:
    key = (repr(resize), max_pixels, processes)
    with _LOCK:
        workers = _WORKERS.get(key)
        if workers is None:
            workers = _WORKERS[key] = _Workers(key, resize, max_pixels, processes)
        workers.users += user
    return workers


def warm(resize: ResizeConfig, max_pixels: int, processes: int) -> None:
    """Start the workers now. A spawned process imports the image stack (numpy, OpenCV, Pillow: about a
    second of CPU) before its first image; started while the driver builds and translates the graph, that
    happens on cores the driver leaves idle, not when the first downloads are already waiting."""
    _workers(resize, max_pixels, processes, user=False)


class PreparePool:
    """``prepare(data)`` from any thread: the result of `ImagePreparer.prepare` computed in a worker process."""

    def __init__(self, resize: ResizeConfig, max_pixels: int, processes: int):
        self.workers = _workers(resize, max_pixels, processes, user=True)
        self._released = False

    def prepare(self, data: bytes):
        """Blocks this thread until a worker is free and has answered (the GIL is released meanwhile)."""
        return self.workers.prepare(data)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers.all]

    def release(self) -> None:
        with _LOCK:
            if self._released:
                return
            self._released = True
            self.workers.users -= 1
            if self.workers.users > 0 or _WORKERS.get(self.workers.key) is not self.workers:
                return
            del _WORKERS[self.workers.key]
        self.workers.shutdown()


def shutdown_all() -> None:
    """Join every worker of this process: after a job, whether or not the runner tore its DoFns down."""
    with _LOCK:
        sets = list(_WORKERS.values())
        _WORKERS.clear()
    for workers in sets:
        workers.shutdown()
