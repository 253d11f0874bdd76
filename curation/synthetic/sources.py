"""Build the test sources: every input of `curate run` in its real format, plus the ground truth.

`build_sources(root, *, base_url, seed=0, n_images=120, max_side=640) -> SourcesInfo` writes (paths relative to root):

    Train_GCC-training.tsv                 CC3M: caption<TAB>url, no header, bytes (may hold invalid UTF-8)
    cc12m.tsv                              CC12M: url<TAB>caption, no header
    annotations/captions_train2017.json    COCO: {"info","licenses","images":[{id,file_name,coco_url,width,
                                           height,license,date_captured,flickr_url}],"annotations":[{id,
                                           image_id,caption}]}; coco_url = {base_url}/coco/train2017/<file_name>
    train2017/000000xxxxxx.jpg             COCO local images (same bytes as the served copy)
    dataset_coco.json                      Karpathy: {"dataset":"coco","images":[{filepath,filename,imgid,split,
                                           sentids,cocoid,sentences:[{tokens,raw,imgid,sentid}]}]},
                                           split in train / val / test / restval
    coco_images/<filepath>/<filename>      Karpathy images (filepath train2014 or val2014)
    image_data.json                        VG: [{image_id,url,width,height,coco_id,flickr_id}]
    region_descriptions.json               VG: [{"id":image_id,"regions":[{region_id,image_id,phrase,x,y,width,
                                           height}]}]
    question_answers.json                  VG: [{"id":image_id,"qas":[{qa_id,image_id,question,answer,a_objects,
                                           q_objects}]}]
    v2_OpenEnded_mscoco_val2014_questions.json   VQAv2: {"info","task_type","data_type","data_subtype","license",
                                           "questions":[{image_id,question,question_id}]}
    v2_mscoco_val2014_annotations.json     VQAv2: {"info","license","data_type","data_subtype","annotations":
                                           [{question_id,image_id,question_type,answer_type,
                                           multiple_choice_answer,answers:[{answer,answer_confidence,answer_id}]x10}]}
    val2014/COCO_val2014_000000xxxxxx.jpg  VQAv2 images
    web/                                   the server's document root (cc3m/, cc12m/, coco/, vg/, ...)
    ground_truth.json                      what was planted (schema below)

URLs in the source files are `{base_url}/<path under web/>`; faulty ones are `{base_url}/fault/<kind>/<path>`
(see `curation.synthetic.server`). Start a `FaultServer(root / "web")` on that base URL to serve them.

Record ids ("refs") used throughout the ground truth, as "<dataset>:<id>":
    cc3m:<line>, cc12m:<line>   1-based line number in the TSV (real CC3M/CC12M rows have no other id)
    coco:<image id>, vg:<image_id>, coco-karpathy:<cocoid>, vqav2:<image_id>

Every rendered picture carries a hidden "picture" number; records that show the same picture (any variant:
original, png, reencode, resize, crop, bright) are near-duplicates. Normal images have both sides >= 64 px
and aspect ratio <= 3.0 (filters should be configured to keep those); near-duplicate bases are >= 160 px.

ground_truth.json schema (all lists sorted; every ref below also appears in "items"):
    "seed": int, "base_url": str, "n_images": int, "version": 1
    "items": [{"ref", "dataset", "id": str, "url": str|None, "file": str|None (relative to root; for web
              records the file under web/ that is served), "picture": int, "variant": str, "sha256": str,
              "width": int, "height": int, "split": str|None (Karpathy split; "val" for vqav2),
              "expect": "keep" | "drop:<reason>" | "eval" | "ignored", vg items also "coco_id": int|None}]
        One per image-bearing record: every well-formed TSV row (fault and filtered rows included), every COCO
        image, VG image, Karpathy image and VQAv2 image. Malformed TSV rows are not items. For fault rows,
        file/sha256/width/height describe the file the fault is applied to, not what the fault serves.
        Training records (cc3m, cc12m, coco, vg) say "keep" or "drop:<reason>", reasons: "fault:<kind>",
        "blank_image", "too_small", "bad_aspect", "caption_has_url", "caption_has_email", "caption_too_short",
        "contaminated". Boilerplate rows say "keep" (how many survive depends on the cluster cap) and so do
        duplicate-URL rows (they merge). Eval records say "eval" (Karpathy test/val, every VQAv2 image) or
        "ignored" (Karpathy train/restval: not held out; their pictures are the COCO train2017 ones).
    "near_dup_groups": [[ref, ...], ...]   training records (cc3m, cc12m, coco, vg) whose expect is "keep"
        and that show the same picture, size >= 2: re-encodings, resizes, crops, brightenings, byte copies,
        repeated URLs. Contaminated records are never in a group.
    "near_dup_url_groups": [[url, ...], ...]   the same groups as distinct URLs, where >= 2 distinct URLs.
    "exact_dup_groups": [[ref, ...], ...]   training records whose image bytes are identical but whose URLs
        differ (or, for coco, local file vs a URL), size >= 2.
    "duplicate_urls": {url: [ref, ...]}     URLs on more than one well-formed TSV row (within or across files).
    "contaminated": [{"ref", "url", "how": "same_id"|"near_dup_image", "eval": [{"eval_set":
        "coco-karpathy"|"vqav2", "ref", "split"}]}]   training records that show a held-out picture
        (Karpathy test/val, every VQAv2 image). same_id: a coco image id, or a vg coco_id, equal to the eval
        image's COCO id; near_dup_image: only the pixels tell.
    "faults": {url: kind}                   one URL per fault kind (kinds: server.FAULT_KINDS)
    "fault_outcome": {kind: "fetched"|"dropped"}   what a correct downloader ends with (defaults: noai honoured)
    "malformed_rows": {"Train_GCC-training.tsv": [{"line": int, "reason": str, "url": str}], "cc12m.tsv": [...]}
        reasons: "missing_column", "empty_caption", "invalid_utf8", "unsupported_scheme", "empty_url"
    "bad_captions": [{"ref", "caption", "reason"}]   caption_has_url | caption_has_email | caption_too_short
    "bad_images": [{"ref", "url", "reason"}]          blank_image | too_small | bad_aspect
    "caption_dup_groups": [[{"ref", "caption"}, ...]]  captions equal after lower-casing and stripping
        punctuation, written with different case / punctuation (within one COCO image, or across the rows
        of a near-duplicate group)
    "boilerplate_captions": {caption: [ref, ...]}      alt-text boilerplate repeated on many distinct pictures
    "counts": {"<tsv file name>": {"lines": int, "malformed": int}, "coco_images": int, "vg_images": int,
               "karpathy_images": int, "vqav2_images": int}

Fault rows point at web/faults/<kind>.jpg (bomb: .png) through /fault/<kind>/; malformed rows with a URL
point at web/<src>/malformed-*.jpg, which does not exist, so any request for them is a bug (404).
Pictures that take part in a planted case are only in that case, so each can be measured alone; with the
hash in the tests (8x8 DCT of a 32x32 grey image, median threshold) near-duplicates stay within ~10 bits
and different pictures at >= ~14 bits.
"""


