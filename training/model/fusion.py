"""The fusion model: ViT image encoder + causal text tower + late-fusion cross-attention stack + LM head.

Objectives (weights in ModelConfig):
- lm / caption: next-token cross-entropy on tokens where loss_mask is True (the token at t predicted from <t);
- vqa: the same loss restricted to VQA rows (the tokenizer puts loss_mask on answer tokens + EOS only, so the
  question never contributes); VQA rows are named by the optional batch["task"] or batch["is_vqa"];
- itc: symmetric InfoNCE between the image class token and the text tower's last real token, projected into
  a shared space, with a learned temperature, over rows where itc_mask is True; rows sharing batch["image_id"]
  (captions of one image) are not negatives of each other. In training under torch.distributed (and
  cfg.itc_gather), the negatives are the rows of every data-parallel rank, not only the local micro-batch.

In training (`training.loop`) the token losses are normalised by the optimizer step's global count of each
task's target tokens (`LossNorm`, from `target_counts`), not by the micro-batch's own count, so the
gradient of a global batch does not depend on how it is split into ranks x accumulation x micro-batch.

Attention: batch["padding_side"] == "right" (every row's real tokens first; the trainer sets it after checking
the host copy of attention_mask) lets the text tower and fusion stack use plain causal attention with no
explicit mask, so fused (flash / memory-efficient) kernels can run. Causality already hides the pads that
follow a real token, real tokens keep positions 0..n-1, and no loss reads a pad position's output. Without
the flag (left-padded prompts, unknown layouts) the explicit padding mask is built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .gather import data_parallel_size, gather_rows, gather_rows_nograd
from .layers import CrossAttention, GeluMLP, KVCache, SelfAttention, gpt_init
from .text import TextTransformer, attention_inputs
from .vit import VisionEncoder

TASKS = ("caption", "vqa")


@dataclass(frozen=True)
class LossNorm:
    """One optimizer step's normalisation for `FusionModel.forward` (built by `training.loop`).

    denominators: float [3] = (caption, vqa, caption + vqa) target tokens of the whole step on all ranks,
    each clamped to >= 1 (a task absent from the step gives 0, not NaN), divided by the data-parallel world
    size because DDP/FSDP average gradients over ranks; micro_steps: accumulation steps in the step."""

    denominators: torch.Tensor
    micro_steps: int
PADDING_SIDES = ("right", "left")


class FusionLayer(nn.Module):
    """Causal self-attention over text, cross-attention to image tokens, MLP; pre-LayerNorm residuals."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        width = cfg.text_width
        self.norm1 = nn.LayerNorm(width)
        self.self_attn = SelfAttention(width, cfg.fusion_heads, bias=True)
        self.norm2 = nn.LayerNorm(width)
        self.cross_attn = CrossAttention(width, cfg.vision_width, cfg.fusion_heads)
        self.norm3 = nn.LayerNorm(width)
        self.mlp = GeluMLP(width, cfg.fusion_mlp_dim)

    def forward(self, x, image_tokens, *, mask=None, cache=None, cache_name=""):
        # x [B, T, C]; image_tokens [B, 1 + N, Wv]
        x = x + self.self_attn(
            self.norm1(x), mask=mask, is_causal=True, cache=cache, cache_name=f"{cache_name}.self"
        )
        x = x + self.cross_attn(self.norm2(x), image_tokens, cache=cache, cache_name=f"{cache_name}.cross")
        return x + self.mlp(self.norm3(x))


class FusionModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg)
        self.text = TextTransformer(cfg)
        self.fusion = nn.ModuleList(FusionLayer(cfg) for _ in range(cfg.fusion_depth))
        self.fusion_norm = nn.LayerNorm(cfg.text_width)
        # Tied head reuses text.embed_tokens.weight directly (no second entry in the state dict, so
        # safetensors can store it).
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.text_width, cfg.vocab_size, bias=False)
        self.image_proj = nn.Linear(cfg.vision_width, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)
        # 1 element, not 0-d: FSDP2 shards every parameter along dim 0 and refuses 0-d ones
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1.0 / cfg.itc_temperature)]))
        self.register_load_state_dict_pre_hook(_reshape_scalar_logit_scale)
        for module in (self.text, self.fusion, self.image_proj, self.text_proj):
            module.apply(gpt_init)
        if self.lm_head is not None:
            self.lm_head.apply(gpt_init)

    # ------------------------------------------------------------ pieces
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [..., C] -> [..., V]
        weight = self.text.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight)

    def decode(
        self,
        input_ids: torch.Tensor,  # long [B, T]
        image_tokens: torch.Tensor | None,  # [B, 1 + N, Wv]; None when the cache holds the image keys
        *,
        position_ids: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,  # bool [B, 1, T, L]
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (text tower output [B, T, C], fused hidden states [B, T, C] ready for the LM head)."""
        text_h = self.text(input_ids, position_ids=position_ids, mask=mask, cache=cache)
        h = text_h
        for i, layer in enumerate(self.fusion):
            h = layer(h, image_tokens, mask=mask, cache=cache, cache_name=f"fusion.{i}")
        return text_h, self.fusion_norm(h)

    def lm_logits(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        padding_side: str | None = None,
    ) -> torch.Tensor:
        """Next-token logits [B, T, V] (position t predicts token t + 1); for scoring and tests.

        padding_side="right" promises real tokens first in every row (see the module docstring); pad
        positions' logits then differ from the explicit-mask path, real positions' do not."""
        T, device = input_ids.shape[1], input_ids.device
        position_ids, mask = self._attention_inputs(attention_mask, padding_side, T, device)
        _, h = self.decode(input_ids, self.vision(images), position_ids=position_ids, mask=mask)
        return self.logits(h)

    # ------------------------------------------------------------ training forward
    def target_counts(self, batch: dict[str, Any]) -> torch.Tensor:
        """float [2]: (caption, vqa) target tokens in this batch, from its masks alone (no forward).

        The loop sums these over a step's micro-batches and all-reduces them once, before any forward, to
        get the `LossNorm` denominators; the reduction stays on the masks' device, so it needs no host sync."""
        caption_tokens, vqa_tokens = self._target_masks(batch)
        return torch.stack((caption_tokens.sum(), vqa_tokens.sum()))

    def forward(self, batch: dict[str, Any], norm: LossNorm | None = None) -> dict[str, torch.Tensor]:
        """batch: image float [B,3,S,S], input_ids long [B,T], attention_mask bool [B,T], loss_mask bool [B,T],
        itc_mask bool [B] (default all True); optional task list[str] ("caption"|"vqa") or is_vqa bool [B];
        optional image_id long [B]: rows with the same id show the same picture (several captions of one image),
        so the contrastive loss does not use them as negatives of each other.

        optional padding_side "right" | "left": "right" promises every row is real tokens then padding, which
        allows the maskless causal fast path (module docstring).

        Returns scalars: loss (weighted total), lm (all target tokens), caption, vqa, itc, itc_scale.
        Without `norm` each is this batch's own mean (evaluation, scoring). With `norm` (training) each is
        this micro-batch's share of the step's objective: token losses are sums over this batch's target
        tokens divided by the step's global count of that task's target tokens (per data-parallel rank, see
        `LossNorm`), and itc is divided by the number of micro-steps; summing them over micro-steps and
        averaging over ranks (what accumulation + DDP/FSDP do to gradients) gives the same objective however
        the global batch is split. Under contrastive gathering (`itc_gather`), itc on one rank is that rank's
        share scaled so that its mean over ranks is the loss of the concatenated batch (see `info_nce`)."""
        images, input_ids = batch["image"], batch["input_ids"]
        B, T = input_ids.shape
        device = input_ids.device
        attention_mask = batch.get("attention_mask")
        attention_mask = (
            torch.ones(B, T, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.bool()
        )
        position_ids, mask = self._attention_inputs(
            batch.get("attention_mask"), batch.get("padding_side"), T, device
        )

        image_tokens = self.vision(images)  # [B, 1 + N, Wv]
        text_h, h = self.decode(input_ids, image_tokens, position_ids=position_ids, mask=mask)  # [B, T, C]

        # next-token loss only where the target is marked; computed densely with per-token weights (no
        # boolean indexing: no host sync, static shapes for torch.compile)
        caption_tokens, vqa_tokens = self._target_masks(batch)  # float [B, T-1] each
        logits = self.logits(h[:, :-1]).float()  # [B, T-1, V]
        token_ce = F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")  # [B, T-1]
        caption_sum, vqa_sum = (token_ce * caption_tokens).sum(), (token_ce * vqa_tokens).sum()
        if norm is None:
            counts = torch.stack((caption_tokens.sum(), vqa_tokens.sum()))
            denominators = torch.cat((counts, counts.sum()[None])).clamp(min=1.0)  # empty selection -> 0
            itc_share = 1.0
        else:
            denominators, itc_share = norm.denominators.to(device), 1.0 / norm.micro_steps
        caption, vqa = caption_sum / denominators[0], vqa_sum / denominators[1]
        lm = (caption_sum + vqa_sum) / denominators[2]

        itc_mask = batch.get("itc_mask")
        itc_mask = torch.ones(B, dtype=torch.bool, device=device) if itc_mask is None else itc_mask.bool()
        last = (attention_mask.long() * torch.arange(T, device=device)).argmax(1)  # [B] last real token (EOS)
        itc, scale = self.contrastive_loss(
            image_tokens[:, 0], text_h[torch.arange(B, device=device), last], itc_mask, batch.get("image_id")
        )
        # ITC keeps its per-micro-batch mean (just split evenly over micro-steps): its value depends on
        # which rows are scored against each other, so no normalisation makes it independent of the split.
        # Its terms are one per row, not per token, and every micro-batch has the same number of rows, so
        # accumulation still weighs every row alike; only the set of negatives follows the micro-batch
        # (times the world size under itc_gather), as in CLIP/BLIP-style training.
        itc = itc * itc_share

        cfg = self.cfg
        loss = cfg.lm_loss_weight * caption + cfg.vqa_loss_weight * vqa + cfg.itc_loss_weight * itc
        return {"loss": loss, "lm": lm, "caption": caption, "vqa": vqa, "itc": itc, "itc_scale": scale.detach()}

    def _target_masks(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """float [B, T-1] each: caption-target and VQA-target positions (position t predicts token t + 1)."""
        input_ids = batch["input_ids"]
        B, T = input_ids.shape
        target = batch["loss_mask"].bool()
        if batch.get("attention_mask") is not None:
            target = target & batch["attention_mask"].bool()
        target = target[:, 1:].float()
        vqa = target * _vqa_rows(batch, B, input_ids.device).float()[:, None]
        return target - vqa, vqa

    def contrastive_loss(
        self,
        image_pooled: torch.Tensor,
        text_pooled: torch.Tensor,
        itc_mask: torch.Tensor,
        image_id: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(symmetric InfoNCE, scale) on the projected pooled features; see `info_nce`."""
        img = F.normalize(self.image_proj(image_pooled).float(), dim=-1)  # [B, E]
        txt = F.normalize(self.text_proj(text_pooled).float(), dim=-1)  # [B, E]
        scale = self.logit_scale.exp().clamp(max=100.0).squeeze(0)  # CLIP's cap keeps the temperature >= 0.01
        # training only: evaluation runs the same batches on every rank, and its loss should not depend on
        # the world size
        gather = self.cfg.itc_gather and self.training and data_parallel_size() > 1
        return info_nce(img, txt, scale, itc_mask, image_id, gather=gather), scale

    @staticmethod
    def _attention_inputs(
        attention_mask: torch.Tensor | None, padding_side: str | None, T: int, device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(position_ids, mask) for the text tower and fusion stack; (None, None) = plain causal attention
        with positions 0..T-1."""
        if padding_side is not None and padding_side not in PADDING_SIDES:
            raise ValueError(f"batch['padding_side']={padding_side!r} is not one of {list(PADDING_SIDES)}")
        if attention_mask is None or padding_side == "right":
            return None, None
        return attention_inputs(attention_mask, T, device)

    # ------------------------------------------------------------ loading and generation
    def load_mae_encoder(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load MAEPretrainer.encoder_state_dict() (or a full MAEPretrainer state dict) into self.vision.

        Refuses (ValueError) a checkpoint whose keys or shapes do not fit, listing every mismatch."""
        if any(k.startswith("encoder.") for k in state_dict):
            state_dict = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
        expected = self.vision.state_dict()
        problems = [f"missing {k}" for k in expected if k not in state_dict]
        problems += [f"unexpected {k}" for k in state_dict if k not in expected]
        problems += [
            f"{k}: checkpoint {list(v.shape)} vs model {list(expected[k].shape)}"
            for k, v in state_dict.items()
            if k in expected and v.shape != expected[k].shape
        ]
        if problems:
            c = self.cfg
            raise ValueError(
                "MAE encoder checkpoint does not fit this model's vision encoder "
                f"(image_size={c.image_size}, patch_size={c.patch_size}, vision_width={c.vision_width}, "
                f"vision_depth={c.vision_depth}, pos_embed={c.pos_embed!r}); was it trained with another "
                f"preset? {len(problems)} mismatch(es): " + "; ".join(problems[:20])
                + ("; ..." if len(problems) > 20 else "")
            )
        self.vision.load_state_dict(state_dict, strict=True)

    def generate(self, images: torch.Tensor, prompt_ids: Sequence[Sequence[int]], **kwargs: Any) -> list[list[int]]:
        """See training.model.generate.generate for the options."""
        from .generate import generate

        return generate(self, images, prompt_ids, **kwargs)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def info_nce(
    img: torch.Tensor,  # [B, E] unit vectors
    txt: torch.Tensor,  # [B, E] unit vectors; row i is the caption of image i
    scale: torch.Tensor,  # 0-d, 1 / temperature
    itc_mask: torch.Tensor,  # bool [B]
    image_id: torch.Tensor | None = None,  # long [B]
    *,
    gather: bool = False,
    group=None,
) -> torch.Tensor:
    """Symmetric InfoNCE over the rows where itc_mask is True; other rows are neither anchors nor negatives.

    With image_id, a pair (i, j != i) of rows showing the same picture is left out of both softmaxes: the
    loader yields one row per caption, so a batch often holds two captions (two crops) of one image, and
    pushing them apart as negatives would teach the model to tell apart texts that describe the same thing.
    Each row keeps its own pair as the one positive. Masking (instead of indexing) keeps every parameter in
    the graph with no host sync, which DDP needs when a batch happens to hold no caption rows.

    gather=True (torch.distributed initialised; every rank of `group` calls it with the same B and with
    image_id given on all or none): the columns are the W*B rows of all ranks, so each local image is scored
    against every rank's texts and each local text against every rank's images; image_id is global (a hash
    of the sample key), so captions of one picture on two ranks are not negatives either. Each rank returns

        W * (sum of its valid rows' terms) / (number of valid rows on all ranks)

    whose mean over ranks is exactly the single-process loss on the concatenated batch. The gather's backward
    sums every rank's gradient for the gathered columns, so the DDP/FSDP-averaged parameter gradient is that
    loss's gradient too (the W cancels the averaging's 1/W)."""
    B = img.shape[0]
    if gather:
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        cols = gather_rows(torch.cat((img, txt), dim=1), group)  # [W*B, 2E]: one collective for both towers
        img_cols, txt_cols = cols.split(img.shape[1], dim=1)
        meta = itc_mask.long()[:, None]  # masks and ids in one collective
        if image_id is not None:
            meta = torch.cat((meta, image_id.long()[:, None]), dim=1)
        meta = gather_rows_nograd(meta, group)  # [W*B, 1 or 2]
        valid_cols, id_cols = meta[:, 0] > 0, None if image_id is None else meta[:, 1]
    else:
        world, rank = 1, 0
        img_cols, txt_cols, valid_cols, id_cols = img, txt, itc_mask.bool(), image_id
    rows = rank * B + torch.arange(B, device=img.device)  # global index of each local row = its positive
    valid = itc_mask.bool()
    keep = valid[:, None] & valid_cols[None, :]  # [B, W*B]
    if image_id is not None:
        cols_index = torch.arange(len(valid_cols), device=img.device)
        same_picture = (image_id[:, None] == id_cols[None, :]) & (rows[:, None] != cols_index[None, :])
        keep = keep & ~same_picture
    i2t = (scale * img @ txt_cols.t()).masked_fill(~keep, -1e4)  # finite, so excluded rows give 0 * finite
    t2i = (scale * txt @ img_cols.t()).masked_fill(~keep, -1e4)  # (keep is symmetric on the full matrix)
    per_row = F.cross_entropy(i2t, rows, reduction="none") + F.cross_entropy(t2i, rows, reduction="none")
    total_valid = valid_cols.float().sum().clamp(min=1.0)  # an empty selection gives 0, not NaN
    return world * (per_row / 2 * valid.float()).sum() / total_valid


def _reshape_scalar_logit_scale(module, state_dict, prefix, *args) -> None:
    # checkpoints written before logit_scale became 1-element hold it 0-d; same value, so accept them
    key = prefix + "logit_scale"
    value = state_dict.get(key)
    if value is not None and value.ndim == 0:
        state_dict[key] = value.reshape(1)


def _vqa_rows(batch: dict[str, Any], B: int, device: torch.device) -> torch.Tensor:
    if "is_vqa" in batch:
        return torch.as_tensor(batch["is_vqa"], device=device).bool()
    tasks = batch.get("task")
    if tasks is None:
        return torch.zeros(B, dtype=torch.bool, device=device)
    if len(tasks) != B or any(t not in TASKS for t in tasks):
        raise ValueError(f"batch['task'] must list one of {list(TASKS)} per row ({B} rows), got {list(tasks)!r}")
    return torch.tensor([t == "vqa" for t in tasks], dtype=torch.bool, device=device)
