"""`curate`: build a corpus (`run`), report on any shard set (`stats`), train its tokenizer
(`tokenizer`), and build or serve the generated test sources (`sources build|serve`)."""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module holding add_arguments(parser) and run(args) -> int, one-line help)
VERBS = {
    "run": ("curation.run_cmd", "run the Beam curation pipeline described by a TOML config"),
    "stats": ("curation.report.cli", "write an HTML report and stats.json for a shard set"),
    "tokenizer": ("curation.tokenizer", "train a SentencePiece tokenizer on a corpus's captions"),
}
# Verbs whose arguments go unchanged to a module's own main(argv).
PASSTHROUGH = {
    "sources": ("curation.synthetic.__main__",
                "build or serve the generated test sources (CC3M/CC12M/COCO/VG/VQAv2 formats, fault server)"),
}


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (_module, help_text) in PASSTHROUGH.items():
        sub.add_parser(verb, help=help_text, description=help_text + "; see `curate sources -h`",
                       add_help=False)
    for verb, (module, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Only the chosen verb's module is imported: `curate stats` need not load Beam.
        if verb == chosen:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after a bare `--` belongs to Beam, unchanged.
    beam_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, beam_args = argv[:i], argv[i + 1:]
    if argv and argv[0] in PASSTHROUGH:
        module = importlib.import_module(PASSTHROUGH[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(chosen).parse_args(argv)
    args.beam_args = beam_args
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
