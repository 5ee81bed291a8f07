"""``python -m system run | verify | dump --data-dir D``: the demo workload and its checker."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import NoReturn

from . import _demo
from ._config import MODES
from ._errors import PoolBroken, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m system", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run the demo workload (resumes after any crash)")
    run.add_argument("--data-dir", required=True)
    run.add_argument("--workers", type=_positive, default=4)
    run.add_argument("--messages", type=_positive, default=10_000)
    run.add_argument("--keys", type=_positive, default=100)
    run.add_argument("--mode", choices=MODES, default="process")
    run.add_argument(
        "--partitions",
        type=_positive,
        default=None,
        help="fixed for a data dir (default 64 for a new one)",
    )
    run.add_argument("--durability", choices=("fsync", "process"), default="fsync")
    run.add_argument(
        "--rate",
        type=_positive,
        default=None,
        help="submit at most this many messages per second (default: as fast as "
        "the pool takes them)",
    )
    run.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds to drain on SIGTERM/SIGINT before killing workers",
    )
    for name, text in [
        ("verify", "check every key's state is exactly its payloads, in order"),
        ("dump", "print every key's committed state as one JSON object"),
        ("dead-letters", "list the dead-lettered messages with their reasons"),
    ]:
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--data-dir", required=True)
        if name == "dead-letters":
            cmd.add_argument("--json", action="store_true", help="as a JSON list")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        if args.command == "run":
            return asyncio.run(
                _demo.run(
                    args.data_dir,
                    workers=args.workers,
                    messages=args.messages,
                    keys=args.keys,
                    mode=args.mode,
                    partitions=args.partitions,
                    durability=args.durability,
                    grace=args.grace,
                    rate=args.rate,
                )
            )
        if args.command == "verify":
            return _demo.verify(args.data_dir)
        if args.command == "dead-letters":
            return _demo.dead_letters(args.data_dir, args.json)
        if args.command == "dead-letters":
            return _demo.dead_letters(args.data_dir, args.json)
        return _demo.dump(args.data_dir)
    except UsageError as e:
        print(f"python -m system {args.command}: error: {e}", file=sys.stderr)
        return 2
    except PoolBroken as e:
        print(f"python -m system {args.command}: the pool broke: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
