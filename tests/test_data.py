"""data: reading the aclImdb layout, encoding, splitting, the vocabulary, errors and the cache."""

from __future__ import annotations

import tarfile
from collections import Counter

import numpy as np
import pytest

from pipeline.config import SAMPLE_ARCHIVE
from pipeline.data import DataError, Encoder, build_vocabulary, prepare, read_reviews

# --- reading -------------------------------------------------------------------------------


def test_archive_and_its_extracted_folder_read_the_same(tmp_path):
    with tarfile.open(SAMPLE_ARCHIVE) as archive:
        archive.extractall(tmp_path / "extracted", filter="data")

    from_archive = read_reviews(SAMPLE_ARCHIVE)
    from_folder = read_reviews(tmp_path / "extracted")

    assert from_folder.train.texts == from_archive.train.texts
    assert from_folder.test.texts == from_archive.test.texts
    np.testing.assert_array_equal(from_folder.train.labels, from_archive.train.labels)
    assert from_folder.digest == from_archive.digest
    assert (len(from_archive.train.texts), len(from_archive.test.texts)) == (2000, 1000)


def test_digest_ignores_how_the_archive_names_its_top_folder(make_folder, tmp_path):
    folder = make_folder()
    archive = tmp_path / "dotted.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "aclImdb", arcname="./aclImdb")

    assert read_reviews(archive).train.texts == read_reviews(folder).train.texts
    assert read_reviews(archive).digest == read_reviews(folder).digest


def test_digest_changes_with_a_review(make_folder, make_reviews):
    before = read_reviews(make_folder("a")).digest
    reviews = make_reviews()
    reviews["test", "neg"][0] += " and then some"

    assert read_reviews(make_folder("b", reviews)).digest != before


def test_labels_come_from_the_pos_and_neg_folders(make_archive, make_reviews):
    reviews = make_reviews(train_per_class=3, test_per_class=2)

    raw = read_reviews(make_archive(reviews=reviews))

    by_text = dict(zip(raw.train.texts, raw.train.labels.tolist(), strict=True))
    assert {by_text[text] for text in reviews["train", "pos"]} == {1}
    assert {by_text[text] for text in reviews["train", "neg"]} == {0}
    assert sorted(raw.test.labels.tolist()) == [0, 0, 1, 1]


# --- encoding ------------------------------------------------------------------------------


def test_long_reviews_keep_their_end_and_short_ones_are_padded_at_the_front():
    encode = Encoder(["one", "two", "three", "four", "five"], max_len=3)  # ids 2..6

    x, lengths = encode(["One two three four five", "two"])

    np.testing.assert_array_equal(x, [[4, 5, 6], [0, 0, 3]])
    np.testing.assert_array_equal(lengths, [3, 1])
    assert x.dtype == np.int32


def test_unknown_words_are_out_of_vocabulary_not_padding():
    x, lengths = Encoder(["good"], max_len=4)(["good unheard-of film"])

    np.testing.assert_array_equal(x, [[2, 1, 1, 1]])
    np.testing.assert_array_equal(lengths, [4])


def test_break_tags_are_not_tokens():
    texts = ["Good.<br /><br />Good<br>good<BR/>"] * 5

    assert "br" not in build_vocabulary(texts, vocab_size=10)
    x, lengths = Encoder(["good"], max_len=5)(texts[:1])
    np.testing.assert_array_equal(x, [[0, 0, 2, 2, 2]])
    np.testing.assert_array_equal(lengths, [3])


def test_a_quoted_word_is_the_same_token_as_the_bare_word():
    x, _ = Encoder(["best"], max_len=1)(["the 'best'"])

    np.testing.assert_array_equal(x, [[2]])


def test_vocabulary_is_most_frequent_first_and_holds_vocab_size_minus_two_words():
    texts = ["b b b a a c", "b a"]

    assert build_vocabulary(texts, vocab_size=4) == ["b", "a"]
    assert build_vocabulary(texts, vocab_size=2) == []


def test_vocab_size_two_encodes_every_word_as_out_of_vocabulary(make_folder, data_config):
    data = prepare(data_config(make_folder(), vocab_size=2, cache_dir=None))

    assert data.vocabulary == []
    assert set(np.unique(data.train.x).tolist()) <= {0, 1}
    assert (data.train.lengths > 0).all()


