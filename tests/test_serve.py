"""The champion over HTTP (`mlflow models serve`): raw reviews in, the in-process answers out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.http_server import model_server, post_json
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
    with model_server(registered.champion_uri, registered.cfg.tracking.tracking_uri, log_file) as url:
        yield url


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
    from pathlib import Path

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


@pytest.mark.integration
def test_sentiment_serve_starts_the_scoring_server_for_the_champion(registered, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

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
