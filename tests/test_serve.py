"""The champion over HTTP (`sentiment serve`, MLflow's scoring app behind limits): raw reviews in,
the in-process answers out; hostile requests get short 4xx/503 answers and leave memory as it was."""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest

from pipeline.http_server import first_answer_after, model_server, post_json, rss_kib, stalled_connections
from pipeline.serve import InputError, review_texts

REVIEWS = [
    "One of the best films I have seen, wonderful acting and a moving story.",
    "Terrible. Boring plot, awful acting, I walked out.",
    "",
    "x " * 500_000,  # 1 MB: keeps its last max_len tokens
]


def test_review_texts_names_the_bad_row_or_the_missing_column():
    assert review_texts(pd.DataFrame({"text": ["a", ""]})) == ["a", ""]
    assert review_texts({"text": np.array(["a"], dtype=object)}) == ["a"]
    with pytest.raises(InputError, match="row 1: 'text' must be a string, got a missing value"):
        review_texts(pd.DataFrame({"text": ["a", None]}))
    with pytest.raises(InputError, match="row 0: 'text' must be a string, got int"):
        review_texts([3])
    with pytest.raises(InputError, match="no 'text' column"):
        review_texts(pd.DataFrame({"review": ["a"]}))


@pytest.fixture(scope="module")
def registered(tmp_path_factory, sample_data):
    from registered_model import register_tiny_model

    return register_tiny_model(tmp_path_factory.mktemp("serve"), sample_data)


@pytest.fixture(scope="module")
def server(registered, tmp_path_factory):
    log_file = tmp_path_factory.mktemp("serve-log") / "server.log"
    with model_server(registered.champion_uri, registered.cfg.tracking.tracking_uri, log_file) as running:
        yield running.url


@pytest.mark.integration
def test_both_payload_formats_answer_like_the_in_process_model(registered, server):
    expected = registered.score_in_process(REVIEWS)
    payloads = [
        {"dataframe_split": {"columns": ["text"], "data": [[text] for text in REVIEWS]}},
        {"inputs": REVIEWS},
    ]
    for payload in payloads:
        status, body = post_json(f"{server}/invocations", payload)
        assert status == 200, body
        answer = pd.DataFrame(body["predictions"])
        np.testing.assert_allclose(answer["probability"], expected["probability"], atol=1e-6, rtol=0)
        assert list(answer["label"]) == list(expected["label"])


@pytest.mark.integration
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"inputs": ["fine", None]}, "text"),
        ({"dataframe_split": {"columns": ["text"], "data": [["fine"], [None]]}}, "text"),
        ({"inputs": [1, 2]}, "text"),
        ({"dataframe_split": {"columns": ["review"], "data": [["fine"]]}}, "text"),
        (b"{not json", ""),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message_and_the_server_keeps_answering(server, payload, message):
    status, answer = post_json(f"{server}/invocations", payload)
    assert 400 <= status < 500, answer
    assert message in answer.get("message", "")
    ok, _ = post_json(f"{server}/invocations", {"inputs": ["still there?"]})
    assert ok == 200


# The project off the path: the consumer's interpreter has MLflow and TensorFlow, not this repo.
_CLEAN_LOAD = """
import importlib.util, json, sys
sys.path = [p for p in sys.path if p not in ("", ".") and p != {root!r} and "__editable__" not in p]
sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
assert importlib.util.find_spec("pipeline") is None, "the project is still importable"
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model({path!r})
print(json.dumps(model.predict(pd.DataFrame({{"text": {reviews!r}}}))["probability"].tolist()))
"""


@pytest.mark.integration
def test_a_consumer_without_the_project_loads_the_model_and_gets_the_same_answers(registered, tmp_path):
    import json
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])
    path = registered.stores.download_model(registered.champion_uri)
    script = _CLEAN_LOAD.format(root=root, path=path, reviews=REVIEWS[:3])
    done = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    expected = registered.score_in_process(REVIEWS[:3])["probability"]
    np.testing.assert_allclose(answers, expected, atol=1e-6, rtol=0)


