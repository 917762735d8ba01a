"""Learning the visual space from the catalogue's labels.

Raw ImageNet features put a product near others of similar texture and pose; shoppers expect
"similar" to mean the same kind of product. Three learners find a linear map of the raw
embedding in which cosine search follows the shop's taxonomy while still ranking by appearance
within a kind:

- ``lda``: regularised linear discriminant analysis on the category alone (shrinkage 0.3, at
  most 64 dimensions);
- ``lda-all``: the same, with every other label column's between-class scatter added
  (weight ``aux_weight``), so the directions also separate e.g. sub-categories and colours;
- ``proxy``: a metric-learning head trained with torch on every label column at once (the
  category, and e.g. gender, sub-category, colour, usage): one learned proxy vector per label
  value, and a normalised-softmax loss that pulls each item towards its values' proxies and away
  from the others', the category weighted 1 and each other column ``aux_weight``. The head
  starts from LDA directions fitted on its training share and keeps the best epoch on a
  validation share of the items, measured as the category agreement of their 10 nearest
  neighbours.

In each case the raw embedding is kept beside the learned one with weight ``raw_weight`` (see
:class:`recsvc.core.projection.VisualAdapter`) so that appearance still orders items inside a
category. With ``class_weight`` > 0, each of them also gets a class-probability part: a
multinomial logistic regression of the category on the raw embedding (L-BFGS, L2 penalty
``class_decay``), whose softmax probabilities (temperature ``class_temperature``) join every
photo's vector with weight ``class_weight``, so that a new item meets the catalogue items its
classifier puts in its category.

Figures (docs/BENCHMARKS.md, "A stronger visual space" and "A class-probability part"):
fashion-products, 2,000 items held out, their 10 nearest neighbours among the other 7,583,
articleType agreement with EfficientNet-Lite0: raw 0.746, lda 0.830, lda-all 0.828, proxy
0.824 (on frozen features one linear map is as good as LDA makes it), lda with the class part
0.878 (0.868 on two other random held-out sets, where lda gives 0.829 and 0.828).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import scipy.linalg
import scipy.optimize
import scipy.special

from recsvc.core.projection import VisualAdapter

log = logging.getLogger(__name__)

MIN_ITEMS_PER_CATEGORY = 2
MIN_CATEGORIES = 3
MIN_PROXY_ITEMS = 200  # fewer labelled items: LDA alone (too few to hold some out)
VisualMethod = Literal["lda", "lda-all", "proxy"]


@dataclass(frozen=True)
class VisualSpaceSettings:
    method: VisualMethod = "lda"
    dims: int = 64
    shrinkage: float = 0.3
    raw_weight: float = 0.2
    aux_weight: float = 0.3  # each non-category label column's weight (lda-all, proxy)
    scale: float = 16.0  # softmax inverse temperature of the proxy loss
    epochs: int = 60
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    validation_share: float = 0.1
    patience: int = 10
    seed: int = 42
    # The class-probability part (see VisualAdapter): its weight (0: none), softmax
    # temperature, and the classifier's L2 penalty and iteration cap.
    # (The library default is off; `recsvc train` and `eval --images` turn it on through
    # RECSVC_TRAIN__VISUAL_CLASS_WEIGHT, 0.5. Temperature and penalty chosen on an inner
    # split of fashion-products' training items, docs/BENCHMARKS.md.)
    class_weight: float = 0.0
    class_temperature: float = 2.0
    class_decay: float = 1e-4
    class_max_iter: int = 500


def fit_visual_adapter(
    embeddings: npt.NDArray[np.float32],
    categories: Sequence[str],
    labels: Mapping[str, Sequence[str]] | None = None,
    settings: VisualSpaceSettings | None = None,
) -> VisualAdapter | None:
    """The visual space of ``embeddings`` (n, d) from ``categories`` (n values, "" unknown) and
    optional further ``labels`` columns (name -> n values); None when the categories cannot
    support it (fewer than 3 categories with 2 or more items)."""
    settings = settings or VisualSpaceSettings()
    codes = _codes(categories)
    if codes is None:
        log.info("visual space: too few usable categories, keeping raw embeddings")
        return None
    x = np.asarray(embeddings, dtype=np.float64)
    known = codes >= 0
    mean = x[known].mean(axis=0)
    others = [c for v in (labels or {}).values() if (c := _codes(v, minimum=2)) is not None]
    method = settings.method if known.sum() >= MIN_PROXY_ITEMS else "lda"
    components = _lda(
        x - mean,
        codes,
        settings.dims,
        settings.shrinkage,
        others if method == "lda-all" else (),
        settings.aux_weight,
    )
    if method == "proxy":
        components = _proxy_head(x - mean, [codes, *others], components, settings)
    class_weights = class_bias = None
    if settings.class_weight > 0:
        class_weights, class_bias = _softmax_classifier(
            x - mean, codes, settings.class_decay, settings.class_max_iter
        )
    log.info(
        "visual space: %s over %d categories, %d label columns, %d items -> %d dims%s",
        method,
        int(codes.max()) + 1,
        1 + len(labels or {}),
        int(known.sum()),
        components.shape[1],
        "" if class_weights is None else " + class probabilities",
    )
    return VisualAdapter(
        mean.astype(np.float32),
        np.ascontiguousarray(components, np.float32),
        settings.raw_weight,
        class_weights,
        class_bias,
        settings.class_temperature,
        settings.class_weight if class_weights is not None else 0.0,
    )


def _softmax_classifier(
    centred: npt.NDArray[np.float64], codes: npt.NDArray[np.int64], decay: float, max_iter: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Multinomial logistic regression of the category ``codes`` (-1: unknown, left out) on
    the ``centred`` rows, L2 penalty ``decay`` on the weights: (d, c) weights and (c,) biases.
    L-BFGS from zero, so the result is deterministic and needs no torch."""
    rows = codes >= 0
    z, y = centred[rows], codes[rows]
    scale = float(z.std()) or 1.0  # unit-scale inputs: the penalty means the same for any d
    z = z / scale
    n, d = z.shape
    c = int(codes.max()) + 1
    picked = (np.arange(n), y)

    def loss_and_gradient(theta: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[Any]]:
        w, b = theta[: d * c].reshape(d, c), theta[d * c :]
        logits = z @ w + b
        log_p = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
        loss = -log_p[picked].mean() + decay * float((w * w).sum())
        error = np.exp(log_p)
        error[picked] -= 1.0
        error /= n
        gradient = np.concatenate([(z.T @ error + 2 * decay * w).ravel(), error.sum(axis=0)])
        return float(loss), gradient

    fitted = scipy.optimize.minimize(
        loss_and_gradient,
        np.zeros(d * c + c),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter},
    )
    weights = fitted.x[: d * c].reshape(d, c) / scale
    return weights.astype(np.float32), fitted.x[d * c :].astype(np.float32)


