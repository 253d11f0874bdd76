"""VQAv2 accuracy, computed the way the official evaluation (GT-Vision-Lab/VQA, vqaEval.py) computes it.

Per question, with the ten human answers a_1..a_10 and a prediction p:

    acc(p) = 1/10 * sum_i min(1, #{j != i : a_j == p} / 3)

i.e. the mean over the ten leave-one-annotator-out subsets of min(1, matches/3). A prediction given by 1, 2,
3, >=4 of the 10 humans scores 0.3, 0.6, 0.9, 1.0.

Answer processing follows the official tool quirk for quirk, because published numbers depend on it:
- newlines and tabs become spaces and the ends are stripped, always;
- only when the ten human answers are not all identical are the human answers *and* the prediction normalised
  (punctuation rules, then lower-case, number words to digits, articles dropped, contractions table). When the
  humans agree, the raw strings are compared, so "two" against ten "2" scores 0;
- the comparison is exact (case-sensitive) string equality.
Scores are reported in percent, rounded to 2 decimals, as `overall`, `perAnswerType`, `perQuestionType`,
rounded as the official Python 2 code rounds: `round(100 * sum / n, 2)` on Python 2 takes the exact binary
value of the float and rounds halves away from zero (1 of 32 correct, 3.125, gives 3.13; Python 3's round()
would give 3.12). The answer processing itself is `shards.answers` (shared with training's VQA targets).
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from shards.answers import (  # noqa: F401  (re-exported: eval's public names)
    ARTICLES,
    CONTRACTIONS,
    NUMBER_WORDS,
    PUNCTUATION,
    normalize_answer,
    process_digit_article,
    process_punctuation,
)


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def question_accuracy(prediction: str, human_answers: list[str]) -> float:
    """Official accuracy of one prediction against the human answers, in [0, 1]."""
    if not human_answers:
        raise ValueError("question_accuracy: no human answers given")
    pred = _clean_whitespace(prediction)
    humans = [_clean_whitespace(a) for a in human_answers]
    if len(set(humans)) > 1:
        humans = [normalize_answer(a) for a in humans]
        pred = normalize_answer(pred)
    # Leave one annotator out at a time. The official code drops the answer *dict* equal to the held-out one;
    # VQAv2 answers carry distinct answer_ids, so that is exactly "drop position i".
    matches = [a == pred for a in humans]
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3.0) for m in matches) / len(humans)


@dataclass(frozen=True, kw_only=True)
class VQAQuestion:
    question_id: Any
    answers: tuple[str, ...]
    answer_type: str | None
    question_type: str | None


def _id_list(ids: Iterable[Any], limit: int = 10) -> str:
    ids = sorted(ids, key=lambda x: (str(type(x)), x))
    shown = ", ".join(repr(i) for i in ids[:limit])
    return f"{shown}{', ...' if len(ids) > limit else ''} ({len(ids)} in all)"


def questions_from_annotations(annotations: Mapping[str, Any] | list[Mapping[str, Any]],
                               questions: Mapping[str, Any] | list[Mapping[str, Any]] | None = None,
                               ) -> dict[Any, VQAQuestion]:
    """Index a VQAv2 annotation file (dict with "annotations", or its list) by question_id.

    When the questions file is given, its question ids must be exactly those of the annotations (the official
    tool pairs them one to one).
    """
    rows = annotations["annotations"] if isinstance(annotations, Mapping) else annotations
    out: dict[Any, VQAQuestion] = {}
    for i, row in enumerate(rows):
        for key in ("question_id", "answers"):
            if key not in row:
                raise ValueError(f"VQA annotation #{i} has no {key!r} field (VQAv2 annotation format expected)")
        qid = row["question_id"]
        if qid in out:
            raise ValueError(f"VQA annotations: question_id {qid!r} appears more than once")
        answers = tuple(a["answer"] if isinstance(a, Mapping) else a for a in row["answers"])
        if not answers or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"VQA annotations: question_id {qid!r} needs a non-empty list of string answers")
        out[qid] = VQAQuestion(question_id=qid, answers=answers, answer_type=row.get("answer_type"),
                               question_type=row.get("question_type"))
    if questions is not None:
        qrows = questions["questions"] if isinstance(questions, Mapping) else questions
        qids = {q["question_id"] for q in qrows}
        if qids != set(out):
            msg = ["VQA questions and annotations do not describe the same questions:"]
            if qids - set(out):
                msg.append(f"in questions only: {_id_list(qids - set(out))}")
            if set(out) - qids:
                msg.append(f"in annotations only: {_id_list(set(out) - qids)}")
            raise ValueError("; ".join(msg))
    return out


def _index_results(results: list[Mapping[str, Any]]) -> dict[Any, str]:
    if not isinstance(results, list):
        raise ValueError("VQA results must be a JSON list of {\"question_id\": ..., \"answer\": ...}")
    out: dict[Any, str] = {}
    duplicates = set()
    for i, row in enumerate(results):
        if not isinstance(row, Mapping) or "question_id" not in row or "answer" not in row:
            raise ValueError(f"VQA result #{i} must be an object with 'question_id' and 'answer', got {row!r}")
        qid, ans = row["question_id"], row["answer"]
        if not isinstance(ans, str):
            raise ValueError(f"VQA result for question_id {qid!r}: answer must be a string, got {ans!r}")
        if qid in out:
            duplicates.add(qid)
        out[qid] = ans
    if duplicates:
        raise ValueError(f"VQA results answer some questions more than once: {_id_list(duplicates)}")
    return out


def vqa_accuracy_per_question(results: list[Mapping[str, Any]],
                              questions: Mapping[Any, VQAQuestion]) -> dict[Any, float]:
    """Accuracy in [0, 1] for every question. Results must answer exactly the annotated questions."""
    answers = _index_results(results)
    missing, extra = set(questions) - set(answers), set(answers) - set(questions)
    if missing or extra:
        msg = []
        if missing:
            msg.append(f"no answer for question ids {_id_list(missing)}")
        if extra:
            msg.append(f"answers for question ids not in the annotations {_id_list(extra)}")
        raise ValueError("VQA results do not cover the annotated questions: " + "; ".join(msg))
    return {qid: question_accuracy(answers[qid], list(q.answers)) for qid, q in questions.items()}


def round_like_python2(x: float, ndigits: int = 2) -> float:
    """Python 2.7's round(): the float's exact binary value rounded to `ndigits`, halves away from zero."""
    q = Decimal(x).quantize(Decimal(1).scaleb(-ndigits), rounding=ROUND_HALF_UP)
    return float(q)


def _percent(values: list[float]) -> float:
    # The official expression, operation for operation: 100*float(sum(acc))/len(acc), then round(., 2).
    return round_like_python2(100 * float(sum(values)) / len(values), 2)


def vqa_scores(results: list[Mapping[str, Any]],
               annotations: Mapping[str, Any] | list[Mapping[str, Any]],
               questions: Mapping[str, Any] | list[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Official VQAv2 report: {"overall", "perAnswerType", "perQuestionType"} in percent, plus "num_questions"."""
    index = questions_from_annotations(annotations, questions)
    if not index:
        raise ValueError("VQA annotations contain no questions")
    acc = vqa_accuracy_per_question(results, index)
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    by_question_type: dict[str, list[float]] = defaultdict(list)
    for qid, q in index.items():
        # The official tool uses the raw field as dictionary key; JSON cannot carry a null key, so a missing
        # type is reported under "unknown".
        by_answer_type[q.answer_type or "unknown"].append(acc[qid])
        by_question_type[q.question_type or "unknown"].append(acc[qid])
    return {
        "overall": _percent(list(acc.values())),
        "perAnswerType": {k: _percent(v) for k, v in sorted(by_answer_type.items())},
        "perQuestionType": {k: _percent(v) for k, v in sorted(by_question_type.items())},
        "num_questions": len(acc),
    }


def _load_json(path: str | Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{what} file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} file {path} is not valid JSON: {e}") from None


def vqa_scores_from_files(results_path: str | Path, questions_path: str | Path,
                          annotations_path: str | Path) -> dict[str, Any]:
    """Score files in the official VQAv2 formats (results list, questions json, annotations json)."""
    return vqa_scores(_load_json(results_path, "VQA results"), _load_json(annotations_path, "VQA annotations"),
                      _load_json(questions_path, "VQA questions"))
