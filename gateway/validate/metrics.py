"""Pure maths of commissioning: classification metrics against the gold
standard, and the direct-vs-gateway probability comparison.

A finding is called when its probability is strictly above its threshold,
the rule of :func:`gateway.infer.thresholds.apply_thresholds`.  A ratio whose
denominator is zero (e.g. precision with no positive call) is ``None``: it is
undefined, not 0, and macro averages skip it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from gateway.findings import BY_CODE, FINDINGS


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


@dataclass(frozen=True)
class Confusion:
    """Counts of one binary decision against the gold standard."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float | None:
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def f1(self) -> float | None:
        # 2TP / (2TP + FP + FN): equal to the harmonic mean where both exist,
        # and defined (0) when there are positives but no call.
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "precision": self.precision,
            "recall": self.recall,
            "specificity": self.specificity,
            "f1": self.f1,
        }


def confusion(truth: np.ndarray, called: np.ndarray) -> Confusion:
    """Confusion counts of boolean vectors ``called`` against ``truth``."""
    t = np.asarray(truth, dtype=bool)
    c = np.asarray(called, dtype=bool)
    if t.shape != c.shape:
        raise ValueError(f"shapes differ: truth {t.shape}, called {c.shape}")
    return Confusion(tp=int(np.sum(t & c)), fp=int(np.sum(~t & c)), fn=int(np.sum(t & ~c)), tn=int(np.sum(~t & ~c)))


