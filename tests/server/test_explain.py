"""Explanations (modelport.v1.Explain) against a real server: exact Shapley values where they are
known in closed form or by brute force, completeness everywhere, what is explained for each kind
of model, and every limit and refusal."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import generate_latest

from modelport.client import AsyncClient, Client, InferenceServerError
from modelport.converter.background import write_background
from modelport.protocol.generated import explain_pb2 as ex
from modelport.protocol.generated import explain_pb2_grpc as ex_grpc
from modelport.server import shapley
from modelport.server.background import BackgroundServer
from modelport.server.metrics import MetricsEndpoint
from tests import models

REGRESSION = 'parameters { key: "quality_kind" value { string_value: "regression" } }\n'
LINEAR_W = np.array([1.5, -2.0, 0.5, 3.0, -0.25, 1.0], np.float32)
SOFTMAX_W = np.random.default_rng(3).normal(0, 1, (5, 3)).astype(np.float32)
BINARY_W = [1.0, -1.0, 0.5, 0.25]
IMAGE_W = np.random.default_rng(4).normal(0, 0.3, (64, 4)).astype(np.float32)


def linear(weights: np.ndarray, bias: float) -> object:
    """y = x @ w + b, [N, F] -> [N, 1]."""
    w = numpy_helper.from_array(weights.reshape(-1, 1), "w")
    b = numpy_helper.from_array(np.array([bias], np.float32), "b")
    return models.graph_model(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
        [("x", TensorProto.FLOAT, [None, len(weights)])], [("y", TensorProto.FLOAT, [None, 1])], [w, b],
    )  # fmt: skip


def interaction() -> object:
    """y = x0 * x1 + tanh(x2) * x0, [N, 3] -> [N, 1]: players that interact."""
    split = numpy_helper.from_array(np.array([1, 1, 1], np.int64), "split")
    return models.graph_model(
        [
            helper.make_node("Split", ["x", "split"], ["x0", "x1", "x2"], axis=1),
            helper.make_node("Mul", ["x0", "x1"], ["p"]),
            helper.make_node("Tanh", ["x2"], ["t"]),
            helper.make_node("Mul", ["t", "x0"], ["q"]),
            helper.make_node("Add", ["p", "q"], ["y"]),
        ],
        [("x", TensorProto.FLOAT, [None, 3])], [("y", TensorProto.FLOAT, [None, 1])], [split],
    )  # fmt: skip


def interaction_numpy(x: np.ndarray) -> np.ndarray:
    return x[..., 0] * x[..., 1] + np.tanh(x[..., 2]) * x[..., 0]


def mlp(features: int = 6, hidden: int = 8, seed: int = 5) -> object:
    """A small ReLU network [N, features] -> [N, 1] (not additive)."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 1, (features, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 1, (hidden, 1)).astype(np.float32), "w2")
    return models.graph_model(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])],
        [("x", TensorProto.FLOAT, [None, features])], [("y", TensorProto.FLOAT, [None, 1])], [w1, w2],
    )  # fmt: skip


def image_classifier(logits: bool = False) -> object:
    """[N, 8, 8, 1] images -> softmax (or logits) over 4 classes, through one dense layer."""
    w = numpy_helper.from_array(IMAGE_W, "w")
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("MatMul", ["f", "w"], ["z"])]
    nodes.append(helper.make_node("Identity" if logits else "Softmax", ["z"], ["y"], **({} if logits else {"axis": 1})))
    return models.graph_model(nodes, [("x", TensorProto.FLOAT, [None, 8, 8, 1])], [("y", TensorProto.FLOAT, [None, 4])],
                              [w])  # fmt: skip


