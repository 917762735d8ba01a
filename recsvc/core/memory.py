"""How much memory a loaded model holds: what GetModelInfo reports per namespace."""

from __future__ import annotations

from recsvc.core.model import Model


def model_memory_bytes(model: Model) -> int:
    """Bytes of ``model``'s arrays and indexes: factors, the training interactions (CSR),
    popularity, categories, fold-in's YtY, image embeddings, both HNSW indexes (estimated
    from hnswlib's layout). Id maps and Python objects are left out: they are small beside
    the arrays for models of any size that matters."""
    arrays = [
        model.user_factors,
        model.item_factors,
        model.user_items.data,
        model.user_items.indices,
        model.user_items.indptr,
        model.item_popularity,
        model.item_categories,
        model.yty,
        model.popular_order,
    ]
    total = sum(int(a.nbytes) for a in arrays)
    total += model.user_index.memory_bytes() + model.similar_index.memory_bytes()
    if model.visual is not None:
        visual = model.visual
        total += visual.rows.nbytes + visual.embeddings.nbytes + visual.position.nbytes
        total += visual.index.memory_bytes()
    return total
