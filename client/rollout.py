"""Rollout decisions: compare a candidate version with the stable one on real, labelled traffic.

The quality comparison is a paired-free bootstrap over each version's window of labelled rows (the
server's GetQuality with include_pairs): each round resamples both windows with replacement and
computes the metric's difference, candidate minus stable, signed so that positive is better; the
(1 - confidence) and confidence quantiles bound the true difference one-sidedly. We use the
bootstrap rather than a two-proportion bound because it serves every metric alike (macro F1 and
RMSE have no simple standard error) and needs no normality of small windows. Decisions:

  hold      either version has fewer than min_labels labelled rows, or the bounds straddle the
            tolerance (not enough evidence either way), or no rollout is running
  advance   the candidate is not worse than stable by more than max_drop at that confidence (lower
            bound >= -max_drop) and its error rate is not higher by more than the limit: next weight
  promote   the same, at the last step: the candidate becomes stable and the rollout ends
  rollback  the candidate is worse by more than max_drop with that confidence (upper bound <
            -max_drop), or its error rate is higher by more than the limit: weight 0, rollout ends
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from modelport.protocol.rollout import Rollout
from modelport.protocol.scoring import classification_report, regression_report

# metric -> (higher is better, the quality kind it applies to)
METRICS = {"f1": (True, "classification"), "accuracy": (True, "classification"),
           "mae": (False, "regression"), "rmse": (False, "regression")}  # fmt: skip
ROUNDS = 2000
HISTORY = 500  # decisions kept in rollout.json


@dataclass
class Traffic:
    """One version's traffic, summed over the replicas asked."""

    requests: int = 0
    failures: int = 0
    bounds_s: tuple[float, ...] = ()
    buckets: list[int] = field(default_factory=list)

    def add(self, requests: int, failures: int, bounds_s: tuple[float, ...], buckets: list[int]) -> None:
        """Add one replica's numbers."""
        self.requests += requests
        self.failures += failures
        self.bounds_s = bounds_s
        self.buckets = [a + b for a, b in zip(self.buckets, buckets)] if self.buckets else list(buckets)

    @property
    def error_rate(self) -> float:
        """Failed share of the requests that reached the version."""
        total = self.requests + self.failures
        return self.failures / total if total else 0.0

    def percentile_ms(self, q: float) -> float | None:
        """The latency histogram's bucket bound at quantile q (an upper estimate), in ms."""
        total = sum(self.buckets)
        if not total:
            return None
        running = 0
        for bound, count in zip((*self.bounds_s, math.inf), self.buckets):
            running += count
            if running >= q * total:
                return bound * 1000
        return math.inf


@dataclass
class Evidence:
    """What is known of one version: its labelled window and its traffic."""

    version: int
    predicted: np.ndarray
    truth: np.ndarray
    traffic: Traffic

    @property
    def labelled(self) -> int:
        """Rows in the labelled window."""
        return len(self.truth)

    def summary(self, metric: str) -> dict:
        """The figures a decision records."""
        return {
            "version": self.version, "labelled": self.labelled,
            metric: metric_value(metric, self.predicted, self.truth) if self.labelled else None,
            "requests": self.traffic.requests, "error_rate": self.traffic.error_rate,
            "p50_ms": self.traffic.percentile_ms(0.5), "p99_ms": self.traffic.percentile_ms(0.99),
        }  # fmt: skip


@dataclass(frozen=True)
class Options:
    """The thresholds of `modelport rollout step`."""

    metric: str = "f1"
    min_labels: int = 200
    max_drop: float = 0.01
    confidence: float = 0.95
    max_error_rate_increase: float = 0.01


@dataclass
class Decision:
    """One decision and the figures behind it."""

    decision: str
    reason: str
    weight_before: float
    weight_after: float
    metric: str
    delta_low: float | None = None
    delta_high: float | None = None
    stable: dict = field(default_factory=dict)
    candidate: dict = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        """As JSON (and as a rollout.json history record)."""
        return dict(self.__dict__)


def metric_value(metric: str, predicted: np.ndarray, truth: np.ndarray) -> float:
    """The metric of one window (scikit-learn's definitions)."""
    if metric in ("f1", "accuracy"):
        report = classification_report(truth.astype(np.int64), predicted.astype(np.int64))
        return report.macro.f1 if metric == "f1" else report.accuracy
    report = regression_report(truth, predicted)
    return report.mae if metric == "mae" else report.rmse


