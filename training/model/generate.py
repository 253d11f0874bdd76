"""Greedy and beam-search decoding for captioning and VQA, with a key-value cache.

Prompts of different lengths are left-padded; positions count real tokens only, so padding changes nothing.
The image is encoded once and each cross-attention layer's image keys/values are cached with the text keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .layers import KVCache, causal_mask

if TYPE_CHECKING:
    from .fusion import FusionModel


class _Decoder:
    """Holds the growing sequences [R, L] and returns next-token logits, with or without a KV cache."""

    def __init__(self, model: FusionModel, image_tokens: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor,
                 use_cache: bool) -> None:
        self.model, self.image_tokens, self.ids, self.valid = model, image_tokens, ids, valid
        self.cache = KVCache() if use_cache else None
        self.num_fed = 0  # tokens already in the cache

    def next_logits(self) -> torch.Tensor:  # [R, V] for the last position
        L = self.ids.shape[1]
        position_ids = (self.valid.long().cumsum(1) - 1).clamp(min=0)  # [R, L]
        if self.cache is None:  # recompute everything: the reference the cache must match
            _, h = self.model.decode(
                self.ids, self.image_tokens, position_ids=position_ids, mask=causal_mask(self.valid, L)
            )
        else:
            start = self.num_fed
            _, h = self.model.decode(
                self.ids[:, start:],
                self.image_tokens if start == 0 else None,
                position_ids=position_ids[:, start:],
                mask=causal_mask(self.valid, L - start),
                cache=self.cache,
            )
            self.num_fed = L
        return self.model.logits(h[:, -1]).float()

    def append(self, tokens: torch.Tensor) -> None:  # tokens long [R]
        self.ids = torch.cat((self.ids, tokens[:, None]), dim=1)
        self.valid = torch.cat((self.valid, torch.ones_like(self.valid[:, :1])), dim=1)

    def reorder(self, index: torch.Tensor) -> None:  # index long [R]: row r continues row index[r]
        self.ids, self.valid = self.ids.index_select(0, index), self.valid.index_select(0, index)
        self.image_tokens = self.image_tokens.index_select(0, index)
        if self.cache is not None:
            self.cache.reorder(index)


def banned_tokens(generated: list[int], ngram_size: int) -> set[int]:
    """Tokens that would repeat an n-gram already present in `generated` (the repetition guard)."""
    if ngram_size <= 0 or len(generated) < ngram_size - 1:
        return set()
    if ngram_size == 1:
        return set(generated)
    prefix = tuple(generated[len(generated) - ngram_size + 1:])
    return {
        generated[i + ngram_size - 1]
        for i in range(len(generated) - ngram_size + 1)
        if tuple(generated[i:i + ngram_size - 1]) == prefix
    }


@torch.no_grad()
def generate(
    model: FusionModel,
    images: torch.Tensor,  # [B, 3, S, S]
    prompt_ids: Sequence[Sequence[int]],  # B prompts, e.g. [[BOS]] for captions
    *,
    eos_id: int,
    max_new_tokens: int = 30,
    beam_size: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    use_cache: bool = True,
    pad_id: int = 0,
    force_beam: bool = False,
) -> list[list[int]]:
    """Returns, per prompt, the generated tokens after the prompt, without the final EOS.

    beam_size=1 is greedy decoding; `force_beam=True` runs the beam-search code even then (it must agree
    with greedy, which the tests check).

    Decoding stops at EOS, after max_new_tokens, or when the sequence reaches cfg.max_len. Beam search ranks
    finished hypotheses by sum log-prob / (number of generated tokens incl. EOS) ** length_penalty and stops
    for an image once beam_size hypotheses have finished and no live beam, normalised at its current length,
    scores above the beam_size-th best of them. no_repeat_ngram_size > 0 forbids repeating any
    n-gram of the generated text (the prompt is exempt, so an answer may reuse the question's words)."""
    B = len(prompt_ids)
    if B == 0:
        return []
    if images.shape[0] != B:
        raise ValueError(f"{images.shape[0]} images but {B} prompts")
    if beam_size < 1 or max_new_tokens < 0:
        raise ValueError(f"beam_size={beam_size} must be >= 1 and max_new_tokens={max_new_tokens} >= 0")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token (BOS)")
    longest = max(len(p) for p in prompt_ids)
    if longest > model.cfg.max_len:
        raise ValueError(f"a prompt has {longest} tokens, more than max_len={model.cfg.max_len}")
    max_new_tokens = min(max_new_tokens, model.cfg.max_len - longest)
    if max_new_tokens == 0:
        return [[] for _ in range(B)]

    decoder = _start(model, images, prompt_ids, beam_size, use_cache, pad_id)
    if beam_size == 1 and not force_beam:
        return _greedy(decoder, B, eos_id, max_new_tokens, no_repeat_ngram_size)
    return _beam(decoder, B, beam_size, eos_id, max_new_tokens, length_penalty, no_repeat_ngram_size)


def _start(model, images, prompt_ids, K: int, use_cache: bool, pad_id: int) -> _Decoder:
    """Left-pads the prompts, repeats each K times (one row per beam) and encodes the images once."""
    device = images.device
    longest = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids) * K, longest), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros_like(ids, dtype=torch.bool)
    for b, prompt in enumerate(prompt_ids):
        rows = slice(b * K, (b + 1) * K)
        ids[rows, longest - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long, device=device)
        valid[rows, longest - len(prompt):] = True
    image_tokens = model.vision(images).repeat_interleave(K, dim=0)  # [B*K, 1 + N, Wv]
    return _Decoder(model, image_tokens, ids, valid, use_cache)


