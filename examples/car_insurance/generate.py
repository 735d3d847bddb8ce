"""Deterministic generator of car-insurance quote events, after the RTML car-insurance template.

Each event has the template's fields (ecid, km, cartype, age, gender, carbrand, leasing, city, country,
nationality, primaryuser, pricequote, timestamp) plus the label ``purchase`` (0/1), drawn from a logistic
function of the features so that models have something to learn. The data is dirty on purpose, as real
events are: brand spellings vary in case and whitespace (' BMW ', 'bmw', 'vw'), ``age`` is null ~5% of the
time, ``km`` ~8%, ``gender`` ~2%. The same ``seed`` always gives the same events.

Usage: ``python -m examples.car_insurance.generate --rows 10000 --seed 7 --out events.jsonl``
(``.avro`` writes an Avro container with schemas/car_insurance_event.avsc).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "car_insurance_event.avsc"

CARTYPES = ("SUV", "Sedan", "Compact", "Convertible", "Van")
CARTYPE_P = (0.28, 0.30, 0.25, 0.07, 0.10)
# (spelling as it arrives, canonical brand): the graph maps the spellings back to the canonical name.
BRAND_SPELLINGS = (
    ("VW", "volkswagen"), ("vw", "volkswagen"), ("Volkswagen", "volkswagen"), (" BMW ", "bmw"),
    ("bmw", "bmw"), ("BMW", "bmw"), ("Mercedes", "mercedes-benz"), ("mercedes-benz", "mercedes-benz"),
    ("Audi", "audi"), ("audi ", "audi"), ("Opel", "opel"), ("Ford", "ford"), ("Toyota", "toyota"),
    ("Tesla", "tesla"), ("Skoda", "skoda"), ("Renault", "renault"),
)  # fmt: skip
BRAND_P = (0.08, 0.04, 0.04, 0.04, 0.04, 0.03, 0.08, 0.03, 0.07, 0.02, 0.09, 0.09, 0.1, 0.05, 0.1, 0.1)
PREMIUM = {"bmw", "mercedes-benz", "audi", "tesla"}
# (city, country) with a long tail, so that a top-k on city folds the tail into 'Others'.
CITIES = (
    ("Berlin", "DE"), ("Hamburg", "DE"), ("Munich", "DE"), ("Cologne", "DE"), ("Frankfurt", "DE"),
    ("Stuttgart", "DE"), ("Vienna", "AT"), ("Graz", "AT"), ("Zurich", "CH"), ("Geneva", "CH"),
    ("Basel", "CH"), ("Leipzig", "DE"), ("Dresden", "DE"), ("Bremen", "DE"), ("Hanover", "DE"),
    ("Nuremberg", "DE"), ("Linz", "AT"), ("Salzburg", "AT"), ("Bern", "CH"), ("Lausanne", "CH"),
    ("Dortmund", "DE"), ("Essen", "DE"), ("Bonn", "DE"), ("Mainz", "DE"), ("Kiel", "DE"),
)  # fmt: skip
NATIONALITIES = ("DE", "AT", "CH", "FR", "IT", "TR", "PL", "US")
GENDERS = ("male", "female", "diverse")
START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
SPAN_MS = 90 * 86_400_000


def generate(rows: int, seed: int) -> list[dict[str, Any]]:
    """``rows`` events (dicts with ``timestamp`` in epoch millis and the ``purchase`` label)."""
    rng = np.random.default_rng(seed)
    cols = _columns(rows, rng)
    names = list(cols)
    values = [cols[name].tolist() for name in names]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def _columns(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    city_p = 1.0 / np.arange(1, len(CITIES) + 1) ** 1.1
    city_idx = rng.choice(len(CITIES), size=n, p=city_p / city_p.sum())
    country = np.array([c for _, c in CITIES], dtype=object)[city_idx]
    foreign = rng.random(n) < 0.15
    nationality = np.where(foreign, np.array(NATIONALITIES, dtype=object)[rng.integers(0, 8, n)], country)
    brand_idx = rng.choice(len(BRAND_SPELLINGS), size=n, p=BRAND_P)
    premium = np.array([canon in PREMIUM for _, canon in BRAND_SPELLINGS])[brand_idx]
    cartype_idx = rng.choice(len(CARTYPES), size=n, p=CARTYPE_P)
    age = np.clip(rng.normal(44, 14, n), 18, 90).round()
    km = np.round(rng.lognormal(10.6, 0.7, n), -2)
    leasing = rng.random(n) < np.where(premium, 0.45, 0.2)
    primaryuser = np.where(rng.random(n) < 0.8, "yes", "no").astype(object)
    ts = START_MS + rng.integers(0, SPAN_MS, n)
    base = np.array([900.0, 650.0, 480.0, 1100.0, 720.0])[cartype_idx]
    price = (
        base * np.where(premium, 1.4, 1.0) * (1 + np.maximum(0, 30 - age) * 0.03) * rng.lognormal(0, 0.15, n)
    )
    hour = (ts // 3_600_000) % 24
    logit = (
        -0.6
        - 0.0025 * (price - 700)
        + 0.9 * leasing
        - 0.03 * np.abs(age - 40)
        + 0.6 * premium
        - 0.35 * np.log1p(km / 10_000)
        + 0.5 * (primaryuser == "yes")
        + np.where((hour >= 18) & (hour <= 22), 0.7, 0.0)
        + np.array([0.3, 0.0, -0.2, 0.8, -0.3])[cartype_idx]
        + np.where(city_idx < 3, 0.4, 0.0)
    )
    purchase = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return {
        "ecid": np.array([f"ec-{v:012x}" for v in rng.integers(0, 2**48, n)], dtype=object),
        "km": _nulls(km.astype(np.int64), rng.random(n) < 0.08),
        "cartype": np.array(CARTYPES, dtype=object)[cartype_idx],
        "age": _nulls(age.astype(np.int64), rng.random(n) < 0.05),
        "gender": _nulls(
            np.array(GENDERS, dtype=object)[rng.choice(3, n, p=(0.52, 0.46, 0.02))], rng.random(n) < 0.02
        ),
        "carbrand": np.array([s for s, _ in BRAND_SPELLINGS], dtype=object)[brand_idx],
        "leasing": leasing,
        "city": np.array([c for c, _ in CITIES], dtype=object)[city_idx],
        "country": country,
        "nationality": nationality,
        "primaryuser": primaryuser,
        "pricequote": np.round(price, 2),
        "timestamp": ts,
        "purchase": purchase,
    }


def _nulls(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = values.astype(object)
    out[mask] = None
    return out


def write(events: list[dict[str, Any]], path: Path) -> None:
    """JSON Lines, or an Avro container (with the event schema) when ``path`` ends in ``.avro``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".avro":
        schema = fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text()))
        with path.open("wb") as handle:
            fastavro.writer(handle, schema, events)
        return
    with path.open("w") as handle:
        handle.writelines(json.dumps(event) + "\n" for event in events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True, help="output file (.jsonl or .avro)")
    args = parser.parse_args(argv)
    write(generate(args.rows, args.seed), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