# --- preparing -----------------------------------------------------------------------------


def test_default_split_is_stratified_80_20_and_the_test_split_is_untouched(make_folder, data_config):
    folder = make_folder()  # 10 pos + 10 neg training reviews, 5 + 5 test reviews

    data = prepare(data_config(folder))

    assert (len(data.train), len(data.val)) == (16, 4)
    assert Counter(data.train.y.tolist()) == {0: 8, 1: 8}
    assert Counter(data.val.y.tolist()) == {0: 2, 1: 2}
    raw = read_reviews(folder)
    assert data.test_texts == raw.test.texts
    np.testing.assert_array_equal(data.test.y, raw.test.labels)
    assert data.test.x.shape == (10, 20)


def test_the_split_depends_on_the_seed(make_folder, data_config):
    folder = make_folder()

    first = prepare(data_config(folder, seed=42, cache_dir=None))
    again = prepare(data_config(folder, seed=42, cache_dir=None))
    other = prepare(data_config(folder, seed=7, cache_dir=None))

    np.testing.assert_array_equal(first.val.x, again.val.x)
    assert not np.array_equal(first.val.x, other.val.x)


def test_vocabulary_comes_from_the_training_part_only(make_folder, data_config):
    # Every review carries a marker word found nowhere else; the vocabulary has room for all words.
    data = prepare(data_config(make_folder(), vocab_size=1000))

    markers = [word for word in data.vocabulary if word.startswith(("train", "test"))]
    assert len(markers) == len(data.train) == 16
    assert all(word.startswith("train") for word in markers)
    assert not (data.train.x == 1).any(), "a training review has an out-of-vocabulary word"
    assert (data.val.x == 1).sum(axis=1).tolist() == [1] * 4, "a validation marker is in the vocabulary"
    assert (data.test.x == 1).sum(axis=1).tolist() == [1] * 10, "a test marker is in the vocabulary"


def test_limit_draws_a_stratified_subset_of_each_split(make_folder, data_config):
    data = prepare(data_config(make_folder(), limit=8))

    assert Counter(np.concatenate([data.train.y, data.val.y]).tolist()) == {0: 4, 1: 4}
    assert (len(data.train), len(data.val)) == (6, 2)
    assert Counter(data.test.y.tolist()) == {0: 4, 1: 4}
    assert set(data.test_texts) < set(read_reviews(make_folder("again")).test.texts)


def test_summary_reports_sizes_and_balance(make_folder, data_config):
    summary = prepare(data_config(make_folder())).summary()

    assert summary["n_train"] == 16
    assert summary["n_val"] == 4
    assert summary["n_test"] == 10
    assert summary["val_positive_share"] == 0.5


# --- errors --------------------------------------------------------------------------------


