"""What each epoch is judged by: leave-one-out MAP@5 on held-out photos, and the line the terminal shows."""

from __future__ import annotations

from whaleid.data.catalog import Catalog
from whaleid.model.embed import Embedder
from whaleid.model.network import OUTPUTS, EmbeddingModel
from whaleid.search.metrics import cell
from whaleid.search.openset import score_open_set

__all__ = ["best_output", "epoch_line", "validate"]


def validate(model: EmbeddingModel, catalog: Catalog, batch_size: int, num_workers: int | None) -> dict:
    """Leave-one-out metrics among held-out photos (each queries all the others), for each output.

    Keys are `map5`, `top1_known`, ... for the neck and `pooled_map5`, ... for the pooled features.
    """
    was_training, output = model.training, model.config.output
    device = next(model.parameters()).device
    metrics = {}
    for name in OUTPUTS if model.config.embedding_dim else ("neck",):
        model.config.output = name
        # torch: the weights change every epoch, an ONNX export per validation would not pay
        embedder = Embedder(model, batch_size=batch_size, num_workers=num_workers, device=device, engine="torch")
        embeddings = embedder.embed_catalog(catalog, progress=False)
        scores = score_open_set(embeddings.vectors, embeddings.table["individual_id"].tolist())
        metrics.update({(k if name == "neck" else f"{name}_{k}"): v for k, v in scores.items()})
    model.config.output = output
    model.train(was_training)
    return metrics


def best_output(record: dict) -> tuple[float, str]:
    """The record's best validation MAP@5 and the output that reached it (epoch number without validation)."""
    if "val_map5" not in record:
        return record["epoch"], "neck"
    candidates = [
        (record.get(f"val_{prefix}map5", -1.0), name) for prefix, name in (("", "neck"), ("pooled_", "pooled"))
    ]
    return max(candidates, key=lambda c: c[0])  # ties: the neck, then the earliest epoch


def epoch_line(record: dict, epochs: int) -> str:
    """A short line per epoch for the terminal; metrics.jsonl keeps every number."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {cell(record['loss'])}"]
    if "val_map5" in record:
        parts.append(f"val MAP@5 {cell(best_output(record)[0])}")
    parts.append(f"{record['images_per_second']:.1f} img/s")
    return "  ".join(parts)
