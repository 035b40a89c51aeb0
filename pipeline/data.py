"""Raw IMDB reviews → vocabulary → encoded, pre-padded arrays → train/validation/test splits.

The only reader of the dataset. It reads the aclImdb layout
(``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``) from the downloaded ``.tar.gz`` or its
extracted folder, builds the vocabulary from the training split only, and keeps the *end* of long
reviews (Keras ``pad_sequences`` defaults: pad and truncate at the front). Prepared arrays are
cached on disk under a key made of the source's fingerprint and every option that shapes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.batching import scoring_pool, scoring_threads
from pipeline.config import DataConfig
from pipeline.reviews import (  # noqa: F401 (DataError, Reviews, RawDataset: this module's too)
    LABELS,
    MAX_EMPTY_SHARE,
    SPLITS,
    DataError,
    RawDataset,
    Reviews,
    allow_few_empty,
    content_digest,
    require_both_classes,
)

log = logging.getLogger(__name__)

# Bump when tokenization or array layout changes, so old caches are never reused.
PREP_VERSION = 6  # 5: canonical review order and the content digest; 6: check findings
# Keras' default standardization (lower case, apostrophes dropped so "don't" is "dont"), with
# other punctuation and the <br /> tags every IMDB review carries turned into word breaks.
_BREAK_TAG = r"<br\s*/?>"
_APOSTROPHE = "'"
_PUNCTUATION = r"[!\"#$%&()\*\+,\-\./:;<=>?@\[\\\]^_`{|}~]"


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # (n, max_len) int32 token ids, pre-padded with 0
    y: np.ndarray  # (n,) int8 labels
    lengths: np.ndarray  # (n,) int32 real tokens kept, ≤ max_len

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> Split:
        return Split(self.x[indices], self.y[indices], self.lengths[indices])


@dataclass(frozen=True)
class PreparedData:
    train: Split
    val: Split
    test: Split
    vocabulary: list[str]  # without the padding and OOV tokens, most frequent first
    test_texts: list[str]  # raw test reviews, to score other models (the champion) like for like
    max_len: int
    digest: str
    source: str
    prep_seconds: float = 0.0
    from_cache: bool = False
    skipped_reviews: int = 0  # empty review files left out of the splits
    check_findings: tuple = ()  # data_checks.Finding per check and split, judged before training

    @property
    def vocab_size_effective(self) -> int:
        """The embedding's input size: the words kept plus the padding (0) and out-of-vocabulary (1)
        ids. ``data.vocab_size`` is only the cap: a small dataset may hold fewer words."""
        return len(self.vocabulary) + 2

    def summary(self) -> dict[str, float | int | str]:
        """Sizes and class balance, as logged with the dataset."""
        info: dict[str, float | int | str] = {
            "dataset_digest": self.digest,
            "skipped_empty_reviews": self.skipped_reviews,
        }
        for name, split in (("train", self.train), ("val", self.val), ("test", self.test)):
            info[f"n_{name}"] = len(split)
            info[f"{name}_positive_share"] = round(float(split.y.mean()), 4)
        return info


# --- reading -------------------------------------------------------------------------------


def read_reviews(path: Path) -> RawDataset:
    """Read an aclImdb ``.tar.gz`` or extracted folder. Raises DataError naming what is wrong."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset not found: {path}")
    entries = _read_folder(path) if path.is_dir() else _read_archive(path)
    groups: dict[str, list[tuple[str, str, int]]] = {split: [] for split in SPLITS}
    empty: dict[str, list[str]] = {split: [] for split in SPLITS}
    for name, raw in entries:
        split, label = name.split("/")[-3:-1]
        text = _decode(raw, path, name)
        if text.strip():
            groups[split].append((name, text, LABELS.index(label)))
        else:
            empty[split].append(name)
    splits = {}
    for split in SPLITS:
        # Canonical order (label, text), not file names: the same reviews exported to a table
        # are the same splits, arrays and digest (``review_tables``).
        rows = sorted((label, text) for _, text, label in groups[split])
        allow_few_empty(sorted(empty[split]), len(rows), path, split)
        if not rows:
            raise DataError(f"{path}: no reviews under aclImdb/{split}/pos or aclImdb/{split}/neg")
        labels = np.array([label for label, _ in rows], dtype=np.int8)
        require_both_classes(labels, path, split)
        splits[split] = Reviews([text for _, text in rows], labels)
    skipped = tuple(sorted(empty["train"] + empty["test"]))
    return RawDataset(splits["train"], splits["test"], content_digest(splits), str(path), skipped)


