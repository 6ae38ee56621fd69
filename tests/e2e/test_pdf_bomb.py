"""A PDF bomb against the real server (issue 24): a ~100 KB PDF whose one compressed content
stream, shared by 500 pages, takes pypdf about 1 s a page (about 10 minutes of CPU unbounded)
answers a 400 ``file_too_complex`` naming the part within its budget
(``VLLM_RESPONSES_FILE_PARSE_SECONDS``, 10 s by default), while ``/health`` and another
client's response go on being answered."""

import threading
import time

import httpx
from media import assert_error, b64, file, pdf_bomb, post, text, user

HEALTH_BOUND_S = 3.0
ANSWER_BOUND_S = 30.0


def test_a_pdf_bomb_is_a_quick_400_and_the_server_stays_responsive(base_url: str) -> None:
    bomb = pdf_bomb()
    health: list[float] = []  # seconds each /health took while the bomb was read
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=60) as http:
            while not done.is_set():
                start = time.monotonic()
                try:
                    http.get(f"{base_url}/health").raise_for_status()
                    health.append(time.monotonic() - start)
                except httpx.HTTPError:
                    health.append(float("inf"))
                done.wait(0.2)

    others: list[tuple[int, float]] = []  # another client's streamed responses meanwhile: status, seconds

    def other_client() -> None:
        while len(health) < 2 and not done.is_set():  # the bomb is being read
            done.wait(0.05)
        while not done.is_set():
            start = time.monotonic()
            r = post(base_url, user(text("Hello")), stream=True)
            others.append((r.status_code, time.monotonic() - start))
            done.wait(0.5)

    threads = [threading.Thread(target=poll), threading.Thread(target=other_client)]
    for thread in threads:
        thread.start()
    start = time.monotonic()
    try:
        r = httpx.post(
            f"{base_url}/v1/responses/input_tokens",
            json={"model": "demo", "input": user(text("Summarize."), file("bomb.pdf", b64(bomb)))},
            timeout=ANSWER_BOUND_S * 2,
        )
        answered = time.monotonic() - start
    finally:
        done.set()
        for thread in threads:
            thread.join()
        print(f"\nbomb ({len(bomb):,} bytes): answered in {time.monotonic() - start:.1f} s; /health polled "
              f"{len(health)} times meanwhile, slowest {max(health, default=0):.3f} s, "
              f"median {sorted(health)[len(health) // 2] if health else 0:.3f} s; another client's streamed "
              f"responses meanwhile: {len(others)}, slowest {max((s for _, s in others), default=0):.2f} s")
    message = assert_error(r, "input[0].content[1]", "file_too_complex")
    assert "too complex" in message
    assert answered < ANSWER_BOUND_S
    assert len(health) >= 5 and max(health) < HEALTH_BOUND_S, health
    assert others and all(status == 200 and s < HEALTH_BOUND_S * 5 for status, s in others), others
    # The bomb sent again is refused at once (its verdict is kept by the content's hash).
    again = time.monotonic()
    assert_error(post(base_url, user(file("bomb.pdf", b64(bomb)))), "input[0].content[0]", "file_too_complex")
    assert time.monotonic() - again < ANSWER_BOUND_S / 3