from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from curation.synthetic import images as im
from curation.synthetic.server import FAULT_KINDS
from shards import fsutil

SCALES: dict[str, int] = {"tiny": 56, "small": 120, "demo": 400}
# The demo world (`make_sources(scale="demo")`): every picture a `simple_scene`, and DEMO_LEARN_IMAGES more
# COCO train2017 pictures, each also in Visual Genome (linked by coco_id) with questions about it, so that a
# tiny model learns to caption and answer in the demo's few minutes. The planted curation cases stay.
DEMO_LEARN_IMAGES = 800
TSV_FILES = {"cc3m": "Train_GCC-training.tsv", "cc12m": "cc12m.tsv"}
BOILERPLATE = (
    "stock photo of an abstract background",
    "Image may contain: outdoor and text",
    "royalty free stock illustration image",
)
# What a correct downloader ends with, given a client timeout below the server's slow_seconds, the default
# noai policy and an allow-list that admits only 127.0.0.1.
FAULT_OUTCOME = {k: "dropped" for k in FAULT_KINDS} | {"503-once": "fetched", "429": "fetched", "redirect": "fetched"}
_NEAR_DUP_VARIANTS = ("reencode", "resize", "crop", "bright", "png")


@dataclass(frozen=True)
class SourcesInfo:
    root: Path
    base_url: str
    seed: int
    n_images: int
    cc3m_tsv: Path
    cc12m_tsv: Path
    coco_captions: Path
    coco_images: Path  # train2017/
    karpathy_json: Path
    karpathy_images: Path  # coco_images/
    vg_image_data: Path
    vg_region_descriptions: Path
    vg_question_answers: Path
    vqav2_questions: Path
    vqav2_annotations: Path
    vqav2_images: Path  # val2014/
    web_root: Path  # FaultServer document root
    ground_truth: Path
    files: list[Path] = field(default_factory=list)  # every file written, sorted

    def load_ground_truth(self) -> dict:
        return json.loads(self.ground_truth.read_text())

    def curate_config(self, output: str | Path) -> dict:
        """The `output` / `sources` / `eval_sets` / `download` sections of a `curate run` config (issue 3)."""
        return {
            "output": str(output),
            "sources": [
                {"kind": "cc3m", "path": str(self.cc3m_tsv)},
                {"kind": "cc12m", "path": str(self.cc12m_tsv)},
                {"kind": "coco", "captions": str(self.coco_captions), "images": str(self.coco_images)},
                {"kind": "vg", "image_data": str(self.vg_image_data),
                 "region_descriptions": str(self.vg_region_descriptions),
                 "question_answers": str(self.vg_question_answers)},
            ],
            "eval_sets": [
                {"kind": "coco-karpathy", "path": str(self.karpathy_json), "images": str(self.karpathy_images)},
                {"kind": "vqav2", "questions": str(self.vqav2_questions),
                 "annotations": str(self.vqav2_annotations), "images": str(self.vqav2_images)},
            ],
            "download": {"allowed_networks": ["127.0.0.1/32"]},
        }


