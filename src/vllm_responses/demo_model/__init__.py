"""A tiny scripted Llama checkpoint that real vLLM serves deterministically.

``python -m vllm_responses.demo_model OUTDIR`` writes the checkpoint
(:func:`vllm_responses.demo_model.build.build`); the scenarios it plays are
defined in :mod:`vllm_responses.demo_model.scenarios` (see
``docs/demo-model.md``).
"""

from .scenarios import SCENARIO_LIST, SCENARIOS, Scenario, ToolCall, select_scenario

__all__ = ["SCENARIOS", "SCENARIO_LIST", "Scenario", "ToolCall", "select_scenario"]
