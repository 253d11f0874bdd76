"""`curation.prepare_pool`: images prepared in worker processes equal those prepared in this one; drop
reasons come back as they are; one pool per process, joined when its last user lets go; auto resolution."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import random
import signal
import time

from PIL import Image

from curation import prepare_pool, runners
from curation.config import ResizeConfig
from curation.fetch import ImagePreparer
from curation.synthetic.images import random_scene, render_scene


def _inputs() -> list[bytes]:
    rng = random.Random(3)
    out = []
    for i in range(6):
        img = render_scene(random_scene(rng, width=rng.randint(200, 900), height=rng.randint(200, 900)))
        buf = io.BytesIO()
        img.save(buf, "PNG" if i % 3 == 2 else "JPEG", quality=90)
        out.append(buf.getvalue())
    cut = out[0][: len(out[0]) // 2]            # a JPEG without its end marker
    return [*out, cut, b"", b"<html>not an image</html>"]


def test_pool_prepares_what_this_process_prepares_and_shares_one_pool():
    resize = ResizeConfig(image_size=128)
    here = ImagePreparer(resize, 10**8)
    a = prepare_pool.PreparePool(resize, 10**8, 2)
    b = prepare_pool.PreparePool(resize, 10**8, 2)
    try:
        assert a.workers is b.workers                  # one set of workers per process for the same settings
        inputs = _inputs()
        with concurrent.futures.ThreadPoolExecutor(4) as threads:   # called from fetch threads at once
            pooled = list(threads.map(a.prepare, inputs))
        local = [here.prepare(x) for x in inputs]
        assert pooled == local                         # PreparedImage is a dataclass: every field, image bytes too
        assert sum(isinstance(p, tuple) for p in pooled) == 3
        assert {p[0] for p in pooled if isinstance(p, tuple)} == {"truncated_image", "empty_body", "not_an_image"}
        pids = set(a.pids())
        assert len(pids) == 2 and os.getpid() not in pids
    finally:
        a.release()
        assert not a.workers.closed                    # b still holds it
        b.release()
    procs = [w.proc for w in a.workers.all]
    assert a.workers.closed and all(p.exitcode == 0 for p in procs)   # joined when the last user let go
    # a new user after that gets new workers, and shutdown_all joins them even without a release
    c = prepare_pool.PreparePool(resize, 10**8, 1)
    assert c.workers is not a.workers
    assert c.prepare(_inputs()[0]) == local[0]
    prepare_pool.shutdown_all()
    assert c.workers.closed and c.workers.all[0].proc.exitcode == 0


def test_results_cross_as_plain_messages_not_pickles():
    here = ImagePreparer(ResizeConfig(image_size=96), 10**8)
    for x in _inputs():
        result = here.prepare(x)
        msg = prepare_pool.encode_result(result)
        assert b"\x80\x04" not in msg[:8] and json.loads(msg[4:4 + int.from_bytes(msg[:4], "big")])
        assert prepare_pool.decode_result(msg) == result


def test_a_worker_that_dies_costs_its_image_only_and_is_replaced():
    resize = ResizeConfig(image_size=96)
    pool = prepare_pool.PreparePool(resize, 10**8, 1)
    try:
        want = ImagePreparer(resize, 10**8).prepare(_inputs()[1])
        assert pool.prepare(_inputs()[1]) == want
        # dead while idle: replaced before the next image, which is prepared as usual
        first = pool.pids()[0]
        os.kill(first, signal.SIGKILL)
        pool.workers.all[0].proc.join(10)
        assert pool.prepare(_inputs()[1]) == want and pool.pids()[0] != first
        # dead while preparing an image: that image is dropped under its own reason, the next is fine
        second = pool.pids()[0]
        os.kill(second, signal.SIGSTOP)               # it cannot answer before it is killed
        with concurrent.futures.ThreadPoolExecutor(1) as t:
            pending = t.submit(pool.prepare, _inputs()[2])
            time.sleep(0.5)
            os.kill(second, signal.SIGKILL)
            reason, detail = pending.result(timeout=30)
        assert reason == prepare_pool.CRASHED and "-9" in detail
        assert pool.prepare(_inputs()[1]) == want and pool.pids()[0] not in (first, second)
    finally:
        pool.release()


def test_auto_is_one_per_core_only_when_the_job_runs_in_this_process():
    assert runners.in_one_process([])
    assert runners.in_one_process(["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    assert not runners.in_one_process(["--runner=DirectRunner", "--direct_running_mode=multi_processing"])
    assert not runners.in_one_process(["--runner=PrismRunner"])
    assert not runners.in_one_process(["--runner=DataflowRunner"])
    assert prepare_pool.resolve(-1, True) == (os.cpu_count() or 1)
    assert prepare_pool.resolve(-1, False) == 0
    assert prepare_pool.resolve(3, False) == 3 and prepare_pool.resolve(0, True) == 0


def test_pool_results_decode_to_the_pictures_they_describe():
    resize = ResizeConfig(image_size=96, resize_mode="center_crop")
    pool = prepare_pool.PreparePool(resize, 10**8, 1)
    try:
        p = pool.prepare(_inputs()[1])
    finally:
        pool.release()
    img = Image.open(io.BytesIO(p.image))
    assert img.size == (p.width, p.height) == (96, 96)
