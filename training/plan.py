"""Batch arithmetic: global batch = world size x micro-batch x accumulation steps.

`make_plan` refuses any combination that does not divide exactly, because a silently
rounded batch changes the recipe (learning rate and schedule are tuned for the global batch).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from training.config import RunConfig


@dataclass(kw_only=True, frozen=True)
class BatchPlan:
    nnodes: int
    nproc_per_node: int
    world_size: int
    micro_batch: int              # samples per device per micro-step
    grad_accum: int
    global_batch: int             # samples per optimizer step
    tokens_per_step: int          # text positions per optimizer step (max_tokens each, padding included)
    corpus_samples: int | None    # training samples in one pass (captions + QA pairs), if known
    steps_per_pass: float | None
    total_steps: int
    corpus_unknown: str | None = None   # why the corpus size is unknown, when it is

    def lines(self) -> list[str]:
        out = [
            f"nodes x processes per node   {self.nnodes} x {self.nproc_per_node} = world size {self.world_size}",
            f"micro-batch per device       {self.micro_batch}",
            f"accumulation steps           {self.grad_accum}",
            f"global batch                 {self.world_size} x {self.micro_batch} x {self.grad_accum} = {self.global_batch}",
            f"samples per optimizer step   {self.global_batch}",
            f"tokens per optimizer step    {self.tokens_per_step}",
        ]
        if self.steps_per_pass is not None:
            out.append(f"samples in corpus            {self.corpus_samples}")
            out.append(f"steps per pass over corpus   {self.steps_per_pass:.1f}")
            out.append(f"passes in the run            {self.total_steps / self.steps_per_pass:.2f}"
                       f" ({self.total_steps} steps)")
        else:
            out.append(f"steps in the run             {self.total_steps}")
            out.append(f"corpus size unknown          {self.corpus_unknown}")
        return out


def micro_batch_for(cfg: RunConfig, world_size: int) -> int:
    b = cfg.batch
    per_micro_step = world_size * b.grad_accum
    if b.global_batch % per_micro_step:
        raise ValueError(
            f"batch.global_batch={b.global_batch} is not divisible by world size {world_size} x "
            f"batch.grad_accum={b.grad_accum} = {per_micro_step}; pick a global batch that is a multiple "
            f"of {per_micro_step} or change the accumulation steps")
    micro = b.global_batch // per_micro_step
    if b.micro_batch and b.micro_batch != micro:
        raise ValueError(
            f"batch.micro_batch={b.micro_batch} disagrees with global_batch {b.global_batch} / "
            f"(world {world_size} x accum {b.grad_accum}) = {micro}; set micro_batch = 0 to derive it")
    return micro


def make_plan(cfg: RunConfig, *, nnodes: int = 1, nproc_per_node: int = 1) -> BatchPlan:
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(f"--nnodes and --nproc-per-node must be >= 1, got {nnodes} and {nproc_per_node}")
    world = nnodes * nproc_per_node
    micro = micro_batch_for(cfg, world)
    corpus, unknown = corpus_sample_count(cfg)
    return BatchPlan(
        nnodes=nnodes, nproc_per_node=nproc_per_node, world_size=world, micro_batch=micro,
        grad_accum=cfg.batch.grad_accum, global_batch=cfg.batch.global_batch,
        tokens_per_step=cfg.batch.global_batch * cfg.data.max_tokens,
        corpus_samples=corpus, steps_per_pass=(corpus / cfg.batch.global_batch) if corpus else None,
        total_steps=cfg.schedule.total_steps, corpus_unknown=unknown)


def corpus_sample_count(cfg: RunConfig) -> tuple[int | None, str | None]:
    """(samples in one pass, None) counted the way the loader expands them (one per caption / QA pair,
    one per image for MAE), or (None, why not).

    Reads each shard's counts through `shards.read_shard_stats`: from the manifest when data.shards names
    a corpus with one (no per-shard I/O), else one small `_stats.json` per shard (150k requests for 150M
    rows in shards of 1,000 on object storage: name the corpus directory, not a pattern, there). A plan
    is arithmetic and may be made where the corpus is not: a missing corpus or stats make the size
    unknown, with the reason printed; they are errors at `train launch`.
    """
    from shards import ReadCounters, read_shard_stats, resolve

    if not cfg.data.shards:
        return None, "data.shards is empty"
    try:
        refs = resolve(cfg.data.shards, ReadCounters())
    except FileNotFoundError:
        return None, f"no shards at data.shards={cfg.data.shards!r} here"
    if not refs:
        return None, f"data.shards={cfg.data.shards!r} names no shard"
    total = 0
    for ref in refs:
        try:
            info = read_shard_stats(ref)
        except (FileNotFoundError, ValueError) as e:
            return None, str(e)
        if cfg.stage == "mae":
            total += info.num_samples
        else:
            total += info.num_pairs * cfg.data.include_captions + info.num_qa * cfg.data.include_qa
    if not total:
        return None, f"the {len(refs)} shard(s) of data.shards hold no {cfg.stage}-stage sample"
    return total, None


def plan_dict(plan: BatchPlan) -> dict:
    d = asdict(plan)
    d["steps_per_pass"] = None if plan.steps_per_pass is None else round(plan.steps_per_pass, 3)
    return d


