"""The softmax-regression trainer: its gradient, what it learns, and its exported layer."""

from __future__ import annotations

import json
from math import erf, sqrt
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.builders import EMBEDDING_QUANT, clustered_features, embedding_graph, run_head
from workbench.cli import app
from workbench.core.options import BackpropOptions
from workbench.core.progress import Fallback
from workbench.heads.backprop import (
    EDGE_STEPS,
    REG_GRID,
    FeatureMap,
    SoftmaxRegression,
    choose_reg,
    cross_entropy_rows,
    one_standard_error,
    sgd,
)
from workbench.heads.imprint import cosines, imprint
from workbench.heads.softmax_head import SoftmaxHead, imprinting_start
from workbench.model.export import workbench_metadata
from workbench.tflite.graph import Graph
from workbench.tflite.heads import append_softmax_regression_tail

runner = CliRunner()


def gaussian_classes(
    n: int, dim: int, separation: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Two unit-variance Gaussian classes whose means differ by `separation` along axis 0."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    x = rng.normal(size=(n, dim))
    x[:, 0] += np.where(labels == 1, separation / 2, -separation / 2)
    return x, labels


def test_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.integers(0, 3, size=7)
    model = SoftmaxRegression(5, 3, weight_scale=0.5, reg=0.2, seed=1)
    _, grad_w, grad_b = model.loss_and_gradients(x, y)
    eps = 1e-6
    for params, grad in ((model.weights, grad_w), (model.bias, grad_b)):
        numeric = np.zeros_like(params)
        for index in np.ndindex(params.shape):
            saved = params[index]
            params[index] = saved + eps
            plus = model.loss_and_gradients(x, y)[0]
            params[index] = saved - eps
            minus = model.loss_and_gradients(x, y)[0]
            params[index] = saved
            numeric[index] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_learns_separable_classes_perfectly() -> None:
    x, y = clustered_features(600, 32, 8, seed=3)
    head = SoftmaxHead.fit(x[:400], y[:400], 8, BackpropOptions(epochs=30, reg=1e-3), seed=0)
    assert np.mean(head.logits(x[400:]).argmax(1) == y[400:]) == 1.0
    losses = [s.loss for s in head.history]
    assert len(losses) == 30 and losses[-1] <= losses[0] + 1e-9


def test_training_several_penalties_at_once_equals_training_each_alone() -> None:
    x, y = clustered_features(150, 12, 3, seed=4)
    start = (np.zeros((12, 3)), np.zeros(3))
    settings = BackpropOptions(epochs=5, batch_size=40)
    together, bias, _ = sgd(x, y, start, np.array([0.1, 0.001]), settings, seed=2)
    for k, reg in enumerate([0.1, 0.001]):
        alone, alone_bias, history = sgd(x, y, start, np.array([reg]), settings, seed=2)
        np.testing.assert_allclose(together[k], alone[0], atol=1e-10)
        np.testing.assert_allclose(bias[k], alone_bias[0], atol=1e-10)
    assert len(history) == 5


def test_imprinting_start_is_imprinting_as_a_linear_layer() -> None:
    x, y = clustered_features(90, 10, 3, seed=5)
    weights, bias, held_out = imprinting_start(x, y, 3)
    expected = cosines(imprint(x, y, 3), x).argmax(1)
    assert np.array_equal((x @ weights + bias).argmax(1), expected)
    assert held_out.shape == (90, 3) and np.isfinite(held_out).all()


def test_penalty_is_the_one_with_the_lowest_held_out_loss() -> None:
    rng = np.random.default_rng(6)

    def data(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, size=n)
        x = rng.normal(size=(n, 40))
        x[:, :3] += 1.5 * np.eye(3)[y]
        return x, y

    settings = BackpropOptions(epochs=30)
    few = choose_reg(*data(30), 3, settings, seed=0)
    many = choose_reg(*data(1500), 3, settings, seed=0)
    assert len(few.choice.losses) >= len(REG_GRID) and few.choice.held_out_rows == 30
    assert few.logits.shape == (30, 3) and sorted(few.rows.tolist()) == list(range(30))
    for search in (few, many):
        losses = search.choice.losses
        lowest = min(losses, key=losses.__getitem__)
        # the strongest penalty within a standard error of the lowest loss: never weaker
        assert search.choice.reg >= float(lowest) * (1 - 1e-3)
        assert losses[f"{search.choice.reg:.3g}"] <= min(losses.values()) + 0.1
        grid = sorted(float(k) for k in losses)  # reg = lam / N, in the grid's steps
        # the winner is inside the grid: an edge that wins was extended (up to 3 times)
        if len(losses) < len(REG_GRID) + 3 * EDGE_STEPS:
            assert grid[0] < search.choice.reg < grid[-1]


def test_a_weaker_penalty_must_beat_a_stronger_one_by_a_standard_error() -> None:
    labels = np.array([0, 1] * 50)
    margins = np.random.default_rng(1).uniform(-1.0, 4.0, size=(100, 1))  # mostly right
    right = np.where(np.eye(2)[labels] > 0, margins, 0.0)
    noisy = right + np.random.default_rng(0).normal(scale=3.0, size=right.shape)
    held = np.stack([right * 0.5, noisy, right])  # strong to weak
    losses = [float(np.mean(cross_entropy_rows(h, labels))) for h in held]
    assert int(np.argmin(losses)) == 2
    assert one_standard_error(held, labels, losses) == 2  # clearly below the rest
    held = np.stack([right * 0.98, right])  # nearly the same: the stronger one is kept
    losses = [float(np.mean(cross_entropy_rows(h, labels))) for h in held]
    assert losses[1] < losses[0] and one_standard_error(held, labels, losses) == 0


def test_a_penalty_that_wins_at_the_grids_edge_extends_the_grid() -> None:
    """Separable clusters, 200 images a class in 8 dimensions: the weakest penalty wins, so
    weaker ones are tried, EDGE_STEPS at a time, as long as the edge keeps winning."""
    x, y = clustered_features(600, 8, 3, seed=2)
    search = choose_reg(x, y, 3, BackpropOptions(epochs=10), seed=0)
    tried = sorted(float(k) * len(y) for k in search.choice.losses)
    assert len(tried) == len(REG_GRID) + 3 * EDGE_STEPS
    assert tried[0] < min(REG_GRID) / 1000 and tried[-1] == pytest.approx(max(REG_GRID))


def test_too_few_images_per_class_fall_back_to_imprinting() -> None:
    x, y = clustered_features(40, 10, 4, seed=8)
    keep = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(4)])
    head = SoftmaxHead.fit(x[keep], y[keep], 4)
    assert head.fallback and "imprinting" in head.fallback and not head.history
    expected = cosines(imprint(x[keep], y[keep], 4), x).argmax(1)
    assert np.array_equal(head.logits(x).argmax(1), expected)
    lo, hi = head.logit_range
    assert hi - lo >= 4 * 255 / 256  # sharpened so adjacent 8-bit levels stay apart


