"""The frozen-feature probe and the bag-of-words floor, both logistic regressions (scikit-learn).

- ``linear_accuracy``: the encoder stays as it is; each text becomes one vector (the mean of its
  token states, the first token's state or the pooled ``[CLS]`` output) and a logistic regression
  learns the labels from those vectors. What the encoder's features carry, in seconds.
- ``tfidf_accuracy``: no encoder at all: TF-IDF word counts and the same regression. How much of
  a task can be told from its words alone.

The regression's strength of regularisation is chosen by 5-fold cross-validation on the training
split only; the test split is used once, for the reported accuracy. scikit-learn is the ``probe``
extra (``pip install -e '.[probe]'``; ``make install`` includes it).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np
import torch

from bertpt.common.errors import UserError

POOLINGS = ("mean", "first", "cls")
# Inverse regularisation strengths tried by the cross-validation (features are standardised).
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
FOLDS = 5
RIDGE_ALPHAS = tuple(10.0**k for k in np.arange(-1, 4.5, 0.5))  # 0.1 ... 10,000


def sklearn_modules() -> Any:
    try:
        import sklearn  # noqa: F401
    except ImportError as e:
        raise UserError(
            "the linear probe and the TF-IDF baseline need scikit-learn — pip install -e '.[probe]'"
        ) from e
    from sklearn import feature_extraction, linear_model, pipeline, preprocessing

    return feature_extraction, linear_model, pipeline, preprocessing


def have_sklearn() -> bool:
    try:
        sklearn_modules()
    except UserError:
        return False
    return True


def pad_batch(
    ids: list[list[int]], type_ids: list[list[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) input_ids, token_type_ids and attention_mask."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(ids), width), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, (x, t) in enumerate(zip(ids, type_ids, strict=True)):
        input_ids[row, : len(x)] = torch.tensor(x)
        types[row, : len(t)] = torch.tensor(t)
        mask[row, : len(x)] = 1
    return {"input_ids": input_ids, "token_type_ids": types, "attention_mask": mask}


def pool(
    sequence_output: torch.Tensor, pooled: torch.Tensor | None, mask: torch.Tensor, pooling: str
) -> torch.Tensor:
    """(B, T, H) token states -> (B, H) text vectors. ``cls`` is the pooler's output (the first
    token's state for a model without a pooler, as RoBERTa's classification head takes)."""
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(sequence_output.dtype)  # (B, T, 1)
        return (sequence_output * m).sum(1) / m.sum(1).clamp(min=1)
    if pooling == "cls" and pooled is not None:
        return pooled
    return sequence_output[:, 0]


class Batches(NamedTuple):
    """A split padded once into batches of similar length: ``rows[i]`` are the examples'
    positions in the split, ``inputs[i]`` their model inputs."""

    size: int
    rows: list[list[int]]
    inputs: list[dict[str, torch.Tensor]]

    def to(self, device: torch.device) -> Batches:
        return self._replace(inputs=[{k: v.to(device) for k, v in b.items()} for b in self.inputs])


def padded_batches(
    ids: list[list[int]], type_ids: list[list[int]], pad_id: int, batch_size: int = 64
) -> Batches:
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    rows = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    inputs = [pad_batch([ids[i] for i in r], [type_ids[i] for i in r], pad_id) for r in rows]
    return Batches(len(ids), rows, inputs)


@torch.no_grad()
def encode_batches(bert: torch.nn.Module, batches: Batches, pooling: str = "mean") -> np.ndarray:
    """(N, H) float32 text vectors from ``bert`` (a ``BertModel``), in the split's order; the
    model in eval mode for the call."""
    if pooling not in POOLINGS:
        raise UserError(f"pooling {pooling!r} is not one of {POOLINGS} — pick one of them")
    was_training = bert.training
    bert.eval()
    out = np.zeros((batches.size, 0), dtype=np.float32)
    try:
        for rows, batch in zip(batches.rows, batches.inputs, strict=True):
            sequence_output, pooled = bert(**batch)
            vectors = pool(sequence_output, pooled, batch["attention_mask"], pooling)
            if out.shape[1] == 0:
                out = np.zeros((batches.size, vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors.float().cpu().numpy()
    finally:
        bert.train(was_training)
    return out


def features(
    bert: torch.nn.Module,
    ids: list[list[int]],
    type_ids: list[list[int]],
    pad_id: int,
    pooling: str = "mean",
    batch_size: int = 64,
) -> np.ndarray:
    """(N, H) float32 text vectors from ``bert``, in the order of ``ids``."""
    device = next(bert.parameters()).device
    batches = padded_batches(ids, type_ids, pad_id, batch_size).to(device)
    return encode_batches(bert, batches, pooling)


def logistic_accuracy(
    train_x: Any, train_y: list[int], test_x: Any, test_y: list[int], scale: bool = True
) -> float:
    """Test accuracy of a multinomial logistic regression whose regularisation is chosen by
    stratified cross-validation on the training split (deterministic: no random draws)."""
    _, linear_model, pipeline, preprocessing = sklearn_modules()
    folds = min(FOLDS, int(np.bincount(train_y).min()))
    if folds < 2:
        raise UserError("the task has a class with fewer than 2 training examples — add examples")
    regression = linear_model.LogisticRegressionCV(Cs=list(C_GRID), cv=folds, max_iter=1000)
    steps = [preprocessing.StandardScaler(), regression] if scale else [regression]
    model = pipeline.make_pipeline(*steps)
    with warnings.catch_warnings():  # scikit-learn 1.8+ announces changes of defaults we do not use
        warnings.simplefilter("ignore", FutureWarning)
        model.fit(train_x, train_y)
    return float((model.predict(test_x) == np.asarray(test_y)).mean())


def ridge_accuracy(
    train_x: np.ndarray, train_y: list[int], test_x: np.ndarray, test_y: list[int]
) -> float:
    """Test accuracy of a ridge classifier on standardised features, its regularisation chosen
    by leave-one-out cross-validation on the training split, in closed form: ~0.1 s where the
    cross-validated logistic regression takes ~15 s on the built-in task, with the same
    accuracy within a point or two (the validation probe's classifier)."""
    _, linear_model, pipeline, preprocessing = sklearn_modules()
    model = pipeline.make_pipeline(
        preprocessing.StandardScaler(), linear_model.RidgeClassifierCV(alphas=RIDGE_ALPHAS)
    )
    model.fit(train_x, train_y)
    return float((model.predict(test_x) == np.asarray(test_y)).mean())


def linear_accuracy(
    bert: torch.nn.Module,
    train: Any,
    test: Any,
    pad_id: int,
    pooling: str = "mean",
    classifier: str = "logistic",
) -> float:
    """The frozen-feature probe: ``train`` and ``test`` hold ``ids``, ``type_ids`` and
    ``labels`` (``bertpt.probing.tasks.Encoded``); ``classifier``: logistic or ridge."""
    train_x = features(bert, train.ids, train.type_ids, pad_id, pooling)
    test_x = features(bert, test.ids, test.type_ids, pad_id, pooling)
    fit = ridge_accuracy if classifier == "ridge" else logistic_accuracy
    return fit(train_x, train.labels, test_x, test.labels)


def tfidf_accuracy(
    train_texts: list[str], train_y: list[int], test_texts: list[str], test_y: list[int]
) -> float:
    """The bag-of-words floor: TF-IDF of words and word pairs (sublinear counts) and the same
    cross-validated logistic regression."""
    feature_extraction, *_ = sklearn_modules()
    vectorizer = feature_extraction.text.TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    train_x = vectorizer.fit_transform(train_texts)  # the vocabulary of the training split
    test_x = vectorizer.transform(test_texts)
    return logistic_accuracy(train_x, train_y, test_x, test_y, scale=False)
