"""Configuration of `curate run`: one TOML file, typed keyword-only dataclasses, `--set key=value` overrides.

Each component owns its dataclass and checks its ranges in ``__post_init__``; ``shards.tomlconfig.build`` (the
builder `train` uses too) refuses unknown keys and wrong types. Every message names the key and what is
allowed. ``RunConfig.to_dict()`` is the resolved configuration saved in the manifest.

Overrides use dotted keys; list items are addressed by index: ``--set download.timeout=5``,
``--set sources.0.path=other.tsv``. The value is parsed as a TOML value (``5``, ``true``, ``["a", "b"]``,
``"text"``); anything that is not valid TOML is taken as a plain string.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from shards.tomlconfig import build, check_choice, check_range, fail, load

SOURCE_KINDS = ("cc3m", "cc12m", "coco", "vg")
EVAL_KINDS = ("coco-karpathy", "vqav2")
RESIZE_MODES = ("no", "keep_ratio", "center_crop", "border", "keep_ratio_largest")
ENCODE_FORMATS = ("jpg", "png", "webp")


@dataclass(kw_only=True)
class SourceConfig:
    """One training source. TSV kinds need ``path``; coco needs ``captions``; vg needs ``image_data``."""
    kind: str
    name: str = ""                         # how the funnel names it; default: the kind (kind#2, ... if repeated)
    path: str = ""                         # cc3m / cc12m TSV
    captions: str = ""                     # coco captions_*.json
    images: str = ""                       # coco: local image folder (read instead of downloading coco_url)
    image_data: str = ""                   # vg
    region_descriptions: str = ""          # vg: region phrases become captions
    question_answers: str = ""             # vg: optional QA
    max_region_captions: int = 10          # vg: at most this many region phrases per image (largest regions first)

    def __post_init__(self) -> None:
        check_choice("sources.kind", self.kind, SOURCE_KINDS)
        need = {"cc3m": "path", "cc12m": "path", "coco": "captions", "vg": "image_data"}[self.kind]
        if not getattr(self, need):
            fail(f"sources.{need}", f"required for kind {self.kind!r}")
        check_range("sources.max_region_captions", self.max_region_captions, 0)


@dataclass(kw_only=True)
class EvalSetConfig:
    """A held-out set: decontaminated against and written as shards under ``OUT/eval/<name>/``.

    coco-karpathy yields two sets, ``coco-karpathy-test`` and ``coco-karpathy-val`` (the Karpathy
    ``test`` and ``val`` splits, kept apart because papers report on test and tune on val); vqav2 yields
    ``vqav2`` (every image of the questions file).
    """
    kind: str
    path: str = ""                         # coco-karpathy: dataset_coco.json
    questions: str = ""                    # vqav2
    annotations: str = ""                  # vqav2
    images: str = ""                       # folder with the images (required: eval images are never downloaded)
    splits: list[str] = field(default_factory=lambda: ["test", "val"])   # coco-karpathy held-out splits

    def __post_init__(self) -> None:
        check_choice("eval_sets.kind", self.kind, EVAL_KINDS)
        required = ("path", "images") if self.kind == "coco-karpathy" else ("questions", "annotations", "images")
        for k in required:
            if not getattr(self, k):
                fail(f"eval_sets.{k}", f"required for kind {self.kind!r}")
        for s in self.splits:
            check_choice("eval_sets.splits", s, ("train", "val", "test", "restval"))


@dataclass(kw_only=True)
class DownloadConfig:
    timeout: float = 10.0                  # seconds for the whole response (connect + headers + body)
    retries: int = 2                       # extra attempts on timeout, 429 and 5xx
    backoff_base: float = 0.5              # seconds; attempt k waits base * 2**k * U(0.5, 1.5)
    backoff_max: float = 10.0
    max_retry_after: float = 30.0          # a 429 asking to wait longer than this is dropped (rate_limited)
    threads: int = 16                      # fetch threads per worker
    per_host_connections: int = 4          # concurrent requests per host, per worker
    max_redirects: int = 5
    max_bytes: int = 20_000_000            # response body cap
    max_pixels: int = 89_478_485           # images whose header declares more are refused before decoding
    user_agent_token: str = "vlfusion"
    disallowed_header_directives: list[str] = field(default_factory=lambda: ["noai", "noimageai"])
    allowed_networks: list[str] = field(default_factory=list)   # CIDRs of private/loopback ranges allowed
    unit_rows: int = 2000                  # records per fetch unit: the unit of work, of caching and of resume
    prepare_threads: int = 1               # images decoded/resized/hashed at once per worker process; 0: one per core
    # Processes that decode/resize/hash for each worker process (curation.prepare_pool); -1: one per core
    # when the job runs in one process (the default in-memory DirectRunner), else 0 (on the fetch threads).
    prepare_processes: int = -1

    def __post_init__(self) -> None:
        check_range("download.timeout", self.timeout, 0.01)
        check_range("download.retries", self.retries, 0, 20)
        check_range("download.backoff_base", self.backoff_base, 0)
        check_range("download.backoff_max", self.backoff_max, 0)
        check_range("download.max_retry_after", self.max_retry_after, 0)
        check_range("download.threads", self.threads, 1, 1024)
        check_range("download.per_host_connections", self.per_host_connections, 1)
        check_range("download.max_redirects", self.max_redirects, 0, 50)
        check_range("download.max_bytes", self.max_bytes, 1)
        check_range("download.max_pixels", self.max_pixels, 1)
        check_range("download.unit_rows", self.unit_rows, 1)
        check_range("download.prepare_threads", self.prepare_threads, 0, 1024)
        check_range("download.prepare_processes", self.prepare_processes, -1, 1024)
        if not self.user_agent_token or any(c.isspace() or c in ";()" for c in self.user_agent_token):
            fail("download.user_agent_token", f"must be a non-empty token without spaces, ';' or parentheses, "
                                               f"got {self.user_agent_token!r}")
        for cidr in self.allowed_networks:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as err:
                fail("download.allowed_networks", f"{cidr!r} is not a CIDR range ({err})")


@dataclass(kw_only=True)
class ResizeConfig:
    """img2dataset's Resizer settings (same names as img2dataset's options).

    ``engine``: "vlfusion" (`curation.resize`: img2dataset's geometry, JPEGs decoded at reduced scale when
    the target allows, thread-safe so images are prepared on the fetch threads) or "img2dataset" (its own
    Resizer, byte for byte; one image at a time per worker)."""
    image_size: int = 256
    resize_mode: str = "keep_ratio"
    resize_only_if_bigger: bool = True
    encode_format: str = "jpg"
    encode_quality: int = 90
    engine: str = "vlfusion"

    def __post_init__(self) -> None:
        check_choice("resize.engine", self.engine, ("vlfusion", "img2dataset"))
        check_range("resize.image_size", self.image_size, 8, 8192)
        check_choice("resize.resize_mode", self.resize_mode, RESIZE_MODES)
        check_choice("resize.encode_format", self.encode_format, ENCODE_FORMATS)
        hi = 9 if self.encode_format == "png" else 100
        check_range("resize.encode_quality", self.encode_quality, 0, hi)


@dataclass(kw_only=True)
class CaptionFilterConfig:
    min_words: int = 3
    max_words: int = 80
    min_letter_ratio: float = 0.6          # letters / non-space characters
    max_repeated_token_ratio: float = 0.5  # 1 - distinct words / words
    boilerplate_phrases: list[str] = field(default_factory=lambda: [
        # Text that never describes a picture. Repeated alt-text ("stock photo of ...") is handled by the
        # caption cluster cap instead, which keeps a few images per caption rather than none.
        "click here", "image not found", "no image available", "lorem ipsum", "placeholder image"])
    drop_urls: bool = True
    drop_emails: bool = True

    def __post_init__(self) -> None:
        check_range("caption_filter.min_words", self.min_words, 0)
        if self.max_words < self.min_words:
            fail("caption_filter.max_words", f"must be >= min_words ({self.min_words}), got {self.max_words}")
        check_range("caption_filter.min_letter_ratio", self.min_letter_ratio, 0, 1)
        check_range("caption_filter.max_repeated_token_ratio", self.max_repeated_token_ratio, 0, 1)


@dataclass(kw_only=True)
class ImageFilterConfig:
    min_side: int = 64                     # of the original image
    max_aspect_ratio: float = 3.0
    min_pixel_std: float = 3.0             # grey-level standard deviation; below: blank / near-uniform
    min_bytes: int = 500                   # of the downloaded file

    def __post_init__(self) -> None:
        check_range("image_filter.min_side", self.min_side, 0)
        check_range("image_filter.max_aspect_ratio", self.max_aspect_ratio, 1)
        check_range("image_filter.min_pixel_std", self.min_pixel_std, 0)
        check_range("image_filter.min_bytes", self.min_bytes, 0)


@dataclass(kw_only=True)
class DedupConfig:
    # Two images are the same picture when, for one pair of windows (see curation.dedup.signature), all three
    # hold: 64-bit pHash, 256-bit pHash and colour-thumbnail distance within these.
    phash_max_distance: int = 10           # bits of the 64-bit pHash (also what the index searches within)
    phash256_max_distance: int = 72        # bits of the 256-bit pHash
    colour_max_distance: float = 10.0      # mean absolute difference of the tone-normalised 8x8 colour thumbnails
    phash_bands: int = 8                   # LSH bands of the 64-bit pHash for decontamination against eval images
    max_bucket: int = 512                  # near-dup index: entries compared all against all in one bucket
    cluster_rounds: int = 24               # greedy-centre rounds; the run fails if a node is undecided after them
    max_captions_per_sample: int = 32      # a merged sample keeps at most this many captions (the rest counted)
    max_qa_per_sample: int = 64            # ... QA pairs
    max_urls_per_sample: int = 32          # ... other URLs, merged uids and provenance entries each
    caption_ngram: int = 5                 # character n-grams of the normalised caption
    caption_num_perm: int = 64
    caption_bands: int = 16                # bands x rows = num_perm
    caption_threshold: float = 0.8         # Jaccard estimate at which two captions are near-duplicates
    max_images_per_caption: int = 3        # a caption cluster may caption at most this many distinct images
    # Source kinds whose captions are web alt-text, capped by max_images_per_caption. Human-written captions
    # (COCO, Visual Genome) repeat legitimately across pictures ("a man riding a wave on top of a surfboard").
    caption_cap_sources: list[str] = field(default_factory=lambda: ["cc3m", "cc12m"])
    # Merged near-duplicate clusters written with thumbnails of their members to OUT/dedup_examples.jsonl for
    # the report (those whose kept uid hashes lowest: the same on every run); 0 writes no file.
    example_clusters: int = 16
    seed: int = 1

    def __post_init__(self) -> None:
        check_range("dedup.phash_max_distance", self.phash_max_distance, 0, 64)
        check_range("dedup.phash256_max_distance", self.phash256_max_distance, 0, 256)
        check_range("dedup.colour_max_distance", self.colour_max_distance, 0, 255)
        check_choice("dedup.phash_bands", self.phash_bands, (1, 2, 4, 8, 16))
        check_range("dedup.max_bucket", self.max_bucket, 2, 1 << 20)
        check_range("dedup.cluster_rounds", self.cluster_rounds, 1, 256)
        check_range("dedup.max_captions_per_sample", self.max_captions_per_sample, 1)
        check_range("dedup.max_qa_per_sample", self.max_qa_per_sample, 1)
        check_range("dedup.max_urls_per_sample", self.max_urls_per_sample, 1)
        check_range("dedup.caption_ngram", self.caption_ngram, 1, 32)
        check_range("dedup.caption_num_perm", self.caption_num_perm, 2, 1024)
        if self.caption_bands < 1 or self.caption_num_perm % self.caption_bands:
            fail("dedup.caption_bands", f"must divide caption_num_perm ({self.caption_num_perm}), "
                                         f"got {self.caption_bands}")
        check_range("dedup.caption_threshold", self.caption_threshold, 0, 1)
        check_range("dedup.max_images_per_caption", self.max_images_per_caption, 0)
        for kind in self.caption_cap_sources:
            if kind not in SOURCE_KINDS:
                fail("dedup.caption_cap_sources", f"{kind!r} is not one of {SOURCE_KINDS}")
        check_range("dedup.example_clusters", self.example_clusters, 0, 1000)

    def thresholds(self):
        from curation.dedup.signature import Thresholds
        return Thresholds(phash64=self.phash_max_distance, phash256=self.phash256_max_distance,
                          colour=self.colour_max_distance)

    def limits(self):
        from curation.dedup.merge import Limits
        return Limits(captions=self.max_captions_per_sample, qa=self.max_qa_per_sample,
                      urls=self.max_urls_per_sample, sources=self.max_urls_per_sample)


@dataclass(kw_only=True)
class DecontamConfig:
    phash_max_distance: int = 10

    def __post_init__(self) -> None:
        check_range("decontam.phash_max_distance", self.phash_max_distance, 0, 64)


@dataclass(kw_only=True)
class ShardConfig:
    samples_per_shard: int = 1000
    seed: int = 0                          # of the deterministic shuffle across shards

    def __post_init__(self) -> None:
        check_range("shard.samples_per_shard", self.samples_per_shard, 1)


@dataclass(kw_only=True)
class RunConfig:
    output: str
    sources: list[SourceConfig]
    eval_sets: list[EvalSetConfig] = field(default_factory=list)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    caption_filter: CaptionFilterConfig = field(default_factory=CaptionFilterConfig)
    image_filter: ImageFilterConfig = field(default_factory=ImageFilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    report: bool = True                    # write OUT/report/ (report.html + stats.json, as `curate stats`) at the end
    progress_seconds: float = 5.0          # live progress line every this many seconds (0: off)
    # Local paths are on a filesystem every worker mounts at the same place (NFS, Lustre): lets a remote
    # runner take them (`curation.runners`); without it such a run is refused at start.
    shared_filesystem: bool = False

    def __post_init__(self) -> None:
        if not self.output:
            fail("output", "required (a local path or fsspec URL)")
        if not self.sources:
            fail("sources", "at least one [[sources]] table is required")
        seen: dict[str, int] = {}
        for s in self.sources:
            if not s.name:
                seen[s.kind] = seen.get(s.kind, 0) + 1
                s.name = s.kind if seen[s.kind] == 1 else f"{s.kind}#{seen[s.kind]}"
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            fail("sources.name", f"source names must be unique, got {names}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def source(self, name: str) -> SourceConfig:
        return next(s for s in self.sources if s.name == name)


def from_dict(data: dict[str, Any]) -> RunConfig:
    return build(RunConfig, data)


def load_config(path: str | None, overrides: list[str] = (), *, base: dict[str, Any] | None = None) -> RunConfig:
    return load(RunConfig, path, overrides, base=base)
