"""Which quantization choices drive a score: random-forest impurity importance, permutation
importance and mean |SHAP| over one-hot features, with the forest's cross-validated R²."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor
from sklearn.inspection import permutation_importance
from sklearn.model_selection import KFold, cross_val_score

METHODS = ("impurity", "permutation", "shap")
N_TREES = 100
N_REPEATS = 5
MIN_ROWS = 4


@dataclass(frozen=True)
class Importance:
    """Importances of each feature (rows sorted by SHAP) and the forest's CV R²."""

    table: pd.DataFrame  # columns: feature, impurity, permutation, shap
    cv_r2: float
    n_rows: int


def design_matrix(df: pd.DataFrame, feature_columns: list[str]) -> pd.DataFrame:
    """Numeric features as they are, categoricals one-hot (``method=gptq``); constants dropped."""
    parts = []
    for col in feature_columns:
        values = df[col]
        if pd.api.types.is_numeric_dtype(values):
            parts.append(values.astype(float).rename(col))
        else:
            parts.append(pd.get_dummies(values.astype(str), prefix=col, prefix_sep="=", dtype=float))
    X = pd.concat(parts, axis=1) if parts else pd.DataFrame(index=df.index)
    return X.loc[:, X.nunique() > 1]


def importance(df: pd.DataFrame, feature_columns: list[str], column: str, seed: int = 0) -> Importance | None:
    """Importances for predicting ``column``; None with fewer than 4 rows, no varying feature
    or a constant score."""
    import shap

    data = df.dropna(subset=[column])
    X = design_matrix(data, feature_columns)
    y = data[column].to_numpy(float)
    if len(data) < MIN_ROWS or X.shape[1] == 0 or np.ptp(y) == 0:
        return None
    forest = RandomForestRegressor(n_estimators=N_TREES, random_state=seed, n_jobs=1)
    folds = KFold(n_splits=min(5, len(data) // 2), shuffle=True, random_state=seed)
    cv_r2 = float(np.mean(cross_val_score(forest, X, y, cv=folds, scoring="r2")))
    forest.fit(X, y)
    perm = permutation_importance(forest, X, y, n_repeats=N_REPEATS, random_state=seed, n_jobs=1)
    shap_values = shap.TreeExplainer(forest).shap_values(X.to_numpy())
    table = pd.DataFrame({
        "feature": X.columns,
        "impurity": forest.feature_importances_,
        "permutation": perm.importances_mean,
        "shap": np.abs(shap_values).mean(axis=0),
    }).sort_values(["shap", "feature"], ascending=[False, True], kind="mergesort").reset_index(drop=True)
    return Importance(table, cv_r2, len(data))


def plot_importance(result: Importance, column: str, path: Path) -> None:
    """Three horizontal bar charts (impurity, permutation, mean |SHAP|) side by side."""
    table = result.table.iloc[::-1]
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.35 * len(table) + 1.8), dpi=110, sharey=True)
    titles = {"impurity": "RF impurity", "permutation": "permutation", "shap": "mean |SHAP|"}
    for ax, method in zip(axes, METHODS):
        ax.barh(table["feature"], table[method], color="tab:blue")
        ax.set_title(titles[method])
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{column}: feature importance (RF CV R² = {result.cv_r2:.3f}, n = {result.n_rows})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
