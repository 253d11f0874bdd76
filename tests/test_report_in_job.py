"""The report `curate run` computes inside its Beam job: partials from the samples a writer writes equal those
read back from the tar, and the Beam merge (`ReportInJob`) plus the driver's `finish_report` give exactly the
files `curate stats` writes. (End to end through `curate run`: tests/test_curation_pipeline.py.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

import apache_beam as beam

from curation.report import build_report
from curation.report.in_job import ReportInJob
from curation.report.merge import SmallStats, assemble_stats
from curation.report.output import finish_report
from curation.report.shard_stats import BIG_COUNTERS, PartialBuilder, StatsConfig, shard_partial
from curation.report.sketches import KeySummary
from curation.synthetic.corpus import make_corpus, make_funnel, make_sample, sample_drop_events
from shards import ShardRef, ShardWriter, resolve


def test_partial_from_written_samples_equals_the_shard_read_back(tmp_path):
    rng = random.Random(7)
    samples = [make_sample(rng, f"t:{i}") for i in range(40)]
    # What `curate run`'s records carry, in the types a writer may hold them: merged uids as a tuple (JSON makes
    # it a list, which is what counts the cluster), other URLs, an eval-set flag, a size left to the header.
    samples[0].extra.update(merged=("u1", "u2", "u3"), other_urls=["http://127.0.0.1/o.jpg"])
    samples[1].extra["eval_set"] = "vqav2"
    samples[2].width = samples[2].height = 0
    cfg = StatsConfig(contact_sheet_size=5, num_cluster_examples=3)
    with ShardWriter(str(tmp_path), 0) as w:
        builder = PartialBuilder(w.base + ".tar", cfg)
        for s in samples:
            w.write(s)
            builder.add_written(s)
    written = builder.finish(tar_bytes=w.info.bytes)
    read = shard_partial(ShardRef(str(tmp_path / "00000.tar")), cfg)
    assert written == read
    assert written["samples"] == 40 and written["tar_bytes"] == (tmp_path / "00000.tar").stat().st_size
    assert written["cluster_sizes"][4] >= 1 and written["eval_flags"] == {"vqav2": 1}
    assert written["size_from_header"] == 1 and len(written["sheet"]) == 5 and len(written["clusters"]) == 3


def test_merge_order_does_not_change_the_numbers(tmp_path):
    corpus = make_corpus(tmp_path / "c", num_shards=5, per_shard=12, seed=11)
    cfg = StatsConfig(top_k=4, contact_sheet_size=7, num_cluster_examples=2)
    partials = [shard_partial(r, cfg) for r in resolve(str(corpus))]

    def stats(groups: list[list[int]]) -> dict:
        smalls, sums = [], []
        for g in groups:
            small = SmallStats(cfg)
            counts = {n: {} for n in BIG_COUNTERS}
            for i in g:
                small.add(partials[i])
                for n in BIG_COUNTERS:
                    for k, v in partials[i][n].items():
                        counts[n][k] = counts[n].get(k, 0) + v
            smalls.append(small)
            sums.append(counts)
        # keys summed over every group first (what CombinePerKey(sum) does), then summarised in pieces
        total = {n: {} for n in BIG_COUNTERS}
        for counts in sums:
            for n in BIG_COUNTERS:
                for k, v in counts[n].items():
                    total[n][k] = total[n].get(k, 0) + v
        summaries = {}
        for n in BIG_COUNTERS:
            pieces = [KeySummary(cfg.top_k) for _ in groups]
            for j, (k, v) in enumerate(sorted(total[n].items())):
                pieces[j % len(pieces)].add(k, v)
            for p in pieces[1:]:
                pieces[0].merge(p)
            summaries[n] = pieces[0].result()
        for s in smalls[1:]:
            smalls[0].merge(s)
        return assemble_stats(smalls[0], summaries, spec_desc="x", num_shards=5, funnel=None, funnel_path=None).stats

    one = stats([[0, 1, 2, 3, 4]])
    assert one == stats([[4, 1], [3], [0, 2]]) == stats([[2], [0], [1], [3], [4]])
    assert one["totals"]["images"] == 60 and len(one["vocabulary"]["top_words"]) == 4


def test_in_job_report_equals_curate_stats(tmp_path):
    """Partials through Beam (DirectRunner), then the driver's final render with the funnel: stats.json and
    report.html byte for byte those of `curate stats` on the same shards."""
    corpus = make_corpus(tmp_path / "c", num_shards=4, per_shard=25, seed=3, funnel=make_funnel(*sample_drop_events()))
    cfg = StatsConfig(top_k=5, workers=1)
    partials = [shard_partial(r, cfg) for r in resolve(str(corpus))]
    job = tmp_path / "job"
    with beam.Pipeline("DirectRunner") as p:
        _ = p | beam.Create(partials) | ReportInJob(str(job), cfg, spec=str(corpus), render=False)
    assert not (job / "report.html").exists() and (job / "thumbnails.json").is_file()
    finish_report(str(job), funnel_path=str(corpus / "funnel.json"), dedup_examples_path=None, cfg=cfg)
    ref = build_report(str(corpus), str(tmp_path / "ref"), workers=1, top_k=5)
    got, want = json.loads((job / "stats.json").read_text()), json.loads(Path(ref.stats).read_text())
    assert got == want
    assert got["totals"]["images"] == 100 and got["funnel"]["available"] and len(got["vocabulary"]["top_words"]) == 5
    assert (job / "stats.json").read_bytes() == Path(ref.stats).read_bytes()
    assert (job / "report.html").read_bytes() == Path(ref.html).read_bytes()


def test_in_job_report_of_nothing(tmp_path):
    """An empty corpus still gets its report (zeros, every section present)."""
    cfg = StatsConfig()
    with beam.Pipeline("DirectRunner") as p:
        _ = p | beam.Create([]) | ReportInJob(str(tmp_path), cfg, spec="empty")
    s = json.loads((tmp_path / "stats.json").read_text())
    assert s["totals"]["images"] == 0 and s["vocabulary"]["distinct_words"] == 0 and s["shards"]["per_shard"] == []
    assert (tmp_path / "report.html").stat().st_size > 1000