def _resampled(metric: str, predicted: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The metric of ROUNDS resamples (with replacement) of one window, vectorised."""
    n = len(truth)
    index = rng.integers(0, n, size=(ROUNDS, n))
    if metric == "accuracy":
        return (predicted == truth)[index].mean(axis=1)
    if metric == "mae":
        return np.abs(predicted - truth)[index].mean(axis=1)
    if metric == "rmse":
        return np.sqrt(((predicted - truth) ** 2)[index].mean(axis=1))
    return _macro_f1_rounds(predicted.astype(np.int64)[index], truth.astype(np.int64)[index])


def _macro_f1_rounds(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Macro F1 of each row of [rounds, n] predicted/true classes, over the classes present in that
    row (scikit-learn's labels=None, zero_division=0). Counts per (round, class), not a confusion
    matrix per round: memory grows with the classes, not with their square."""
    classes = np.union1d(predicted, truth)
    k, rounds = len(classes), predicted.shape[0]
    offset = np.arange(rounds)[:, None] * k
    p, t = np.searchsorted(classes, predicted) + offset, np.searchsorted(classes, truth) + offset

    def count(codes: np.ndarray) -> np.ndarray:
        return np.bincount(codes.ravel(), minlength=rounds * k).reshape(rounds, k)

    tp = np.bincount(t[predicted == truth], minlength=rounds * k).reshape(rounds, k)
    denominator = count(p) + count(t)  # 2tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros(tp.shape), where=denominator > 0)
    present = denominator > 0
    return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def bounds(
    metric: str, stable: Evidence, candidate: Evidence, confidence: float, seed: int = 0
) -> tuple[float, float]:
    """One-sided bounds (low at 1 - confidence, high at confidence) of candidate minus stable,
    signed so that positive means the candidate is better."""
    rng = np.random.default_rng(seed)
    difference = (_resampled(metric, candidate.predicted, candidate.truth, rng)
                  - _resampled(metric, stable.predicted, stable.truth, rng))  # fmt: skip
    if not METRICS[metric][0]:
        difference = -difference
    low, high = np.quantile(difference, [1 - confidence, confidence])
    return float(low), float(high)


def decide(rollout: Rollout | None, stable: Evidence | None, candidate: Evidence | None, options: Options) -> Decision:
    """The decision `modelport rollout step` takes now (nothing written here)."""
    weight = rollout.weight if rollout is not None else 0.0
    metric = options.metric

    def decision(name: str, reason: str, after: float = weight, low=None, high=None) -> Decision:
        figures = [e.summary(metric) if e else {} for e in (stable, candidate)]
        return Decision(name, reason, weight, after, metric, low, high, *figures)

    if rollout is None or not rollout.running:
        return decision("hold", "no rollout is running" + (f" (it ended: {rollout.state})" if rollout else ""))
    short = [e for e in (stable, candidate) if e.labelled < options.min_labels]
    if short:
        counts = ", ".join(f"version {e.version} has {e.labelled}" for e in short)
        return decision("hold", f"not enough labelled rows: {counts}; --min-labels {options.min_labels}")
    increase = candidate.traffic.error_rate - stable.traffic.error_rate
    if increase > options.max_error_rate_increase:
        return decision("rollback", f"the candidate's error rate is {increase:.2%} higher than stable's "
                                    f"(limit {options.max_error_rate_increase:.2%})", 0.0)  # fmt: skip
    low, high = bounds(metric, stable, candidate, options.confidence)
    tolerance = -options.max_drop
    if high < tolerance:
        return decision("rollback", f"the candidate's {metric} is worse than stable's by more than "
                        f"{options.max_drop:g} at {options.confidence:.0%} confidence "
                        f"(difference at most {high:+.4f})", 0.0, low, high)  # fmt: skip
    if low < tolerance:
        return decision("hold", f"not enough evidence: the {metric} difference lies between {low:+.4f} and "
                        f"{high:+.4f} at {options.confidence:.0%} confidence; the tolerance is -{options.max_drop:g}",
                        weight, low, high)  # fmt: skip
    following = [s for s in rollout.steps if s > weight + 1e-9]
    if following:
        return decision("advance", f"the candidate's {metric} is no worse than stable's by more than "
                        f"{options.max_drop:g} (difference at least {low:+.4f} at {options.confidence:.0%} "
                        f"confidence): weight {weight:g} -> {following[0]:g}", following[0], low, high)  # fmt: skip
    return decision("promote", f"the candidate's {metric} is no worse than stable's at the last step "
                    f"(difference at least {low:+.4f}): it becomes stable", 1.0, low, high)  # fmt: skip


def apply(rollout: Rollout, decision: Decision) -> Rollout:
    """The rollout after `decision` (history appended, at most HISTORY records kept)."""
    if decision.decision == "advance":
        rollout.weight = decision.weight_after
    elif decision.decision == "promote":
        rollout.weight, rollout.state = 1.0, "promoted"
    elif decision.decision == "rollback":
        rollout.weight, rollout.state = 0.0, "rolled_back"
    rollout.history = [*rollout.history, decision.to_dict()][-HISTORY:]
    return rollout
