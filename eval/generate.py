"""Generate captions / VQA answers with a checkpoint on eval shards, then score them with the official metrics.

Flow (one process, or one per GPU under torchrun):
  read every sample of the eval shards (all ranks read the same list, so the image ids, references and
  questions are known everywhere and checked before any generation) -> rank r decodes samples r, r+W, ...
  -> batched `FusionModel.generate` -> plain JSON lists gathered on rank 0 (`gather_object`) ->
  rank 0 writes the results in the official formats, the references they are scored against, and scores.json.

Captioning: prompt [BOS]; image id = the COCO id from the sample's `sources` (an int), else the sample key.
VQA: prompt "[BOS] question: {q} answer:"; every question in the samples' `qa` with its human answers is
answered; question_id comes from the data (or "<key>:<index>" when the data has none).
Images are centre-cropped and resized to the model's image size, normalised with the run's mean/std (read
from the checkpoint's config.json through `training.config.RunConfig.from_record`).
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

@dataclass(kw_only=True)
class GenerationConfig:
    checkpoint: str
    data: str
    out_dir: str
    beam_size: int = 1
    max_new_tokens: int = 30
    batch_size: int = 32
    no_repeat_ngram_size: int = 0
    device: str = "auto"              # "auto": this rank's cuda device when available, else cpu
    limit: int | None = None          # evaluate only the first N images (smoke runs); reported in scores.json
    progress: bool = True
    allow_missing_images: bool = False  # score although some images of the eval set are not in the shards
    non_ascii: str = "keep"           # caption text to the PTB tokenizer: keep (UTF-8, as pycocoevalcap), fold, error

    def __post_init__(self):
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {self.limit}")


@dataclass
class EvalItem:
    """One image of the eval set with what it is scored against; image bytes only on the rank that uses it."""
    index: int
    key: str
    image_id: Any
    captions: list[str]
    questions: list[dict[str, Any]] = field(default_factory=list)
    image: bytes | None = None


# ---------------------------------------------------------------- distributed helpers

@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, initialised_here=True)


def gather_lists(local: list, d: Dist) -> list:
    """Concatenate every rank's list on rank 0 (others get []). Only plain JSON-able data travels."""
    if d.world_size == 1:
        return list(local)
    import torch.distributed as dist

    parts: list | None = [None] * d.world_size if d.is_main else None
    dist.gather_object(local, parts, dst=0)
    return [x for part in parts for x in part] if d.is_main else []


def finish_distributed(d: Dist) -> None:
    if d.initialised_here:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------- data

def image_id_of(sample) -> Any:
    for src in sample.sources or []:
        if src.get("dataset") == "coco" and src.get("id") not in (None, ""):
            sid = str(src["id"])
            return int(sid) if sid.isdigit() else sid
    return sample.key


def load_eval_items(data: str, *, d: Dist, limit: int | None = None) -> tuple[list[EvalItem], dict[str, int]]:
    """Every sample as an EvalItem (image bytes kept only for this rank's share) + the reader's skip counts."""
    from shards import ReadCounters, iter_samples

    counters = ReadCounters()
    items: list[EvalItem] = []
    seen: dict[Any, str] = {}
    for index, s in enumerate(iter_samples(data, counters=counters)):
        if limit is not None and index >= limit:
            break
        image_id = image_id_of(s)
        if image_id in seen:
            raise ValueError(f"eval shards {data}: image id {image_id!r} appears in samples {seen[image_id]} and "
                             f"{s.key}; an eval set must hold each image once")
        seen[image_id] = s.key
        questions = []
        for j, qa in enumerate(s.qa or []):
            qid = qa.get("question_id")
            questions.append({
                "question_id": qid if qid is not None else f"{s.key}:{j}",
                "question": qa.get("question", ""),
                "answers": list(qa.get("answers") or []),
                "answer_type": qa.get("answer_type"),
                "question_type": qa.get("question_type"),
            })
        items.append(EvalItem(index=index, key=s.key, image_id=image_id, captions=list(s.captions or []),
                              questions=questions, image=s.image if index % d.world_size == d.rank else None))
    skipped = dict(getattr(counters, "skipped", {}) or {})
    return items, skipped