def test_non_separable_classes_reach_the_bayes_rate() -> None:
    # Means 2 apart, unit variance: the best possible accuracy is Phi(1) = 0.841; a model that
    # learned nothing gets 0.5, a wrong-signed gradient less.
    bayes = 0.5 * (1 + erf(1 / sqrt(2)))
    x, y = gaussian_classes(4000, 20, separation=2.0, seed=4)
    head = SoftmaxHead.fit(x[:2000], y[:2000], 2, seed=0)
    accuracy = np.mean(head.logits(x[2000:]).argmax(1) == y[2000:])
    assert bayes - 0.03 <= accuracy <= bayes + 0.02
    # The 19 noise dimensions must end up with little weight next to the informative one.
    contrast = head.weights[:, 1] - head.weights[:, 0]
    assert abs(contrast[0]) > 5 * np.abs(contrast[1:]).max()


def test_same_seed_same_model_other_seed_other_model() -> None:
    x, y = clustered_features(300, 16, 4, seed=5)
    given = BackpropOptions(epochs=5, reg=1e-3)  # SGD runs (on its own choice it may not)
    a = SoftmaxHead.fit(x, y, 4, given, seed=7)
    b = SoftmaxHead.fit(x, y, 4, given, seed=7)
    c = SoftmaxHead.fit(x, y, 4, given, seed=8)
    assert np.array_equal(a.weights, b.weights) and np.array_equal(a.bias, b.bias)
    assert [s.loss for s in a.history] == [s.loss for s in b.history]
    assert not np.array_equal(a.weights, c.weights)  # other shuffles (same start: imprinting)


