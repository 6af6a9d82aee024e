"""Embedding on ONNX Runtime: the same network exported once per set of weights, cached beside them.

On CPU, ONNX Runtime runs EfficientNets several times faster than eager torch with the same
outputs (``docs/benchmarks.md``). The exported graph is the embedding model up to both of
its outputs (the inference embedding and the neck the ArcFace head scores); normalisation,
flip TTA and class cosines stay in :mod:`whaleid.model.embed`, shared with the torch path.

A cached file is named by the weights it was exported from (``whaleid-<digest>.onnx``), so
new weights get a new file; its metadata repeats the digest and the export format, and a
file whose metadata names other weights is refused rather than silently used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from whaleid.errors import UserError
from whaleid.files import atomic_path
from whaleid.model.network import EmbeddingModel

__all__ = ["ENGINES", "FORMAT", "OnnxEmbedding", "cache_dir", "export", "onnx_embedding", "weights_digest"]

ENGINES = ("auto", "onnx", "torch")
FORMAT = "whaleid.onnx/1"  # bump when the exported graph changes: older cached files are re-exported
OPSET = 17
OUTPUTS = ("embedding", "neck")


def cache_dir() -> Path:
    """Where exports of weights without a checkpoint folder (zero-shot backbones) are kept."""
    root = (
        os.environ.get("WHALEID_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "whaleid"
    )
    return Path(root) / "onnx"


def weights_digest(model: EmbeddingModel) -> str:
    """sha256 of a model's settings and tensors, for weights that have no checkpoint file to hash."""
    digest = hashlib.sha256(json.dumps(vars(model.config), sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _Both(torch.nn.Module):
    """The embedding model with both outputs, the form that is exported."""

    def __init__(self, model: EmbeddingModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.embed_both(images)


def export(model: EmbeddingModel, path: Path, digest: str) -> Path:
    """Write ``model`` (in eval mode, on CPU) as ONNX at ``path``, atomically, its weights' digest in the metadata."""
    import onnx

    size = model.config.img_size
    was_training, device = model.training, next(model.parameters()).device
    model.eval().cpu()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():  # the exporter's notes on tracing are about dynamic control flow we lack
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Both(model),
                (torch.zeros(2, 3, size, size),),
                buffer,
                dynamo=False,
                opset_version=OPSET,
                input_names=["images"],
                output_names=list(OUTPUTS),
                dynamic_axes={name: {0: "batch"} for name in ("images", *OUTPUTS)},
            )
    finally:
        model.train(was_training).to(device)
    graph = onnx.load_from_string(buffer.getvalue())
    meta = {"format": FORMAT, "weights": digest, "img_size": str(size), "torch": torch.__version__}
    for key, value in meta.items():
        graph.metadata_props.add(key=f"whaleid.{key}", value=value)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        onnx.save(graph, str(tmp))
    return path


class OnnxEmbedding:
    """An ONNX Runtime session that answers like :meth:`EmbeddingModel.embed_both`, on numpy arrays."""

    def __init__(self, path: Path, digest: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()  # as many as torch would use: 2 beat 1 by 1.7x
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        recorded = self.session.get_modelmeta().custom_metadata_map
        if recorded.get("whaleid.format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} export")  # an older whaleid's: exported again
        if recorded.get("whaleid.weights") != digest:
            raise UserError(
                f"{path} was exported from other weights ({recorded.get('whaleid.weights', 'unknown')[:16]}) than "
                f"the model it sits beside ({digest[:16]}): delete it, and whaleid exports the right one"
            )
        self.path = path

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vectors, neck = self.session.run(list(OUTPUTS), {"images": np.ascontiguousarray(images, dtype=np.float32)})
        return vectors, neck


def onnx_embedding(model: EmbeddingModel, digest: str, folder: Path | None = None) -> OnnxEmbedding:
    """The cached ONNX export of ``model`` (weights ``digest``) in ``folder``, exported first if missing or stale.

    ``folder`` is the checkpoint's folder, or :func:`cache_dir` for weights without one; a
    folder that cannot be written falls back to :func:`cache_dir`.
    """
    name = f"whaleid-{digest[:16]}.onnx"  # from the digest only, never from a user's file name
    path = (folder or cache_dir()) / name
    if path.is_file():
        try:
            return OnnxEmbedding(path, digest)
        except UserError:  # another model's export: refused, not overwritten
            raise
        except Exception:  # noqa: BLE001 - an older export format, or a file cut short: exported again
            pass
    try:
        export(model, path, digest)
    except OSError:
        if folder is None:
            raise
        path = export(model, cache_dir() / name, digest)
    return OnnxEmbedding(path, digest)
