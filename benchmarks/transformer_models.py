"""Keras 3 transformer encoders for the benchmarks: a BERT-shaped classifier with random weights.

`bert_classifier(BertShape())` is BERT-base's shape (12 post-LN blocks, hidden 768, 12 heads of 64,
intermediate 3072, vocabulary 30,522, 512 positions); smaller shapes make smoke runs. Weights are
random (BERT's initializer, truncated normal 0.02) from a fixed seed, so the same shape and seed
give the same model. TensorFlow is imported only when a model is built.

    input_ids  int32 (batch, sequence); 0 is padding (masked out of attention and of the pooling)
    probabilities  float32 (batch, classes): softmax of Dense(classes) over tanh(Dense(hidden)) of
                   the first token ([CLS]), as BERT's pooler
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

INPUT = "input_ids"
OUTPUT = "probabilities"


@dataclass(frozen=True)
class BertShape:
    """The sizes of a BERT-style encoder (defaults: BERT-base) and the seed of its weights."""

    layers: int = 12
    hidden: int = 768
    heads: int = 12
    intermediate: int = 3072
    vocab: int = 30522
    max_positions: int = 512
    classes: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")
        if min(self.layers, self.hidden, self.heads, self.intermediate, self.vocab, self.max_positions) < 1:
            raise ValueError(f"every size must be >= 1: {self}")

    @property
    def key(self) -> str:
        """A folder name that changes with anything that changes the model."""
        return (f"L{self.layers}-H{self.hidden}-A{self.heads}-I{self.intermediate}-V{self.vocab}"
                f"-P{self.max_positions}-C{self.classes}-s{self.seed}")  # fmt: skip

    @property
    def parameters(self) -> int:
        """Weights in the model (embeddings, blocks, pooler, classifier)."""
        h, i = self.hidden, self.intermediate
        embeddings = (self.vocab + self.max_positions) * h + 2 * h
        block = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
        return embeddings + self.layers * block + (h * h + h) + (h * self.classes + self.classes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_ids(rows: int, sequence: int, vocab: int, *, seed: int = 0, pad_to: list[int] | None = None) -> np.ndarray:
    """int32 (rows, sequence) token ids in [1, vocab) (no padding); with `pad_to`, row r keeps its
    first pad_to[r] tokens and the rest are 0 (padding)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(rows, sequence), dtype=np.int64).astype(np.int32)
    for row, length in enumerate(pad_to or []):
        ids[row, max(1, length) :] = 0
    return ids


def bert_classifier(shape: BertShape) -> Any:
    """The Keras 3 functional model (random weights from `shape.seed`)."""
    import keras
    from keras import layers, ops

    keras.utils.set_random_seed(shape.seed)

    def init() -> Any:
        return keras.initializers.TruncatedNormal(stddev=0.02)

    class PositionEmbedding(layers.Layer):
        """Learned absolute positions 0..sequence-1, broadcast over the batch."""

        def __init__(self, max_positions: int, width: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.max_positions, self.width = max_positions, width

        def build(self, input_shape: Any) -> None:
            self.table = self.add_weight(shape=(self.max_positions, self.width), initializer=init(), name="table")

        def call(self, ids: Any) -> Any:
            length = ops.shape(ids)[1]
            return ops.expand_dims(self.table[:length], 0)

    ids = keras.Input(shape=(None,), dtype="int32", name=INPUT)
    real = ops.not_equal(ids, 0)  # (batch, sequence) bool: not padding
    attention_mask = ops.expand_dims(real, 1)  # (batch, 1, sequence): every query sees the real keys
    tokens = layers.Embedding(shape.vocab, shape.hidden, embeddings_initializer=init(), name="token_embedding")(ids)
    positions = PositionEmbedding(shape.max_positions, shape.hidden, name="position_embedding")(ids)
    x = layers.LayerNormalization(epsilon=1e-12, name="embedding_norm")(layers.Add()([tokens, positions]))
    key_dim = shape.hidden // shape.heads
    for i in range(shape.layers):
        attention = layers.MultiHeadAttention(shape.heads, key_dim, kernel_initializer=init(), name=f"attention_{i}")
        a = attention(x, x, attention_mask=attention_mask)
        x = layers.LayerNormalization(epsilon=1e-12, name=f"attention_norm_{i}")(layers.Add()([x, a]))
        f = layers.Dense(shape.intermediate, activation="gelu", kernel_initializer=init(), name=f"intermediate_{i}")(x)
        f = layers.Dense(shape.hidden, kernel_initializer=init(), name=f"output_{i}")(f)
        x = layers.LayerNormalization(epsilon=1e-12, name=f"output_norm_{i}")(layers.Add()([x, f]))
    first = x[:, 0, :]  # [CLS]
    pooled = layers.Dense(shape.hidden, activation="tanh", kernel_initializer=init(), name="pooler")(first)
    probabilities = layers.Dense(shape.classes, activation="softmax", kernel_initializer=init(), name=OUTPUT)(pooled)
    return keras.Model(ids, probabilities, name=f"bert_{shape.key}")