def test_feature_map_folds_into_raw_weights() -> None:
    x, y = clustered_features(100, 12, 3, seed=7)
    weights, bias = np.random.default_rng(0).normal(size=(12, 3)), np.arange(3.0)
    for features in (FeatureMap.whiten(x, y, 3.0), FeatureMap.standardize(x)):
        folded_w, folded_b = features.fold(weights, bias)
        np.testing.assert_allclose(
            features.apply(x) @ weights + bias, x @ folded_w + folded_b, atol=1e-9
        )


def test_diverging_training_falls_back_to_imprinting_and_says_so() -> None:
    x, y = clustered_features(100, 12, 3, seed=7)
    with pytest.warns(Fallback, match="lower the learning rate"):
        head = SoftmaxHead.fit(
            x, y, 3, BackpropOptions(epochs=50, learning_rate=1e6, batch_size=10, reg=1e-3)
        )
    assert head.fallback and "imprinting solution" in head.fallback and not head.history
    assert np.all(np.isfinite(head.weights))
    assert np.mean(head.scores(x).argmax(axis=1) == y) > 0.9  # clustered: imprinting gets it


@pytest.mark.parametrize("dtype", ["uint8", "int8", "float32"])
def test_exported_layer_matches_the_float_head(tmp_path: Path, dtype: str) -> None:
    dim, classes = 24, 6
    x, y = clustered_features(400, dim, classes, seed=1)
    head = SoftmaxHead.fit(x[:300], y[:300], classes, BackpropOptions(epochs=20), seed=0)
    graph, _ = embedding_graph(dtype, [1, 1, 1, dim])
    append_softmax_regression_tail(graph, head.weights.T, head.bias, head.logit_range)
    assert graph.op_names()[-2:] == ["FULLY_CONNECTED", "SOFTMAX"]
    inputs = x[300:].astype(np.float32)
    if EMBEDDING_QUANT[dtype] is not None:
        q = EMBEDDING_QUANT[dtype]
        info = np.iinfo(np.dtype(dtype))
        inputs = np.clip(np.round(x[300:] / q.scale[0]) + q.zero_point[0], info.min, info.max)
        inputs = inputs.astype(dtype)
    scores = run_head(tmp_path, graph, inputs)
    expected = head.scores(x[300:])
    if dtype == "float32":
        np.testing.assert_allclose(scores, expected, atol=1e-5)
        return
    fc = graph.operators[-2]
    kernel, bias = fc.inputs[1], fc.inputs[2]
    assert graph.dtype(kernel) == np.dtype(dtype) and graph.dtype(bias) == np.int32
    in_scale = EMBEDDING_QUANT[dtype].scale[0]
    assert graph.quant(bias).scale[0] == pytest.approx(in_scale * graph.quant(kernel).scale[0])
    if dtype == "int8":
        assert graph.quant(kernel).zero_point[0] == 0
    assert graph.dtype(graph.outputs[0]) == np.dtype(dtype)
    assert np.abs(scores - expected).max() < 0.05
    assert np.mean(scores.argmax(1) == expected.argmax(1)) >= 0.98


