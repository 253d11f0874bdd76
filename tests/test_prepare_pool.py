"""`curation.prepare_pool`: images prepared in worker processes equal those prepared in this one; drop
reasons come back as they are; one pool per process, joined when its last user lets go; auto resolution."""

from __future__ import annotations

import concurrent.futures
import io
import os
import random

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
        assert a.pool is b.pool                        # one pool per process for the same settings
        inputs = _inputs()
        with concurrent.futures.ThreadPoolExecutor(4) as threads:   # called from fetch threads at once
            pooled = list(threads.map(a.prepare, inputs))
        local = [here.prepare(x) for x in inputs]
        assert pooled == local                         # PreparedImage is a dataclass: every field, image bytes too
        assert sum(isinstance(p, tuple) for p in pooled) == 3
        assert {p[0] for p in pooled if isinstance(p, tuple)} == {"truncated_image", "empty_body", "not_an_image"}
        pids = {p.pid for p in a.pool._processes.values()}
        assert len(pids) == 2 and os.getpid() not in pids
    finally:
        a.release()
        assert not a.pool._shutdown_thread           # b still holds it
        b.release()
    assert a.pool._shutdown_thread and not a.pool._processes    # joined when the last user let go
    # a new user after that gets a new pool, and shutdown_all joins it even without a release
    c = prepare_pool.PreparePool(resize, 10**8, 1)
    assert c.pool is not a.pool
    assert c.prepare(_inputs()[0]) == local[0]
    prepare_pool.shutdown_all()
    assert c.pool._shutdown_thread and not c.pool._processes


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
