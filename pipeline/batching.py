"""Length buckets: batches of reviews of similar length, so little time goes into padding.

Arrays arrive pre-padded to ``max_len``; a bucket of width ``w`` takes the last ``w`` columns,
which hold every real token of the reviews in it. Each review's width depends on its own length
only when scoring, never on its neighbours, so a review scores the same alone or in any batch.
A handful of fixed widths keeps XLA to a handful of compilations.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_ROUND_TO = 16


def bucket_widths(lengths: np.ndarray, buckets: int, max_len: int) -> tuple[int, ...]:
    """Widths at the length quantiles of the training reviews, rounded up; the last is max_len."""
    if buckets <= 1 or not len(lengths):
        return (max_len,)
    quantiles = np.quantile(lengths, np.arange(1, buckets) / buckets)
    rounded = np.ceil(np.maximum(quantiles, 1) / _ROUND_TO).astype(int) * _ROUND_TO
    return tuple(sorted({int(w) for w in rounded if w < max_len} | {max_len}))


def assign_buckets(lengths: np.ndarray, widths: tuple[int, ...]) -> np.ndarray:
    """Index into ``widths`` of the narrowest bucket that holds each review."""
    return np.searchsorted(np.asarray(widths), np.minimum(lengths, widths[-1]), side="left")


def padding_share(lengths: np.ndarray, widths: tuple[int, ...]) -> float:
    """Share of fed timesteps that are padding when batches use these widths."""
    fed = np.asarray(widths)[assign_buckets(lengths, widths)].sum()
    return float(1.0 - np.minimum(lengths, widths[-1]).sum() / fed) if fed else 0.0


def _bucket_groups(lengths: np.ndarray, widths: tuple[int, ...]) -> Iterator[tuple[int, np.ndarray]]:
    ids = assign_buckets(lengths, widths)
    for index, width in enumerate(widths):
        members = np.flatnonzero(ids == index)
        if members.size:
            yield width, members


def epoch_batches(
    lengths: np.ndarray, widths: tuple[int, ...], batch_size: int, rng: np.random.Generator
) -> list[tuple[int, np.ndarray]]:
    """One epoch's (width, review indices) batches: every review exactly once, order random.

    Each review belongs to the narrowest bucket that holds it; a bucket's reviews are shuffled and
    cut into full batches at its width, and the batches of all buckets are shuffled together. The
    few left over in each bucket are fed last, together, at full width. Bucket sizes never change,
    so every epoch has the same batch shapes: with XLA each shape compiles once, in the first
    epoch (a width first met in a later epoch stalled it for 2-18 s).
    """
    batches: list[tuple[int, np.ndarray]] = []
    leftovers = [np.zeros(0, dtype=np.int64)]
    for width, members in _bucket_groups(lengths, widths):
        members = rng.permutation(members)
        full = len(members) - len(members) % batch_size
        batches += [(width, members[i : i + batch_size]) for i in range(0, full, batch_size)]
        leftovers.append(members[full:])
    rng.shuffle(batches)
    rest = rng.permutation(np.concatenate(leftovers))
    batches += [(widths[-1], rest[i : i + batch_size]) for i in range(0, len(rest), batch_size)]
    return batches


def training_dataset(
    x: np.ndarray, y: np.ndarray, lengths: np.ndarray, widths: tuple[int, ...], batch_size: int, seed: int = 0
):
    """A ``tf.data.Dataset`` of (tokens, labels) batches, re-drawn by ``epoch_batches`` every epoch."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    labels = y.astype("float32")

    def generate():
        for width, members in epoch_batches(lengths, widths, batch_size, rng):
            yield x[members, -width:], labels[members]

    signature = (
        tf.TensorSpec(shape=(None, None), dtype=tf.int32),
        tf.TensorSpec(shape=(None,), dtype=tf.float32),
    )
    batches = -(-len(lengths) // batch_size)  # a known length: Keras restarts the generator each epoch
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(batches)).prefetch(4)


def evaluation_dataset(
    x: np.ndarray, y: np.ndarray, lengths: np.ndarray, widths: tuple[int, ...], batch_size: int = 1024
):
    """Fixed (tokens, labels) batches, each review at its own bucket width (no shuffling)."""
    import tensorflow as tf

    parts = [
        tf.data.Dataset.from_tensor_slices((x[members, -width:], y[members].astype("float32"))).batch(
            batch_size
        )
        for width, members in _bucket_groups(lengths, widths)
    ]
    dataset = parts[0]
    for part in parts[1:]:
        dataset = dataset.concatenate(part)
    return dataset.prefetch(tf.data.AUTOTUNE)


# Rows per scoring call. XLA compiles one program per (rows, width), so rows come in these sizes
# only: at most len(_CHUNKS) shapes per bucket width (``chunk_sizes`` picks them).
_CHUNKS = (1, 8, 64, 512)