# Reader skip reasons that lose a whole sample (its image and its references or questions).
_SAMPLE_LOSING_SKIPS = ("missing_image", "bad_json", "bad_text", "bad_metadata")


def missing_images(data: str, skipped: dict[str, int]) -> dict[str, Any]:
    """How many images of the eval set the shards cannot show: those `curate run` could not write (the eval
    manifest's "eval_images" outcomes: missing file, failed image checks) plus samples the reader had to skip.
    {"total": n, "not_written": {reason: n}, "unreadable": {reason: n}, "eval_set_known": bool}; without an eval
    manifest (shards not written by `curate run`) only the unreadable ones can be counted."""
    from shards import read_manifest

    not_written: dict[str, int] = {}
    known = False
    try:
        manifest = read_manifest(data) if (data.endswith(".json") or "{" not in data) else {}
    except (FileNotFoundError, ValueError, OSError):
        manifest = {}
    if isinstance(manifest.get("eval_images"), dict):
        known = True
        not_written = {k: int(v) for k, v in manifest["eval_images"].items() if k != "written" and v}
    unreadable = {k: int(v) for k, v in skipped.items() if k in _SAMPLE_LOSING_SKIPS and v}
    lost_shards = {k: int(v) for k, v in skipped.items() if k in ("missing_shard", "truncated_tar") and v}
    total = sum(not_written.values()) + sum(unreadable.values())
    out = {"total": total, "not_written": not_written, "unreadable": unreadable, "eval_set_known": known}
    if lost_shards:
        out["shards_lost"] = lost_shards   # their samples cannot be counted without reading them
    return out


def check_missing_images(cfg: GenerationConfig, missing: dict[str, Any]) -> None:
    if (missing["total"] or missing.get("shards_lost")) and not cfg.allow_missing_images:
        parts = [f"{n} {r}" for r, n in {**missing["not_written"], **missing["unreadable"]}.items()]
        if missing.get("shards_lost"):
            parts += [f"{n} shard(s) {r}" for r, n in missing["shards_lost"].items()]
        raise ValueError(f"eval shards {cfg.data}: {missing['total']} image(s) of the eval set have no image in "
                         f"the shards ({', '.join(parts)}); scores would cover a subset. Pass "
                         "--allow-missing-images to score the images that are there.")


def preprocess(images: list[bytes], *, size: int, mean, std, device) -> torch.Tensor:
    """Encoded images -> float [B,3,S,S]: centre crop, resize, normalise (the eval side of the training
    augmentation: no random crop, flip or jitter)."""
    import torch

    from training import augment

    x = torch.stack([augment.decode_and_crop(b, size, rng=None) for b in images]).to(device)
    x = x.float().div_(255.0)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype)[None, :, None, None]
    sd = torch.tensor(std, device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x - m) / sd


def _batches(seq: list, n: int) -> Iterable[list]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _progress(total: int, desc: str, enabled: bool, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True)


# ---------------------------------------------------------------- model side