def _codes(values: Sequence[str], minimum: int = MIN_CATEGORIES) -> npt.NDArray[np.int64] | None:
    """Per item the index of its value among the values with 2+ items, -1 for the rest; None
    when fewer than ``minimum`` values qualify."""
    tags = np.asarray(values)
    names, counts = np.unique(tags[tags != ""], return_counts=True)
    usable = names[counts >= MIN_ITEMS_PER_CATEGORY]
    if len(usable) < minimum:
        return None
    position = np.searchsorted(usable, tags)
    inside = position < len(usable)
    hit = np.zeros(len(tags), dtype=bool)
    hit[inside] = usable[position[inside]] == tags[inside]
    return np.where(hit, position, -1).astype(np.int64)


def _class_scatter(
    centred: npt.NDArray[np.float64], codes: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], int]:
    """Between- and within-class scatter of the rows with a class (code >= 0), and how many
    classes they hold."""
    rows = codes >= 0
    centred, codes = centred[rows], codes[rows]
    classes = int(codes.max()) + 1
    class_means = np.zeros((classes, centred.shape[1]))
    np.add.at(class_means, codes, centred)
    sizes = np.bincount(codes, minlength=classes).astype(np.float64)
    present = sizes > 0
    class_means[present] /= sizes[present, None]
    within = centred - class_means[codes]
    scatter_within = within.T @ within / len(centred)
    scatter_between = (class_means.T * sizes) @ class_means / len(centred)
    return scatter_between, scatter_within, int(present.sum())


