"""Learning the image -> item-factor projection that gives cold items a collaborative vector.

Trained on warm items (an image and interactions): input their image embeddings, target their
learned item factors, mean squared error, AdamW, early stopping on a 10% validation share of the
items (the weights of the best epoch are kept). Small: seconds on a CPU for ten thousand items.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from recsvc.core.projection import Projection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProjectionSettings:
    hidden: int = 512
    epochs: int = 200
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 20
    seed: int = 42


@dataclass(frozen=True)
class FittedProjection:
    projection: Projection
    validation_r2: float
    items: int
    epochs: int


def fit_projection(
    embeddings: npt.NDArray[np.float32],
    factors: npt.NDArray[np.float32],
    settings: ProjectionSettings | None = None,
) -> FittedProjection:
    """Fit ``embeddings`` (n, d) -> ``factors`` (n, f) on n warm items."""
    settings = settings or ProjectionSettings()
    if len(embeddings) != len(factors):
        raise ValueError("embeddings and factors must have one row per item")
    if len(embeddings) < 10:
        raise ValueError(f"a projection needs at least 10 items with images, got {len(embeddings)}")
    generator = torch.Generator().manual_seed(settings.seed)
    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(factors, dtype=np.float32))
    order = torch.randperm(len(x), generator=generator)
    held = max(1, len(x) // 10)
    valid, train = order[:held], order[held:]

    torch.manual_seed(settings.seed)
    model = nn.Sequential(
        nn.Linear(x.shape[1], settings.hidden), nn.ReLU(), nn.Linear(settings.hidden, y.shape[1])
    )
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    loss_fn = nn.MSELoss()
    best_loss, best_state, best_epoch, stale = float("inf"), model.state_dict(), 0, 0
    epoch = 0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        shuffled = train[torch.randperm(len(train), generator=generator)]
        for start in range(0, len(shuffled), settings.batch_size):
            rows = shuffled[start : start + settings.batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(x[rows]), y[rows])
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.inference_mode():
            valid_loss = float(loss_fn(model(x[valid]), y[valid]))
        if valid_loss < best_loss - 1e-7:
            best_loss, best_epoch, stale = valid_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= settings.patience:
                break
    model.load_state_dict(best_state)
    variance = float(y[valid].var(dim=0, unbiased=False).sum()) / y.shape[1]
    r2 = 1.0 - best_loss / variance if variance > 0 else 0.0
    log.info(
        "projection: %d items, best epoch %d of %d, validation R^2 %.3f",
        len(x),
        best_epoch,
        epoch,
        r2,
    )
    first, second = model[0], model[2]
    assert isinstance(first, nn.Linear) and isinstance(second, nn.Linear)
    projection = Projection(
        w1=first.weight.detach().numpy().T.copy(),
        b1=first.bias.detach().numpy().copy(),
        w2=second.weight.detach().numpy().T.copy(),
        b2=second.bias.detach().numpy().copy(),
    )
    return FittedProjection(projection, round(r2, 4), len(x), best_epoch)
