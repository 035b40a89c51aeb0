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