@pytest.fixture(scope="module")
def backprop_run(
    tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path], five_classes: Path
) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("backprop") / "five.tflite"
    result = runner.invoke(
        app,
        ["backprop", str(five_classes), "-e", str(models["uint8"]), "-o", str(out), "--json",
         "--epochs", "30", "--reg", "0.001"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_backprop_cli_writes_model_labels_and_report(backprop_run: tuple[Path, dict]) -> None:
    out, report = backprop_run
    assert out.exists() and out.with_suffix(".txt").exists()
    assert json.loads(out.with_suffix(".report.json").read_text()) == report
    assert report["trainer"] == "backprop"
    assert report["top_k_accuracy"][0] >= 0.9
    assert report["agreement"] >= 0.95
    curve = report["training_curve"]
    assert [e["epoch"] for e in curve] == list(range(1, 31))
    assert {"loss", "train_accuracy", "learning_rate"} <= set(curve[0])
    assert report["head"]["reg"] == 0.001 and report["head"]["method"] == "sgd"
    assert report["settings"]["epochs"] == 30 and report["settings"]["batch_size"] == 100
    graph = Graph.load(out)
    assert graph.op_names()[-2:] == ["FULLY_CONNECTED", "SOFTMAX"]
    assert graph.dtype(graph.outputs[0]) == np.uint8
    assert workbench_metadata(graph)["trainer"] == "backprop"


def test_backprop_keeps_the_imprinting_head_unless_sgd_clearly_beats_it(
    tmp_path: Path, models: dict[str, Path], five_classes: Path
) -> None:
    """Well-separated colours: the imprinting head SGD would start from is already as good
    as anything the penalty search finds, so it is kept, and the report says so."""
    out = tmp_path / "m.tflite"
    result = runner.invoke(app, ["backprop", str(five_classes), "-e", str(models["uint8"]),
                                 "-o", str(out), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    head = json.loads(result.stdout)["head"]
    assert head["method"] == "imprinting" and head["reg"] is None and head["epochs_run"] == 0
    losses = head["reg_choice"]["held_out_loss"]
    assert next(iter(losses)) == "prior" and len(losses) > len(REG_GRID)
    assert head["reg_choice"]["folds"] == 3


@pytest.mark.parametrize("kind", ["int8", "float32_2d"])
def test_backprop_works_with_int8_and_float_extractors(
    tmp_path: Path, models: dict[str, Path], colors: Path, kind: str
) -> None:
    out = tmp_path / "m.tflite"
    result = runner.invoke(
        app, ["backprop", str(colors), "-e", str(models[kind]), "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["top_k_accuracy"][0] == 1.0 and report["agreement"] == 1.0


@pytest.mark.parametrize(
    ("option", "value"),
    [("--epochs", "0"), ("--reg", "-1"), ("--batch-size", "0"), ("--learning-rate", "0")],
)
def test_bad_training_settings_exit_2(
    tmp_path: Path, models: dict[str, Path], colors: Path, option: str, value: str
) -> None:
    out = tmp_path / "m.tflite"
    result = runner.invoke(
        app, ["backprop", str(colors), "-e", str(models["uint8"]), "-o", str(out), option, value]
    )
    assert result.exit_code == 2
    assert option in result.stderr and not out.exists()


def test_bench_backprop_prints_its_measurement() -> None:
    result = runner.invoke(
        app, ["bench", "backprop", "--samples", "60", "--dim", "8", "--epochs", "3", "--json"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert (figures["samples"], figures["dim"], figures["epochs"]) == (60, 8, 3)
    assert figures["seconds"] > 0


def test_classes_too_small_to_validate_give_the_imprinting_head(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    from tests.builders import make_dataset

    data = make_dataset(tmp_path / "tiny", per_class=3)  # 1 held out, 2 to train
    out = tmp_path / "tiny.tflite"
    result = runner.invoke(
        app, ["backprop", str(data), "-e", str(models["uint8"]), "-o", str(out), "--json",
              "--epochs", "20"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "imprinting solution" in report["head"]["fallback"]
    assert "imprinting solution" in result.stderr
    assert report["training_curve"] == [] and report["agreement"] == 1.0
    assert Graph.load(out).op_names()[-2:] == ["FULLY_CONNECTED", "SOFTMAX"]
