"""CLI: ``python -m vllm_responses.demo_model OUTDIR``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_responses.demo_model",
        description="Write the scripted demo checkpoint (served by vLLM with "
        "--reasoning-parser qwen3 --tool-call-parser hermes).",
    )
    parser.add_argument("outdir", help="directory to write the checkpoint into")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)

    from .build import build

    result = build(args.outdir)
    if not args.quiet:
        d = result.dims
        print(
            f"wrote {result.outdir} in {result.seconds:.1f}s: vocab {d['vocab_size']}, "
            f"hidden {d['hidden_size']}, mlp {d['intermediate_size']}, "
            f"{len(result.plan.mode_tokens)} modes, {len(result.plan.pairs)} pair units"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
