"""CLI: ``python -m vllm_responses.demo_model OUTDIR [--family NAME]``."""

from __future__ import annotations

import argparse
import shlex
import sys

from .scenarios import DEFAULT_FAMILY, FAMILIES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_responses.demo_model",
        description="Write the scripted demo checkpoint of a model family, served by vLLM "
        "with that family's parsers (default: qwen3, served with "
        "--reasoning-parser qwen3 --tool-call-parser hermes).",
    )
    parser.add_argument("outdir", nargs="?", help="directory to write the checkpoint into")
    parser.add_argument(
        "--family",
        default=DEFAULT_FAMILY,
        choices=list(FAMILIES),
        help="the model family whose markup and tokens the checkpoint follows",
    )
    parser.add_argument(
        "--print-parser-args",
        action="store_true",
        help="print the family's vLLM parser flags and exit",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    family = FAMILIES[args.family]
    if args.print_parser_args:
        print(shlex.join(family.parser_args))
        return 0
    if not args.outdir:
        parser.error("OUTDIR is required")

    from .build import build

    result = build(args.outdir, family)
    if not args.quiet:
        d = result.dims
        print(
            f"wrote {result.outdir} ({family.name}: {family.title}) in {result.seconds:.1f}s: "
            f"vocab {d['vocab_size']}, hidden {d['hidden_size']}, mlp {d['intermediate_size']}, "
            f"{len(result.plan.mode_tokens)} modes, {len(result.plan.pairs)} pair units; "
            f"serve with {shlex.join(family.parser_args)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
