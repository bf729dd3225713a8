"""The cluster-wide quality recording rules (k8s/components/quality-rules): the plain rule file is
valid for Prometheus (`promtool check rules`), the PrometheusRule is generated from it, and the
rules compute scikit-learn's metrics: promtool evaluates them over counters of three simulated
replicas and every recorded value is compared with scikit-learn on the same pairs.

Regenerate the PrometheusRule after editing the plain file:
    .venv/bin/python -m tests.k8s.test_quality_rules
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from .render import K8S, TARGETS, one

COMPONENT = K8S / "components" / "quality-rules"
PLAIN = COMPONENT / "quality-rules.yaml"
OPERATOR = COMPONENT / "prometheusrule.yaml"

HEADER = """\
# GENERATED from quality-rules.yaml (the same groups, indented under spec): edit that file, then
#   .venv/bin/python -m tests.k8s.test_quality_rules
# (tests/k8s/test_quality_rules.py fails while the two differ). kube-prometheus-stack selects
# PrometheusRules by its release label, as it does the ServiceMonitor: change it to match yours.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: modelport-quality
  labels:
    app.kubernetes.io/name: modelport
    app.kubernetes.io/component: quality-rules
    release: kube-prometheus-stack
spec:
"""


def prometheus_rule_text() -> str:
    """prometheusrule.yaml as generated from quality-rules.yaml: its text (comments and all)
    indented under `spec:`."""
    lines = PLAIN.read_text().splitlines(keepends=True)
    return HEADER + "".join("  " + line if line.strip() else line for line in lines)


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: run `make test` (it installs Debian's prometheus, which ships promtool)")
    return found


def plain_groups() -> list[dict]:
    return yaml.safe_load(PLAIN.read_text())["groups"]


def records() -> dict[str, str]:
    return {rule["record"]: rule["expr"] for group in plain_groups() for rule in group["rules"]}


# ---------------------------------------------------------------- files

def test_plain_rule_file_is_valid_for_prometheus():
    result = subprocess.run([promtool(), "check", "rules", str(PLAIN)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(records())} rules found" in result.stdout


def test_prometheus_rule_is_generated_from_the_plain_file(rendered):
    assert OPERATOR.read_text() == prometheus_rule_text(), (
        "prometheusrule.yaml differs from quality-rules.yaml: run .venv/bin/python -m tests.k8s.test_quality_rules"
    )
    for target in [t for t in TARGETS if "quality-rules" in t.components]:
        rule = one(rendered[target], "PrometheusRule", "modelport-quality")
        assert rule["spec"] == yaml.safe_load(PLAIN.read_text()), target.id
        assert rule["metadata"]["namespace"] == "modelport"
        monitor_release = yaml.safe_load((K8S / "components/servicemonitor/servicemonitor.yaml").read_text())
        assert rule["metadata"]["labels"]["release"] == monitor_release["metadata"]["labels"]["release"]


def test_the_rules_are_the_documented_ones():
    names = records()
    for metric in ("accuracy:ratio", "class_precision:ratio", "class_recall:ratio", "class_f1:ratio",
                   "precision:macro", "recall:macro", "f1:macro", "mae:ratio", "rmse:ratio", "r2:ratio"):
        assert f"modelport:quality_{metric}" in names
        assert f"modelport:quality_{metric}_1h" in names, "every ratio has its 1h form"
    readme = (K8S / "README.md").read_text()
    for name in names:
        if not name.endswith((":sum", ":increase1h")):
            assert name in readme, f"{name} is not documented in k8s/README.md"
    # Cumulative rules read the counters themselves, the 1h ones their increase() only.
    for group in plain_groups():
        for rule in group["rules"]:
            if group["name"].endswith("-1h"):
                assert "_total" not in rule["expr"] or "increase(" in rule["expr"], rule["record"]
                assert ":sum" not in rule["expr"], rule["record"]
            else:
                assert "increase(" not in rule["expr"] and ":increase1h" not in rule["expr"], rule["record"]


# ---------------------------------------------------------------- values, against scikit-learn

MINUTES = 120  # samples every minute from 0 to 120m; the 1h window is (60m, 120m]
REPLICAS = ("a", "b", "c")


def _rows(seed: int = 7) -> tuple[list[tuple], list[tuple]]:
    """Labelled pairs (minute, replica, model, version, y_true, y_pred) of classifiers and regressors."""
    rng = random.Random(seed)
    classes, regressions = [], []
    for version, n in (("1", 400), ("2", 150)):
        for _ in range(n):
            minute = rng.randint(1, MINUTES - 1)
            # 3 is never predicted (its precision is 0/0), 4 never a label (its recall is 0/0):
            # scikit-learn's zero_division=0 makes both 0.
            truth = rng.choice([0, 1, 2, 3])
            guess = truth if truth != 3 and rng.random() < 0.7 else rng.choice([0, 1, 2, 4])
            classes.append((minute, rng.choice(REPLICAS), "clf", version, str(truth), str(guess)))
    for _ in range(20):  # class 5 only before the window: in the cumulative figures, not in the 1h ones
        classes.append((rng.randint(1, 59), rng.choice(REPLICAS), "clf", "1", "5", rng.choice(["5", "0"])))
    for _ in range(300):
        minute = rng.randint(1, MINUTES - 1)
        truth = rng.uniform(25, 350)  # non-negative: a counter of their sum only grows
        regressions.append((minute, rng.choice(REPLICAS), "reg", "1", truth, truth + rng.gauss(0, 40)))
    for version, error in (("const", 0.0), ("const-off", 1.5)):  # constant targets: R² is 1 or 0
        for _ in range(30):
            regressions.append((rng.randint(1, MINUTES - 1), rng.choice(REPLICAS), "reg", version, 5.0, 5.0 + error))
    return classes, regressions


def _counters(classes: list[tuple], regressions: list[tuple]) -> dict[str, list[float]]:
    """Per replica counter series (a value a minute) as each replica would export them. Per-class
    series exist on a replica once it has counted any of them (they start at 0 here, so that
    increase() sees every pair: the rules' approximation for new series is theirs, not this test's)."""
    steps: dict[tuple, list[float]] = defaultdict(lambda: [0.0] * (MINUTES + 1))

    def add(metric: str, labels: dict, minute: int, amount: float) -> None:
        key = (metric, tuple(sorted(labels.items())))
        series = steps[key]
        for m in range(minute, MINUTES + 1):
            series[m] += amount

    for minute, replica, model, version, truth, guess in classes:
        base = {"model": model, "version": version, "pod": replica}
        add("modelport_quality_labelled_rows_total", base, minute, 1)
        add("modelport_quality_correct_rows_total", base, minute, truth == guess)
        if truth == guess:
            add("modelport_quality_true_positives_total", base | {"class": truth}, minute, 1)
        else:
            add("modelport_quality_false_negatives_total", base | {"class": truth}, minute, 1)
            add("modelport_quality_false_positives_total", base | {"class": guess}, minute, 1)
    for _metric, labels in list(steps):  # a class's three series exist together (at 0 where none counted)
        if "class" in dict(labels):
            for kind in ("true_positives", "false_positives", "false_negatives"):
                steps.setdefault((f"modelport_quality_{kind}_total", labels), [0.0] * (MINUTES + 1))
    for minute, replica, model, version, truth, guess in regressions:
        base = {"model": model, "version": version, "pod": replica}
        add("modelport_quality_labelled_rows_total", base, minute, 1)
        add("modelport_quality_absolute_error_total", base, minute, abs(truth - guess))
        add("modelport_quality_squared_error_total", base, minute, (truth - guess) ** 2)
        add("modelport_quality_target_positive_total", base, minute, max(truth, 0))
        add("modelport_quality_target_negative_total", base, minute, max(-truth, 0))
        add("modelport_quality_target_squared_total", base, minute, truth**2)
    return {
        metric + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}": values
        for (metric, labels), values in steps.items()
    }


def _expected(classes: list[tuple], regressions: list[tuple], suffix: str) -> list[tuple[str, dict, float]]:
    """(recorded metric, labels, scikit-learn's value) for every series the rules should record."""
    from sklearn.metrics import (
        accuracy_score,
        mean_absolute_error,
        precision_recall_fscore_support,
        r2_score,
        root_mean_squared_error,
    )

    out = []
    for (model, version), pairs in _group(classes).items():
        truth, guess = [p[0] for p in pairs], [p[1] for p in pairs]
        labels = {"model": model, "version": version}
        out.append((f"modelport:quality_accuracy:ratio{suffix}", labels, float(accuracy_score(truth, guess))))
        present = sorted(set(truth) | set(guess))
        per_class = precision_recall_fscore_support(truth, guess, labels=present, zero_division=0)
        for i, cls in enumerate(present):
            for name, values in zip(("precision", "recall", "f1"), per_class[:3]):
                out.append((f"modelport:quality_class_{name}:ratio{suffix}", labels | {"class": cls}, float(values[i])))
        macro = precision_recall_fscore_support(truth, guess, average="macro", zero_division=0)
        for name, value in zip(("precision", "recall", "f1"), macro[:3]):
            out.append((f"modelport:quality_{name}:macro{suffix}", labels, float(value)))
    for (model, version), pairs in _group(regressions).items():
        truth, guess = [p[0] for p in pairs], [p[1] for p in pairs]
        labels = {"model": model, "version": version}
        out.append((f"modelport:quality_mae:ratio{suffix}", labels, float(mean_absolute_error(truth, guess))))
        out.append((f"modelport:quality_rmse:ratio{suffix}", labels, float(root_mean_squared_error(truth, guess))))
        out.append((f"modelport:quality_r2:ratio{suffix}", labels, float(r2_score(truth, guess))))
    return out


def _group(rows: list[tuple]) -> dict[tuple[str, str], list[tuple]]:
    grouped = defaultdict(list)
    for _minute, _replica, model, version, truth, guess in rows:
        grouped[(model, version)].append((truth, guess))
    return grouped


def _in_window(rows: list[tuple]) -> list[tuple]:
    return [row for row in rows if row[0] > MINUTES - 60]


def _selector(metric: str, labels: dict) -> str:
    return metric + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def test_rules_compute_scikit_learns_metrics(tmp_path: Path):
    classes, regressions = _rows()
    series = _counters(classes, regressions)
    expected = _expected(classes, regressions, "") + _expected(_in_window(classes), _in_window(regressions), "_1h")
    for rows in (classes, _in_window(classes)):  # 0/0 cases for the zero_division construct
        assert "3" in {r[4] for r in rows} - {r[5] for r in rows} and "4" in {r[5] for r in rows} - {r[4] for r in rows}
    assert {value for name, _, value in expected if name.startswith("modelport:quality_r2:")} >= {0.0, 1.0}
    accuracy = [value for name, _, value in expected if name.startswith("modelport:quality_accuracy:")]
    assert all(0.5 < value < 0.9 for value in accuracy), "neither a perfect nor a useless classifier"

    tests = []
    for metric, labels, value in expected:
        # promtool compares values exactly; the rules and scikit-learn round differently, so the
        # comparison happens in PromQL: 1 where they agree to 1e-9 (relative).
        tolerance = 1e-9 * max(1.0, abs(value))
        tests.append({
            "expr": f"abs({_selector(metric, labels)} - {value!r}) <= bool {tolerance!r}",
            "eval_time": f"{MINUTES}m",
            "exp_samples": [{"labels": _selector("", labels), "value": 1}],
        })
    # Nothing else is recorded: one series per expected value, no accuracy for regressors, no
    # per-class series in the 1h group for a class absent from the window.
    counts = defaultdict(int)
    for metric, _labels, _value in expected:
        counts[metric] += 1
    for metric in {r for r in records() if not r.endswith((":sum", ":increase1h"))}:
        tests.append({
            "expr": f"count({metric})" if counts[metric] else f"absent({metric})",
            "eval_time": f"{MINUTES}m",
            "exp_samples": [{"labels": "{}", "value": counts[metric] or 1}],
        })
    suite = {
        "rule_files": [str(PLAIN)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": name, "values": " ".join(_number(v) for v in values)} for name, values in series.items()
            ],
            "promql_expr_test": tests,
        }],
    }
    path = tmp_path / "quality-rules.test.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False, width=1000))
    result = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


if __name__ == "__main__":
    OPERATOR.write_text(prometheus_rule_text())
    print(f"wrote {OPERATOR.relative_to(K8S.parent)}")