def _load(cfg: GenerationConfig, d: Dist):
    import torch

    from training.checkpoint import load_for_inference
    from training.config import RunConfig

    if cfg.device == "auto":
        device = torch.device(f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    model, tokenizer, record = load_for_inference(cfg.checkpoint, device=device)
    # the run's own config, through training's loader and checks: the pixels are normalised as in training
    run_cfg = RunConfig.from_record(record, where=f"{cfg.checkpoint}: config.json")
    return model, tokenizer, device, run_cfg.augment.mean, run_cfg.augment.std


def _generate(model, tokenizer, images, prompts, cfg: GenerationConfig) -> list[str]:
    out = model.generate(images, prompts, max_new_tokens=cfg.max_new_tokens, beam_size=cfg.beam_size,
                         eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                         no_repeat_ngram_size=cfg.no_repeat_ngram_size)
    return [tokenizer.decode(ids).strip() for ids in out]


def generate_captions(items: list[EvalItem], model, tokenizer, *, device, mean, std, cfg: GenerationConfig,
                      show_progress: bool) -> list[dict]:
    """[{"image_id", "caption"}] for the items that carry image bytes (this rank's share)."""
    mine = [it for it in items if it.image is not None]
    results = []
    with _progress(len(mine), "captioning", show_progress, "image") as bar:
        for batch in _batches(mine, cfg.batch_size):
            images = preprocess([it.image for it in batch], size=model.cfg.image_size, mean=mean, std=std,
                                device=device)
            texts = _generate(model, tokenizer, images, [[tokenizer.bos_id]] * len(batch), cfg)
            results += [{"image_id": it.image_id, "caption": t} for it, t in zip(batch, texts)]
            bar.update(len(batch))
    return results


def answer_questions(items: list[EvalItem], model, tokenizer, *, device, mean, std, cfg: GenerationConfig,
                     show_progress: bool) -> list[dict]:
    """[{"question_id", "answer", "generated"}] for every question of this rank's images: "answer" is the
    generated text normalised like training's targets (`shards.answers.normalize_answer`), "generated" the
    text as decoded."""
    from shards.answers import normalize_answer

    rows = [(it, q) for it in items if it.image is not None for q in it.questions if q["answers"]]
    results = []
    max_len = model.cfg.max_len
    with _progress(len(rows), "answering", show_progress, "question") as bar:
        for batch in _batches(rows, cfg.batch_size):
            images = preprocess([it.image for it, _ in batch], size=model.cfg.image_size, mean=mean, std=std,
                                device=device)
            prompts = [tokenizer.encode_vqa(q["question"], None, max_len=max_len)[0] for _, q in batch]
            texts = _generate(model, tokenizer, images, prompts, cfg)
            # Scored in the benchmark's answer space, as training's targets are; the raw text stays beside it.
            results += [{"question_id": q["question_id"], "answer": normalize_answer(t), "generated": t}
                        for (_, q), t in zip(batch, texts)]
            bar.update(len(batch))
    return results


# ---------------------------------------------------------------- official-format files

def coco_caption_annotations(items: list[EvalItem]) -> dict:
    images, annotations = [], []
    for it in items:
        if not it.captions:
            continue
        images.append({"id": it.image_id, "file_name": it.key})
        for c in it.captions:
            annotations.append({"image_id": it.image_id, "id": len(annotations) + 1, "caption": c})
    return {"info": {"description": "references of a vlfusion eval shard set"}, "type": "captions",
            "images": images, "annotations": annotations}


def vqa_question_and_annotation_files(items: list[EvalItem]) -> tuple[dict, dict]:
    questions, annotations = [], []
    for it in items:
        for q in it.questions:
            if not q["answers"]:
                continue
            questions.append({"question_id": q["question_id"], "image_id": it.image_id, "question": q["question"]})
            annotations.append({
                "question_id": q["question_id"], "image_id": it.image_id,
                "question_type": q["question_type"], "answer_type": q["answer_type"],
                "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(q["answers"])],
            })
    return {"questions": questions}, {"annotations": annotations}


def write_json(path: Path, obj: Any) -> None:
    from shards.fsutil import atomic_write_bytes

    atomic_write_bytes(str(path), (json.dumps(obj, indent=1) + "\n").encode("utf-8"))


# ---------------------------------------------------------------- the two commands

def _generate_and_gather(cfg: GenerationConfig, d, generate, items) -> list | None:
    """Load the checkpoint, run ``generate`` on this rank's items, gather the results on rank 0
    (None on the other ranks)."""
    model, tokenizer, device, mean, std = _load(cfg, d)
    local = generate(items, model, tokenizer, device=device, mean=mean, std=std, cfg=cfg,
                     show_progress=cfg.progress and d.is_main)
    results = gather_lists(local, d)
    return results if d.is_main else None


def _out_dir(cfg: GenerationConfig) -> Path:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_caption_eval(cfg: GenerationConfig, *, spice: bool | str = "auto", log: Callable[[str], None] = print,
                     ) -> dict | None:
    """Generate, gather, write DIR/{captions_results,captions_references,scores}.json; scores on rank 0."""
    from eval.caption_metrics import caption_scores

    d = init_distributed()
    try:
        items, skipped = load_eval_items(cfg.data, d=d, limit=cfg.limit)
        missing = missing_images(cfg.data, skipped)
        check_missing_images(cfg, missing)
        scored = [it for it in items if it.captions]
        if not scored:
            raise ValueError(f"eval shards {cfg.data}: no sample carries reference captions")
        results = _generate_and_gather(cfg, d, generate_captions, scored)
        if results is None:
            return None
        out = _out_dir(cfg)
        order = {it.image_id: it.index for it in items}
        results.sort(key=lambda r: order[r["image_id"]])
        references = coco_caption_annotations(scored)
        write_json(out / "captions_results.json", results)
        write_json(out / "captions_references.json", references)
        scores = caption_scores(results, references, spice=spice, non_ascii=cfg.non_ascii)
        scores.update(_run_info(cfg, items, skipped, num_without_references=len(items) - len(scored),
                                missing_images=missing))
        if missing["total"]:
            log(f"evaluate caption: {missing['total']} image(s) of the eval set not in the shards, not scored")
        write_json(out / "scores.json", scores)
        return scores
    finally:
        finish_distributed(d)


def run_vqa_eval(cfg: GenerationConfig, *, log: Callable[[str], None] = print) -> dict | None:
    from eval.vqa_metrics import vqa_scores

    d = init_distributed()
    try:
        items, skipped = load_eval_items(cfg.data, d=d, limit=cfg.limit)
        missing = missing_images(cfg.data, skipped)
        check_missing_images(cfg, missing)
        questions, annotations = vqa_question_and_annotation_files(items)
        if not questions["questions"]:
            raise ValueError(f"eval shards {cfg.data}: no sample carries VQA questions with answers")
        qids = [q["question_id"] for q in questions["questions"]]
        if len(set(qids)) != len(qids):
            dup = sorted({str(q) for q in qids if qids.count(q) > 1})[:10]
            raise ValueError(f"eval shards {cfg.data}: duplicate question ids {dup}")
        results = _generate_and_gather(cfg, d, answer_questions, items)
        if results is None:
            return None
        out = _out_dir(cfg)
        order = {q: i for i, q in enumerate(qids)}
        results.sort(key=lambda r: order[r["question_id"]])
        write_json(out / "vqa_results.json", results)
        write_json(out / "vqa_questions.json", questions)
        write_json(out / "vqa_annotations.json", annotations)
        scores = vqa_scores(results, annotations, questions)
        num_unanswerable = sum(1 for it in items for q in it.questions if not q["answers"])
        scores.update(_run_info(cfg, items, skipped, num_questions_without_answers=num_unanswerable,
                                missing_images=missing))
        if missing["total"]:
            log(f"evaluate vqa: {missing['total']} image(s) of the eval set not in the shards, not scored")
        write_json(out / "scores.json", scores)
        return scores
    finally:
        finish_distributed(d)


def _run_info(cfg: GenerationConfig, items: list[EvalItem], skipped: dict, **counts) -> dict:
    return {"run": {"checkpoint": str(cfg.checkpoint), "data": str(cfg.data), "beam_size": cfg.beam_size,
                    "max_new_tokens": cfg.max_new_tokens, "limit": cfg.limit, "num_samples": len(items),
                    "samples_skipped_by_reader": skipped, **counts}}