def _log_probs(decoder: _Decoder, generated: list[list[int]], ngram_size: int) -> torch.Tensor:
    logp = F.log_softmax(decoder.next_logits(), dim=-1)  # [R, V]
    if ngram_size > 0:
        for r, tokens in enumerate(generated):
            banned = banned_tokens(tokens, ngram_size)
            if banned:
                logp[r, list(banned)] = float("-inf")
    return logp


def _greedy(decoder: _Decoder, B: int, eos_id: int, max_new: int, ngram_size: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    for _ in range(max_new):
        tokens = _log_probs(decoder, out, ngram_size).argmax(-1)  # [B]
        for b, tok in enumerate(tokens.tolist()):
            if not done[b]:
                if tok == eos_id:
                    done[b] = True
                else:
                    out[b].append(tok)
        if all(done):
            break
        decoder.append(tokens)
    return out


def _beam(
    decoder: _Decoder, B: int, K: int, eos_id: int, max_new: int, length_penalty: float, ngram_size: int
) -> list[list[int]]:
    device = decoder.ids.device
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: only the first may expand, or we'd get K copies
    hyps: list[list[int]] = [[] for _ in range(B * K)]  # generated tokens per row
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B

    def normalised(score: float, length: int) -> float:
        return score / max(length, 1) ** length_penalty

    for _ in range(max_new):
        logp = _log_probs(decoder, hyps, ngram_size)  # [B*K, V]
        V = logp.shape[-1]
        cand = (scores[:, :, None] + logp.view(B, K, V)).view(B, K * V)
        top_scores, top_ids = cand.topk(min(2 * K, K * V), dim=1)  # 2K: enough to refill K after EOS picks
        top_scores, top_ids = top_scores.tolist(), top_ids.tolist()
        new_scores = torch.full((B, K), float("-inf"), device=device)
        source = [b * K for b in range(B) for _ in range(K)]  # row each new beam continues
        new_tokens = [eos_id] * (B * K)
        new_hyps: list[list[int]] = [[] for _ in range(B * K)]
        for b in range(B):
            if done[b]:
                continue
            n = 0
            for rank, (score, flat) in enumerate(zip(top_scores[b], top_ids[b])):
                if score == float("-inf") or n == K:
                    break
                k, tok = divmod(flat, V)
                row = b * K + k
                if tok == eos_id:
                    if rank < K:  # an EOS below the top K would not have been a beam either
                        finished[b].append((normalised(score, len(hyps[row]) + 1), hyps[row]))
                    continue
                new_scores[b, n] = score
                source[b * K + n], new_tokens[b * K + n] = row, tok
                new_hyps[b * K + n] = hyps[row] + [tok]
                n += 1
            if len(finished[b]) >= K:
                # Done only when no live beam can still win (the usual beam-search test, as in Hugging Face's
                # default: a live beam's score normalised at its current length against the K-th best finished
                # one). Stopping at the first K finished hypotheses would let low-probability beams that
                # happen to end early (a stray EOS after one piece) end the search before the best beam has
                # finished, and return their truncated text.
                kth = sorted((f[0] for f in finished[b]), reverse=True)[K - 1]
                live = [normalised(float(new_scores[b, m]), len(new_hyps[b * K + m])) for m in range(n)]
                if not live or max(live) <= kth:
                    done[b] = True
        if all(done):
            break
        decoder.reorder(torch.tensor(source, device=device))
        decoder.append(torch.tensor(new_tokens, device=device))
        scores, hyps = new_scores, new_hyps

    results = []
    for b in range(B):
        pool = list(finished[b])
        if not done[b]:  # ran out of length: unfinished beams compete too
            pool += [
                (normalised(float(scores[b, k]), len(hyps[b * K + k])), hyps[b * K + k])
                for k in range(K)
                if scores[b, k] > float("-inf")
            ]
        results.append(max(pool, key=lambda item: item[0])[1] if pool else [])
    return results