def read_source(cfg: DataConfig) -> RawDataset:
    """The labelled reviews ``data.path`` names: an aclImdb archive or folder, or tables."""
    from pipeline import review_tables

    if review_tables.is_database(cfg.path):
        return review_tables.read_database(cfg)
    files = review_tables.table_files(cfg.path)
    if files is None:
        return read_reviews(cfg.path)
    return review_tables.read_tables(files, cfg, cfg.path)


def check_source(cfg: DataConfig) -> None:
    """The dataset's layout and the archive's integrity, checked in seconds before any heavy
    import or server start (a truncated archive was reported after 33 s, an empty folder after
    42): every split has pos and neg reviews, and the whole archive decompresses. Skipped when
    prepared arrays of this very source are cached (it was read whole then). Raises DataError;
    what only reading finds (a review that is not UTF-8, too many empty ones) still comes then."""
    from pipeline import review_tables

    if review_tables.is_database(cfg.path):
        review_tables.check_database(cfg)  # unreachable, no table, a wrong column: in seconds
        return
    path = Path(cfg.path)
    files = review_tables.table_files(path)
    if files is not None:
        review_tables.check_columns(files, cfg, path)  # a wrong column name: in seconds, before any work
        return
    cached = _cache_file(cfg)
    if not path.exists() or (cached is not None and cached.exists()):
        return  # a missing path is preflight's to report
    if path.is_dir():
        root = _folder_root(path)
        found = {(split, label) for split in SPLITS for label in LABELS if next((root / split / label).glob("*.txt"), None)}
    else:
        found = set()
        try:
            with tarfile.open(path, "r|*") as archive:  # a stream: headers only, every byte decompressed
                for member in archive:
                    if member.isfile() and _review_name(member.name):
                        found.add(tuple(member.name.split("/")[-3:-1]))
        except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
            raise DataError(f"cannot read archive {path}: {error or type(error).__name__}") from None
    for split in SPLITS:
        missing = [label for label in LABELS if (split, label) not in found]
        if len(missing) == len(LABELS):
            raise DataError(f"{path}: no reviews under aclImdb/{split}/pos or aclImdb/{split}/neg")
        if missing:
            raise DataError(f"{path}: split '{split}' has one class only (no {missing[0]} reviews); need pos and neg")


def _review_name(name: str) -> bool:
    parts = name.split("/")
    return len(parts) >= 4 and parts[-1].endswith(".txt") and parts[-2] in LABELS and parts[-3] in SPLITS


def _read_archive(path: Path) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if member.isfile() and _review_name(member.name):
                    # "./aclImdb/…" (tar -C dir .) names the same review as "aclImdb/…".
                    name = "aclImdb/" + "/".join(member.name.split("/")[-3:])
                    yield name, archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DataError(f"cannot read archive {path}: {error}") from error


def _folder_root(path: Path) -> Path:
    """The folder holding train/ and test/ (the extracted archive's aclImdb/, or ``path``)."""
    root = path / "aclImdb" if (path / "aclImdb").is_dir() else path
    if not any((root / split / label).is_dir() for split in SPLITS for label in LABELS):
        raise DataError(f"{path}: expected train/pos, train/neg, test/pos, test/neg folders")
    return root


