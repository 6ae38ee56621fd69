"""The vLLM releases we claim beside the installed CPU build (issue 21): each one's wheel,
downloaded from PyPI once into the wheel cache (~/.cache/vllm-responses/wheels, kept by CI) and
read in place without installing it, holds every symbol, attribute and signature on
src/vllm_responses/engine/vllm_surface.py's list, and vLLM's own ``/v1/responses`` accepts no parameter
we would answer with a 400 (0.33.0 added ``spaces_between_special_tokens``). 0.33.0's wheel is about 340 MB; the check itself
takes under a second. The same check for any release: ``make vllm-compat VLLM=0.34.0``."""

import pytest

from vllm_responses.engine.vllm_surface import SURFACE, WHEELS, check, wheel


@pytest.mark.parametrize("version", WHEELS)
def test_the_wheel_has_everything_we_use(version: str) -> None:
    report = check(wheel(version))
    assert report.version == version and report.checked == len(SURFACE) + 1  # and its /v1/responses parameters
    assert report.problems == [], report.text()
