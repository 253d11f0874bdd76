"""`curate stats SHARDS --out DIR`: wired into `curate` by curation/cli.py."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", nargs="+",
                        help="shard set: corpus dir, manifest.json, shards dir, brace pattern, glob or tars "
                             "(ours or img2dataset's)")
    parser.add_argument("--out", required=True, help="directory for report.html and stats.json")
    parser.add_argument("--tokenizer", default=None,
                        help="SentencePiece model: adds caption lengths in tokens and the share truncated")
    parser.add_argument("--max-tokens", type=int, default=77, help="context length (default: %(default)s)")
    parser.add_argument("--funnel", default=None,
                        help="funnel.json (default: the one beside the shards' corpus directory, if any)")
    parser.add_argument("--dedup-examples", default=None,
                        help="dedup_examples.jsonl of `curate run` (default: the one beside the funnel, if any)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    parser.add_argument("--samples", type=int, default=24, help="contact-sheet size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="picks the contact-sheet samples")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip checking tar sizes and sha256 against the manifest")
    parser.add_argument("--screenshot", default=None, metavar="PNG",
                        help="also render the page in headless Chromium and save a PNG of it")


def run(args: argparse.Namespace) -> int:
    from . import build_report

    spec = args.shards[0] if len(args.shards) == 1 else args.shards

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\rcurate stats: {done}/{total} shards", end="" if done < total else "\n", file=sys.stderr)

    try:
        paths = build_report(spec, args.out, tokenizer=args.tokenizer, funnel=args.funnel,
                             dedup_examples=args.dedup_examples, workers=args.workers,
                             seed=args.seed, contact_sheet_size=args.samples, max_tokens=args.max_tokens,
                             verify=args.verify, progress=progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"curate stats: error: {e}", file=sys.stderr)
        return 2
    print(f"stats: {paths.stats}")
    print(f"report: {paths.html}")
    if args.screenshot:
        from .browser import BrowserError, screenshot
        try:
            print(f"screenshot: {screenshot(paths.html, args.screenshot)}")
        except BrowserError as e:
            print(f"curate stats: error: {e}", file=sys.stderr)
            return 1
    return 0