def with_background(model_file: Path, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Write the background the converter would (converter/background.py) and list it in
    conversion.json; returns the rows stored (the first input's)."""
    folder = model_file.parent
    entry = write_background(folder, arrays)
    (folder / "conversion.json").write_text(json.dumps({"background": entry}))
    with np.load(folder / entry["file"]) as stored:
        return stored[next(iter(arrays))]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    stored = {}
    stored["linear"] = with_background(models.save(linear(LINEAR_W, 7.0), root, "linear"),
                                       {"x": rng.normal(3, 2, (300, 6)).astype(np.float32)})  # fmt: skip
    models.save(linear(LINEAR_W, 7.0), root, "linear_zeros")  # no background
    stored["interaction"] = with_background(models.save(interaction(), root, "interaction", config=REGRESSION),
                                            {"x": rng.normal(0, 1, (40, 3)).astype(np.float32)})  # fmt: skip
    mlp_background = {"x": rng.normal(0, 1, (50, 6)).astype(np.float32)}
    stored["mlp"] = with_background(models.save(mlp(), root, "mlp", config=REGRESSION), mlp_background)
    stored["softmax"] = with_background(models.save(models.softmax_classifier(SOFTMAX_W), root, "softmax"),
                                        {"x": rng.normal(0, 1, (60, 5)).astype(np.float32)})  # fmt: skip
    x4 = {"x": rng.normal(0, 1, (60, 4)).astype(np.float32)}
    with_background(models.save(models.sigmoid_classifier(BINARY_W, 0.1, extra_logits_output=True), root, "binary"),
                    x4)  # fmt: skip
    classification = 'parameters { key: "quality_kind" value { string_value: "classification" } }\n'
    with_background(models.save(models.sigmoid_classifier(BINARY_W, 0.1, extra_logits_output=True), root,
                                "binary_logits", config=classification), x4)  # fmt: skip
    images = rng.integers(0, 17, (30, 8, 8, 1)).astype(np.float32)
    stored["image"] = with_background(models.save(image_classifier(), root, "image"), {"x": images})
    with_background(models.save(image_classifier(logits=True), root, "image_logits"), {"x": images})
    with_background(models.save(models.add_mul(), root, "pair", config=REGRESSION),
                    {"a": rng.normal(0, 1, (20, 4)).astype(np.float32),
                     "b": rng.normal(0, 1, (20, 4)).astype(np.float32)})  # fmt: skip
    batched = "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 200 }\n" + REGRESSION
    with_background(models.save(mlp(), root, "mlp_batched", config=batched), mlp_background)
    models.save(models.two_input_argmax_classifier([[1.0, 0.0], [0.0, 1.0]]), root, "labels_out")
    np.savez(root.parent / f"{root.name}-stored.npz", **stored)
    return root


@pytest.fixture(scope="module")
def stored(repo: Path) -> dict[str, np.ndarray]:
    with np.load(repo.parent / f"{repo.name}-stored.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def client(server: BackgroundServer):
    with Client(server.address, timeout=60) as c:
        yield c


def assert_complete(explanation, atol: float = 1e-9) -> None:
    for row in explanation.rows:
        total = sum(float(a.sum()) for a in row.attributions.values())
        assert total == pytest.approx(row.output - row.base_value, rel=1e-9, abs=atol)


def brute_force_shapley(f, x: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Interventional Shapley values by the subset formula (independent of the permutation code)."""
    m = len(x)

    def v(subset: tuple[int, ...]) -> float:
        rows = background.astype(np.float64).copy()
        rows[:, list(subset)] = x[list(subset)]
        return float(f(rows).mean())

    phi = np.zeros(m)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        for size in range(m):
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            for subset in itertools.combinations(others, size):
                phi[i] += weight * (v(tuple(sorted(subset + (i,)))) - v(subset))
    return phi


# ---------------------------------------------------------------- exactness and completeness


def test_linear_model_attributions_are_exact(client: Client, stored) -> None:
    x = np.random.default_rng(1).normal(0, 3, (5, 6)).astype(np.float32)
    explanation = client.explain("linear", x)
    assert (explanation.space, explanation.background, explanation.background_rows) == ("raw", "sample", 100)
    mean = stored["linear"].astype(np.float64).mean(axis=0)
    for i, row in enumerate(explanation.rows):
        exact = LINEAR_W * (x[i] - mean)
        got = row.attributions["x"]
        assert got.shape == (6,)
        np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-4 * np.abs(exact).max())
        assert row.output == pytest.approx(float(x[i] @ LINEAR_W + 7.0), rel=1e-6)
        assert row.base_value == pytest.approx(float(mean @ LINEAR_W + 7.0), rel=1e-5)
    assert_complete(explanation)


def test_without_a_background_the_baseline_is_zeros_and_it_says_so(client: Client) -> None:
    x = np.ones((1, 6), np.float32)
    explanation = client.explain("linear_zeros", x)
    assert explanation.background == "zeros" and "zeros" in explanation.method
    np.testing.assert_allclose(explanation.rows[0].attributions["x"], LINEAR_W, rtol=1e-6)
    assert explanation.rows[0].base_value == pytest.approx(7.0)


def test_few_players_get_exact_shapley_values(client: Client, stored) -> None:
    """3 players: every permutation is enumerated, so the values are the exact ones (checked
    against the subset formula), interactions included."""
    x = np.array([[1.5, -0.5, 2.0], [-1.0, 2.0, -0.3]], np.float32)
    explanation = client.explain("interaction", x)
    assert explanation.permutations == 6 and explanation.features == 3
    for i, row in enumerate(explanation.rows):
        exact = brute_force_shapley(interaction_numpy, x[i].astype(np.float64), stored["interaction"])
        np.testing.assert_allclose(row.attributions["x"], exact, rtol=1e-4, atol=1e-5)
    assert_complete(explanation)


def test_sampled_permutations_keep_completeness_and_converge(client: Client, stored) -> None:
    x = np.random.default_rng(2).normal(0, 1, (3, 6)).astype(np.float32)
    sampled = client.explain("mlp", x)
    assert sampled.permutations == shapley.DEFAULT_PERMUTATIONS
    assert_complete(sampled)
    assert client.explain("mlp", x).to_dict() == sampled.to_dict()  # seeded: the same answer
    assert client.explain("mlp", x, seed=1).to_dict() != sampled.to_dict()
    every = client.explain("mlp", x[:1], permutations=720)  # 6! = 720: all of them, exact
    assert every.permutations == 720

    def f(rows: np.ndarray) -> np.ndarray:
        from onnx import numpy_helper as nh

        graph = mlp().graph
        w1, w2 = (nh.to_array(t).astype(np.float64) for t in graph.initializer)
        return np.maximum(rows @ w1, 0) @ w2

    exact = brute_force_shapley(f, x[0].astype(np.float64), stored["mlp"])
    np.testing.assert_allclose(every.rows[0].attributions["x"], exact, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- what is explained


def test_softmax_classifier_explains_the_predicted_or_requested_class(client: Client) -> None:
    x = np.random.default_rng(6).normal(0, 1, (4, 5)).astype(np.float32)
    probs = client.predict("softmax", x)
    explanation = client.explain("softmax", x)
    assert explanation.space == "probability"
    for i, row in enumerate(explanation.rows):
        assert row.target == int(probs[i].argmax())
        assert row.output == pytest.approx(float(probs[i].max()), rel=1e-6)
    assert_complete(explanation)
    chosen = client.explain("softmax", x, target=2)
    assert [r.target for r in chosen.rows] == [2] * 4
    np.testing.assert_allclose([r.output for r in chosen.rows], probs[:, 2], rtol=1e-6)
    assert_complete(chosen)


def test_sigmoid_classifier_explains_the_predicted_class_probability(client: Client) -> None:
    x = np.array([[2.0, -1.0, 0.0, 0.0], [-2.0, 1.0, 0.0, 0.0]], np.float32)
    p = client.infer("binary", {"x": x})["prob"][:, 0]
    explanation = client.explain("binary", x)
    assert explanation.space == "probability" and explanation.output_name == "prob"
    assert [r.target for r in explanation.rows] == [1, 0]
    assert explanation.rows[0].output == pytest.approx(float(p[0]), rel=1e-6)
    assert explanation.rows[1].output == pytest.approx(1 - float(p[1]), rel=1e-6)
    assert_complete(explanation)
    # class 0's attributions are class 1's with the other sign
    one, zero = client.explain("binary", x, target=1), client.explain("binary", x, target=0)
    np.testing.assert_allclose(zero.rows[0].attributions["x"], -one.rows[0].attributions["x"], atol=1e-9)


def test_logit_outputs(client: Client) -> None:
    x = np.array([[2.0, -1.0, 0.0, 0.0], [-2.0, 1.0, 0.0, 0.0]], np.float32)
    # a named one-column output outside [0, 1] and no quality_kind: a regression
    assert client.explain("binary", x, output="logits").space == "raw"
    explanation = client.explain("binary_logits", x, output="logits")  # quality_kind classification
    assert explanation.space == "logit" and [r.target for r in explanation.rows] == [1, 0]
    z = client.infer("binary", {"x": x})["logits"][:, 0]
    assert explanation.rows[1].output == pytest.approx(-float(z[1]), rel=1e-6)
    images = np.random.default_rng(7).integers(0, 17, (2, 8, 8, 1)).astype(np.float32)
    assert client.explain("image_logits", images).space == "logit"


def test_images_are_explained_by_patches(client: Client) -> None:
    images = np.random.default_rng(8).integers(0, 17, (3, 8, 8, 1)).astype(np.float32)
    explanation = client.explain("image", images)
    assert (explanation.patch_size, explanation.features) == (2, 16) and "2x2 pixel patches" in explanation.method
    for row in explanation.rows:
        heat = row.attributions["x"]
        assert heat.shape == (8, 8, 1)
        # one patch's share is spread evenly over its pixels
        assert np.all(heat[0:2, 0:2] == heat[0, 0])
    assert_complete(explanation)
    pixels = client.explain("image", images[:1], patch_size=4)
    assert (pixels.patch_size, pixels.features) == (4, 4)
    assert_complete(pixels)


def test_several_inputs_and_a_named_output(client: Client) -> None:
    a = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    b = np.array([[0.5, -1.0, 2.0, 0.0]], np.float32)
    explanation = client.explain("pair", {"a": a, "b": b}, output="prod", target=2)
    row = explanation.rows[0]
    assert set(row.attributions) == {"a", "b"} and row.output == pytest.approx(6.0)
    # prod[2] = a[2] * b[2]: every other element is a dummy player and gets exactly 0
    for name in ("a", "b"):
        assert np.count_nonzero(row.attributions[name]) == 1 and row.attributions[name][2] != 0
    assert_complete(explanation)
    assert set(explanation.to_dict()["rows"][0]["attributions"]) == {"a", "b"}


def test_dynamic_batching_model(client: Client) -> None:
    """Perturbed rows go through the batcher in chunks of at most max_batch_size."""
    x = np.random.default_rng(9).normal(0, 1, (2, 6)).astype(np.float32)
    explanation = client.explain("mlp_batched", x)
    assert_complete(explanation)
    reference = client.explain("mlp", x)
    for got, want in zip(explanation.rows, reference.rows):
        np.testing.assert_allclose(got.attributions["x"], want.attributions["x"], rtol=1e-4, atol=1e-6)
    stats = client.model_statistics("mlp_batched").model_stats[0]
    assert max(b.batch_size for b in stats.batch_stats) <= 8


def test_json_shape(client: Client) -> None:
    doc = client.explain("linear", np.ones((2, 6), np.float32)).to_dict()
    assert list(doc) == ["model", "version", "method", "space", "rows"]
    assert (doc["model"], doc["version"], doc["space"]) == ("linear", "1", "raw")
    assert list(doc["rows"][0]) == ["target", "output", "base_value", "attributions"]
    assert len(doc["rows"][0]["attributions"]) == 6 and isinstance(doc["rows"][0]["attributions"][0], float)
    json.dumps(doc)


def test_async_client_and_model_handle(server: BackgroundServer) -> None:
    async def main():
        async with AsyncClient(server.address) as client:
            return await client.explain("linear", np.ones((1, 6), np.float32)), \
                await client.model("linear").explain(np.ones((1, 6), np.float32))

    first, second = asyncio.run(main())
    assert first.to_dict() == second.to_dict()
    with Client(server.address) as client:
        assert client.model("linear").explain(np.ones((1, 6), np.float32)).to_dict() == first.to_dict()


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("model", "x", "kwargs", "words"),
    [
        ("linear", np.ones((1, 5), np.float32), {}, ["input 'x'", "[-1,6]"]),
        ("softmax", np.ones((1, 5), np.float32), {"target": 3}, ["unknown target class 3", "0 to 2"]),
        ("binary", np.ones((1, 4), np.float32), {"target": 2}, ["unknown target class 2", "0 to 1"]),
        ("linear", np.ones((17, 6), np.float32), {}, ["17 rows", "at most 16", "--explain-max-rows"]),
        ("linear", np.ones((1, 6), np.float32), {"output": "nope"}, ["unknown requested output 'nope'"]),
        ("labels_out", {"a": np.ones((1, 2), np.float32), "b": np.ones((1, 2), np.float32)}, {},
         ["output 'label' is INT64", "floating-point"]),
    ],
    ids=["shape", "target", "binary-target", "rows", "output", "integer-output"],
)
def test_bad_requests_are_invalid_argument_and_the_server_keeps_serving(client, model, x, kwargs, words) -> None:
    with pytest.raises(InferenceServerError) as caught:
        client.explain(model, x, **kwargs)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, caught.value.message
    for word in words:
        assert word.replace(" ", "") in caught.value.message.replace(" ", ""), caught.value.message
    assert f"model '{model}'" in caught.value.message
    np.testing.assert_allclose(client.predict("linear", np.zeros((1, 6), np.float32)), [[7.0]])


def test_unknown_model_and_malformed_requests(server: BackgroundServer, client: Client) -> None:
    with pytest.raises(InferenceServerError) as caught:
        client.explain("nope", np.ones((1, 6), np.float32))
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(server.address) as channel:
        stub = ex_grpc.ExplainStub(channel)
        with pytest.raises(grpc.RpcError) as raw:
            stub.ModelExplain(ex.ModelExplainRequest())
        assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        garbage = channel.unary_unary("/modelport.v1.Explain/ModelExplain")
        with pytest.raises(grpc.RpcError) as raw:
            garbage(b"\xff\xff\xff")
        assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_metrics_count_explanations(server: BackgroundServer, client: Client) -> None:
    client.explain("linear", np.ones((2, 6), np.float32))
    with pytest.raises(InferenceServerError):
        client.explain("linear", np.ones((1, 5), np.float32))
    running = server.running
    endpoint = MetricsEndpoint(running.dataplane.registry, running.dataplane, running.quality,
                               explainer=running.explainer)  # fmt: skip
    text = generate_latest(endpoint.collectors).decode()
    assert 'modelport_explanations_total{code="OK",model="linear",version="1"}' in text
    assert 'modelport_explanations_total{code="INVALID_ARGUMENT",model="linear",version="1"}' in text
    assert 'modelport_explanation_rows_total{model="linear",version="1"}' in text
    assert 'modelport_explanation_duration_seconds_count{model="linear",version="1"}' in text
    assert "modelport_explanation_model_rows_total" in text


# ---------------------------------------------------------------- limits


def test_allow_explain_false(tmp_path: Path, start_server) -> None:
    models.save(linear(LINEAR_W, 1.0), tmp_path, "linear")
    with Client(start_server(tmp_path, allow_explain=False)) as client:
        with pytest.raises(InferenceServerError) as caught:
            client.explain("linear", np.ones((1, 6), np.float32))
        assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED and "--allow-explain" in caught.value.message
        assert client.predict("linear", np.zeros((1, 6), np.float32))[0, 0] == pytest.approx(1.0)


def test_time_budget_ends_in_deadline_exceeded(tmp_path: Path, start_server) -> None:
    models.save(models.dense_chain(256, 8), tmp_path, "slow", config=REGRESSION)
    x = np.random.default_rng(0).normal(0, 1, (2, 256)).astype(np.float32)
    with Client(start_server(tmp_path, explain_timeout=0.2, explain_max_rows=4)) as client:
        with pytest.raises(InferenceServerError) as caught:
            client.explain("slow", x, permutations=512)  # ~2 x 130,000 rows of 8 matmuls: seconds anywhere
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "--explain-timeout" in caught.value.message
        with pytest.raises(InferenceServerError) as caught:  # the call's own deadline too
            client.explain("slow", x, permutations=512, timeout=0.1)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert client.predict("slow", x).shape == (2, 256)  # still serving


def test_one_explanation_per_model_at_a_time(tmp_path: Path, start_server) -> None:
    models.save(mlp(6, 256), tmp_path, "m", config=REGRESSION)
    address = start_server(tmp_path, explain_concurrency=1)
    x = np.random.default_rng(0).normal(0, 1, (4, 6)).astype(np.float32)
    results, errors = [], []

    def call() -> None:
        try:
            with Client(address, timeout=60) as client:
                results.append(client.explain("m", x, permutations=64))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    assert all(r.to_dict() == results[0].to_dict() for r in results)


def test_explanations_need_the_inference_scope(tmp_path: Path, start_server) -> None:
    models.save(linear(LINEAR_W, 1.0), tmp_path, "linear")
    tokens = tmp_path / "tokens"
    tokens.write_text("reader inference\n")
    address = start_server(tmp_path, auth_token_file=tokens)
    with Client(address) as anonymous, pytest.raises(InferenceServerError) as caught:
        anonymous.explain("linear", np.ones((1, 6), np.float32))
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    with Client(address, token="reader") as reader:
        assert_complete(reader.explain("linear", np.ones((1, 6), np.float32)))


# ---------------------------------------------------------------- the maths alone


def test_players_of_images_and_tables() -> None:
    hwc = shapley.players(["x"], [(8, 8, 1)])
    assert (hwc.patch, hwc.count) == (2, 16)
    chw = shapley.players(["x"], [(3, 28, 28)])
    assert (chw.patch, chw.count) == (4, 49)
    grid = chw.groups[0].reshape(3, 28, 28)
    assert np.all(grid[0] == grid[2]) and grid[0, 0, 0] == 0 and grid[0, 27, 27] == 48
    table = shapley.players(["a", "b"], [(4,), (2,)])
    assert table.count == 6 and table.patch == 0 and list(table.groups[1]) == [4, 5]
    odd = shapley.players(["x"], [(5, 5, 3)], patch=2)  # patches at the edge are smaller
    assert odd.count == 9 and sorted(np.bincount(odd.groups[0]))[:1] == [3]
    assert shapley.players(["x"], [(6, 7)]).count == 42  # 2-D rows without channels: elements


def test_permutations_are_antithetic_or_complete() -> None:
    rng = np.random.default_rng(0)
    every = shapley.permutations(3, 16, rng)
    assert len(every) == 6 and len({tuple(p) for p in every}) == 6
    sampled = shapley.permutations(10, 7, rng)
    assert len(sampled) == 8
    np.testing.assert_array_equal(sampled[1], sampled[0][::-1])
    assert all(sorted(p) == list(range(10)) for p in sampled)


def test_attribute_matches_the_subset_formula_on_a_lookup_game() -> None:
    """A game given by a table of coalition values: the permutation code over all orders equals
    the subset formula."""
    rng = np.random.default_rng(1)
    m = 4
    values = {s: rng.normal() for size in range(m + 1) for s in itertools.combinations(range(m), size)}
    p = shapley.plan(shapley.permutations(m, 24, rng))
    coalition_values = np.array([values[tuple(np.flatnonzero(c))] for c in p.masks(0, p.count)])
    phi = shapley.attribute(p, coalition_values, values[()], values[tuple(range(m))])
    for i in range(m):
        expected = 0.0
        for s, v in values.items():
            if i in s:
                continue
            weight = math.factorial(len(s)) * math.factorial(m - len(s) - 1) / math.factorial(m)
            expected += weight * (values[tuple(sorted(s + (i,)))] - v)
        assert phi[i] == pytest.approx(expected, abs=1e-12)
    assert phi.sum() == pytest.approx(values[tuple(range(m))] - values[()], abs=1e-12)


def test_converter_background_from_sample_and_statistics(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sample = {"a": rng.normal(0, 1, (500, 3)).astype(np.float32), "b": np.arange(500, dtype=np.int64)[:, None]}
    entry = write_background(tmp_path, sample)
    assert entry == {"file": "background.npz", "rows": 100, "source": "sample"}
    with np.load(tmp_path / entry["file"]) as data:
        a, b = data["a"], data["b"]
    assert a.shape == (100, 3) and a.dtype == np.float32 and b.dtype == np.int64
    np.testing.assert_array_equal(a, sample["a"][b[:, 0]])  # the same rows of every input
    stats = {"x": {"count": 20, "mean": [0.0, 10.0], "std": [1.0, 0.0], "min": [-1.0, 10.0], "max": [1.0, 10.0]}}
    entry = write_background(tmp_path / "", None, stats)
    assert entry["source"] == "statistics" and entry["rows"] == 20
    with np.load(tmp_path / entry["file"]) as data:
        x = data["x"]
    assert x.min() >= -1 and x.max() <= 10 and np.all(x[:, 1] == 10)
    assert write_background(tmp_path) is None
    assert write_background(tmp_path, {"s": np.array([b"a"], dtype=object)}) is None


def test_plans_for_many_players_make_masks_on_demand() -> None:
    """Above DISTINCT_PLAYERS no P x M x M array is made; an additive game still comes out exact."""
    rng = np.random.default_rng(2)
    m = shapley.DISTINCT_PLAYERS + 4
    p = shapley.plan(shapley.permutations(m, 6, rng))
    assert p.distinct is None and p.count == 6 * (m - 1)
    masks = p.masks(0, p.count)
    assert masks.shape == (p.count, m) and list(masks[: m - 1].sum(axis=1)) == list(range(1, m))
    np.testing.assert_array_equal(p.masks(5, 9), masks[5:9])
    weights = rng.normal(size=m)
    phi = shapley.attribute(p, masks.astype(float) @ weights, 0.0, float(weights.sum()))
    np.testing.assert_allclose(phi, weights, atol=1e-12)


def test_too_many_waiting_explanations_are_resource_exhausted(tmp_path: Path, start_server) -> None:
    models.save(models.dense_chain(256, 8), tmp_path, "m", config=REGRESSION)  # ~0.1-0.5 s per explanation
    address = start_server(tmp_path, explain_concurrency=1)
    x = np.random.default_rng(0).normal(0, 1, (1, 256)).astype(np.float32)

    async def main():
        async with AsyncClient(address, timeout=120) as client:
            return await asyncio.gather(*(client.explain("m", x) for _ in range(12)), return_exceptions=True)

    results = asyncio.run(main())
    refused = [r for r in results if isinstance(r, InferenceServerError)]
    assert len(refused) == 12 - 1 - 8  # one runs, eight wait (WAITING_PER_SLOT), the rest are refused
    assert all(r.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--explain-concurrency" in r.message for r in refused)
    answered = [r for r in results if not isinstance(r, (Exception, InferenceServerError))]
    assert all(r.to_dict() == answered[0].to_dict() for r in answered)
