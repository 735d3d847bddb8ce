"""The car-insurance feature pipeline in pandas: what the models train on, and the statistics it freezes.

``fit_frozen`` learns every statistic the transformations need (medians, top cities, categories, scaling) from
the training events; ``features`` applies them. examples/car_insurance/train.py writes the same steps as a
scoring graph, so the worker reproduces these features on live events without pandas.

The steps, after the RTML car-insurance template: carbrand strip + lower + map ('vw' -> 'volkswagen',
'mercedes' -> 'mercedes-benz'); age fillna with the training median, then age buckets; km fillna with the
median then log1p; hour and day of week (UTC) from the timestamp; city outside the top-k -> 'Others'; gender
fillna 'unknown'; one-hot of the categoricals with categories frozen from training; numeric features
standardised; leasing as 0/1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

BRAND_MAP = {"vw": "volkswagen", "mercedes": "mercedes-benz"}
AGE_EDGES = (0.0, 25.0, 35.0, 45.0, 55.0, 65.0, 200.0)
AGE_LABELS = ("18-25", "26-35", "36-45", "46-55", "56-65", "66+")
TOP_CITIES = 8
NUMERIC = ("age", "km", "pricequote", "hour", "dayofweek")
CATEGORICAL = ("cartype", "gender", "carbrand", "city", "country", "nationality", "primaryuser", "age_bucket")


@dataclass(frozen=True)
class Frozen:
    """Everything learnt from the training events that the transformations need."""

    age_median: float
    km_median: float
    top_cities: tuple[str, ...]
    categories: dict[str, tuple[str, ...]]
    scale: dict[str, tuple[float, float]]  # column -> (mean, std)
    feature_names: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fit_frozen(events: pd.DataFrame) -> Frozen:
    """Learn medians, the top cities, the categories and the scaling from ``events``."""
    age_median = float(events["age"].astype(float).median())
    km_median = float(events["km"].astype(float).median())
    top = tuple(
        events["city"]
        .value_counts()
        .sort_index()
        .sort_values(ascending=False, kind="stable")
        .index[:TOP_CITIES]
    )
    partial = Frozen(age_median, km_median, tuple(str(c) for c in top), {}, {}, ())
    raw_numeric, raw_categorical = _transformed(events, partial)
    scale = {name: (float(values.mean()), float(values.std(ddof=0))) for name, values in raw_numeric.items()}
    categories = {
        name: tuple(sorted(str(v) for v in values.dropna().unique()))
        for name, values in raw_categorical.items()
    }
    names = (*NUMERIC, "leasing", *(f"{col}_{cat}" for col in CATEGORICAL for cat in categories[col]))
    return Frozen(age_median, km_median, partial.top_cities, categories, scale, names)


def features(events: pd.DataFrame, frozen: Frozen) -> pd.DataFrame:
    """The float64 feature matrix of ``events``, columns in ``frozen.feature_names`` order."""
    numeric, categorical = _transformed(events, frozen)
    out: dict[str, pd.Series] = {}
    for name, values in numeric.items():
        mean, std = frozen.scale[name]
        out[name] = (values - mean) / std
    out["leasing"] = events["leasing"].astype(np.float64)
    for col, values in categorical.items():
        for cat in frozen.categories[col]:
            out[f"{col}_{cat}"] = (values == cat).astype(np.float64)
    return pd.DataFrame(out)[list(frozen.feature_names)]


def _transformed(events: pd.DataFrame, frozen: Frozen) -> tuple[dict[str, pd.Series], dict[str, pd.Series]]:
    age = events["age"].astype(np.float64).fillna(frozen.age_median)
    stamp = pd.to_datetime(events["timestamp"], unit="ms", utc=True)
    numeric = {
        "age": age,
        "km": np.log1p(events["km"].astype(np.float64).fillna(frozen.km_median)),
        "pricequote": events["pricequote"].astype(np.float64),
        "hour": stamp.dt.hour.astype(np.float64),
        "dayofweek": stamp.dt.day_of_week.astype(np.float64),
    }
    brand = events["carbrand"].str.strip().str.lower()
    city = events["city"]
    categorical = {
        "cartype": events["cartype"],
        "gender": events["gender"].fillna("unknown"),
        "carbrand": brand.map(lambda b: BRAND_MAP.get(b, b)),
        "city": city.where(city.isin(frozen.top_cities), "Others"),
        "country": events["country"],
        "nationality": events["nationality"],
        "primaryuser": events["primaryuser"],
        "age_bucket": pd.cut(age, list(AGE_EDGES), labels=list(AGE_LABELS), right=True).astype(object),
    }
    return numeric, categorical
