"""User model: P(purchase in the session | user features at the session's first event).

A scikit-learn ``Pipeline(StandardScaler, LogisticRegression)``; skl2onnx converts both steps,
so the exported model takes raw features in ``streams.features.FEATURE_NAMES`` order.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


def fit_user_model(X: np.ndarray, y: np.ndarray, C: float = 1.0, seed: int = 0) -> Pipeline:
    """Fit on session rows ``X [S, U]`` with labels ``y [S]`` (1 = the session had a purchase)."""
    model = Pipeline([("scale", StandardScaler()),
                      ("logit", LogisticRegression(C=C, max_iter=1000, random_state=seed))])
    return model.fit(np.asarray(X, np.float32), np.asarray(y, np.int64))


def predict_user(model: Pipeline, X: np.ndarray) -> np.ndarray:
    """P(purchase in session) per row, float64."""
    return np.asarray(model.predict_proba(np.asarray(X, np.float32))[:, 1], np.float64)