def decisions(probs: np.ndarray, thresholds: Mapping[str, float], findings: Sequence[str] = FINDINGS) -> np.ndarray:
    """Boolean (n, findings): probability strictly above the finding's threshold."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.array([float(thresholds[f]) for f in findings])
    return p > t


@dataclass(frozen=True)
class DirectMetrics:
    """Per-finding confusion against the gold standard, and the averages."""

    findings: tuple[str, ...]
    per_finding: dict[str, Confusion]
    thresholds: dict[str, float]
    n: int

    @property
    def micro(self) -> Confusion:
        """Counts pooled over findings."""
        total = Confusion(0, 0, 0, 0)
        for c in self.per_finding.values():
            total = total + c
        return total

    @property
    def macro(self) -> dict[str, float | None]:
        """Unweighted mean of each metric over the findings where it is defined."""
        out: dict[str, float | None] = {}
        for name in ("precision", "recall", "specificity", "f1"):
            values = [getattr(c, name) for c in self.per_finding.values()]
            defined = [v for v in values if v is not None]
            out[name] = sum(defined) / len(defined) if defined else None
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "thresholds": self.thresholds,
            "findings": {
                f: {
                    **self.per_finding[f].as_dict(),
                    # the published figures (gateway.findings); None for a code of a test's own
                    "paper_table2": asdict(BY_CODE[f].table2) if f in BY_CODE else None,
                    "published_model_f1": BY_CODE[f].published_model_f1 if f in BY_CODE else None,
                }
                for f in self.findings
            },
            "micro": self.micro.as_dict(),
            "macro": self.macro,
        }


def direct_metrics(
    gold: np.ndarray, probs: np.ndarray, thresholds: Mapping[str, float], findings: Sequence[str] = FINDINGS
) -> DirectMetrics:
    """Metrics of ``probs`` (n, findings) at ``thresholds`` against ``gold`` (n, findings) 0/1."""
    g = np.asarray(gold)
    p = np.asarray(probs)
    if g.shape != p.shape or g.ndim != 2 or g.shape[1] != len(findings):
        raise ValueError(f"gold {g.shape} and probabilities {p.shape} must both be (n, {len(findings)})")
    called = decisions(p, thresholds, findings)
    per = {f: confusion(g[:, i].astype(bool), called[:, i]) for i, f in enumerate(findings)}
    return DirectMetrics(
        findings=tuple(findings),
        per_finding=per,
        thresholds={f: float(thresholds[f]) for f in findings},
        n=int(g.shape[0]),
    )


@dataclass(frozen=True)
class Flip:
    """One decision that differs between the direct run and the gateway."""

    index: int
    finding: str
    direct: float
    gateway: float
    threshold: float
    #: The direct probability is more than the margin away from the threshold.
    beyond_margin: bool


@dataclass(frozen=True)
class FindingDifference:
    finding: str
    max_abs: float
    p99_abs: float
    mean_abs: float
    flips: int
    flips_beyond_margin: int


@dataclass(frozen=True)
class RoundTripComparison:
    """Gateway probabilities against the direct model output, tracing by tracing."""

    per_finding: dict[str, FindingDifference]
    flips: list[Flip]
    #: |gateway - direct| (n, findings), for the plot.
    abs_diff: np.ndarray = field(repr=False)
    flip_margin: float = 0.02
    max_abs_difference: float = 0.0

    @property
    def findings_flipped(self) -> int:
        """How many findings had at least one decision flip."""
        return sum(1 for d in self.per_finding.values() if d.flips)

    @property
    def failures(self) -> list[str]:
        """Why the round trip fails the pass criteria (empty = passes)."""
        out = [
            f"{f.finding} decision flipped on tracing {f.index} (direct {f.direct:.4f}, gateway {f.gateway:.4f}, "
            f"threshold {f.threshold:g}; more than {self.flip_margin:g} from the threshold)"
            for f in self.flips
            if f.beyond_margin
        ]
        if self.max_abs_difference > 0:
            out += [
                f"{d.finding}: max |difference| {d.max_abs:.3g} > {self.max_abs_difference:g}"
                for d in self.per_finding.values()
                if d.max_abs > self.max_abs_difference
            ]
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "flip_margin": self.flip_margin,
            "max_abs_difference": self.max_abs_difference,
            "findings": {f: asdict(d) for f, d in self.per_finding.items()},
            "findings_flipped": self.findings_flipped,
            "flips": [asdict(f) for f in self.flips],
            "passed": self.passed,
            "failures": self.failures,
        }


def compare_probabilities(
    direct: np.ndarray,
    gateway: np.ndarray,
    thresholds: Mapping[str, float],
    *,
    flip_margin: float = 0.02,
    max_abs_difference: float = 0.0,
    findings: Sequence[str] = FINDINGS,
    indices: Sequence[int] | None = None,
) -> RoundTripComparison:
    """Compare (n, findings) probability arrays row by row.

    ``indices`` names each row's tracing (default 0..n-1) in the flips.
    """
    d = np.asarray(direct, dtype=np.float64)
    g = np.asarray(gateway, dtype=np.float64)
    if d.shape != g.shape or d.ndim != 2 or d.shape[1] != len(findings) or d.shape[0] == 0:
        raise ValueError(f"direct {d.shape} and gateway {g.shape} must both be (n >= 1, {len(findings)})")
    idx = list(range(d.shape[0])) if indices is None else list(indices)
    diff = np.abs(g - d)
    dd, gd = decisions(d, thresholds, findings), decisions(g, thresholds, findings)
    flips: list[Flip] = []
    per: dict[str, FindingDifference] = {}
    for j, f in enumerate(findings):
        t = float(thresholds[f])
        rows = np.flatnonzero(dd[:, j] != gd[:, j])
        these = [
            Flip(
                index=int(idx[r]),
                finding=f,
                direct=float(d[r, j]),
                gateway=float(g[r, j]),
                threshold=t,
                beyond_margin=bool(abs(d[r, j] - t) > flip_margin),
            )
            for r in rows
        ]
        flips += these
        per[f] = FindingDifference(
            finding=f,
            max_abs=float(diff[:, j].max()),
            p99_abs=float(np.percentile(diff[:, j], 99)),
            mean_abs=float(diff[:, j].mean()),
            flips=len(these),
            flips_beyond_margin=sum(x.beyond_margin for x in these),
        )
    return RoundTripComparison(
        per_finding=per, flips=flips, abs_diff=diff, flip_margin=flip_margin, max_abs_difference=max_abs_difference
    )
