"""Classify raw sentences with the served text model (examples/train_text.py): the strings are
tokenized here, with the model's own tokenizer.json, and only token ids travel.

    python examples/text_client.py --url localhost:8001 --model text "Fit the model to X." "Compute the sum."

The tokenizer and the labels are read from the model's folder in the repository
(<repository>/<model>/tokenizer.json and labels.txt, as train_text.py --model-repository puts
them; --model-repository, default ./models, or --tokenizer and --labels). All strings go in one
request, padded with [PAD] = 0 to the longest (the model ignores padding); --one-per-string sends
each string alone at its own length instead. Needs no TensorFlow: the client, numpy and `tokenizers`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from modelport.client import Client, InferenceServerError


def load_tokenizer(path: Path) -> Tokenizer:
    """The saved tokenizer; it pads a batch to its longest row with id 0 and truncates long texts."""
    return Tokenizer.from_file(str(path))


def token_ids(tokenizer: Tokenizer, texts: list[str], one_per_string: bool = False) -> list[np.ndarray]:
    """int32 token-id batches for `texts`: one [len(texts), longest] batch, or with
    `one_per_string` a [1, length] batch per text (no padding at all)."""
    encodings = tokenizer.encode_batch(texts)
    empty = [text for text, e in zip(texts, encodings) if not any(e.ids)]
    if empty:  # a row of padding alone has nothing to average: the model would answer NaN
        raise ValueError(f"no tokens in {empty!r}: give each text at least one word")
    if one_per_string:
        return [np.array([tokenizer.encode(text).ids], dtype=np.int32) for text in texts]
    return [np.array([e.ids for e in encodings], dtype=np.int32)]


def probabilities(client: Client, model: str, batches: list[np.ndarray]) -> np.ndarray:
    """The served model's class probabilities, one row per text, in order."""
    handle = client.model(model)
    return np.concatenate([handle.predict(ids) for ids in batches])


def read_labels(path: Path, classes: int) -> list[str]:
    """Class names by index from labels.txt; the index itself where the file has none."""
    names = path.read_text().splitlines() if path.exists() else []
    return [names[i] if i < len(names) and names[i] else str(i) for i in range(classes)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="sentences to classify")
    parser.add_argument("--url", default="localhost:8001", help="the server, HOST:PORT (default localhost:8001)")
    parser.add_argument("--model", default="text", help="the model's name (default text)")
    parser.add_argument("--model-repository", type=Path, default=Path("models"),
                        help="where the model's tokenizer.json and labels.txt are (default ./models)")  # fmt: skip
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json (default <repository>/<model>/tokenizer.json)")
    parser.add_argument("--labels", type=Path, help="labels.txt (default <repository>/<model>/labels.txt)")
    parser.add_argument("--one-per-string", action="store_true", help="one request per string, at its own length")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")
    args = parser.parse_args(argv)
    folder = args.model_repository / args.model
    tokenizer_path = args.tokenizer or folder / "tokenizer.json"
    if not tokenizer_path.exists():
        parser.error(f"no tokenizer at {tokenizer_path}: pass --tokenizer or --model-repository")
    try:
        batches = token_ids(load_tokenizer(tokenizer_path), args.texts, args.one_per_string)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        with Client(args.url, timeout=args.timeout) as client:
            scores = probabilities(client, args.model, batches)
    except InferenceServerError as exc:
        print(f"text_client: {args.url}: {exc}", file=sys.stderr)
        return 1
    labels = read_labels(args.labels or folder / "labels.txt", scores.shape[1])
    for text, row in zip(args.texts, scores):
        best = int(row.argmax())
        print(f"{labels[best]}\t{row[best]:.3f}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
