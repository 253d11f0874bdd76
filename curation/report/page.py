"""report.html: one self-contained page (inline CSS, images as data: URIs, no script, no network).

Built from stats.json, the SVG charts of `plots` and the thumbnails of `corpus_stats`; every number on
the page is read from the stats document, so the JSON twin always holds what the page shows.
"""

from __future__ import annotations

import base64
import html
import json
import os
from typing import Any

from . import plots as plots_mod

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3b5a;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px} header code{color:#cfe3ff}
nav{padding:8px 28px;background:#e9eef3;font-size:13px} nav a{margin-right:12px;color:#1f3b5a}
main{padding:8px 28px 40px;max-width:1400px}
section{background:#fff;border:1px solid #e2e2e2;border-radius:6px;padding:10px 18px 16px;margin:16px 0}
h2{font-size:18px;margin:6px 0 10px;color:#1f3b5a}
h3{font-size:14px;margin:12px 0 6px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#f1f5f9;border-radius:6px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:20px}
.plots{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure.plot{margin:0;max-width:640px} figure.plot img{max-width:100%;display:block}
figcaption{font-size:12px;color:#555}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
td,th{border-bottom:1px solid #eee;padding:3px 10px;text-align:left}
td.r{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f3f5f7}
.na{color:#8a5a00;background:#fff7e6;border:1px solid #f1d79a;padding:6px 10px;border-radius:4px}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.tile{background:#f7f7f7;border-radius:4px;padding:5px;font-size:11.5px}
.tile img{width:160px;height:160px;object-fit:contain;background:#ddd;display:block;margin:auto}
.strip{display:flex;gap:12px;align-items:flex-start;border-bottom:1px solid #eee;padding:8px 0}
.strip img{width:120px;height:120px;object-fit:contain;background:#ddd}
.dstrip{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;border-bottom:1px solid #eee;padding:8px 0}
.dstrip figure{margin:0;width:112px;font-size:11px;color:#555;overflow-wrap:anywhere}
.dstrip img{width:96px;height:96px;object-fit:contain;background:#ddd;display:block}
.dstrip figure.kept img{outline:3px solid #1f3b5a}
.chip{display:inline-block;background:#e3ecf7;border-radius:10px;padding:1px 8px;margin:2px;font-size:11px}
.muted{color:#777;font-size:12px}
.cols{display:flex;flex-wrap:wrap;gap:24px}
"""


def e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def n(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return e(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.4g}" if abs(x) < 1e4 else f"{x:,.0f}"
    return e(x)


def human_bytes(b: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if b < 1000 or unit == "TB":
            return f"{b:,.0f} {unit}" if unit == "B" else f"{b:,.1f} {unit}"
        b /= 1000
    return str(b)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(
        f'<td class="r">{n(c)}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool) else f"<td>{n(c)}</td>"
        for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def na(note: str | None) -> str:
    return f'<p class="na">Section not available: {e(note or "no data")}</p>'


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


class Page:
    def __init__(self, stats: dict[str, Any], thumbnails: dict[str, bytes], charts: dict[str, bytes]):
        self.s = stats
        self.thumbs = thumbnails
        self.charts = charts
        self.titles = {pid: title for pid, title, _ in plots_mod.PLOTS}

    def plot(self, pid: str, caption: str = "") -> str:
        chart = self.charts.get(pid)
        if chart is None:
            return ""
        cap = f"<figcaption>{e(caption)}</figcaption>" if caption else ""
        # An <img>, never inline <svg>: an image document runs no script and loads nothing, whatever the
        # caption words in its labels.
        return (f'<figure class="plot" id="plot-{pid}"><img alt="{e(self.titles[pid])}" '
                f'src="{data_uri(chart, "image/svg+xml")}">{cap}</figure>')

    def thumb(self, key: str) -> str:
        data = self.thumbs.get(key)
        if data is None:
            return '<div class="muted">(no thumbnail)</div>'
        return f'<img alt="sample {e(key)}" src="{data_uri(data, "image/jpeg")}">'

    # ----------------------------------------------------------------------------------- sections
    def overview(self) -> str:
        t = self.s["totals"]
        cards = [("images", n(t["images"])), ("caption pairs", n(t["pairs"])), ("QA pairs", n(t["qa_pairs"])),
                 ("images with captions", n(t["images_with_captions"])),
                 ("images with QA", n(t["images_with_qa"])), ("shards", n(t["shards"])),
                 ("image bytes", human_bytes(t["image_bytes"])), ("tar bytes", human_bytes(t["tar_bytes"])),
                 ("unreadable members", n(self.s["read_errors"]["skipped_total"]))]
        html_cards = "".join(f'<div class="card"><b>{v}</b>{e(k)}</div>' for k, v in cards)
        return f'<section id="overview"><h2>Overview</h2><div class="cards">{html_cards}</div></section>'

    def sources(self) -> str:
        sec = self.s["sources"]
        body = na(sec["note"]) if not sec["available"] else (
            self.plot("sources") +
            table(["source", "images", "caption pairs", "QA pairs"],
                  [[k, v["images"], v["pairs"], v["qa_pairs"]] for k, v in sec["per_source"].items()]) +
            f'<p class="muted">{n(sec["multi_source_images"])} images come from more than one source '
            f'and count under each.</p>')
        return f'<section id="sources"><h2>Per source</h2>{body}</section>'

    def funnel(self) -> str:
        sec = self.s["funnel"]
        if not sec["available"]:
            return f'<section id="funnel"><h2>Curation funnel</h2>{na(sec["note"])}</section>'
        t = sec["totals"]
        rows = [["rows in", "", "", t["rows_in"]]]
        for st in t["stages"]:
            if not st["dropped"]:
                rows.append([st["name"], "", 0, st["kept"]])
            for reason, v in st["dropped"].items():
                rows.append([st["name"], reason, v, st["kept"]])
        per_source = [[k, v["rows_in"], v["dropped"], v["kept"], v.get("balanced", "")]
                      for k, v in sec["sources"].items()]
        caps = [[st["name"], r, v] for st in t["stages"] for r, v in st.get("captions_dropped", {}).items()]
        extra = ""
        if caps:
            extra += "<h3>Captions dropped (the image lives on)</h3>" + table(["stage", "reason", "captions"], caps)
        if sec.get("dedup"):
            extra += "<h3>Deduplication counters</h3>" + table(["counter", "value"], list(sec["dedup"].items()))
        return (f'<section id="funnel"><h2>Curation funnel</h2><p class="muted">from {e(sec["path"])}: '
                f'{n(t["rows_in"])} rows in, {n(t["kept"])} kept, {n(t["dropped"])} dropped.</p>'
                f'<div class="cols"><div>{self.plot("funnel")}</div><div>'
                + table(["stage", "reason", "rows dropped", "remaining after stage"], rows)
                + "</div></div><h3>Per source</h3>"
                + table(["source", "rows in", "dropped", "kept", "balanced"], per_source) + extra + "</section>")

    def images(self) -> str:
        im = self.s["images"]
        rows = []
        for name in ("width", "height"):
            d = im[name]
            rows.append([name + " (px)"] + [d.get(k, "") for k in ("min", "p05", "median", "p95", "max", "mean")])
        b = im["bytes"]
        rows.append(["bytes", b["min"], "", "", "", b["max"], b["mean"]])
        fmt = ", ".join(f"{k}: {n(v)}" for k, v in im["formats"].items()) or "none readable"
        notes = (f'<p class="muted">Formats (from the image header): {e(fmt)}. '
                 f'Sizes read from the header where metadata lacked them: {n(im["size_from_image_header"])}; '
                 f'metadata size differing from the header: {n(im["size_metadata_mismatch"])}. '
                 f'Width and height are exact; aspect ratio and bytes use fixed bins.</p>')
        plots = "".join(self.plot(p) for p in ("width", "height", "aspect", "bytes"))
        return (f'<section id="images"><h2>Images</h2>{table(["", "min", "p5", "median", "p95", "max", "mean"], rows)}'
                f'{notes}<div class="plots">{plots}</div></section>')

    def captions(self) -> str:
        c = self.s["captions"]
        w = c["words"]["summary"]
        out = ['<section id="captions"><h2>Captions</h2>']
        if not w.get("count"):
            out.append(na("no captions in this shard set"))
        else:
            out.append(table(["length", "captions", "min", "median", "p95", "max", "mean"],
                             [["words", w["count"], w["min"], w["median"], w["p95"], w["max"], w["mean"]]]))
        tok = c["tokens"]
        plots = self.plot("caption_words")
        if tok["available"]:
            ts = tok["summary"]
            if ts.get("count"):
                out.append(table(["length", "captions", "min", "median", "p95", "max", "mean"],
                                 [["tokens", ts["count"], ts["min"], ts["median"], ts["p95"], ts["max"], ts["mean"]]]))
            out.append(f'<p>{n(tok["truncated"])} captions ({tok["truncated_share"] * 100:.2f} %) are longer than '
                       f'{tok["max_tokens"]} tokens and get truncated. Tokenizer: <code>{e(tok["tokenizer"])}</code></p>')
            plots += self.plot("caption_tokens")
        else:
            out.append(na(tok["note"]))
        out.append(f'<div class="plots">{plots}</div></section>')
        return "".join(out)

    def vocabulary(self) -> str:
        v = self.s["vocabulary"]
        if not v["total_words"]:
            return f'<section id="vocabulary"><h2>Words and bigrams</h2>{na("no caption words")}</section>'
        lim = 30
        tables = (f'<div><h3>Top words</h3>{table(["word", "count"], v["top_words"][:lim])}</div>'
                  f'<div><h3>Top content words</h3>{table(["word", "count"], v["top_content_words"][:lim])}</div>'
                  f'<div><h3>Top bigrams</h3>{table(["bigram", "count"], v["top_bigrams"][:lim])}</div>')
        return (f'<section id="vocabulary"><h2>Words and bigrams</h2><p class="muted">'
                f'{n(v["total_words"])} words ({n(v["distinct_words"])} distinct), {n(v["total_bigrams"])} bigrams '
                f'({n(v["distinct_bigrams"])} distinct); lower-cased, exact counts.</p>'
                f'<div class="plots">{self.plot("top_words")}{self.plot("top_bigrams")}</div>'
                f'<div class="cols">{tables}</div></section>')

    def duplicates(self) -> str:
        d = self.s["duplicates"]
        rem = d["remaining_exact"]
        ph = d["remaining_phash"]
        remaining = (f'<p>Identical images still in the corpus (same sha256): {n(rem["images_with_shared_sha256"])} '
                     f'hashes shared, {n(rem["extra_copies"])} extra copies. ')
        remaining += (f'Same perceptual hash: {n(ph["phash_values_shared"])} values shared, '
                      f'{n(ph["extra_copies"])} extra copies.</p>' if ph["available"] else
                      'Perceptual hashes: not stored in these shards.</p>')
        merged_strips = self.merged_cluster_strips(d.get("merged_clusters"))
        if not d["available"]:
            return (f'<section id="duplicates"><h2>Duplicates</h2>{na(d["note"])}{remaining}'
                    f'{merged_strips}</section>')
        strips = []
        for ex in d["examples"]:
            chips = "".join(f'<span class="chip">{e(s)}</span>' for s in ex["sources"])
            if ex.get("merged"):
                chips += '<br><span class="muted">merged records:</span> ' + "".join(
                    f'<span class="chip">{e(u)}</span>' for u in ex["merged"])
            if ex.get("other_urls"):
                chips += f'<span class="muted"> · {n(ex["other_urls"])} other URLs</span>'
            caps = "".join(f"<li>{e(c)}</li>" for c in ex["captions"])
            strips.append(f'<div class="strip">{self.thumb(ex["key"])}<div><b>cluster of {n(ex["cluster_size"])}</b>'
                          f' <span class="muted">key {e(ex["key"])}</span><br>{chips}<ul>{caps}</ul></div></div>')
        return (f'<section id="duplicates"><h2>Duplicates</h2><p>{n(d["merged_images"])} images were merged from '
                f'several source records ({n(d["records_merged_away"])} records folded into them; largest cluster '
                f'{n(d["largest_cluster"])}).</p>{remaining}<div class="cols"><div>{self.plot("cluster_sizes")}</div>'
                f'<div>{table(["cluster size", "images"], list(d["cluster_sizes"].items()))}</div></div>'
                f'<h3>Largest merged clusters</h3>{"".join(strips) or "<p>none</p>"}{merged_strips}</section>')

    def member_figure(self, m: dict[str, Any], label: str, css: str = "") -> str:
        thumb = self.thumbs.get(m.get("thumb") or "")
        img = (f'<img alt="{e(label)} {e(m.get("uid"))}" src="{data_uri(thumb, "image/jpeg")}">' if thumb
               else f'<div class="muted">(no thumbnail{": " + e(m["thumb_error"]) if m.get("thumb_error") else ""})</div>')
        srcs = ", ".join(f'{s.get("dataset")}:{s.get("id")}' for s in m.get("sources") or [] if isinstance(s, dict))
        size = f'{n(m.get("original_width"))}x{n(m.get("original_height"))}'
        return (f'<figure class="{css}" title="{e(m.get("url") or "")}">{img}<b>{e(label)}</b><br>'
                f'{e(srcs or m.get("uid"))}<br>{size} px'
                f'<br><span title="pHash">{e(m.get("phash"))}</span></figure>')

    def merged_cluster_strips(self, sec: dict[str, Any] | None) -> str:
        head = "<h3>Merged clusters, member by member</h3>"
        if not sec or not sec["available"]:
            return head + na((sec or {}).get("note") or "no dedup_examples.jsonl")
        strips = []
        for c in sec["clusters"]:
            figs = [self.member_figure(c["kept"], "kept", "kept")]
            figs += [self.member_figure(m, f'distance {m.get("distance")}') for m in c["members"]]
            more = c["num_members"] - len(c["members"])
            tail = f'<div class="muted">+{n(more)} more members</div>' if more > 0 else ""
            strips.append(f'<div class="dstrip"><div style="width:100%"><b>{n(c["num_members"] + 1)} records</b> '
                          f'<span class="muted">kept {e(c["cluster"])}; distance = Hamming distance of the '
                          f'pHash to the kept one</span></div>{"".join(figs)}{tail}</div>')
        note = (f'<p class="muted">{n(sec["shown"])} of the {n(sec["clusters_in_file"])} merged clusters sampled by '
                f'<code>curate run</code> (those whose kept uid hashes lowest: the same on every run), each member '
                f'as fetched, before the merge.' + (f' {n(sec["unreadable_lines"])} unreadable lines skipped.' if sec["unreadable_lines"]
                             else "") + "</p>")
        return head + note + ("".join(strips) or f'<p>{e(sec["note"] or "none")}</p>')

    def decontamination(self) -> str:
        d = self.s["decontamination"]
        if not d["available"]:
            return f'<section id="decontamination"><h2>Decontamination</h2>{na(d["note"])}</section>'
        recs = d.get("records_per_eval_set")
        if recs is not None:
            rows = [[k, v, recs.get(k, 0)] for k, v in d["per_eval_set"].items()]
            body = table(["eval set", "source rows dropped", "records dropped"], rows) if rows else "<p>none dropped</p>"
        else:
            rows = [[k, v] for k, v in d["per_eval_set"].items()]
            body = table(["eval set", "rows dropped"], rows) if rows else "<p>none dropped</p>"
        if d.get("by_reason"):
            body += "<h3>By check (funnel.json)</h3>" + table(["reason", "rows dropped"], list(d["by_reason"].items()))
        flagged = [[k, v] for k, v in d.get("flagged_in_samples", {}).items()]
        body += (
            "<h3>Kept samples flagged with an eval set</h3>" + table(["eval set", "samples"], flagged) if flagged else "")
        if d.get("funnel_eval_sets"):
            body += "<h3>eval_sets in funnel.json</h3>" + table(["eval set", "count"], list(d["funnel_eval_sets"].items()))
        return (f'<section id="decontamination"><h2>Decontamination</h2><div class="cols">'
                f'<div>{self.plot("decontamination")}</div><div>{body}</div></div></section>')

    def shards(self) -> str:
        sh = self.s["shards"]
        rows = sh["per_shard"]
        shown = rows if len(rows) <= 100 else sorted(rows, key=lambda r: r["samples"])[:50]
        note = "" if len(rows) <= 100 else f'<p class="muted">{len(rows):,} shards: the 50 smallest are listed.</p>'
        s = sh["samples"]
        summary = (f'<p>{n(len(rows))} shards, {n(sh["empty_shards"])} empty; samples per shard min {n(s.get("min", 0))}, '
                   f'median {n(s.get("median", 0))}, max {n(s.get("max", 0))}.</p>')
        names = [r["name"] for r in rows]
        prefix = os.path.commonpath(names) if len(names) > 1 else os.path.dirname(names[0]) if names else ""
        if prefix:
            note += f'<p class="muted">shard paths relative to <code>{e(prefix)}</code></p>'
        tab = table(["shard", "samples", "caption pairs", "QA pairs", "tar bytes", "image bytes"],
                    [[os.path.relpath(r["name"], prefix) if prefix else r["name"], r["samples"], r["pairs"], r["qa_pairs"], r["tar_bytes"], r["image_bytes"]]
                     for r in shown])
        return (f'<section id="shards"><h2>Shards</h2>{summary}<div class="plots">{self.plot("shard_samples")}'
                f'{self.plot("shard_bytes")}</div>{note}{tab}</section>')

    def read_errors(self) -> str:
        r = self.s["read_errors"]
        rows = [[k, v] for k, v in r["skipped"].items()]
        rows.append(["image header unreadable (sample kept, counted)", r["image_header_errors"]])
        ex = "".join(f"<li><code>{e(x)}</code></li>" for x in r["examples"])
        return (f'<section id="errors"><h2>Corrupt or unreadable members</h2>{self.plot("read_errors")}'
                f'{table(["reason", "count"], rows)}' + (f"<h3>First examples</h3><ul>{ex}</ul>" if ex else "")
                + "</section>")

    def contact_sheet(self) -> str:
        cs = self.s["contact_sheet"]
        tiles = []
        for smp in cs["samples"]:
            caps = "".join(f"<div>{e(c)}</div>" for c in smp["captions"][:2])
            more = smp["num_captions"] - min(2, len(smp["captions"]))
            qa = "".join(f'<div class="muted">Q: {e(q["question"])} A: {e(", ".join(map(str, q["answers"])))}</div>'
                         for q in smp["qa"][:1])
            tiles.append(f'<div class="tile">{self.thumb(smp["key"])}<div class="muted">{e(smp["key"])} '
                         f'{n(smp["width"])}x{n(smp["height"])}</div>{caps}'
                         + (f'<div class="muted">+{more} more captions</div>' if more > 0 else "") + qa + "</div>")
        return (f'<section id="samples"><h2>Random samples</h2><p class="muted">{len(tiles)} samples chosen by a '
                f'keyed hash of the sample key (seed {cs["seed"]}): the same on every run.</p>'
                f'<div class="sheet">{"".join(tiles)}</div></section>')

    def render(self) -> str:
        s = self.s
        parts = [self.overview(), self.sources(), self.funnel(), self.images(), self.captions(), self.vocabulary(),
                 self.duplicates(), self.decontamination(), self.shards(), self.read_errors(), self.contact_sheet()]
        nav = "".join(f'<a href="#{i}">{t}</a>' for i, t in (
            ("overview", "Overview"), ("sources", "Sources"), ("funnel", "Funnel"), ("images", "Images"),
            ("captions", "Captions"), ("vocabulary", "Words"), ("duplicates", "Duplicates"),
            ("decontamination", "Decontamination"), ("shards", "Shards"), ("errors", "Errors"),
            ("samples", "Samples")))
        spec = s["input"]["spec"]
        spec_txt = spec if isinstance(spec, str) else " ".join(map(str, spec))
        return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>vlfusion corpus report</title><style>{CSS}</style></head><body>"
                f"<header><h1>Corpus report</h1><div>shards: <code>{e(spec_txt)}</code> · "
                f"{n(s['input']['num_shards'])} shards · numbers in <code>stats.json</code></div></header>"
                f"<nav>{nav}</nav><main>{''.join(parts)}</main></body></html>")


def render_html(stats: dict[str, Any], thumbnails: dict[str, bytes], charts: dict[str, bytes] | None = None) -> str:
    charts = plots_mod.render_all(stats) if charts is None else charts
    # Round-trip through JSON first: the page must be renderable from stats.json alone.
    return Page(json.loads(json.dumps(stats)), thumbnails, charts).render()