def test_missing_path_is_named(tmp_path, data_config):
    missing = tmp_path / "nowhere" / "aclImdb_v1.tar.gz"

    with pytest.raises(DataError, match="nowhere"):
        read_reviews(missing)
    with pytest.raises(DataError, match="nowhere"):
        prepare(data_config(missing))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_archive_is_named(make_archive, tmp_path, damage):
    archive = tmp_path / "broken.tar.gz"
    if damage == "garbage":
        archive.write_bytes(b"this is not a tarball\n" * 50)
    else:
        whole = make_archive().read_bytes()
        archive.write_bytes(whole[: len(whole) // 2])

    with pytest.raises(DataError, match="broken.tar.gz"):
        read_reviews(archive)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty folder", "one class"])
def test_the_source_check_finds_a_broken_dataset_before_any_reading(
    make_archive, make_folder, make_reviews, tmp_path, data_config, damage
):
    """What the commands check in seconds, before Prefect or TensorFlow start (``open_stores``)."""
    from pipeline.data import check_source

    if damage == "garbage":
        source = tmp_path / "broken.tar.gz"
        source.write_bytes(b"this is not a tarball\n" * 50)
    elif damage == "truncated":
        whole = make_archive().read_bytes()
        source = tmp_path / "broken.tar.gz"
        source.write_bytes(whole[: len(whole) // 2])
    elif damage == "empty folder":
        source = tmp_path / "empty"
        for split in ("train", "test"):
            for label in ("pos", "neg"):
                (source / split / label).mkdir(parents=True)
    else:
        reviews = make_reviews()
        reviews[("test", "neg")] = []
        source = make_folder("one-class", reviews)
    expected = {"garbage": "broken.tar.gz", "truncated": "broken.tar.gz", "empty folder": "no reviews under"}
    with pytest.raises(DataError, match=expected.get(damage, "one class only")):
        check_source(data_config(source))
    check_source(data_config(make_archive()))  # a sound one passes


def test_folder_without_pos_and_neg_is_named(tmp_path):
    (tmp_path / "reviews" / "train" / "good").mkdir(parents=True)

    with pytest.raises(DataError, match="reviews.*train/pos"):
        read_reviews(tmp_path / "reviews")


def test_archive_without_reviews_says_what_is_missing(tmp_path, pack_archive):
    (tmp_path / "src" / "aclImdb").mkdir(parents=True)
    (tmp_path / "src" / "aclImdb" / "README").write_text("no reviews here")

    with pytest.raises(DataError, match="no reviews under aclImdb/train"):
        read_reviews(pack_archive(tmp_path / "src", tmp_path / "empty.tar.gz"))


@pytest.mark.parametrize("form", ["folder", "archive"])
@pytest.mark.parametrize(("content", "problem"), [(b"  \n", "empty"), (b"caf\xe9 \xff", "not valid UTF-8")])
def test_a_bad_review_file_is_named(
    make_folder, make_reviews, pack_archive, tmp_path, form, content, problem
):
    root = make_folder(reviews=make_reviews(3, 2))
    (root / "aclImdb" / "train" / "neg" / "1_2.txt").write_bytes(content)
    path = root if form == "folder" else pack_archive(root, tmp_path / "dataset.tar.gz")

    with pytest.raises(DataError, match=f"aclImdb/train/neg/1_2.txt.*{problem}"):
        read_reviews(path)


def test_a_few_empty_reviews_are_skipped_with_a_warning_and_counted(
    make_folder, make_reviews, data_config, caplog
):
    root = make_folder(reviews=make_reviews(60, 5))  # 120 training reviews: one empty is < 1 %
    (root / "aclImdb" / "train" / "neg" / "1_2.txt").write_text("  \n")

    with caplog.at_level("WARNING", logger="pipeline.data"):
        data = prepare(data_config(root))

    assert "skipping 1 empty train review(s): aclImdb/train/neg/1_2.txt" in caplog.text
    assert len(data.train) + len(data.val) == 119
    assert data.summary()["skipped_empty_reviews"] == 1


@pytest.mark.parametrize(("split", "missing"), [("train", "neg"), ("test", "pos")])
def test_a_split_with_one_class_is_named(make_folder, make_reviews, split, missing):
    reviews = make_reviews(3, 2)
    del reviews[split, missing]

    with pytest.raises(DataError, match=f"dataset: split '{split}' has one class only"):
        read_reviews(make_folder(reviews=reviews))


def test_too_few_reviews_to_split_is_a_data_error(make_folder, data_config):
    with pytest.raises(DataError, match="cannot split train/validation"):
        prepare(data_config(make_folder(), limit=2))


# --- cache ---------------------------------------------------------------------------------


def _assert_same_data(first, second):
    for name in ("train", "val", "test"):
        one, other = getattr(first, name), getattr(second, name)
        for field in ("x", "y", "lengths"):
            np.testing.assert_array_equal(getattr(one, field), getattr(other, field))
    for field in ("vocabulary", "test_texts", "digest", "max_len", "source"):
        assert getattr(first, field) == getattr(second, field), field


@pytest.mark.parametrize("form", ["folder", "archive"])
def test_second_prepare_reads_the_same_data_from_the_cache(
    make_folder, make_archive, data_config, tmp_path, form
):
    cfg = data_config(make_folder() if form == "folder" else make_archive())

    first = prepare(cfg)
    second = prepare(cfg)

    assert (first.from_cache, second.from_cache) == (False, True)
    _assert_same_data(first, second)
    assert second.train.x.dtype == np.int32 and second.train.y.dtype == np.int8
    assert [file.suffix for file in (tmp_path / "cache").iterdir()] == [".npz"]


@pytest.mark.parametrize("same_size", [False, True])
def test_editing_or_adding_a_review_in_a_folder_invalidates_the_cache(make_folder, data_config, same_size):
    folder = make_folder()
    cfg = data_config(folder)
    prepare(cfg)
    review = folder / "aclImdb" / "train" / "pos" / "0_9.txt"
    text = review.read_text()

    review.write_text(text.replace("great", "awful") if same_size else text + " terrible")
    edited = prepare(cfg)
    (folder / "aclImdb" / "test" / "neg" / "99_1.txt").write_text("dull")
    added = prepare(cfg)

    assert not edited.from_cache
    assert not added.from_cache
    assert len(added.test) == 11
    assert prepare(cfg).from_cache


def test_rewriting_the_archive_invalidates_the_cache(
    make_archive, make_folder, make_reviews, pack_archive, data_config
):
    archive = make_archive()
    cfg = data_config(archive)
    before = prepare(cfg)
    reviews = make_reviews()
    reviews["test", "pos"].append("a late great review")

    pack_archive(make_folder("new", reviews), archive)
    after = prepare(cfg)

    assert not after.from_cache
    assert (len(before.test), len(after.test)) == (10, 11)
    assert after.digest != before.digest


@pytest.mark.parametrize(
    "option", [{"max_len": 10}, {"vocab_size": 50}, {"val_fraction": 0.5}, {"seed": 7}, {"limit": 10}]
)
def test_changing_an_option_invalidates_the_cache(make_folder, data_config, option):
    folder = make_folder()
    prepare(data_config(folder))

    changed = prepare(data_config(folder, **option))

    assert not changed.from_cache
    assert prepare(data_config(folder, **option)).from_cache
    assert prepare(data_config(folder)).from_cache


def test_a_copied_archive_hits_the_cache_and_names_its_own_path(make_archive, data_config, tmp_path):
    archive = make_archive()
    copy = tmp_path / "copy" / "aclImdb_v1.tar.gz"
    copy.parent.mkdir()
    copy.write_bytes(archive.read_bytes())
    prepare(data_config(archive))

    data = prepare(data_config(copy))

    assert data.from_cache
    assert data.source == str(copy)


def test_the_cache_holds_no_temporary_files(make_folder, data_config, tmp_path):
    folder = make_folder()
    for max_len in (10, 20):
        prepare(data_config(folder, max_len=max_len))

    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 2
    assert not [file for file in files if file.suffix == ".tmp"]


def test_no_cache_dir_writes_nothing(make_folder, data_config, tmp_path):
    cfg = data_config(make_folder(), cache_dir=None)

    assert not prepare(cfg).from_cache
    assert not prepare(cfg).from_cache
    assert not (tmp_path / "cache").exists()


def test_the_plain_python_encoder_gives_the_tensorflow_encoders_ids(sample_data):
    """A few reviews are encoded in Python (fast for one request), many by TensorFlow: the same ids."""
    from pipeline.config import SAMPLE_ARCHIVE

    texts = read_reviews(SAMPLE_ARCHIVE).test.texts[:300] + [
        "Ünïcode ÄB\u00a0x\u2009y\vz <BR\v/> <br\t/>It's  a\tFILM!!",  # non-ASCII case and spaces
        "",
        "'''",
    ]
    encode = Encoder(sample_data.vocabulary, max_len=400)
    in_python = [encode(texts[i : i + 1]) for i in range(len(texts))]
    x, lengths = encode(texts)  # more than 64 reviews: TensorFlow

    np.testing.assert_array_equal(np.concatenate([ids for ids, _ in in_python]), x)
    np.testing.assert_array_equal(np.concatenate([n for _, n in in_python]), lengths)


def test_many_reviews_split_across_threads_encode_as_in_one_call(sample_data, monkeypatch):
    """From ``_PARALLEL_ENCODE_MIN`` reviews the TensorFlow encoder runs in parts on the scoring
    threads; the parts come back in order."""
    from pipeline import data
    from pipeline.config import SAMPLE_ARCHIVE

    texts = read_reviews(SAMPLE_ARCHIVE).train.texts
    monkeypatch.setattr(data, "_PARALLEL_ENCODE_MIN", 100)
    monkeypatch.setattr(data, "scoring_threads", lambda: 3)
    encode = Encoder(sample_data.vocabulary, max_len=400)
    x, lengths = encode(texts)

    assert len(texts) > 200
    expected_x, expected_lengths = encode._encode_in_bulk(texts)
    np.testing.assert_array_equal(x, expected_x)
    np.testing.assert_array_equal(lengths, expected_lengths)
