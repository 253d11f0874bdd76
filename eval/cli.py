"""`evaluate`: official caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE) and VQAv2 accuracy.

  evaluate caption-scores --results R.json --annotations captions.json --out scores.json
  evaluate vqa-scores --results R.json --questions Q.json --annotations A.json --out scores.json
  evaluate caption --checkpoint CKPT --data EVAL_SHARDS [--beam-size K] --out DIR
  evaluate vqa --checkpoint CKPT --data EVAL_SHARDS --out DIR

The generation verbs run under torchrun too (results gathered on rank 0). SPICE needs Java jars fetched once
with `python -m eval.java_deps fetch`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

CAPTION_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
_SPICE_CHOICES = {"auto": "auto", "yes": True, "no": False}


def caption_table(scores: dict[str, Any]) -> str:
    lines = [f"{'metric':<10} {'score':>8}"]
    for k in CAPTION_METRICS:
        if k in scores:
            v = scores[k]
            lines.append(f"{k:<10} {'n/a' if v is None else f'{v:.3f}':>8}")
    lines.append(f"{'images':<10} {scores.get('num_images', 0):>8}")
    if scores.get("num_empty_captions"):
        lines.append(f"{'empty':<10} {scores['num_empty_captions']:>8}  (captions with no words, scored as such)")
    if scores.get("num_folded_results") or scores.get("num_folded_references"):
        lines.append(f"{'folded':<10} {scores.get('num_folded_results', 0):>8}  results and "
                     f"{scores.get('num_folded_references', 0)} references folded to ASCII")
    if scores.get("SPICE_unavailable"):
        lines.append(f"SPICE unavailable: {scores['SPICE_unavailable']}")
    return "\n".join(lines)


def vqa_table(scores: dict[str, Any]) -> str:
    lines = [f"Overall accuracy: {scores['overall']:.2f}  ({scores['num_questions']} questions)",
             "Per answer type:"]
    lines += [f"  {k:<24} {v:6.2f}" for k, v in scores["perAnswerType"].items()]
    lines.append("Per question type:")
    lines += [f"  {k:<24} {v:6.2f}" for k, v in scores["perQuestionType"].items()]
    return "\n".join(lines)


def _write_scores(path: Path, scores: dict[str, Any]) -> None:
    from shards.fsutil import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(str(path), (json.dumps(scores, indent=1) + "\n").encode("utf-8"))


def _add_spice(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--spice", choices=tuple(_SPICE_CHOICES), default=default,
                   help="compute SPICE: yes (fail if its Java jars are missing), no, or auto (report it as "
                        f"unavailable when they are missing); default {default}")


def _add_generation(p: argparse.ArgumentParser, *, beam: int, max_new: int) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint step dir, or a run dir (its latest step)")
    p.add_argument("--data", required=True, help="eval shard set: directory, manifest.json, brace pattern")
    p.add_argument("--out", required=True, type=Path, help="output directory (results, references, scores.json)")
    p.add_argument("--beam-size", type=int, default=beam, help=f"beam width, 1 = greedy (default {beam})")
    p.add_argument("--max-new-tokens", type=int, default=max_new, help=f"default {max_new}")
    p.add_argument("--batch-size", type=int, default=32, help="images per generate call per process")
    p.add_argument("--no-repeat-ngram-size", type=int, default=0, help="forbid repeated n-grams (0 = off)")
    p.add_argument("--device", default="auto", help="auto (this rank's GPU, else CPU), cpu, cuda:N")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples (smoke runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-missing-images", action="store_true",
                   help="score although some images of the eval set are not in the shards (their number is "
                        "reported); by default that is an error")


def _add_non_ascii(p: argparse.ArgumentParser) -> None:
    p.add_argument("--non-ascii", choices=("keep", "fold", "error"), default="keep",
                   help="non-ASCII caption text: keep (default: UTF-8 to the PTB tokenizer, as pycocoevalcap "
                        "1.2), fold to ASCII (the counts of folded results and references are reported), or fail")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    text = "score COCO-format caption results against COCO caption annotations"
    p = sub.add_parser("caption-scores", help=text, description=text + " (official pycocoevalcap pipeline).")
    p.add_argument("--results", required=True, type=Path, help='[{"image_id": ..., "caption": ...}] JSON')
    p.add_argument("--annotations", required=True, type=Path, help="COCO captions annotation JSON")
    p.add_argument("--out", required=True, type=Path, help="where to write scores.json")
    p.add_argument("--allow-subset", action="store_true",
                   help="score only the images that have results (default: every annotated image needs one)")
    _add_non_ascii(p)
    _add_spice(p, "yes")

    text = "score VQAv2-format answers against VQAv2 questions and annotations"
    p = sub.add_parser("vqa-scores", help=text, description=text + " (official VQA accuracy).")
    p.add_argument("--results", required=True, type=Path, help='[{"question_id": ..., "answer": ...}] JSON')
    p.add_argument("--questions", required=True, type=Path, help="VQAv2 questions JSON")
    p.add_argument("--annotations", required=True, type=Path, help="VQAv2 annotations JSON")
    p.add_argument("--out", required=True, type=Path, help="where to write scores.json")

    text = "caption every image of eval shards with a checkpoint and score the captions"
    p = sub.add_parser("caption", help=text, description=text + "; writes DIR/captions_results.json, "
                       "DIR/captions_references.json and DIR/scores.json. Runs under torchrun.")
    _add_generation(p, beam=3, max_new=30)
    _add_spice(p, "auto")
    _add_non_ascii(p)

    text = "answer every VQA question of eval shards with a checkpoint and score the answers"
    p = sub.add_parser("vqa", help=text, description=text + "; writes DIR/vqa_results.json, DIR/vqa_questions.json, "
                       "DIR/vqa_annotations.json and DIR/scores.json. Runs under torchrun.")
    _add_generation(p, beam=1, max_new=10)
    return parser


def _generation_config(args):
    from eval.generate import GenerationConfig

    return GenerationConfig(checkpoint=args.checkpoint, data=args.data, out_dir=str(args.out),
                            beam_size=args.beam_size, max_new_tokens=args.max_new_tokens,
                            batch_size=args.batch_size, no_repeat_ngram_size=args.no_repeat_ngram_size,
                            device=args.device, limit=args.limit, progress=not args.no_progress,
                            allow_missing_images=args.allow_missing_images,
                            non_ascii=getattr(args, "non_ascii", "keep"))


def run(args) -> int:
    if args.verb == "caption-scores":
        from eval.caption_metrics import caption_scores_from_files

        scores = caption_scores_from_files(args.results, args.annotations, allow_subset=args.allow_subset,
                                           non_ascii=args.non_ascii, spice=_SPICE_CHOICES[args.spice])
        _write_scores(args.out, scores)
        print(caption_table(scores))
    elif args.verb == "vqa-scores":
        from eval.vqa_metrics import vqa_scores_from_files

        scores = vqa_scores_from_files(args.results, args.questions, args.annotations)
        _write_scores(args.out, scores)
        print(vqa_table(scores))
    elif args.verb == "caption":
        from eval.generate import run_caption_eval

        scores = run_caption_eval(_generation_config(args), spice=_SPICE_CHOICES[args.spice])
        if scores is not None:
            print(caption_table(scores))
            print(f"wrote {args.out / 'scores.json'}")
    elif args.verb == "vqa":
        from eval.generate import run_vqa_eval

        scores = run_vqa_eval(_generation_config(args))
        if scores is not None:
            print(vqa_table(scores))
            print(f"wrote {args.out / 'scores.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from eval.caption_metrics import CaptionInputError
    from eval.java_deps import JavaDepsError
    from eval.spice import SpiceError

    try:
        return run(args)
    except (CaptionInputError, JavaDepsError, SpiceError, ValueError, FileNotFoundError) as e:
        # Input problems are the user's to fix: one clear line, no traceback.
        print(f"evaluate {args.verb}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
