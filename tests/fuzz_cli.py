"""`make fuzz`: the schemathesis CLI against a real server, our routes only, for a while.

Starts the users' command (as tests/server.py does, with ``--max-model-len`` so that every
generation stays short), runs every schemathesis phase (examples, coverage, fuzzing, and the
stateful phase that follows the schema's links) until ``--seconds`` are spent, with the hooks
of fuzz_hooks.py and the configuration in fuzz.toml, then checks that the server logged no
traceback. Exit status: the CLI's, or 1 for a traceback.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from server import running

HERE = Path(__file__).resolve().parent
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=600, help="time budget of the schemathesis run")
    parser.add_argument("--seed", type=int, default=9008)
    parser.add_argument("--report-dir", type=Path, default=None, help="where schemathesis writes its JUnit report")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="fuzz-"))
    report = args.report_dir or base / "report"
    with running(plugin=True, log_path=base / "server.log", args=["--max-model-len", "512"]) as srv:
        cmd = [
            str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(HERE / "fuzz.toml"),
            "run", f"{srv.base_url}/openapi.json",
            "--include-path-regex", r"^/v1/(responses|conversations)",
            "--checks", CHECKS,
            "--phases", "examples,coverage,fuzzing,stateful",
            "--max-time", str(args.seconds),
            "--seed", str(args.seed),
            "--request-timeout", "120",
            "--workers", "2",
            "--generation-database", "none",
            "--report", "junit", "--report-dir", str(report),
        ]  # fmt: skip
        print(" ".join(cmd), flush=True)
        code = subprocess.run(cmd, env={**os.environ, "SCHEMATHESIS_HOOKS": str(HERE / "fuzz_hooks.py")}, check=False).returncode
        log = srv.log_path.read_text(errors="replace")  # before the stop, whose engine shutdown vLLM logs with a traceback
    tracebacks = log.count("Traceback")
    print(f"server log: {base / 'server.log'} ({tracebacks} tracebacks); report: {report}")
    return code or (1 if tracebacks else 0)


if __name__ == "__main__":
    sys.exit(main())
