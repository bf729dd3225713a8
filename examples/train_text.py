"""A transformer text classifier: which library's documentation does a sentence come from,
NumPy, scikit-learn or Keras?

The corpus is real text that ships with the packages installed here, so nothing is downloaded:
the summary line of every public function, class and method docstring of numpy, scikit-learn and
Keras, labelled by the library that documents it (about 2,000 sentences after dropping duplicates
and sentences two libraries share). Its exact content follows the installed versions of the three
packages; the split and the training are seeded.

Model: token + position embedding -> 2 encoder blocks (MultiHeadAttention, GELU feed-forward,
residuals, LayerNorm) -> mean over the real tokens -> softmax over the 3 libraries. It takes
`token_ids` (int32, [batch, tokens]) padded with 0 on either side; padding never changes a row's
result (checked in Keras after training), so one request may hold rows of different lengths.
Tokenizer: a BPE tokenizer (HuggingFace `tokenizers`) trained on the training split, [PAD] = 0.

    python examples/train_text.py --out .demo/text                            # train only
    python examples/train_text.py --out .demo/text --model-repository models  # and convert, as "text"

writes model.keras, tokenizer.json, labels.txt and test.npz (held-out token ids `x`, padded, and
labels `y`: the parity gate's sample and `modelport evaluate`'s data) into --out. With
--model-repository it converts with the parity gate on test.npz and puts tokenizer.json and
labels.txt beside the model's config.pbtxt (labels.txt: the classification extension's labels).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers, ops  # noqa: E402
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers  # noqa: E402

# label: (package, its submodules whose public objects are read besides the package's own)
SOURCES = {
    "numpy": ("numpy", "linalg fft random ma polynomial"),
    "scikit-learn": (
        "sklearn",
        "calibration cluster compose covariance datasets decomposition ensemble feature_extraction.text "
        "feature_selection gaussian_process impute inspection linear_model manifold metrics mixture "
        "model_selection naive_bayes neighbors neural_network pipeline preprocessing svm tree utils",
    ),
    "keras": (
        "keras",
        "layers losses metrics optimizers callbacks activations initializers regularizers constraints models "
        "utils saving random",
    ),
}
PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1: the model treats id 0 as padding
VOCAB_SIZE = 2000
MAX_TOKENS = 32  # the tokenizer truncates longer texts; position ids past this share the last position
NAME = "text"
BATCH = 32


@dataclass
class Trained:
    """What `train` returns: the model, its tokenizer and labels, and the held-out split."""

    model: keras.Model
    tokenizer: Tokenizer
    labels: list[str]
    x_test: np.ndarray  # token ids, padded with 0 to the longest test row
    y_test: np.ndarray
    texts_test: list[str]
    accuracy: float


# ------------------------------------------------------------------ corpus


def corpus() -> tuple[list[str], np.ndarray, list[str]]:
    """(sentences, label indices, label names): every docstring summary under the one library that
    has it (a sentence two libraries share, such as "Return self.", is dropped), and only one of the
    sentences that differ in a `code` name alone (numpy's 50 "Scalar method identical to `ndarray.x`.")."""
    owners: dict[str, set[str]] = {}
    kept: dict[str, str] = {}
    for label, (package, submodules) in SOURCES.items():
        modules = [package, *(f"{package}.{name}" for name in submodules.split())]
        for sentence in sorted(_summaries(package, modules)):
            template = re.sub(r"`[^`]*`", "`name`", sentence)
            owners.setdefault(template, set()).add(label)
            kept.setdefault(template, sentence)
    names = list(SOURCES)
    pairs = sorted((kept[t], names.index(next(iter(found)))) for t, found in owners.items() if len(found) == 1)
    return [text for text, _ in pairs], np.array([label for _, label in pairs]), names


def _summaries(package: str, modules: list[str]) -> set[str]:
    """The summary line of each public function, class and method defined in `package` and
    reachable from `modules` (methods: those a class defines itself)."""
    found = set()
    for module_name in modules:
        module = importlib.import_module(module_name)
        for attribute in sorted(dir(module)):
            obj = getattr(module, attribute, None)
            if attribute.startswith("_") or not _documents(obj, package):
                continue
            found.add(_summary(obj))
            if inspect.isclass(obj):
                found.update(_summary(m) for n, m in vars(obj).items() if not n.startswith("_") and _is_method(m))
    found.discard("")
    return found


def _is_method(member: object) -> bool:
    # Not a class's data attributes: a string constant's __doc__ is str's own docstring.
    return inspect.isroutine(member) or isinstance(member, (property, staticmethod, classmethod))


def _documents(obj: object, package: str) -> bool:
    # Re-exported objects (a builtin, another library's class) and constants (np.pi's docstring is
    # float's) would teach the model the wrong library.
    if not (inspect.isclass(obj) or inspect.isroutine(obj) or type(obj).__name__ == "ufunc"):
        return False
    return (getattr(obj, "__module__", None) or "").split(".")[0] == package


def _summary(obj: object) -> str:
    """The docstring's first prose paragraph, on one line ("" when there is none or it is not prose).
    `__doc__`, not inspect.getdoc: a method without its own docstring must not inherit one."""
    doc = getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return ""
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        text = " ".join(paragraph.split())
        if re.match(r"^[\w.]+\(.*\)", text):  # a signature line, as ufuncs and C functions start
            continue
        return text if text[:1].isalpha() and 3 <= len(text.split()) <= 60 else ""
    return ""


def split(texts: list[str], y: np.ndarray, test_share: float = 0.25, seed: int = 0) -> tuple:
    """(texts_train, texts_test, y_train, y_test): a seeded split, stratified by label."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        test[members[: round(len(members) * test_share)]] = True
    return _pick(texts, ~test), _pick(texts, test), y[~test], y[test]


def _pick(texts: list[str], chosen: np.ndarray) -> list[str]:
    return [text for text, keep in zip(texts, chosen) if keep]


# ------------------------------------------------------------------ tokenizer


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """A lower-casing BPE tokenizer (BERT's normaliser and pre-tokenisation) with [PAD] = 0 and
    [UNK] = 1; it pads a batch to its longest row and truncates at MAX_TOKENS. BPE without a
    continuing-subword prefix, because the trainers that use one (WordPiece's) number the prefixed
    alphabet in hash-map order and give different ids, and so a different model, on every run."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK]))
    assert tokenizer.token_to_id(PAD) == 0, "the model masks id 0: [PAD] must be 0"
    tokenizer.enable_padding(pad_id=0, pad_token=PAD)
    tokenizer.enable_truncation(MAX_TOKENS)
    return tokenizer


def encode(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    """Token ids [len(texts), longest], int32, padded with 0 (the tokenizer pads to the longest)."""
    return np.array([e.ids for e in tokenizer.encode_batch(texts)], dtype=np.int32)


# ------------------------------------------------------------------ model


def build(vocab_size: int, classes: int, width: int = 32, heads: int = 2, blocks: int = 2) -> keras.Model:
    """The encoder. The padding mask is computed from the ids (id 0) inside the model and passed
    explicitly to every attention layer and to the pooling: Keras' implicit mask (mask_zero=True)
    would be dropped silently at the first merge with the position embedding, which has none."""
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    real = ops.cast(ops.not_equal(ids, 0), "int32")
    # Positions count real tokens only (1, 2, ... n; padding 0), so padding on either side never
    # shifts a token's position; clipped so that an over-long input still runs.
    positions = ops.minimum(ops.cumsum(real, axis=1) * real, MAX_TOKENS)
    x = layers.Add(name="embed")([
        layers.Embedding(vocab_size, width, name="token_embedding")(ids),
        layers.Embedding(MAX_TOKENS + 1, width, name="position_embedding")(positions),
    ])  # fmt: skip
    # [batch, 1, tokens]: every query attends to real keys only (padded queries are pooled away).
    attend = ops.expand_dims(ops.cast(real, "bool"), 1)
    for block in range(1, blocks + 1):
        x = _encoder_block(x, attend, width, heads, f"block{block}")
    pooled = layers.GlobalAveragePooling1D(name="mean_over_tokens")(x, mask=ops.cast(real, "bool"))
    output = layers.Dense(classes, activation="softmax", name="probabilities")(pooled)
    return keras.Model(ids, output, name="text_classifier")


def _encoder_block(x, attend, width: int, heads: int, name: str):
    """Post-norm transformer block: self-attention and a GELU feed-forward, each with a residual."""
    attended = layers.MultiHeadAttention(heads, width // heads, dropout=0.1, name=f"{name}_attention")(
        x, x, attention_mask=attend
    )
    x = layers.LayerNormalization(name=f"{name}_norm1")(layers.Add()([x, attended]))
    hidden = layers.Dense(2 * width, activation="gelu", name=f"{name}_ff1")(x)
    hidden = layers.Dropout(0.1)(layers.Dense(width, name=f"{name}_ff2")(hidden))
    return layers.LayerNormalization(name=f"{name}_norm2")(layers.Add()([x, hidden]))


def padding_gap(model: keras.Model, x: np.ndarray, extra: int = 5) -> float:
    """Largest difference between each row's prediction alone at its own length and within `x`
    with `extra` more zeros on both sides: 0 up to rounding when the mask reaches attention and
    pooling and padding moves no position."""
    batch = predict(model, np.pad(x, ((0, 0), (extra, extra))))
    alone = [predict(model, ids[ids != 0][None, :])[0] for ids in x]
    return float(np.abs(np.stack(alone) - batch).max())


def predict(model: keras.Model, ids: np.ndarray) -> np.ndarray:
    """The model's probabilities for `ids`. A direct call, not model.predict, which traces a new
    graph for every sequence length it meets."""
    return np.asarray(model(ids.astype(np.int32), training=False))


# ------------------------------------------------------------------ train, save, convert


def train(epochs: int = 10, seed: int = 0) -> Trained:
    """Corpus -> split -> tokenizer (training split only) -> model; accuracy on the held-out split."""
    keras.utils.set_random_seed(seed)
    texts, y, labels = corpus()
    texts_train, texts_test, y_train, y_test = split(texts, y, seed=seed)
    tokenizer = train_tokenizer(texts_train)
    x_train = encode(tokenizer, texts_train)
    model = build(tokenizer.get_vocab_size(), len(labels))
    # The learning rate decays to 0 over the run: the last epochs settle instead of jumping around.
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, epochs * -(-len(x_train) // BATCH))
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=BATCH, verbose=0)
    x_test = encode(tokenizer, texts_test)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return Trained(model, tokenizer, labels, x_test, y_test, texts_test, float(accuracy))


def save(trained: Trained, out: Path) -> None:
    """model.keras, tokenizer.json, labels.txt (one per line, by class index) and test.npz."""
    out.mkdir(parents=True, exist_ok=True)
    trained.model.save(out / "model.keras")
    trained.tokenizer.save(str(out / "tokenizer.json"))
    (out / "labels.txt").write_text("\n".join(trained.labels) + "\n")
    np.savez(out / "test.npz", x=trained.x_test, y=trained.y_test)


def publish(out: Path, repository: Path, name: str = NAME) -> int:
    """Convert out/model.keras into `repository` as `name` (parity gate on test.npz's real token ids,
    padded to the longest), then put tokenizer.json and labels.txt beside config.pbtxt; the version."""
    from modelport.converter import convert

    result = convert(str(out / "model.keras"), str(repository), name, sample=str(out / "test.npz"))
    for file in ("tokenizer.json", "labels.txt"):
        shutil.copyfile(out / file, Path(repository) / name / file)
    return result.version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".demo/text"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--model-repository", type=Path, help="also convert into this repository")
    parser.add_argument("--name", default=NAME, help=f"the model's name in the repository (default {NAME})")
    args = parser.parse_args()
    started = time.perf_counter()
    trained = train(args.epochs)
    seconds = time.perf_counter() - started
    gap = padding_gap(trained.model, trained.x_test[:32])
    if gap > 1e-5:
        raise SystemExit(f"padding changes predictions by up to {gap:.3g}: the mask does not reach every layer")
    save(trained, args.out)
    print(f"text: test accuracy {trained.accuracy:.4f} on {len(trained.y_test)} sentences "
          f"({len(trained.labels)} libraries), trained in {seconds:.0f} s; padding changes predictions by "
          f"at most {gap:.2g}; saved {args.out}")  # fmt: skip
    if args.model_repository is not None:
        version = publish(args.out, args.model_repository, args.name)
        print(f"text: published {args.name} version {version} in {args.model_repository}")


if __name__ == "__main__":
    main()