def _lda(
    centred: npt.NDArray[np.float64],
    codes: npt.NDArray[np.int64],
    dims: int,
    shrinkage: float,
    others: Sequence[npt.NDArray[np.int64]] = (),
    other_weight: float = 0.0,
) -> npt.NDArray[np.float64]:
    """(d, out) discriminant directions of ``centred`` rows by their class ``codes``; with
    ``others``, their label columns' between-class scatter is added, weighted ``other_weight``
    (the directions then also separate e.g. sub-categories and colours)."""
    scatter_between, scatter_within, present = _class_scatter(centred, codes)
    for column in others:
        scatter_between = scatter_between + other_weight * _class_scatter(centred, column)[0]
    ridge = shrinkage * np.trace(scatter_within) / len(scatter_within)
    regularised = scatter_within + ridge * np.eye(len(scatter_within))
    _, vectors = scipy.linalg.eigh(scatter_between, regularised)
    out = min(dims, present - 1, centred.shape[1])
    return np.ascontiguousarray(vectors[:, ::-1][:, :out])


def _proxy_head(
    centred: npt.NDArray[np.float64],
    columns: list[npt.NDArray[np.int64]],
    start: npt.NDArray[np.float64],
    settings: VisualSpaceSettings,
) -> npt.NDArray[np.float64]:
    """A (d, dims) linear head trained with a normalised-softmax proxy loss over every label
    column (the first is the category), started from ``start`` (LDA directions)."""
    import torch  # here: serving a model never imports torch for this
    import torch.nn.functional as F

    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    x = torch.from_numpy(centred.astype(np.float32))
    targets = torch.from_numpy(np.stack(columns, axis=1))
    labelled = np.flatnonzero(columns[0] >= 0)
    order = rng.permutation(labelled)
    held = max(MIN_CATEGORIES * 10, round(settings.validation_share * len(order)))
    valid, train = np.sort(order[:held]), np.sort(order[held:])

    # Start from LDA directions learned on the training share only (so that the validation
    # figure is honest from the first epoch), scaled to unit variance of the output.
    only_train = columns[0].copy()
    only_train[valid] = -1
    start = _lda(centred, only_train, start.shape[1], settings.shrinkage)
    initial = torch.from_numpy(start.astype(np.float32))
    initial = initial / (x @ initial).std().clamp(min=1e-6)  # one scale: keeps LDA metric
    head = torch.nn.Parameter(initial)

    def class_means(z: torch.Tensor, codes: torch.Tensor, classes: int) -> torch.Tensor:
        mask = codes >= 0
        sums = torch.zeros(classes, z.shape[1]).index_add_(0, codes[mask], z[mask])
        return F.normalize(sums + 1e-6 * torch.randn(classes, z.shape[1]), dim=1)

    with torch.no_grad():
        z = F.normalize(x @ head, dim=1)
        proxies = [
            torch.nn.Parameter(class_means(z, targets[:, i], int(column.max()) + 1))
            for i, column in enumerate(columns)
        ]
    weights = [1.0] + [settings.aux_weight] * (len(columns) - 1)
    optimiser = torch.optim.AdamW(
        [head, *proxies], lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    train_rows = torch.from_numpy(train)

    def agreement() -> float:
        with torch.no_grad():
            z = F.normalize(x @ head, dim=1)
            # Validation items against the training items, as a new item meets the catalogue.
            scores = z[valid] @ z[train].T
            top = scores.topk(10, dim=1).indices
            hits = targets[train, 0][top] == targets[valid, 0][:, None]
            return float(hits.float().mean())

    best, best_head, best_epoch, stale = agreement(), head.detach().clone(), 0, 0
    for epoch in range(1, settings.epochs + 1):
        shuffled = train_rows[torch.randperm(len(train_rows), generator=generator)]
        for first in range(0, len(shuffled), settings.batch_size):
            rows = shuffled[first : first + settings.batch_size]
            z = F.normalize(x[rows] @ head, dim=1)
            loss = torch.zeros(())
            for i, (proxy, weight) in enumerate(zip(proxies, weights, strict=True)):
                wanted = targets[rows, i]
                mask = wanted >= 0
                if mask.any():
                    logits = settings.scale * z[mask] @ F.normalize(proxy, dim=1).T
                    loss = loss + weight * F.cross_entropy(logits, wanted[mask])
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
        score = agreement()
        if score > best + 1e-4:
            best, best_head, best_epoch, stale = score, head.detach().clone(), epoch, 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    log.info(
        "visual space: proxy head, best epoch %d, validation agreement@10 %.3f", best_epoch, best
    )
    result: npt.NDArray[np.float64] = best_head.numpy().astype(np.float64)
    return result
