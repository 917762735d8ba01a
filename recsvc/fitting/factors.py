"""Fitting implicit models: ALS or BPR, with confidence weighting, on the CPU or the GPU.

One entry point, :func:`fit_factors`; the backend (CPU or CUDA) is chosen from the settings and
``implicit.gpu.HAS_CUDA`` so that callers never branch on the device.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import implicit
import implicit.gpu
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from implicit.nearest_neighbours import bm25_weight, tfidf_weight
from threadpoolctl import threadpool_limits

from recsvc.config import TrainSettings
from recsvc.core.weights import transform_weights
from recsvc.errors import ConfigError

if TYPE_CHECKING:
    from recsvc.fitting.spark_als import SparkFactors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedFactors:
    """Learned factors.

    user_factors : float32, shape (n_users, d); item_factors : float32, shape (n_items, d).
    For BPR, d = factors + 1 (implicit keeps the item bias in the last column and a 1 in the
    users' last column, so inner products include the bias).
    """

    user_factors: npt.NDArray[np.float32]
    item_factors: npt.NDArray[np.float32]
    device: str
    seconds: float
    engine: str = "implicit"
    # Facts of the fit that go into the manifest's parameters (the spark engine's regParam).
    details: dict[str, float] = field(default_factory=dict)


def resolve_device(requested: str) -> str:
    """'cpu' or 'cuda' for a requested 'auto' | 'cpu' | 'cuda'."""
    if requested == "cuda" and not implicit.gpu.HAS_CUDA:
        raise ConfigError("train.device: cuda requested but implicit found no usable GPU")
    if requested == "auto":
        return "cuda" if implicit.gpu.HAS_CUDA else "cpu"
    return requested


def weight_matrix(matrix: sp.csr_matrix, settings: TrainSettings) -> sp.csr_matrix:
    """The user-item matrix as the model sees it: ``settings.weight_transform`` on each entry,
    then ``settings.weighting``."""
    if settings.weight_transform != "none":
        matrix = matrix.copy()
        matrix.data = transform_weights(matrix.data, settings.weight_transform)
    if settings.weighting == "binary":
        weighted = matrix.copy()
        weighted.data = np.ones_like(weighted.data)
    elif settings.weighting == "bm25":
        weighted = bm25_weight(matrix, K1=settings.bm25_k1, B=settings.bm25_b).tocsr()
    elif settings.weighting == "tfidf":
        weighted = tfidf_weight(matrix).tocsr()
    else:
        weighted = matrix
    return weighted.astype(np.float32)


def fit_factors(
    matrix: sp.csr_matrix,
    settings: TrainSettings,
    progress: bool = True,
    initial: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None,
) -> TrainedFactors:
    """Fit ``settings.algorithm`` on the (n_users, n_items) interaction matrix.

    ``initial`` (ALS only): user and item factors to start from instead of random ones (a warm
    start from the previous model; rows aligned with the matrix). implicit starts from factors
    that are already set, so a few sweeps then refine the previous solution.

    ``settings.engine`` spark fits on Spark instead (recsvc.fitting.spark_als), with the same
    weighting; it has no warm start (Spark ALS starts from random factors).
    """
    if settings.engine == "spark":
        return _fit_on_spark(matrix, settings, initial is not None)
    device = resolve_device(settings.device)
    if initial is not None and settings.algorithm != "als":
        raise ConfigError("train.algorithm: warm starts are implemented for ALS only")
    # implicit parallelises over users itself; BLAS threads on top oversubscribe the cores
    # (implicit checks this when a model is constructed, so the limit covers both steps).
    with threadpool_limits(limits=1, user_api="blas"):
        model = _new_model(settings, device, progress)
        if initial is not None:
            _set_initial_factors(model, initial, matrix.shape, settings.factors, device)
        started = time.perf_counter()
        model.fit(weight_matrix(matrix, settings), show_progress=progress)
        seconds = time.perf_counter() - started
    if device == "cuda":
        model = model.to_cpu()
    return TrainedFactors(
        np.ascontiguousarray(model.user_factors, dtype=np.float32),
        np.ascontiguousarray(model.item_factors, dtype=np.float32),
        device,
        seconds,
    )


def _set_initial_factors(
    model: Any,
    initial: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
    shape: tuple[int, int],
    factors: int,
    device: str,
) -> None:
    users, items = (np.ascontiguousarray(f, dtype=np.float32) for f in initial)
    if users.shape != (shape[0], factors) or items.shape != (shape[1], factors):
        raise ValueError(
            f"initial factors {users.shape} and {items.shape} do not fit a {shape} matrix "
            f"with {factors} factors"
        )
    if device == "cuda":
        model.user_factors = implicit.gpu.Matrix(users)
        model.item_factors = implicit.gpu.Matrix(items)
    else:
        model.user_factors, model.item_factors = users, items


def _new_model(settings: TrainSettings, device: str, progress: bool) -> Any:
    common = {
        "factors": settings.factors,
        "regularization": settings.regularization,
        "iterations": settings.iterations,
        "random_state": settings.seed,
        "use_gpu": device == "cuda",
    }
    if device == "cpu":
        common["num_threads"] = settings.threads
    if settings.algorithm == "bpr":
        return implicit.bpr.BayesianPersonalizedRanking(
            learning_rate=settings.learning_rate, **common
        )
    return implicit.als.AlternatingLeastSquares(
        alpha=settings.alpha, calculate_training_loss=progress, **common
    )


def _fit_on_spark(matrix: sp.csr_matrix, settings: TrainSettings, warm: bool) -> TrainedFactors:
    from recsvc.fitting.spark_als import fit_spark_matrix  # pyspark: only here

    if warm:
        log.warning("spark engine: no warm start (Spark ALS starts from random factors)")
    fitted = fit_spark_matrix(weight_matrix(matrix, settings), settings)
    return spark_trained_factors(fitted)


def spark_trained_factors(fitted: SparkFactors) -> TrainedFactors:
    """The TrainedFactors of a Spark fit."""
    return TrainedFactors(
        np.ascontiguousarray(fitted.user_factors, dtype=np.float32),
        np.ascontiguousarray(fitted.item_factors, dtype=np.float32),
        "cpu",
        fitted.seconds,
        engine="spark",
        details={"spark_reg_param": float(fitted.reg_param)},
    )
