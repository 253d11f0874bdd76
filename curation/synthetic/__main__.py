"""`python -m curation.synthetic build DIR --base-url URL` / `serve DIR --port P`.

`build` writes the test sources under DIR with URLs pointing at --base-url (default http://127.0.0.1:8000);
`serve` then serves DIR/web with the fault paths on that port, in the foreground, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from curation.synthetic.server import FaultServer
from curation.synthetic.sources import SCALES, make_sources


def _scale(value: str) -> str | int:
    if value in SCALES:
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--scale must be one of {sorted(SCALES)} or an int, got {value!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m curation.synthetic", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    build = verbs.add_parser("build", help="write the synthetic sources and ground_truth.json under DIR")
    build.add_argument("dir", type=Path)
    build.add_argument("--base-url", default="http://127.0.0.1:8000", help="URL prefix the sources point at")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--scale", type=_scale, default="small", help="tiny | small | number of pictures")
    serve = verbs.add_parser("serve", help="serve DIR/web with fault injection until interrupted")
    serve.add_argument("dir", type=Path)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--slow-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)

    if args.verb == "build":
        info = make_sources(args.dir, seed=args.seed, scale=args.scale, base_url=args.base_url)
        print(f"wrote {len(info.files)} files under {info.root} (ground truth: {info.ground_truth})")
        return 0
    web = args.dir / "web"
    if not web.is_dir():
        print(f"serve: {web} does not exist; run `build {args.dir}` first", file=sys.stderr)
        return 2
    server = FaultServer(web, host=args.host, port=args.port, slow_seconds=args.slow_seconds)
    print(f"serving {web} at {server.base_url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