# A registry consumer scoring many reviews of many lengths: every (rows, width) shape the scorer has.
_QUIET_LOAD = """
import json, sys
sys.path = [p for p in sys.path if p not in ("", ".") and p != {root!r} and "__editable__" not in p]
sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model({path!r})
for size in (1, 9, 70, 600):
    model.predict(pd.DataFrame({{"text": json.load(open({reviews!r}))[:size]}}))
"""
TF_NATIVE_LINE = re.compile(r"(?:[IWEF]\d{4} |WARNING: All log messages before absl)")


@pytest.mark.integration
def test_a_consumer_of_the_model_sees_no_tensorflow_noise_and_no_retracing(registered, tmp_path):
    """Issue 23: ``load_model(...).predict(...)`` printed TensorFlow's C++ lines (oneDNN, CPU
    features, XLA service, compiled cluster) and two ``tf.function retracing`` warnings."""
    import os
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])
    path = registered.stores.download_model(registered.champion_uri)
    texts = tmp_path / "reviews.json"
    texts.write_text(json.dumps(reviews(registered, 600, chars=3000)))
    script = _QUIET_LOAD.format(root=root, path=path, reviews=str(texts))
    consumer_environment = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    done = subprocess.run(
        [sys.executable, "-I", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=consumer_environment,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    noise = [line for line in done.stderr.splitlines() if "retracing" in line or TF_NATIVE_LINE.match(line)]
    assert not noise, done.stderr[-3000:]


@pytest.mark.integration
def test_sentiment_serve_starts_the_scoring_server_for_the_champion(registered, tmp_path):
    import subprocess
    import sys

    from pipeline.http_server import free_port, wait_for_ping

    port, log_file = free_port(), tmp_path / "serve.log"
    command = [str(Path(sys.executable).parent / "sentiment"), "serve", "--port", str(port)]
    command += [
        "--tracking-uri",
        registered.stores.tracking_uri,
        "--model-name",
        registered.cfg.tracking.model_name,
    ]
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_ping(url, process, log_file, 120)
        status, body = post_json(f"{url}/invocations", {"inputs": REVIEWS[:2]})
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert status == 200, body
    expected = registered.score_in_process(REVIEWS[:2])["probability"]
    np.testing.assert_allclose(pd.DataFrame(body["predictions"])["probability"], expected, atol=1e-6, rtol=0)
    assert f"serving {registered.champion_uri}" in log_file.read_text()


# --- limits: a server with small ones, and the hostile requests of the issue, scaled down ----------

LIMITS = {"max_body_bytes": 65_536, "max_reviews": 50, "max_review_chars": 1000, "max_concurrency": 2}
LIMITS |= {"request_timeout": 2}
JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def limited(registered, tmp_path_factory):
    """``sentiment serve`` with LIMITS: yields (url, process id)."""
    log_file = tmp_path_factory.mktemp("limited-log") / "server.log"
    tracking_uri = registered.cfg.tracking.tracking_uri
    with model_server(registered.champion_uri, tracking_uri, log_file, **LIMITS) as running:
        yield running


def raw_post(url: str, body: bytes | Iterable[bytes], headers: dict[str, str]) -> tuple[int, dict, bytes]:
    """POST exactly these headers (no Content-Type unless given); an iterable body goes chunked."""
    address = urlparse(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    try:
        connection.request("POST", "/invocations", body, headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def reviews(registered, count: int, chars: int = 900) -> list[str]:
    """``count`` real test reviews of at most ``chars`` characters: 50 make a body under 64 KiB."""
    texts = registered.data.test_texts
    return [texts[i % len(texts)][:chars] for i in range(count)]


def over_the_limit(url: str) -> list[int]:
    """A body one byte over the limit (Content-Length), a 1 MB one, and a chunked one."""
    limit = LIMITS["max_body_bytes"]
    chunks = (b" " * 16_384 for _ in range(limit // 16_384 + 2))
    bodies: list[bytes | Iterable[bytes]] = [b" " * (limit + 1), b" " * 1_000_000, chunks]
    return [raw_post(f"{url}/invocations", body, JSON_HEADERS)[0] for body in bodies]


def burst(url: str, payloads: list[dict]) -> list[tuple[int, dict, bytes]]:
    """The payloads sent together, one client each (127.0.0.1)."""
    start = threading.Barrier(len(payloads))

    def one(payload: dict) -> tuple[int, dict, bytes]:
        start.wait(timeout=30)
        return raw_post(f"{url}/invocations", json.dumps(payload).encode(), JSON_HEADERS)

    with ThreadPoolExecutor(len(payloads)) as pool:
        return list(pool.map(one, payloads))


def bad_row_batch(registered, row: int) -> dict:
    texts: list[str | None] = list(reviews(registered, LIMITS["max_reviews"]))
    texts[row] = None
    return {"inputs": texts}


@pytest.mark.integration
def test_a_body_over_the_limit_gets_413_naming_the_limit(limited):
    assert over_the_limit(limited.url) == [413, 413, 413]
    status, _, body = raw_post(f"{limited.url}/invocations", b" " * 65_537, JSON_HEADERS)
    assert status == 413
    assert "65536" in json.loads(body)["message"] and "max_body_bytes" in json.loads(body)["message"]


@pytest.mark.integration
def test_more_reviews_than_the_limit_get_413(registered, limited):
    status, answer = post_json(f"{limited.url}/invocations", {"inputs": ["fine"] * 51})
    assert status == 413 and "max_reviews" in answer["message"]
    rows = {"dataframe_split": {"columns": ["text"], "data": [["fine"]] * 51}}
    assert post_json(f"{limited.url}/invocations", rows)[0] == 413
    assert post_json(f"{limited.url}/invocations", {"inputs": reviews(registered, 50)})[0] == 200


@pytest.mark.integration
def test_a_request_without_content_type_is_read_as_json(registered, limited):
    status, _, body = raw_post(f"{limited.url}/invocations", json.dumps({"inputs": REVIEWS[:2]}).encode(), {})
    assert status == 200, body
    expected = registered.score_in_process(REVIEWS[:2])["probability"]
    answer = pd.DataFrame(json.loads(body)["predictions"])["probability"]
    np.testing.assert_allclose(answer, expected, atol=1e-6, rtol=0)


@pytest.mark.integration
def test_a_bad_row_in_a_big_batch_gets_a_short_400_naming_it(registered, limited):
    payload = bad_row_batch(registered, row=37)
    status, _, body = raw_post(f"{limited.url}/invocations", json.dumps(payload).encode(), JSON_HEADERS)
    assert status == 400
    assert len(body) < 1024, body[:300]
    assert "row 37" in json.loads(body)["message"]
    text = body.decode()
    assert not any(word in text for word in ("Traceback", "stack_trace", ".py", "/site-packages", "Failed"))
    assert not any(review[:40] in text for review in payload["inputs"] if review)


@pytest.mark.integration
def test_a_burst_beyond_max_concurrency_gets_503_and_nothing_else_fails(registered, limited):
    texts = reviews(registered, 50)
    answers = burst(limited.url, [{"inputs": texts[i:] + texts[:i]} for i in range(12)])
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
    expected = registered.score_in_process(texts)["probability"].to_numpy()
    for i, (status, _, body) in enumerate(answers):  # scored together or alone: its own rows back
        if status == 200:
            scored = pd.DataFrame(json.loads(body)["predictions"])["probability"]
            np.testing.assert_allclose(scored, np.roll(expected, -i), atol=1e-6, rtol=0)
    busy = [(headers, body) for status, headers, body in answers if status == 503]
    assert all(
        "retry-after" in map(str.lower, headers) and b"max_concurrency" in body for headers, body in busy
    )


@pytest.mark.integration
def test_a_long_review_scores_like_its_last_max_review_chars_characters(registered, limited):
    long_review = " ".join(registered.data.test_texts)[:5000]
    status, answer = post_json(f"{limited.url}/invocations", {"inputs": [long_review, "fine"]})
    assert status == 200, answer
    expected = registered.score_in_process([long_review[-LIMITS["max_review_chars"] :], "fine"])
    answer_frame = pd.DataFrame(answer["predictions"])
    np.testing.assert_allclose(answer_frame["probability"], expected["probability"], atol=1e-6, rtol=0)


@pytest.mark.integration
def test_memory_returns_near_its_warm_size_after_hostile_requests(registered, limited):
    invocations = f"{limited.url}/invocations"
    for text in REVIEWS[:3]:
        assert post_json(invocations, {"inputs": [text[:1000]]})[0] == 200
    assert post_json(invocations, {"inputs": reviews(registered, 50)})[0] == 200
    warm = rss_kib(limited.pid)

    assert over_the_limit(limited.url) == [413, 413, 413]
    no_type = raw_post(invocations, json.dumps({"inputs": reviews(registered, 50)}).encode(), {})
    assert no_type[0] == 200
    assert post_json(invocations, bad_row_batch(registered, row=3))[0] == 400
    assert {status for status, _, _ in burst(limited.url, [bad_row_batch(registered, 9)] * 12)} <= {400, 503}

    after = rss_kib(limited.pid)
    assert after <= 1.10 * warm, f"RSS {after} KiB after the hostile requests, {warm} KiB warm"
    assert post_json(invocations, {"inputs": ["Still answering after all that?"]})[0] == 200


@pytest.mark.integration
def test_concurrent_requests_scored_together_each_get_their_own_answers(registered, server):
    texts = reviews(registered, 30, chars=3000)  # several length buckets
    payloads = [
        {"inputs": texts[i:] + texts[:i]} for i in range(6)
    ]  # under the default max_concurrency: all admitted
    expected = registered.score_in_process(texts)["probability"].to_numpy()
    for i, (status, _, body) in enumerate(burst(server, payloads)):
        assert status == 200, body[:300]
        scored = pd.DataFrame(json.loads(body)["predictions"])["probability"]
        np.testing.assert_allclose(scored, np.roll(expected, -i), atol=1e-6, rtol=0)


@pytest.mark.integration
def test_clients_that_stall_mid_request_get_408_and_free_their_slots(limited):
    """32 clients that send headers (and a body byte, or none) and stall take every slot; within
    request_timeout they get 408 (or, beyond max_concurrency, 503) and are dropped, and others get
    in. So are 8 that stall halfway through their headers (no slot, but a connection each)."""
    clients = stalled_connections(limited.url, 32, half_headers=8)
    try:
        status, waited, _ = first_answer_after(limited.url, {"inputs": ["Still answering?"]}, bound=15)
        assert status == 200, f"{status} after {waited:.1f} s with 32 stalled clients"
        assert waited < LIMITS["request_timeout"] + 5
        answers = []
        for client in clients:
            client.settimeout(10)
            answers.append(client.recv(4096))  # blocks until the server answers or closes
        assert all(answer == b"" or answer.startswith((b"HTTP/1.1 408", b"HTTP/1.1 503")) for answer in answers)
        timed_out = [answer for answer in answers if answer.startswith(b"HTTP/1.1 408")]
        assert len(timed_out) >= 2 + 8 and all(b"request_timeout" in answer for answer in timed_out)
    finally:
        for client in clients:
            client.close()


@pytest.mark.slow
@pytest.mark.integration
def test_memory_stays_within_1_3_times_its_start_up_size_over_10_rounds_of_mixed_load(registered, tmp_path):
    """Issue 24: RSS grew 1.3 → 2.1 GB over two rounds of mixed-size requests and stayed there."""
    texts = reviews(registered, 2000)
    payloads = [{"inputs": texts[:size]} for size in (1, 7, 60, 300, 1000, 2000)]
    with model_server(registered.champion_uri, registered.stores.tracking_uri, tmp_path / "server.log") as running:
        started = rss_kib(running.pid)
        sizes = []
        for _ in range(10):
            with ThreadPoolExecutor(8) as clients:
                statuses = list(clients.map(lambda p: post_json(f"{running.url}/invocations", p)[0], payloads * 2))
            assert set(statuses) == {200}, statuses
            sizes.append(rss_kib(running.pid))
    assert max(sizes) <= 1.3 * started, f"RSS {sizes} KiB after each round, {started} KiB after start-up"
