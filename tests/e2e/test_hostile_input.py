"""The bad input matrix's e2e subset against the real server (tests/bad_input_cases.py):
exact OpenAI errors from the real engine too (context overflow, vLLM's own checks), hostile
but valid input answered, no traceback in the log, and the server still serves."""

import httpx

from bad_input_cases import ACCEPTED, CASES, NORMAL, Case
from probes import server_log


def _request(client: httpx.Client, case: Case) -> httpx.Response:
    return client.request(case.method, case.path, content=case.content(), headers={"content-type": "application/json"})


def test_hostile_input_gets_openai_errors_and_the_server_keeps_serving(server, base_url):
    start = server.log_path.stat().st_size
    wrong: list[str] = []
    with httpx.Client(base_url=base_url, timeout=600) as client:
        for case in [c for c in CASES if c.e2e]:
            r = _request(client, case)
            try:
                error = r.json()["error"]
                got = (r.status_code, error["type"], error["param"], error["code"])
                shaped = set(error) == {"message", "type", "param", "code"} and bool(error["message"])
            except (ValueError, KeyError, TypeError):
                got, shaped = (r.status_code, r.text[:200]), False
            if got != (case.status, case.type, case.param, case.code) or not shaped:
                wrong.append(f"{case.name}: want {(case.status, case.type, case.param, case.code)}, got {got}")
        for case in [c for c in ACCEPTED if c.e2e]:
            r = _request(client, case)
            if r.status_code != 200 or r.json().get("status") not in ("completed", "incomplete"):
                wrong.append(f"{case.name}: want 200 completed, got {r.status_code} {r.text[:200]}")
        normal = client.post("/v1/responses", json=NORMAL)
    assert not wrong, "\n".join(wrong)
    assert normal.status_code == 200, normal.text
    assert normal.json()["status"] in ("completed", "incomplete")
    log = server_log(server.log_path).read_bytes()[start:]
    assert b"Traceback" not in log, log.decode(errors="replace")[-4000:]
