"""Our ``VLLM_RESPONSES_*`` variables declared to vLLM by the general plugin (environment.py):
vLLM's own environment check, run before any endpoint plugin loads, passes them."""

import os
from collections.abc import Iterator
from importlib.metadata import entry_points

import pytest
from vllm import envs
from vllm.platforms.interface import Platform

from vllm_responses import environment
from vllm_responses.environment import NAMES, declare_to_vllm
from vllm_responses.settings import Settings


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """vLLM's registry of variable names, a copy for this test; every VLLM_ variable unset but ours."""
    registry = dict(envs.environment_variables)
    for name in NAMES:
        registry.pop(name, None)
    monkeypatch.setattr(envs, "environment_variables", registry)
    for name in [n for n in os.environ if n.startswith("VLLM_")]:
        monkeypatch.delenv(name)
    for name in NAMES:
        monkeypatch.setenv(name, "1")
    yield registry


def test_vllm_refuses_our_variables_undeclared(registry: dict) -> None:
    with pytest.raises(ValueError, match="Unknown vLLM environment variable detected: VLLM_RESPONSES_"):
        Platform.validate_environ(hard_fail=True)


def test_declared_they_pass_vllms_check_and_a_misspelt_one_does_not(registry: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    declare_to_vllm()
    declare_to_vllm()  # vLLM loads general plugins in several places; a second call changes nothing
    Platform.validate_environ(hard_fail=True)
    monkeypatch.setenv("VLLM_RESPONSES_STOER", "sqlite:///tmp/x.db")
    with pytest.raises(ValueError, match="VLLM_RESPONSES_STOER"):
        Platform.validate_environ(hard_fail=True)


def test_their_values_stay_out_of_vllms_compile_cache_key(registry: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    declare_to_vllm()
    before = envs.compile_factors()
    monkeypatch.setenv(environment.STORE, "redis://elsewhere:6379/0")
    monkeypatch.setenv(environment.REASONING_KEYS, "c2VjcmV0LWtleS1vZi0zMi1ieXRlcy0xMjM0NTY3ODk=")
    assert envs.compile_factors() == before
    assert all(envs.compile_factors()[name] is None for name in NAMES)


def test_a_name_vllm_already_has_is_left_alone(registry: dict) -> None:
    def theirs() -> str:
        return "vllm's"

    registry[environment.LEASE] = theirs
    declare_to_vllm()
    assert registry[environment.LEASE] is theirs


def test_every_declared_name_is_one_settings_reads() -> None:
    read: list[str] = []

    class Recording(dict):
        def get(self, name: str, default: object = None) -> object:
            read.append(name)
            return super().get(name, default)

    Settings.from_env(Recording())
    assert set(read) == set(NAMES)


def test_the_general_plugin_is_registered_under_the_endpoint_plugins_name() -> None:
    """One ``VLLM_PLUGINS=responses`` allows both (vLLM filters every group by name)."""
    (general,) = [ep for ep in entry_points(group="vllm.general_plugins") if ep.value.startswith("vllm_responses.")]
    (endpoint,) = [ep for ep in entry_points(group="vllm.endpoint_plugins") if ep.value.startswith("vllm_responses.")]
    assert general.name == endpoint.name == "responses"
    assert general.load() is declare_to_vllm


def test_a_vllm_without_the_registry_still_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM calls general plugins unguarded in every process: ours must never raise."""
    monkeypatch.delattr(envs, "environment_variables")
    declare_to_vllm()
