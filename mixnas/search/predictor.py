"""An accuracy predictor for screening candidates between supernet evaluations.

Once-for-all, NASViT and HAT train a small regressor on (architecture encoding, supernet accuracy) pairs
and let it screen thousands of candidates so that the supernet scores only promising ones. mixnas does the
same with ``ArchCodec.features`` (one-hots of every choice and the sizes as numbers) plus the exact cost
(log GFLOPs and log parameters from ``CostTable``), which carries most of the signal at small sample
sizes.

The regressor is a bootstrap ensemble of ridge regressions: each member is fitted on a resample of the
scored candidates, the mean of the members is the prediction and their spread its uncertainty (the
search adds a multiple of it, so that candidates the predictor knows little about get tried). Ridge is
what the few dozen scored candidates of a small search can support; ``bench/search_efficiency.py`` reports
the predictor's Kendall tau on held-out supernet scores.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import Ridge


class AccuracyPredictor:
    """Bootstrap ensemble of ridge regressions over architecture features.

    Args:
        members: regressions in the ensemble.
        alpha: ridge penalty (features are one-hots and values in [0, 1]).
        seed: seeds the bootstrap resamples.
    """

    def __init__(self, members: int = 16, alpha: float = 1.0, seed: int = 0) -> None:
        self.members = members
        self.alpha = alpha
        self.seed = seed
        self._coef: np.ndarray | None = None  # (members, features)
        self._intercept: np.ndarray | None = None  # (members,)
        self._mean: np.ndarray | None = None
        self._scale: np.ndarray | None = None

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return (x - self._mean) / self._scale

    def fit(self, x: np.ndarray, y: np.ndarray) -> AccuracyPredictor:
        """Fit on (n, features) inputs and (n,) targets (n >= 2)."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        if len(x) < 2 or len(x) != len(y):
            raise ValueError(f"predictor: needs at least 2 scored candidates with targets, got {len(x)}/{len(y)}")
        self._mean = x.mean(0)
        self._scale = np.where(x.std(0) > 1e-12, x.std(0), 1.0)
        xs = self._standardise(x)
        rng = np.random.default_rng(self.seed)
        coefs, intercepts = [], []
        for m in range(self.members):
            idx = np.arange(len(x)) if m == 0 else rng.integers(0, len(x), len(x))
            model = Ridge(alpha=self.alpha).fit(xs[idx], y[idx])
            coefs.append(model.coef_)
            intercepts.append(model.intercept_)
        self._coef = np.array(coefs)
        self._intercept = np.array(intercepts)
        return self

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, standard deviation) over the ensemble for (n, features) inputs."""
        if self._coef is None:
            raise RuntimeError("predictor: fit it first")
        out = self._standardise(np.asarray(x, dtype=float)) @ self._coef.T + self._intercept  # (n, members)
        return out.mean(1), out.std(1)


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b between two score vectors (scipy's definition)."""
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


__all__ = ["AccuracyPredictor", "kendall_tau"]
