"""The `xdlm-tune` command line."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xdlm-tune", description="Turn a pretrained LLM into an XDLM diffusion sampler.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the end-to-end demo run by `make demo`")
    demo.add_argument("--steps", type=int, default=300)
    demo.add_argument("--k", type=float, default=0.1)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .core_demo import main as core_demo

        core_demo(steps=args.steps, k=args.k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
