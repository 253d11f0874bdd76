"""COCO caption metrics as the official toolkit computes them (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE).

The pipeline is the toolkit's (pycocoevalcap.eval.COCOEvalCap): PTB-tokenise references and results with the
Stanford PTBTokenizer (lower-cased, punctuation tokens dropped), then hand the tokenised captions to each scorer.
The tokenizer and METEOR run through eval.coco_java: the toolkit's jars and arguments on the same Java as SPICE
($VLFUSION_JAVA), with temp files outside site-packages, so a read-only install works.
BLEU, METEOR, ROUGE-L and CIDEr are pycocoevalcap's own scorers; CIDEr is CIDEr-D (sigma 6, clipped counts,
x10) with document frequencies from the references of the evaluated images, exactly as in the toolkit. SPICE is
the official jar, run by eval.spice (see eval.java_deps for its Java dependencies).

What we add is checking, so that bad input fails here with a message instead of inside Java:
- results: a list of {"image_id", "caption"} with exactly one string caption per image;
- every result image must have references; by default every referenced image must have a result
  (allow_subset=True scores only the result images, which is what the toolkit does);
- non-ASCII text: by default (non_ascii="keep") it goes to the PTB tokenizer as UTF-8, unchanged, as
  pycocoevalcap 1.2 passes it; non_ascii="fold" maps it to ASCII first (NFKD, accents dropped, typographic
  quotes and dashes to their ASCII forms, anything else becomes a space), which is what a Python 2 era
  toolkit would have needed, and counts the results and the references it changed (`num_folded_results`,
  `num_folded_references`); non_ascii="error" rejects it;
- line breaks and other control characters become spaces: the tokenizer works line by line, and a stray "\\r"
  would otherwise shift every following caption onto the wrong image;
- a caption with no words (empty, or only punctuation) is scored as it stands, i.e. it matches nothing
  (0 for METEOR, ROUGE-L, CIDEr and SPICE on that image; no n-grams for BLEU), and is counted in
  `num_empty_captions`; empty="error" rejects it instead.
"""
from __future__ import annotations

import contextlib
import io
import json
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from eval import java_deps
from eval.coco_java import Meteor, ptb_tokenize
from eval.spice import spice_score

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")

_TYPOGRAPHIC = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u2032": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"',
    "\u2033": '"', "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-",
    "\u2212": "-", "\u2026": "...", "\u00a0": " ",
})


class CaptionInputError(ValueError):
    pass


def _id_list(ids: Iterable[Any], limit: int = 10) -> str:
    ids = sorted(ids, key=lambda x: (str(type(x)), x))
    shown = ", ".join(repr(i) for i in ids[:limit])
    return f"{shown}{', ...' if len(ids) > limit else ''} ({len(ids)} in all)"


def fold_to_ascii(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.translate(_TYPOGRAPHIC))
    return "".join(c if ord(c) < 128 else ("" if unicodedata.combining(c) else " ") for c in text)


NonAscii = Literal["keep", "fold", "error"]


def clean_caption(text: str, *, non_ascii: NonAscii, where: str) -> tuple[str, bool]:
    """(text safe for the line-based Java tools, whether non-ASCII was folded)."""
    folded = False
    if not text.isascii() and non_ascii != "keep":
        if non_ascii == "error":
            bad = sorted({c for c in text if not c.isascii()})
            raise CaptionInputError(f"{where}: non-ASCII characters {''.join(bad)!r} in {text!r} "
                                    "(use non_ascii='fold' to map them to ASCII)")
        text, folded = fold_to_ascii(text), True
    # Every whitespace or control character (\r, \v, \f, \x1c..., DEL) becomes a plain space.
    text = "".join(" " if (c.isspace() or ord(c) < 32 or ord(c) == 127) else c for c in text)
    return text, folded


