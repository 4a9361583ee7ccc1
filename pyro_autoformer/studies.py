"""Experiments made of several runs: the tuning ablation and the prior-scale sweep.

Each study trains its runs with the same data, seed and budget, into one directory,
and writes one table (CSV and Markdown) and one comparison plot::

    runs/<des>_<stamp>/
        <run name>_<stamp>/...   one run directory each (see pyro_autoformer.experiment)
        results.csv, results.md, comparison.png
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import pandas as pd

from .config import RunConfig
from .data import load_data
from .experiment import train_run
from .files import publish_directory
from .plots import plot_comparison
from .tuning.policies import SCHEDULES

__all__ = ["ablation_variants", "run_ablation", "run_prior_sweep"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

TABLE_COLUMNS = (
    "mse",
    "mae",
    "crps",
    "coverage_50",
    "coverage_90",
    "coverage_95",
    "width_90",
    "calibration_error",
    "nll",
    "final_kl",
    "final_kl_weight",
    "train_seconds",
)


def ablation_variants(config: RunConfig) -> dict[str, RunConfig]:
    """The ablation's runs: deterministic Autoformer, fixed weight, each annealing
    schedule, adaptive — everything else as in ``config``."""
    tuning = config.tuning
    variants = {"deterministic": dataclasses.replace(config, model="Autoformer")}
    variants["fixed"] = dataclasses.replace(
        config,
        model="BayesianAutoformer",
        tuning=dataclasses.replace(tuning, kl_tuning_method="fixed"),
    )
    for schedule in SCHEDULES:
        variants[f"annealing-{schedule}"] = dataclasses.replace(
            config,
            model="BayesianAutoformer",
            tuning=dataclasses.replace(
                tuning, kl_tuning_method="annealing", annealing_schedule=schedule
            ),
        )
    variants["adaptive"] = dataclasses.replace(
        config,
        model="BayesianAutoformer",
        tuning=dataclasses.replace(tuning, kl_tuning_method="adaptive"),
    )
    return {name: dataclasses.replace(c, des=name) for name, c in variants.items()}


def _study(
    name: str,
    variants: dict[str, RunConfig],
    output_dir: PathLike,
    key: str,
    metrics: Sequence[str],
) -> Path:
    # Validate every configuration's data before anything is written.
    for variant in variants.values():
        load_data(variant.data)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"{name}_{time.strftime('%Y%m%d-%H%M%S')}"
    staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=f".{final.name}."))
    try:
        rows = []
        for label, variant in variants.items():
            logger.info("%s: training %s", name, label)
            run_dir = train_run(variant, staging)
            values = json.loads((run_dir / "metrics.json").read_text())
            row = {key: label, "run_dir": run_dir.name}
            row.update({c: values.get(c) for c in TABLE_COLUMNS})
            rows.append(row)
        table = pd.DataFrame(rows)
        table.to_csv(staging / "results.csv", index=False)
        (staging / "results.md").write_text(_markdown(table) + "\n")
        # A metric some run lacks (the deterministic run has no KL) is not drawn.
        drawn = [m for m in metrics if pd.to_numeric(table[m]).notna().all()]
        if len(drawn) < len(metrics):
            logger.info(
                "comparison.png leaves out %s: not every run has it",
                ", ".join(m for m in metrics if m not in drawn),
            )
        plot_comparison(
            table.assign(run=table[key].astype(str)),
            staging / "comparison.png",
            metrics=drawn,
            title=f"{name}: test metrics by run",
        )
        publish_directory(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _markdown(table: pd.DataFrame) -> str:
    columns = [c for c in table.columns if c != "run_dir"]
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for _, row in table.iterrows():
        cells = []
        for column in columns:
            value = row[column]
            if isinstance(value, float):
                cells.append("" if pd.isna(value) else f"{value:.4g}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_ablation(config: RunConfig, output_dir: PathLike = "runs") -> Path:
    """Train every :func:`ablation_variants` run and compare them; return the
    study directory."""
    return _study(
        f"{config.des}",
        ablation_variants(config),
        output_dir,
        key="run",
        metrics=("mse", "crps", "coverage_90", "final_kl"),
    )


def run_prior_sweep(
    config: RunConfig, prior_stds: Sequence[float], output_dir: PathLike = "runs"
) -> Path:
    """Train one run per prior standard deviation and compare accuracy, CRPS,
    coverage and the final KL; return the study directory."""
    if not prior_stds:
        raise ValueError("prior_std needs at least one value")
    variants = {}
    for value in prior_stds:
        bayes = dataclasses.replace(config.bayes, prior_std=float(value))
        variants[f"{value:g}"] = dataclasses.replace(
            config, bayes=bayes, des=f"prior_std_{value:g}"
        )
    return _study(
        f"{config.des}",
        variants,
        output_dir,
        key="prior_std",
        metrics=("mse", "crps", "coverage_90", "final_kl"),
    )