def normalize_caption(text: str) -> str:
    """Lower-case, punctuation removed, whitespace collapsed: the equality used for caption_dup_groups."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def make_sources(root: Path, *, seed: int = 0, scale: str | int = "small", base_url: str) -> SourcesInfo:
    """`build_sources` with a named scale: "tiny" (56 pictures, sides <= 320 px), "small" (120) or an int."""
    if isinstance(scale, str):
        if scale not in SCALES:
            raise ValueError(f"make_sources: scale must be one of {sorted(SCALES)} or an int, got {scale!r}")
        if scale == "demo":
            return build_sources(root, base_url=base_url, seed=seed, n_images=SCALES[scale], max_side=160,
                                 style="simple", learn_images=DEMO_LEARN_IMAGES)
        return build_sources(root, base_url=base_url, seed=seed, n_images=SCALES[scale],
                             max_side=320 if scale == "tiny" else 640)
    return build_sources(root, base_url=base_url, seed=seed, n_images=int(scale))


def build_sources(root: Path, *, base_url: str, seed: int = 0, n_images: int = 120,
                  max_side: int = 640, style: str = "random", learn_images: int = 0) -> SourcesInfo:
    """Write every source file, the served images and ground_truth.json under `root` (see module doc).

    `n_images` is the number of distinct rendered pictures (>= `min_images()`); the same seed, base_url,
    n_images, max_side, style and learn_images give byte-identical files. style="simple" draws every
    picture with `images.simple_scene` (square, one or two plain shapes) and describes it with few
    templates; `learn_images` more pictures are added as COCO train2017 images with five captions, each
    linked from a Visual Genome image (coco_id) that asks every question of `_qas` about it, answered
    Visual-Genome-style ("Yes.", "Two."). Those extra pictures are not counted in n_images.
    """
    if style not in ("random", "simple"):
        raise ValueError(f"build_sources: style must be 'random' or 'simple', got {style!r}")
    if learn_images < 0:
        raise ValueError(f"build_sources: learn_images must be >= 0, got {learn_images}")
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"build_sources: base_url must start with http:// or https://, got {base_url!r}")
    if not 160 <= max_side <= 4096:
        raise ValueError(f"build_sources: max_side must be in [160, 4096], got {max_side}")
    plan = _Plan.for_images(n_images)
    builder = _Builder(Path(root), base_url.rstrip("/"), seed, n_images, max_side, plan)
    builder.style, builder.learn_images = style, learn_images
    return builder.build()


def min_images() -> int:
    """The smallest n_images that holds one of every planted case."""
    n = 1
    while True:
        try:
            _Plan.for_images(n)
            return n
        except ValueError:
            n += 1


# ---------------------------------------------------------------------------------------------------------
# How many pictures each planted phenomenon gets.


@dataclass
class _Plan:
    kar_test: int
    kar_val: int
    kar_restval: int
    kar_train: int
    vqa_test: int
    vqa_val: int
    vg_own: int
    vg_link_train: int
    cc_coco_variant: int
    web_groups: int
    exact_pairs: int
    dup_urls: int
    cc_contam_test: int
    bad_caption_each: int
    boilerplate_rows: int
    plain: int = 0
    minimum: int = 0

    @classmethod
    def for_images(cls, n: int) -> _Plan:
        f = n / 120

        def c(base: int, lo: int) -> int:
            return max(lo, round(base * f))

        p = cls(
            kar_test=0, kar_val=0, kar_restval=c(4, 2), kar_train=0, vqa_test=c(4, 1), vqa_val=c(4, 1),
            vg_own=c(6, 3), vg_link_train=c(2, 1), cc_coco_variant=c(2, 1), web_groups=c(8, 3),
            exact_pairs=c(3, 2), dup_urls=c(3, 2), cc_contam_test=c(2, 1), bad_caption_each=c(2, 1),
            boilerplate_rows=c(4, 3),
        )
        # Test pictures: one leaked into COCO by id, one linked from VG by coco_id, one copied by VG pixels,
        # cc_contam_test copied by CC pixels, the rest only held out. Val: leak, VG link, CC copy, rest.
        p.kar_test = max(c(6, 4), 3 + p.cc_contam_test)
        p.kar_val = max(c(6, 3), 3)
        p.kar_train = max(c(10, 3), p.vg_link_train + p.cc_coco_variant + 1)
        p.vqa_test = min(p.vqa_test, p.kar_test)
        p.vqa_val = min(p.vqa_val, p.kar_val)
        used = (p.kar_test + p.kar_val + p.kar_restval + p.kar_train + p.vg_own + p.web_groups + p.exact_pairs
                + p.dup_urls + 3 * p.bad_caption_each + len(BOILERPLATE) * p.boilerplate_rows + len(FAULT_KINDS))
        p.minimum = used
        if n < p.minimum:
            raise ValueError(f"build_sources: n_images must be >= {p.minimum} for the planted cases, got {n}")
        p.plain = n - used
        return p


# ---------------------------------------------------------------------------------------------------------
# Words: captions and question-answer pairs describe what was drawn.


def _sp(shape: im.Shape) -> str:
    return f"{shape.color} {shape.kind}"


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _simple_captions(scene: im.Scene) -> list[str]:
    """Descriptions of a `simple_scene`: six templates naming each shape by colour and kind."""
    things = [_a(_sp(s)) for s in scene.shapes]
    if len(things) == 1:
        t = things[0]
        return [t, f"{t} on a plain background", f"a picture of {t}", f"a drawing of {t}", f"a single {_sp(scene.shapes[0])}",
                f"a simple picture of {t}"]
    a, b = things
    return [f"{a} and {b}", f"{a} next to {b}", f"a picture of {a} and {b}", f"a drawing of {a} and {b}",
            f"two shapes {a} and {b}", f"a simple picture of {a} and {b}"]


def _captions(scene: im.Scene) -> list[str]:
    """Lower-case, unpunctuated descriptions of the scene; at least 6 distinct ones."""
    if scene.style == "simple":
        return _simple_captions(scene)
    s0 = scene.shapes[0]
    b0, b1 = scene.background
    n = len(scene.shapes)
    number = ["no", "one", "two", "three", "four", "five"][n]
    out = [
        f"{_a(_sp(s0))} on {_a(b0)} and {b1} background",
        f"a simple drawing of {_a(_sp(s0))} over {_a(b0)} gradient",
        f"{number} colorful shapes on {_a(b0)} to {b1} gradient",
        f"an abstract {scene.direction} gradient in {b0} and {b1} with {_a(s0.kind)}",
        f"a large {s0.kind} painted {s0.color} in front of {_a(b1)} backdrop",
        f"illustration of {_a(_sp(s0))} with {b0} and {b1} colors behind it",
    ]
    if n >= 2:
        out.append(f"{_a(_sp(s0))} next to {_a(_sp(scene.shapes[1]))}")
    if n >= 3:
        out.append(f"{_a(_sp(s0))} {_a(_sp(scene.shapes[1]))} and {_a(_sp(scene.shapes[2]))} on {_a(b0)} background")
    if scene.text:
        out.append(f"the word {scene.text} written in {scene.text_color} near {_a(_sp(s0))}")
    return out


def _sentence(caption: str) -> str:
    return caption[0].upper() + caption[1:] + "."


def _recase(caption: str, rng: random.Random) -> str:
    """The same caption with other case and punctuation (equal under normalize_caption)."""
    options = [
        caption.upper(),
        caption.title() + "!",
        caption.lower().rstrip(".") + " ...",
        (caption[0].swapcase() + caption[1:]).rstrip(".") + "!!",
        caption.replace(" and ", ", and ").capitalize() + ".",
    ]
    options = [o for o in options if o != caption and normalize_caption(o) == normalize_caption(caption)]
    return rng.choice(options)


def _simple_qas(scene: im.Scene, rng: random.Random) -> list[dict]:
    """Questions about a `simple_scene`, every answer plainly visible: colour of a shape, shape of a colour,
    how many shapes, and whether a shape kind is there (yes and no equally often)."""
    kinds = [s.kind for s in scene.shapes]
    out = []
    unique = [s for s in scene.shapes if kinds.count(s.kind) == 1]
    if unique:
        s = rng.choice(unique)
        out.append({"question": f"What color is the {s.kind}?", "answer": s.color, "answer_type": "other",
                    "question_type": "what color is the",
                    "alternatives": rng.sample([c for c in im.SIMPLE_COLORS if c != s.color], 2)})
    s = rng.choice(scene.shapes)
    out.append({"question": f"What shape is the {s.color} one?", "answer": s.kind, "answer_type": "other",
                "question_type": "what shape is the",
                "alternatives": [k for k in im.SIMPLE_SHAPES if k != s.kind]})
    n = len(scene.shapes)
    out.append({"question": "How many shapes are there?", "answer": str(n), "answer_type": "number",
                "question_type": "how many", "alternatives": [str(n + 1), str(max(0, n - 1))]})
    absent = [k for k in im.SIMPLE_SHAPES if k not in kinds]
    kind = rng.choice(absent) if absent and rng.random() < 0.5 else rng.choice(kinds)
    yes = "yes" if kind in kinds else "no"
    out.append({"question": f"Is there {_a(kind)} in the picture?", "answer": yes, "answer_type": "yes/no",
                "question_type": "is there a", "alternatives": ["no" if yes == "yes" else "yes"]})
    return out


_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")


def _vg_answer(qa: dict, style: str) -> str:
    """How a Visual Genome annotator writes the answer: capitalised, with a full stop ("Yes.", "Two.")."""
    answer = qa["answer"]
    if style == "simple" and qa["answer_type"] == "number" and answer.isdigit() and int(answer) < len(_NUMBER_WORDS):
        answer = _NUMBER_WORDS[int(answer)]
    return answer.capitalize() + "."


def _qas(scene: im.Scene, rng: random.Random) -> list[dict]:
    """[{question, answer, answer_type, question_type, alternatives}] about what is drawn."""
    if scene.style == "simple":
        return _simple_qas(scene, rng)
    kinds = [s.kind for s in scene.shapes]
    out = []
    unique = [s for s in scene.shapes if kinds.count(s.kind) == 1]
    if unique:
        s = unique[0]
        others = [c for c in im.COLORS if c != s.color]
        out.append({"question": f"What color is the {s.kind}?", "answer": s.color, "answer_type": "other",
                    "question_type": "what color is the", "alternatives": rng.sample(others, 2)})
    n = len(scene.shapes)
    out.append({"question": "How many shapes are there?", "answer": str(n), "answer_type": "number",
                "question_type": "how many", "alternatives": [str(n + 1), str(max(0, n - 1))]})
    kind = rng.choice(im.SHAPES)
    yes = "yes" if kind in kinds else "no"
    out.append({"question": f"Is there {_a(kind)} in the picture?", "answer": yes, "answer_type": "yes/no",
                "question_type": "is there a" if kind[0] not in "aeiou" else "is there an",
                "alternatives": ["no" if yes == "yes" else "yes"]})
    if scene.text:
        out.append({"question": "What word is written on the image?", "answer": scene.text, "answer_type": "other",
                    "question_type": "what", "alternatives": [rng.choice(im.WORDS)]})
    return out


# ---------------------------------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> None:
    # Atomic: a killed build leaves no half-written file under its final name.
    fsutil.atomic_write_bytes(str(path), data)


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class _Builder:
    def __init__(self, root: Path, base_url: str, seed: int, n_images: int, max_side: int, plan: _Plan) -> None:
        self.root, self.base_url, self.seed, self.n_images, self.max_side, self.plan = (
            root, base_url, seed, n_images, max_side, plan)
        self.rng = random.Random(f"vlfusion-synthetic:{seed}")
        self.pictures: list[tuple[im.Scene, Image.Image]] = []
        self.encoded: dict[tuple[int, str], tuple[bytes, str, Image.Image]] = {}
        self.written: dict[Path, bytes] = {}
        self.items: list[dict] = []
        self.names: set[str] = set()
        self.rows: dict[str, list[dict]] = {"cc3m": [], "cc12m": []}
        self.caption_dups: list[list[dict]] = []  # filled with refs after the TSVs get line numbers
        self.bad_captions: list[dict] = []
        self.bad_images: list[dict] = []
        self.boilerplate: dict[str, list] = {}
        self.style = "random"
        self.learn_images = 0

    # -- pictures and files ----------------------------------------------------------------------------
    def picture(self, *, min_side: int = 64) -> int:
        if self.style == "simple":
            side = self.rng.randint(max(min_side, 112), max(min_side, self.max_side))
            scene = im.simple_scene(self.rng, side=side)
        else:
            w, h = im.random_size(self.rng, min_side=min_side, max_side=self.max_side)
            scene = im.random_scene(self.rng, width=w, height=h)
        self.pictures.append((scene, im.render_scene(scene)))
        return len(self.pictures) - 1

    def variant(self, pid: int, kind: str) -> tuple[bytes, str, Image.Image]:
        key = (pid, kind)
        if key not in self.encoded:
            self.encoded[key] = im.make_variant(self.pictures[pid][1], kind)
        return self.encoded[key]

    def put(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        if path in self.written and self.written[path] != data:
            raise AssertionError(f"two different contents for {rel}")
        self.written[path] = data

    def name(self) -> str:
        while True:
            n = f"{self.rng.getrandbits(48):012x}"
            if n not in self.names:
                self.names.add(n)
                return n

    def web_image(self, folder: str, pid: int, kind: str, name: str | None = None) -> dict:
        """Serve a variant of picture `pid` under web/<folder>/; returns the item fields it determines."""
        data, ext, pix = self.variant(pid, kind)
        rel = f"{folder}/{name or self.name()}.{ext}"
        self.put(f"web/{rel}", data)
        return {"url": f"{self.base_url}/{rel}", "file": f"web/{rel}", "picture": pid, "variant": kind,
                "sha256": hashlib.sha256(data).hexdigest(), "width": pix.width, "height": pix.height}

    def web_raw(self, folder: str, data: bytes, pix: Image.Image, ext: str, *, pid: int, variant: str) -> dict:
        rel = f"{folder}/{self.name()}.{ext}"
        self.put(f"web/{rel}", data)
        return {"url": f"{self.base_url}/{rel}", "file": f"web/{rel}", "picture": pid, "variant": variant,
                "sha256": hashlib.sha256(data).hexdigest(), "width": pix.width, "height": pix.height}

    def row(self, source: str, caption: str | bytes, img: dict | None, *, url: str | None = None,
            expect: str = "keep", malformed: str | None = None, tag: str | None = None) -> dict:
        r = {"source": source, "caption": caption, "img": img, "url": url if url is not None else img["url"],
             "expect": expect, "malformed": malformed, "tag": tag}
        self.rows[source].append(r)
        return r

    def caption_for(self, source: str, pid: int) -> str:
        c = self.rng.choice(_captions(self.pictures[pid][0]))
        return c if source == "cc3m" else _sentence(c)

    # -- the build -------------------------------------------------------------------------------------
    def build(self) -> SourcesInfo:
        p, rng = self.plan, self.rng
        big = 160  # near-duplicate bases stay large enough that their resized copy keeps sides >= 64

        # COCO pictures and their Karpathy splits ------------------------------------------------------
        n_kar = p.kar_test + p.kar_val + p.kar_restval + p.kar_train
        cocoids = rng.sample(range(9, 581930), n_kar + self.learn_images)
        learn_ids = sorted(cocoids[n_kar:])   # the extra COCO + Visual Genome pictures (learn_images)
        cocoids = cocoids[:n_kar]
        kar = []  # (cocoid, pid, split)
        for split, k in (("test", p.kar_test), ("val", p.kar_val), ("restval", p.kar_restval), ("train", p.kar_train)):
            for _ in range(k):
                kar.append((cocoids[len(kar)], self.picture(min_side=big), split))
        by_split = {s: [k for k in kar if k[2] == s] for s in ("test", "val", "restval", "train")}
        test, val, restval, train = by_split["test"], by_split["val"], by_split["restval"], by_split["train"]
        # Distinct roles so that each contamination path is seen alone.
        t_leak, t_vglink, t_vgpix, t_cc = test[0], test[1], test[2], test[3:3 + p.cc_contam_test]
        v_leak, v_vglink, v_cc = val[0], val[1], val[2]
        r_vqa = restval[0]  # in COCO train2017 and in VQAv2 val2014: contaminated against vqav2 only
        tr_vg = train[:p.vg_link_train]
        tr_cc = train[p.vg_link_train:p.vg_link_train + p.cc_coco_variant]
        tr_exact = train[p.vg_link_train + p.cc_coco_variant]
        vqa = test[:p.vqa_test] + val[:p.vqa_val] + [r_vqa]
        learn = [(cocoid, self.picture(min_side=big), "learn") for cocoid in learn_ids]
        coco_train2017 = sorted(train + restval + [t_leak, v_leak] + learn)

        captions5 = {}
        for cocoid, pid, _ in kar + learn:
            caps = _captions(self.pictures[pid][0])
            rng.shuffle(caps)
            captions5[cocoid] = [_sentence(c) for c in caps[:5]]
        self.write_karpathy(kar, captions5)
        self.write_coco(coco_train2017, captions5)
        self.write_vqav2(vqa)

        # Visual Genome ---------------------------------------------------------------------------------
        vg_entries = []  # (pid, variant, coco_id)
        vg_own = [self.picture(min_side=big) for _ in range(p.vg_own)]
        vg_entries += [(pid, "original", None) for pid in vg_own]
        vg_entries += [(pid, "resize", cocoid) for cocoid, pid, _ in tr_vg + [t_vglink, v_vglink]]
        vg_entries.append((t_vgpix[1], "crop", None))
        vg_entries += [(pid, "original", cocoid) for cocoid, pid, _ in learn]
        rng.shuffle(vg_entries)
        self.write_vg(vg_entries)

        # Web rows (CC3M, CC12M) ------------------------------------------------------------------------
        def other(src: str) -> str:
            return "cc12m" if src == "cc3m" else "cc3m"

        for i in range(p.plain):
            pid = self.picture()
            src = "cc3m" if i % 2 == 0 else "cc12m"
            kind = "png" if rng.random() < 0.15 else "original"
            self.row(src, self.caption_for(src, pid), self.web_image(src, pid, kind))

        for g in range(p.web_groups):
            pid = self.picture(min_side=big)
            src = "cc3m" if g % 2 == 0 else "cc12m"
            first = self.row(src, self.caption_for(src, pid), self.web_image(src, pid, "original"))
            n_var = 1 + g % 3
            for j in range(n_var):
                kind = _NEAR_DUP_VARIANTS[(g + j) % len(_NEAR_DUP_VARIANTS)]
                vsrc = other(src) if j % 2 == 0 else src
                if j == 0 and g % 2 == 0:
                    # the same caption with other case / punctuation on the copy
                    cap = _recase(first["caption"], rng)
                    r = self.row(vsrc, cap, self.web_image(vsrc, pid, kind))
                    self.caption_dups.append([first, r])
                else:
                    self.row(vsrc, self.caption_for(vsrc, pid), self.web_image(vsrc, pid, kind))

        for cocoid, pid, _ in tr_cc:  # a COCO picture re-published elsewhere, a little changed
            kind = _NEAR_DUP_VARIANTS[cocoid % 4]
            self.row("cc12m", self.caption_for("cc12m", pid), self.web_image("cc12m", pid, kind))
        # the very same bytes as a COCO file, at a web URL
        self.row("cc3m", self.caption_for("cc3m", tr_exact[1]), self.web_image("cc3m", tr_exact[1], "original"))
        self.row("cc12m", self.caption_for("cc12m", vg_own[0]), self.web_image("cc12m", vg_own[0], "bright"))

        for k in range(p.exact_pairs):  # identical bytes at two URLs
            pid = self.picture(min_side=big)
            self.row("cc3m", self.caption_for("cc3m", pid), self.web_image("cc3m", pid, "original"))
            src = "cc12m" if k % 2 == 0 else "cc3m"
            self.row(src, self.caption_for(src, pid), self.web_image(src, pid, "original"))

        for k in range(p.dup_urls):  # one URL on several rows
            pid = self.picture(min_side=big)
            img = self.web_image("cc3m", pid, "original")
            self.row("cc3m", self.caption_for("cc3m", pid), img)
            src = "cc12m" if k % 2 == 0 else "cc3m"
            self.row(src, self.caption_for(src, pid), img)

        for cocoid, pid, _ in t_cc + [v_cc]:  # held-out pictures copied onto the web
            src = "cc3m" if cocoid % 2 else "cc12m"
            self.row(src, self.caption_for(src, pid), self.web_image(src, pid, "resize" if cocoid % 3 else "bright"))
        cocoid, pid, _ = vqa[0]
        self.row("cc12m", self.caption_for("cc12m", pid), self.web_image("cc12m", pid, "reencode"))

        bad_caps = {
            "caption_has_url": ["beautiful shapes see more at http://www.example.com/gallery/{n}",
                                "download this picture from https://pics.example.org/i/{n} today"],
            "caption_has_email": ["for prints of this design write to artist{n}@example.com",
                                  "contact studio{n}@mail.example.net for the original file"],
            "caption_too_short": ["img", "untitled"],
        }
        for reason, texts in bad_caps.items():
            for k in range(p.bad_caption_each):
                pid = self.picture()
                src = "cc3m" if k % 2 == 0 else "cc12m"
                cap = texts[k % len(texts)].format(n=k + 1)
                r = self.row(src, cap, self.web_image(src, pid, "original"), expect=f"drop:{reason}")
                self.bad_captions.append({"row": r, "caption": cap, "reason": reason})

        for phrase in BOILERPLATE:
            self.boilerplate[phrase] = []
            for k in range(p.boilerplate_rows):
                pid = self.picture()
                src = "cc12m" if k % 2 == 0 else "cc3m"
                cap = phrase if k != 1 else _recase(phrase, rng)
                self.boilerplate[phrase].append(self.row(src, cap, self.web_image(src, pid, "original")))

        blank = im.blank_image(320, 240, seed=self.seed)
        tiny = im.tiny_image(seed=self.seed)
        wide_scene = im.random_scene(rng, width=min(640, self.max_side), height=min(640, self.max_side) // 8)
        wide = im.render_scene(wide_scene)
        bad = (("blank_image", blank, "jpg"), ("too_small", tiny, "png"), ("bad_aspect", wide, "jpg"))
        for k, (reason, pix, fmt) in enumerate(bad):
            data = im.encode(pix, "png" if fmt == "png" else "jpeg")
            # negative picture numbers: drawn outside the n_images budget, each its own picture
            img = self.web_raw("cc3m", data, pix, fmt, pid=-1 - k, variant=reason)
            src = "cc3m" if reason != "too_small" else "cc12m"
            cap = {"blank_image": "an empty grey placeholder picture from a web page",
                   "too_small": "a small thumbnail icon of a colorful shape",
                   "bad_aspect": _captions(wide_scene)[0]}[reason]
            r = self.row(src, cap, img, expect=f"drop:{reason}")
            self.bad_images.append({"row": r, "reason": reason})

        for k, kind in enumerate(FAULT_KINDS):
            pid = self.picture(min_side=big)
            src = "cc3m" if k % 2 == 0 else "cc12m"
            ext_kind = "png" if kind == "bomb" else "original"
            img = self.web_image("faults", pid, ext_kind, name=kind)
            img["url"] = f"{self.base_url}/fault/{kind}/{img['file'][len('web/'):]}"
            expect = "keep" if FAULT_OUTCOME[kind] == "fetched" else f"drop:fault:{kind}"
            self.row(src, self.caption_for(src, pid), img, expect=expect, tag=f"fault:{kind}")

        self.malformed_rows()
        if len(self.pictures) != self.n_images + self.learn_images:
            raise AssertionError(f"rendered {len(self.pictures)} pictures, planned {self.n_images}")
        self.write_tsvs()
        return self.finish(kar, vqa)

    # -- malformed rows --------------------------------------------------------------------------------
    def malformed_rows(self) -> None:
        b = self.base_url
        for src in ("cc3m", "cc12m"):
            # URLs that do not exist under web/: were one ever requested, the server would log it and 404.
            bogus = [f"{b}/{src}/malformed-{self.name()}.jpg" for _ in range(3)]
            self.row(src, "a red circle on a blue background", None, url="", malformed="missing_column")
            self.row(src, "", None, url=bogus[0], malformed="empty_caption")
            self.row(src, "   ", None, url=bogus[1], malformed="empty_caption")
            self.row(src, "a caf\xe9 sign over a green square".encode("latin-1"), None, url=bogus[2],
                     malformed="invalid_utf8")
            self.row(src, "a yellow triangle on a purple background", None, url="", malformed="empty_url")
        self.row("cc3m", "a blue square on a white background", None, url="ftp://127.0.0.1/pub/square.jpg",
                 malformed="unsupported_scheme")
        self.row("cc3m", "a one pixel image embedded in the page", None,
                 url="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQ"
                     "ABpfZFQAAAAABJRU5ErkJggg==",
                 malformed="unsupported_scheme")
        self.row("cc12m", "A local file that must never be read.", None, url="file:///etc/passwd",
                 malformed="unsupported_scheme")
        self.row("cc12m", "A picture from an old ftp mirror.", None, url="ftp://127.0.0.1/mirror/img.jpg",
                 malformed="unsupported_scheme")

    def write_tsvs(self) -> None:
        for src, fname in TSV_FILES.items():
            rows = self.rows[src]
            self.rng.shuffle(rows)
            lines = []
            for i, r in enumerate(rows, start=1):
                r["line"] = i
                r["ref"] = f"{src}:{i}"
                cap = r["caption"] if isinstance(r["caption"], bytes) else r["caption"].encode()
                url = r["url"].encode()
                if r["malformed"] == "missing_column":
                    lines.append(cap)
                elif src == "cc3m":
                    lines.append(cap + b"\t" + url)
                else:
                    lines.append(url + b"\t" + cap)
            self.put(fname, b"\n".join(lines) + b"\n")

    # -- eval and curated-dataset files ----------------------------------------------------------------
    def coco_bytes(self, pid: int) -> tuple[bytes, Image.Image]:
        data, _, pix = self.variant(pid, "original")
        return data, pix

    def write_karpathy(self, kar: list, captions5: dict) -> None:
        images, sentid = [], 0
        order = sorted(kar, key=lambda k: k[0])
        for imgid, (cocoid, pid, split) in enumerate(order):
            folder = "train2014" if split == "train" else "val2014"
            fname = f"COCO_{folder}_{cocoid:012d}.jpg"
            data, pix = self.coco_bytes(pid)
            self.put(f"coco_images/{folder}/{fname}", data)
            sents = []
            for raw in captions5[cocoid]:
                sents.append({"tokens": re.findall(r"[a-z0-9]+", raw.lower()), "raw": raw, "imgid": imgid,
                              "sentid": sentid})
                sentid += 1
            images.append({"filepath": folder, "sentids": [s["sentid"] for s in sents], "filename": fname,
                           "imgid": imgid, "split": split, "sentences": sents, "cocoid": cocoid})
            self.items.append({"ref": f"coco-karpathy:{cocoid}", "dataset": "coco-karpathy", "id": str(cocoid),
                               "url": None, "file": f"coco_images/{folder}/{fname}", "picture": pid,
                               "variant": "original", "sha256": hashlib.sha256(data).hexdigest(),
                               "width": pix.width, "height": pix.height, "split": split,
                               "expect": "eval" if split in ("test", "val") else "ignored"})
        self.put("dataset_coco.json", _json_bytes({"images": images, "dataset": "coco"}))

    def write_coco(self, coco: list, captions5: dict) -> None:
        images, anns = [], []
        ann_id = 1000
        for cocoid, pid, _ in coco:
            fname = f"{cocoid:012d}.jpg"
            data, pix = self.coco_bytes(pid)
            self.put(f"train2017/{fname}", data)
            self.put(f"web/coco/train2017/{fname}", data)
            url = f"{self.base_url}/coco/train2017/{fname}"
            images.append({"license": 1 + cocoid % 8, "file_name": fname, "coco_url": url, "height": pix.height,
                           "width": pix.width, "date_captured": f"2013-11-{1 + cocoid % 28:02d} 12:00:00",
                           "flickr_url": url, "id": cocoid})
            caps = list(captions5[cocoid])
            if cocoid % 3 == 0:  # a sixth caption that only differs from the first by case / punctuation
                dup = _recase(caps[0], self.rng)
                caps.append(dup)
                self.caption_dups.append([{"ref": f"coco:{cocoid}", "caption": caps[0]},
                                          {"ref": f"coco:{cocoid}", "caption": dup}])
            for cap in caps:
                ann_id += self.rng.randint(1, 40)
                anns.append({"image_id": cocoid, "id": ann_id, "caption": cap})
            self.items.append({"ref": f"coco:{cocoid}", "dataset": "coco", "id": str(cocoid), "url": url,
                               "file": f"train2017/{fname}", "picture": pid, "variant": "original",
                               "sha256": hashlib.sha256(data).hexdigest(), "width": pix.width,
                               "height": pix.height, "split": None, "expect": "keep"})
        self.rng.shuffle(anns)  # the real file is not grouped by image either
        doc = {
            "info": {"description": "vlfusion synthetic COCO 2017 captions", "url": self.base_url, "version": "1.0",
                     "year": 2017, "contributor": "vlfusion", "date_created": "2017/09/01"},
            "licenses": [{"url": f"{self.base_url}/licenses/{i}", "id": i, "name": f"License {i}"}
                         for i in range(1, 9)],
            "images": images,
            "annotations": anns,
        }
        self.put("annotations/captions_train2017.json", _json_bytes(doc))

    def write_vqav2(self, vqa: list) -> None:
        questions, anns = [], []
        for cocoid, pid, _ in sorted(vqa):
            fname = f"COCO_val2014_{cocoid:012d}.jpg"
            data, pix = self.coco_bytes(pid)
            self.put(f"val2014/{fname}", data)
            self.items.append({"ref": f"vqav2:{cocoid}", "dataset": "vqav2", "id": str(cocoid), "url": None,
                               "file": f"val2014/{fname}", "picture": pid, "variant": "original",
                               "sha256": hashlib.sha256(data).hexdigest(), "width": pix.width,
                               "height": pix.height, "split": "val", "expect": "eval"})
            for k, qa in enumerate(_qas(self.pictures[pid][0], self.rng)):
                qid = cocoid * 1000 + k
                questions.append({"image_id": cocoid, "question": qa["question"], "question_id": qid})
                n_right = self.rng.randint(7, 10)
                given = [qa["answer"]] * n_right + [self.rng.choice(qa["alternatives"]) for _ in range(10 - n_right)]
                self.rng.shuffle(given)
                answers = [{"answer": a, "answer_confidence": "yes" if a == qa["answer"] else
                            self.rng.choice(["maybe", "no"]), "answer_id": i + 1} for i, a in enumerate(given)]
                anns.append({"question_type": qa["question_type"], "multiple_choice_answer": qa["answer"],
                             "answers": answers, "image_id": cocoid, "answer_type": qa["answer_type"],
                             "question_id": qid})
        info = {"description": "vlfusion synthetic VQA v2", "url": self.base_url, "version": "2.0", "year": 2017,
                "contributor": "vlfusion", "date_created": "2017-04-26"}
        lic = {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "Creative Commons Attribution 4.0"}
        self.put("v2_OpenEnded_mscoco_val2014_questions.json", _json_bytes(
            {"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": lic,
             "data_subtype": "val2014", "questions": questions}))
        self.put("v2_mscoco_val2014_annotations.json", _json_bytes(
            {"info": info, "license": lic, "data_subtype": "val2014", "annotations": anns, "data_type": "mscoco"}))

    def write_vg(self, entries: list) -> None:
        image_data, regions_doc, qa_doc = [], [], []
        region_id, qa_id = 1, 1
        for image_id, (pid, kind, coco_id) in enumerate(entries, start=1):
            img = self.web_image("vg/VG_100K", pid, kind, name=str(image_id))
            w, h = img["width"], img["height"]
            flickr = self.rng.randint(10**6, 10**8) if self.rng.random() < 0.5 else None
            image_data.append({"width": w, "url": img["url"], "height": h, "image_id": image_id,
                               "coco_id": coco_id, "flickr_id": flickr})
            scene = self.pictures[pid][0]
            regions = []
            for s in scene.shapes:
                x0, y0 = max(0, round(s.box[0] * w)), max(0, round(s.box[1] * h))
                x1, y1 = min(w, round(s.box[2] * w)), min(h, round(s.box[3] * h))
                phrase = self.rng.choice([f"{s.color} {s.kind}", _a(f"{s.color} {s.kind}"), f"{s.kind} is {s.color}"])
                regions.append({"region_id": region_id, "width": x1 - x0, "height": y1 - y0, "image_id": image_id,
                                "phrase": phrase, "y": y0, "x": x0})
                region_id += 1
            regions_doc.append({"regions": regions, "id": image_id})
            qas = []
            if self.style == "simple":   # the demo world: every question about every picture
                chosen = _qas(scene, self.rng)
            elif image_id % 5:  # some real VG images have no QA at all
                chosen = _qas(scene, self.rng)[: self.rng.randint(1, 3)]
            else:
                chosen = []
            for qa in chosen:
                qas.append({"a_objects": [], "question": qa["question"], "image_id": image_id, "qa_id": qa_id,
                            "answer": _vg_answer(qa, self.style), "q_objects": []})
                qa_id += 1
            qa_doc.append({"id": image_id, "qas": qas})
            self.items.append({"ref": f"vg:{image_id}", "dataset": "vg", "id": str(image_id), **img,
                               "split": None, "expect": "keep", "coco_id": coco_id})
        self.put("image_data.json", _json_bytes(image_data))
        self.put("region_descriptions.json", _json_bytes(regions_doc))
        self.put("question_answers.json", _json_bytes(qa_doc))

    # -- ground truth ----------------------------------------------------------------------------------
    def finish(self, kar: list, vqa: list) -> SourcesInfo:
        malformed: dict[str, list] = {}
        for src, fname in TSV_FILES.items():
            malformed[fname] = []
            for r in self.rows[src]:
                if r["malformed"]:
                    malformed[fname].append({"line": r["line"], "reason": r["malformed"], "url": r["url"]})
                    continue
                self.items.append({"ref": r["ref"], "dataset": src, "id": str(r["line"]), **r["img"],
                                   "url": r["url"], "split": None, "expect": r["expect"]})
        self.items.sort(key=lambda it: (it["dataset"], int(it["id"])))

        heldout: dict[int, list[dict]] = {}
        for it in self.items:
            if it["expect"] == "eval":
                heldout.setdefault(it["picture"], []).append(
                    {"eval_set": it["dataset"], "ref": it["ref"], "split": it["split"], "coco_id": int(it["id"])})
        training = [it for it in self.items if it["dataset"] in ("cc3m", "cc12m", "coco", "vg")]
        contaminated = []
        for it in training:
            evals = heldout.get(it["picture"])
            if not evals or it["expect"] != "keep":
                continue
            ids = {e["coco_id"] for e in evals}
            same_id = (it["dataset"] == "coco" and int(it["id"]) in ids) or it.get("coco_id") in ids
            contaminated.append({"ref": it["ref"], "url": it["url"], "how": "same_id" if same_id else "near_dup_image",
                                 "eval": [{k: e[k] for k in ("eval_set", "ref", "split")} for e in evals]})
            it["expect"] = "drop:contaminated"
        contaminated_pictures = {it["picture"] for it in training if it["expect"] == "drop:contaminated"}

        by_picture: dict[int, list[dict]] = {}
        by_sha: dict[str, list[dict]] = {}
        for it in training:
            if it["expect"] == "keep":
                by_picture.setdefault(it["picture"], []).append(it)
                by_sha.setdefault(it["sha256"], []).append(it)
        groups = [g for g in by_picture.values() if len(g) >= 2]
        if any(g[0]["picture"] in contaminated_pictures for g in groups):
            raise AssertionError("a near-duplicate group shares its picture with a contaminated record")
        near_dup_groups = sorted(sorted(it["ref"] for it in g) for g in groups)
        url_groups = sorted(u for u in (sorted({it["url"] for it in g}) for g in groups) if len(u) >= 2)
        exact = sorted(sorted(it["ref"] for it in g) for g in by_sha.values() if len({it["url"] for it in g}) >= 2)

        by_url: dict[str, list[str]] = {}
        for it in training:
            if it["dataset"] in TSV_FILES:
                by_url.setdefault(it["url"], []).append(it["ref"])
        dup_urls = {u: sorted(refs) for u, refs in sorted(by_url.items()) if len(refs) >= 2}

        def cap_entry(e: dict) -> dict:
            return {"ref": e["ref"], "caption": e["caption"]}

        truth = {
            "version": 1,
            "seed": self.seed,
            "base_url": self.base_url,
            "n_images": self.n_images,
            "items": self.items,
            "near_dup_groups": near_dup_groups,
            "near_dup_url_groups": url_groups,
            "exact_dup_groups": exact,
            "duplicate_urls": dup_urls,
            "contaminated": sorted(contaminated, key=lambda c: c["ref"]),
            "faults": {r["url"]: r["tag"][len("fault:"):] for src in TSV_FILES for r in self.rows[src]
                       if r["tag"] and r["tag"].startswith("fault:")},
            "fault_outcome": dict(FAULT_OUTCOME),
            "malformed_rows": malformed,
            "bad_captions": sorted(({"ref": b["row"]["ref"], "caption": b["caption"], "reason": b["reason"]}
                                    for b in self.bad_captions), key=lambda b: b["ref"]),
            "bad_images": sorted(({"ref": b["row"]["ref"], "url": b["row"]["url"], "reason": b["reason"]}
                                  for b in self.bad_images), key=lambda b: b["ref"]),
            "caption_dup_groups": [[cap_entry(e) for e in g] for g in self.caption_dups],
            "boilerplate_captions": {p: sorted(r["ref"] for r in rows) for p, rows in self.boilerplate.items()},
            "counts": {
                **{fname: {"lines": len(self.rows[src]), "malformed": len(malformed[fname])}
                   for src, fname in TSV_FILES.items()},
                "coco_images": sum(it["dataset"] == "coco" for it in self.items),
                "vg_images": sum(it["dataset"] == "vg" for it in self.items),
                "karpathy_images": len(kar),
                "vqav2_images": len(vqa),
            },
        }
        root = self.root
        root.mkdir(parents=True, exist_ok=True)
        for path, data in sorted(self.written.items()):
            _write(path, data)
        gt = root / "ground_truth.json"
        _write(gt, json.dumps(truth, indent=1, sort_keys=True, ensure_ascii=False).encode() + b"\n")  # last
        return SourcesInfo(
            root=root, base_url=self.base_url, seed=self.seed, n_images=self.n_images,
            cc3m_tsv=root / TSV_FILES["cc3m"], cc12m_tsv=root / TSV_FILES["cc12m"],
            coco_captions=root / "annotations/captions_train2017.json", coco_images=root / "train2017",
            karpathy_json=root / "dataset_coco.json", karpathy_images=root / "coco_images",
            vg_image_data=root / "image_data.json", vg_region_descriptions=root / "region_descriptions.json",
            vg_question_answers=root / "question_answers.json",
            vqav2_questions=root / "v2_OpenEnded_mscoco_val2014_questions.json",
            vqav2_annotations=root / "v2_mscoco_val2014_annotations.json", vqav2_images=root / "val2014",
            web_root=root / "web", ground_truth=gt, files=sorted([*self.written, gt]),
        )