def _read_folder(path: Path) -> Iterator[tuple[str, bytes]]:
    root = _folder_root(path)
    for file in sorted(root.glob("*/*/*.txt")):
        name = f"aclImdb/{file.relative_to(root).as_posix()}"
        if _review_name(name):
            yield name, file.read_bytes()


def _decode(raw: bytes, path: Path, name: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: review {name} is not valid UTF-8 ({error.reason})") from None
    return text


# --- encoding ------------------------------------------------------------------------------


def standardize(texts):  # tf.Tensor of strings → tf.Tensor of strings
    import tensorflow as tf

    texts = tf.strings.lower(texts)
    texts = tf.strings.regex_replace(texts, _BREAK_TAG, " ")
    texts = tf.strings.regex_replace(texts, _APOSTROPHE, "")
    return tf.strings.regex_replace(texts, _PUNCTUATION, " ")


_PARALLEL_ENCODE_MIN = 1024  # reviews from which the TensorFlow path is split across scoring threads
_PYTHON_ENCODE_MAX = 64  # reviews per call up to which the plain-Python encoder is the faster

# TensorFlow's lower() changes ASCII letters only, RE2's \\s is [\\t\\n\\f\\r ], and its whitespace
# split is on ASCII whitespace: Python's str.lower, \\s and split() are Unicode-wide, so spell them out.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_PY_BREAK_TAG = re.compile(r"<br[\t\n\f\r ]*/?>")
_PY_PUNCTUATION = re.compile(_PUNCTUATION)
_PY_SPLIT = re.compile(r"[ \t\n\r\v\f]+")


def python_words(text: str) -> list[str]:
    """``standardize`` and the whitespace split of ``TextVectorization``, in plain Python."""
    text = _PY_BREAK_TAG.sub(" ", text.translate(_ASCII_LOWER)).replace(_APOSTROPHE, "")
    return [word for word in _PY_SPLIT.split(_PY_PUNCTUATION.sub(" ", text)) if word]


def build_vocabulary(texts: Sequence[str], vocab_size: int) -> list[str]:
    """The ``vocab_size - 2`` most frequent words (ids 0 and 1 are padding and out-of-vocabulary)."""
    import keras

    if vocab_size <= 2:
        return []
    vectorizer = keras.layers.TextVectorization(max_tokens=vocab_size, standardize=standardize)
    vectorizer.adapt(list(texts), batch_size=1024)
    return [str(word) for word in vectorizer.get_vocabulary(include_special_tokens=False)]


class Encoder:
    """Raw review text → token ids pre-padded/pre-truncated to ``max_len`` (keeps the end).

    The same encoder turns training reviews and a registry consumer's text into model input.
    """

    def __init__(self, vocabulary: Sequence[str], max_len: int) -> None:
        import keras

        self.max_len = max_len
        # With vocab_size=2 every word is out-of-vocabulary, and a lookup table cannot be empty.
        self._vectorizer = (
            keras.layers.TextVectorization(vocabulary=list(vocabulary), standardize=standardize, ragged=True)
            if len(vocabulary)
            else _all_out_of_vocabulary
        )
        # The same rules in plain Python for a few reviews: no TensorFlow ops per call, which is
        # most of a one-review request's tokenizing time; TensorFlow stays faster in bulk. Equal
        # to the TensorFlow path on all 50,000 reviews of the IMDB archive (tests: the sample).
        self._ids = (
            {word: index for index, word in enumerate(vocabulary, start=2)} if len(vocabulary) else None
        )

    def _encode_in_python(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        x = np.zeros((len(texts), self.max_len), np.int32)
        lengths = np.zeros(len(texts), np.int32)
        ids = self._ids
        for row, text in enumerate(texts):
            tokens = [ids.get(word, 1) for word in python_words(text)][-self.max_len :]
            lengths[row] = len(tokens)
            if tokens:
                x[row, -len(tokens) :] = tokens
        return x, lengths

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(n, max_len) int32 ids and the (n,) number of real tokens kept."""
        if self._ids is not None and len(texts) <= _PYTHON_ENCODE_MAX:
            return self._encode_in_python(texts)
        if not len(texts):
            return np.zeros((0, self.max_len), np.int32), np.zeros(0, np.int32)
        threads = scoring_threads()
        if threads > 1 and len(texts) >= _PARALLEL_ENCODE_MIN:
            # TensorFlow's string ops run one review after another on one core: split the reviews.
            step = -(-len(texts) // threads)
            parts = list(scoring_pool().map(self._encode_in_bulk, [texts[i : i + step] for i in range(0, len(texts), step)]))
            return np.concatenate([x for x, _ in parts]), np.concatenate([lengths for _, lengths in parts])
        return self._encode_in_bulk(texts)

    def _encode_in_bulk(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        import keras

        ragged = self._vectorizer(np.asarray(list(texts), dtype=object))
        lengths = np.minimum(ragged.row_lengths().numpy(), self.max_len).astype(np.int32)
        x = keras.utils.pad_sequences(
            list(ragged.numpy()), maxlen=self.max_len, dtype="int32", padding="pre", truncating="pre"
        )
        return x, lengths


def _all_out_of_vocabulary(texts):
    import tensorflow as tf

    words = tf.strings.split(standardize(tf.constant(texts)))
    return tf.ragged.map_flat_values(lambda w: tf.ones_like(w, dtype=tf.int64), words)


# --- preparing -----------------------------------------------------------------------------


def prepare(cfg: DataConfig) -> PreparedData:
    """Read, split, build the vocabulary on the training part and encode; cached on disk."""
    started = time.perf_counter()
    cache_file = _cache_file(cfg)
    if cache_file is not None and cache_file.exists():
        # The key leaves the path out (a copied archive hits), so name the path we were given.
        data = replace(_load_cache(cache_file), source=str(cfg.path))
        log.info("prepared data from cache %s", cache_file)
        return _with_timing(data, started, from_cache=True)
    raw = read_source(cfg)
    data = prepare_reviews(raw, cfg)
    if cache_file is not None:
        _save_cache(data, cache_file)
    return _with_timing(data, started, from_cache=False)


def prepare_reviews(raw: RawDataset, cfg: DataConfig) -> PreparedData:
    """Split the training reviews (stratified), build the vocabulary from the training part only."""
    from sklearn.model_selection import train_test_split

    from pipeline import data_checks  # here, not at the top: a model's consumer imports this module

    train, test = _limit(raw.train, cfg), _limit(raw.test, cfg)
    try:
        train_idx, val_idx = train_test_split(
            np.arange(len(train.labels)),
            test_size=cfg.val_fraction,
            stratify=train.labels,
            random_state=cfg.seed,
        )
    except ValueError as error:
        raise DataError(f"{raw.source}: cannot split train/validation: {error}") from None
    train_texts = [train.texts[i] for i in train_idx]
    vocabulary = build_vocabulary(train_texts, cfg.vocab_size)

    encode = Encoder(vocabulary, cfg.max_len)

    def split(texts: Sequence[str], labels: np.ndarray) -> Split:
        x, lengths = encode(texts)
        return Split(x, labels.astype(np.int8), lengths)

    return PreparedData(
        train=split(train_texts, train.labels[train_idx]),
        val=split([train.texts[i] for i in val_idx], train.labels[val_idx]),
        test=split(test.texts, test.labels),
        test_texts=test.texts,
        vocabulary=vocabulary,
        max_len=cfg.max_len,
        digest=raw.digest,
        source=raw.source,
        skipped_reviews=len(raw.skipped),
        check_findings=data_checks.findings(raw),
    )


def _limit(reviews: Reviews, cfg: DataConfig) -> Reviews:
    """A stratified draw of ``cfg.limit`` reviews (all of them without a limit)."""
    if cfg.limit is None or cfg.limit >= len(reviews.labels):
        return reviews
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(
        np.arange(len(reviews.labels)),
        train_size=cfg.limit,
        stratify=reviews.labels,
        random_state=cfg.seed,
    )
    keep.sort()
    return Reviews([reviews.texts[i] for i in keep], reviews.labels[keep])


def _with_timing(data: PreparedData, started: float, from_cache: bool) -> PreparedData:
    return replace(data, prep_seconds=time.perf_counter() - started, from_cache=from_cache)


# --- cache ---------------------------------------------------------------------------------


def save(data: PreparedData, file: Path) -> None:
    """Write prepared data to ``file`` in the cache's format (atomically): how it crosses process
    and pod boundaries, e.g. as a Kubeflow ``Dataset`` artifact."""
    _save_cache(data, Path(file))


def load(file: Path) -> PreparedData:
    """Prepared data written by ``save``. Raises DataError naming the file when it cannot be read."""
    try:
        return _load_cache(Path(file))
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"prepared data {file}: cannot be read ({error})") from None


def source_fingerprint(path: Path) -> str:
    """Cheap identity of the source: the archive's bytes, or the names, sizes and mtimes of a
    folder's reviews or of the table files a path, folder or glob names."""
    from pipeline.review_tables import table_files

    path = Path(path)
    files = table_files(path)
    if not files and not path.exists():
        raise DataError(f"dataset not found: {path}")
    digest = hashlib.sha256()
    if files is None and path.is_file():
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    for file in files or sorted(path.rglob("*.txt")):
        stat = file.stat()
        name = file.relative_to(path) if path.is_dir() else file
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_key(cfg: DataConfig) -> str:
    # The checks' thresholds are judged after preparing (data_checks.verdict): not in the key.
    thresholds = {name for name in DataConfig.model_fields if name == "checks" or name.startswith("check_")}
    options = cfg.model_dump(mode="json", exclude={"path", "cache_dir", *thresholds})
    payload = json.dumps(
        {"source": source_fingerprint(cfg.path), "options": options, "version": PREP_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _cache_file(cfg: DataConfig) -> Path | None:
    from pipeline.review_tables import is_database

    # A database has no cheap fingerprint (a table grows in place): read it every time.
    return None if cfg.cache_dir is None or is_database(cfg.path) else Path(cfg.cache_dir) / f"{cache_key(cfg)}.npz"


def _save_cache(data: PreparedData, file: Path) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "vocabulary": data.vocabulary,
        "max_len": data.max_len,
        "digest": data.digest,
        "source": data.source,
        "skipped_reviews": data.skipped_reviews,
        "check_findings": [asdict(f) for f in data.check_findings],
    }
    arrays = {
        f"{name}_{field}": getattr(getattr(data, name), field)
        for name in ("train", "val", "test")
        for field in ("x", "y", "lengths")
    }
    # Write beside, then rename: a crash never leaves a half-written cache entry behind.
    handle, tmp = tempfile.mkstemp(dir=file.parent, suffix=".tmp")
    os.close(handle)
    try:
        with open(tmp, "wb") as out:
            texts = np.frombuffer(json.dumps(data.test_texts).encode(), dtype=np.uint8)
            np.savez(out, meta=np.array(json.dumps(meta)), test_texts=texts, **arrays)
        os.replace(tmp, file)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _load_cache(file: Path) -> PreparedData:
    from pipeline import data_checks
    with np.load(file) as stored:
        meta = json.loads(str(stored["meta"]))
        test_texts = json.loads(stored["test_texts"].tobytes().decode())
        splits = {
            name: Split(stored[f"{name}_x"], stored[f"{name}_y"], stored[f"{name}_lengths"])
            for name in ("train", "val", "test")
        }
    return PreparedData(
        **splits,
        vocabulary=meta["vocabulary"],
        max_len=meta["max_len"],
        digest=meta["digest"],
        source=meta["source"],
        test_texts=test_texts,
        skipped_reviews=meta["skipped_reviews"],
        check_findings=data_checks.from_dicts(meta.get("check_findings", [])),
    )
