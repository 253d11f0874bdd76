"""Generated test sources in the exact real formats, and a fault-injecting local HTTP server.

No machine of this project reaches the internet, so tests, the demo and the benchmarks build their own
CC3M / CC12M / COCO / Karpathy / Visual Genome / VQAv2 inputs here, with near-duplicates, contamination,
malformed rows and faulty URLs planted on purpose and the ground truth written beside them.

Typical use (the server may start before the files exist: it reads its document root per request)::

    from curation.synthetic import FaultServer, build_sources
    with FaultServer(tmp / "web") as server:
        info = build_sources(tmp, base_url=server.base_url, seed=0, n_images=120)
        truth = info.load_ground_truth()
        ...  # run the pipeline against info.*; assert on server.requests / server.count(path)

See `sources` for the files and the ground-truth schema, `server` for the fault paths, `images` for
the renderer. `corpus` writes small corpora straight in the shard format (for the report, tokenizer and
training tests and the benchmarks). CLI: ``python -m curation.synthetic build DIR --base-url URL`` and
``python -m curation.synthetic serve DIR --port P``.
"""

from curation.synthetic.images import (
    blank_image,
    bomb_jpeg,
    bomb_png,
    encode,
    make_variant,
    random_scene,
    render_scene,
    tiny_image,
)
from curation.synthetic.server import FAULT_KINDS, PRIVATE_REDIRECT_TARGET, FaultServer
from curation.synthetic.sources import (
    SCALES,
    SourcesInfo,
    build_sources,
    make_sources,
)

__all__ = [
    "FAULT_KINDS",
    "PRIVATE_REDIRECT_TARGET",
    "SCALES",
    "FaultServer",
    "SourcesInfo",
    "blank_image",
    "bomb_jpeg",
    "bomb_png",
    "build_sources",
    "encode",
    "make_sources",
    "make_variant",
    "random_scene",
    "render_scene",
    "tiny_image",
]