def chunk_sizes(rows: int) -> list[int]:
    """The scoring calls for ``rows`` rows of one width, each a ``_CHUNKS`` size: the largest size
    that fits, until the next size up would be less than half padding. 125 rows → 64 + 64, not one
    call of 512 (a bucket of a 1,000-review request spent three quarters of its time on padding)."""
    sizes = []
    while rows > 0:
        up = next((size for size in _CHUNKS if size >= rows), _CHUNKS[-1])
        size = up if up <= 2 * rows else max(size for size in _CHUNKS if size <= rows)
        sizes.append(size)
        rows -= size
    return sizes


def scoring_threads() -> int:
    """Scoring calls run side by side: one per core this process may use, at most 4. One call of
    the RNN's time loop keeps about one core busy, and XLA's programs release the GIL."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def scoring_pool() -> ThreadPoolExecutor:
    """The process's scoring threads (``scoring_threads``), started on first use."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(scoring_threads(), thread_name_prefix="scoring")
        return _POOL


def predict_proba(model, x: np.ndarray, lengths: np.ndarray, widths: tuple[int, ...]) -> np.ndarray:
    """Positive-class probabilities in the input order, each review fed at its bucket width.

    Scored by ``xla_scorer``, never ``model.predict``: ``predict`` builds a dataset per call and
    runs the RNN's time loop op by op, ~100 ms for one review on a loaded 2-core machine, against
    ~1 ms compiled. Calls run on ``scoring_pool``'s threads when there is more than one. Padding
    rows cannot change the others' scores (rows are independent), so a review scores the same
    alone or in any batch.
    """
    score = xla_scorer(model)
    calls: list[tuple[np.ndarray, np.ndarray]] = []
    for width, members in _bucket_groups(lengths, widths):
        start = 0
        for size in chunk_sizes(len(members)):
            batch = members[start : start + size]
            start += size
            rows = x[batch, -width:]
            if size > len(batch):
                rows = np.concatenate([rows, np.zeros((size - len(batch), width), rows.dtype)])
            calls.append((batch, rows))
    probabilities = np.zeros(len(x), dtype=np.float64)
    scored = _on_scoring_threads(lambda call: score(call[1]), calls)
    for (batch, _), scores in zip(calls, scored, strict=True):
        probabilities[batch] = np.asarray(scores, dtype=np.float64).reshape(-1)[: len(batch)]
    return probabilities


def compile_scorer(model, widths: tuple[int, ...]) -> int:
    """Compile every (rows, width) shape ``predict_proba`` can call, now: each costs about 1 s of
    XLA compilation on first use, so a server that meets them under load stalls its requests
    behind them, one after another (p99 over 1 s for 20 concurrent clients; docs/benchmarks.md). Runs on
    ``scoring_pool``'s threads; returns the number of shapes."""
    score = xla_scorer(model)
    shapes = [(rows, width) for rows in _CHUNKS for width in widths]  # single reviews' first

    # All padding: the scores are thrown away.
    _on_scoring_threads(lambda shape: score(np.zeros(shape, dtype=np.int32)), shapes)
    return len(shapes)


def _on_scoring_threads(call, items: list) -> list:
    """``[call(item) for item in items]``, on ``scoring_pool``'s threads when there is more than
    one item and more than one thread."""
    if len(items) > 1 and scoring_threads() > 1:
        return list(scoring_pool().map(call, items))
    return [call(item) for item in items]


def xla_scorer(model):
    """``rows → probabilities``: the model's forward pass compiled by XLA, cached on the model.

    Traced once, for any (rows, width) of int32 tokens: XLA compiles once per concrete shape (and
    ``predict_proba`` feeds only ``compile_scorer``'s), while tf.function itself never retraces,
    so a consumer meets no ``tf.function retracing`` warning. ``scorer.shapes`` is the set of
    shapes fed so far, each one XLA compilation. Anything that is not a Keras model (a test's
    stand-in) is scored through its ``predict_on_batch``."""
    import keras

    if not isinstance(model, keras.Model):
        return model.predict_on_batch
    scorer = getattr(model, "_pipeline_xla_scorer", None)
    if scorer is None:
        import tensorflow as tf

        forward = tf.function(
            lambda rows: model(rows, training=False),
            jit_compile=True,
            input_signature=[tf.TensorSpec((None, None), tf.int32)],
        )
        shapes: set[tuple[int, int]] = set()

        def scorer(rows: np.ndarray) -> np.ndarray:
            shapes.add(rows.shape)
            return forward(tf.constant(rows, tf.int32)).numpy()

        scorer.shapes, scorer.traces = shapes, forward.experimental_get_tracing_count
        model._pipeline_xla_scorer = scorer
    return scorer