def references_from_coco(annotations: Mapping[str, Any] | list[Mapping[str, Any]]) -> dict[Any, list[str]]:
    """image_id -> reference captions, from a COCO captions annotation file (or its "annotations" list)."""
    rows = annotations.get("annotations") if isinstance(annotations, Mapping) else annotations
    if rows is None:
        raise CaptionInputError("caption annotations: no 'annotations' list (COCO captions format expected)")
    refs: dict[Any, list[str]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or "image_id" not in row or not isinstance(row.get("caption"), str):
            raise CaptionInputError(f"caption annotation #{i} needs 'image_id' and a string 'caption', got {row!r}")
        refs.setdefault(row["image_id"], []).append(row["caption"])
    return refs


def results_by_image(results: list[Mapping[str, Any]]) -> dict[Any, str]:
    if not isinstance(results, list):
        raise CaptionInputError('caption results must be a JSON list of {"image_id": ..., "caption": ...}')
    out: dict[Any, str] = {}
    duplicates = set()
    for i, row in enumerate(results):
        if not isinstance(row, Mapping) or "image_id" not in row or "caption" not in row:
            raise CaptionInputError(f"caption result #{i} must have 'image_id' and 'caption', got {row!r}")
        if not isinstance(row["caption"], str):
            raise CaptionInputError(f"caption result for image {row['image_id']!r}: caption must be a string, "
                                    f"got {row['caption']!r}")
        if row["image_id"] in out:
            duplicates.add(row["image_id"])
        out[row["image_id"]] = row["caption"]
    if duplicates:
        raise CaptionInputError(f"caption results have more than one caption for images {_id_list(duplicates)}")
    return out


def caption_scores(results: list[Mapping[str, Any]],
                   annotations: Mapping[str, Any] | list[Mapping[str, Any]], *,
                   spice: bool | Literal["auto"] = True,
                   allow_subset: bool = False,
                   non_ascii: NonAscii = "keep",
                   empty: Literal["score", "error"] = "score",
                   spice_cache_dir: Path | str | None | bool = None,
                   spice_heap: str = "8G") -> dict[str, Any]:
    """Official COCO caption metrics of `results` against COCO-format `annotations`.

    Returns {"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE": float, "num_images",
    "num_empty_captions", "num_folded_results", "num_folded_references"}. spice=True requires SPICE (error if its Java dependencies
    are missing); spice="auto" reports "SPICE": None plus "SPICE_unavailable" (the reason) instead; spice=False
    skips it. Scores are in [0, 1] except CIDEr (x10 scale, as the toolkit reports it).
    """
    if non_ascii not in ("keep", "fold", "error"):
        raise ValueError(f"non_ascii must be 'keep', 'fold' or 'error', got {non_ascii!r}")
    if empty not in ("score", "error"):
        raise ValueError(f"empty must be 'score' or 'error', got {empty!r}")
    if spice not in (True, False, "auto"):
        raise ValueError(f"spice must be True, False or 'auto', got {spice!r}")
    hyps = results_by_image(results)
    refs = references_from_coco(annotations)
    if not hyps:
        raise CaptionInputError("caption results are empty")
    unknown = set(hyps) - set(refs)
    if unknown:
        raise CaptionInputError(f"caption results for images without references: {_id_list(unknown)}")
    missing = set(refs) - set(hyps)
    if missing and not allow_subset:
        raise CaptionInputError(f"no caption result for referenced images {_id_list(missing)} "
                                "(allow_subset=True / --allow-subset scores only the result images)")
    ids = sorted(hyps, key=lambda x: (str(type(x)), x))

    num_folded_results = num_folded_refs = 0
    gts: dict[Any, list[str]] = {}
    res: dict[Any, list[str]] = {}
    for i in ids:
        text, folded = clean_caption(hyps[i], non_ascii=non_ascii, where=f"result for image {i!r}")
        num_folded_results += folded
        res[i] = [text]
        gts[i] = []
        for r in refs[i]:
            text, folded = clean_caption(r, non_ascii=non_ascii, where=f"reference of image {i!r}")
            num_folded_refs += folded
            gts[i].append(text)

    gts_tok, res_tok = ptb_tokenize(gts), ptb_tokenize(res)
    # METEOR's wrapper talks to Java with "|||"-separated lines and strips "|||" from results only.
    bad_refs = [i for i in ids if any("|||" in r for r in gts_tok[i])]
    if bad_refs:
        raise CaptionInputError(f"references containing '|||' (METEOR's field separator) for images "
                                f"{_id_list(bad_refs)}")
    empty_ids = [i for i in ids if not res_tok[i][0].strip()]
    if empty_ids and empty == "error":
        raise CaptionInputError(f"captions with no words for images {_id_list(empty_ids)}")

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    scores: dict[str, Any] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its n-gram counts
        bleu, _ = Bleu(4).compute_score(gts_tok, res_tok)
    for n, value in enumerate(bleu, start=1):
        scores[f"Bleu_{n}"] = float(value)
    with Meteor() as meteor:
        scores["METEOR"] = float(meteor.compute_score(gts_tok, res_tok)[0])
    scores["ROUGE_L"] = float(Rouge().compute_score(gts_tok, res_tok)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts_tok, res_tok)[0])

    if spice is False:
        pass
    else:
        try:
            java_deps.spice_classpath()
        except java_deps.JavaDepsError as e:
            if spice is True:
                raise
            scores["SPICE"] = None
            scores["SPICE_unavailable"] = str(e)
        else:
            result = spice_score({i: gts_tok[i] for i in ids}, {i: res_tok[i][0] for i in ids},
                                 cache_dir=spice_cache_dir, heap=spice_heap)
            scores["SPICE"] = result.score
    scores["num_images"] = len(ids)
    scores["num_empty_captions"] = len(empty_ids)
    scores["num_folded_results"] = num_folded_results
    scores["num_folded_references"] = num_folded_refs
    return scores


def load_json(path: str | Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CaptionInputError(f"{what} file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise CaptionInputError(f"{what} file {path} is not valid JSON: {e}") from None


def caption_scores_from_files(results_path: str | Path, annotations_path: str | Path, **kwargs) -> dict[str, Any]:
    return caption_scores(load_json(results_path, "caption results"),
                          load_json(annotations_path, "caption annotations"), **kwargs)
