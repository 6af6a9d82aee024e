"""Training throughput: `whaleid train`'s loop against a bare forward + backward + AdamW step.

The bare loop is what a notebook would time: the same timm backbone (with whaleid's GeM, neck
and sub-center ArcFace head, so the model is the same) on random tensors of the training batch
shape, no data loading; once as a notebook would run it, once in channels_last (NHWC) memory
format as whaleid trains. The whaleid side is `train()` on real photos with the recipe's settings
(augmentation, workers, accelerate, ArcFace), timed by its own `images_per_second` over the
epochs after the first (which includes start-up). Both run alone, one after the other, in one
process, so the ratio is what the loop costs beyond the model.

    .venv/bin/python benchmarks/train_throughput.py --steps 20 --epochs 3
    .venv/bin/python benchmarks/train_throughput.py --augment-only   # ms per photo of each augmentation
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch

from whaleid.data.catalog import read_catalog
from whaleid.experiments.recipe import load_recipe
from whaleid.model.losses import ArcFaceLoss, ArcFaceSubCenter
from whaleid.model.network import EmbeddingModel
from whaleid.train import train


def bare(config, classes: int, steps: int, channels_last: bool = False) -> float:
    """Photos/s of forward + backward + AdamW on random tensors of the training batch's shape."""
    torch.manual_seed(0)
    model = EmbeddingModel(replace(config.model), pretrained=config.pretrained).train()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    head = ArcFaceLoss(
        ArcFaceSubCenter(model.embedding_dim, classes, config.subcenters, config.arcface_scale, config.margin)
    )
    optimizer = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=config.lr)
    size, batch = config.model.img_size, config.batch_size
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=layout)
    targets = torch.randint(0, classes, (batch,))
    times = []
    for step in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        loss = head(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step >= 2:
            times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def augment_costs(config, paths: list[str]) -> dict[str, dict[str, float]]:
    """ms per photo of each training augmentation, on PIL images (as whaleid runs them) and on uint8 tensors."""
    from torchvision.transforms import v2

    from whaleid.data.images import open_image

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker
    photos = [open_image(p) for p in paths]
    steps = config.transform(0, (0.5,) * 3, (0.5,) * 3).transforms
    out = {}
    for name, order in (
        ("PIL", steps),
        ("tensor", [v2.ToImage()] + [t for t in steps if not isinstance(t, v2.ToImage)]),
    ):
        images, out[name] = photos, {}
        for step in order:
            start = time.perf_counter()
            images = [step(im) for im in images]
            out[name][type(step).__name__] = 1000 * (time.perf_counter() - start) / len(photos)
    torch.set_num_threads(threads)
    return out


def loop(config, catalog, steps: int, epochs: int) -> list[float]:
    """`train()`'s own images_per_second of each epoch of ``steps`` batches."""
    config = replace(config, epochs=epochs, max_steps_per_epoch=steps)
    with tempfile.TemporaryDirectory() as out:
        result = train(catalog, config, out, progress=False)
    return [h["images_per_second"] for h in result.history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="src/whaleid/configs/right-whales.yaml", help="a recipe YAML")
    parser.add_argument("--steps", type=int, default=20, help="batches per epoch (and bare steps)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, help="DataLoader workers (default: the recipe's, cores - 1)")
    parser.add_argument("--augment-only", action="store_true", help="only time the augmentations (128 photos)")
    parser.add_argument("--json")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    catalog = read_catalog(recipe.data.csv, check_images=False)
    config = recipe.train if args.workers is None else replace(recipe.train, num_workers=args.workers)
    classes = catalog.n_individuals
    costs = augment_costs(config, catalog.paths[:128])
    for name, steps in costs.items():
        cells = ", ".join(f"{step} {ms:.2f}" for step, ms in steps.items())
        print(f"  augmentation on {name}: {sum(steps.values()):.1f} ms/photo ({cells})")
    if args.augment_only:
        return
    bare_rate = bare(config, classes, args.steps)
    nhwc_rate = bare(config, classes, args.steps, channels_last=True)
    epochs = loop(config, catalog, args.steps, args.epochs)
    rate = float(np.median(epochs[1:] or epochs))
    print(
        f"{config.model.backbone} @ {config.model.img_size}px, batch {config.batch_size}, "
        f"{torch.get_num_threads()} threads, {classes} classes"
    )
    print(f"  bare forward+backward+AdamW        {bare_rate:6.1f} photos/s")
    print(f"  the same, channels_last (NHWC)     {nhwc_rate:6.1f} photos/s")
    print(
        f"  whaleid train loop (NHWC)          {rate:6.1f} photos/s  (epochs: {', '.join(f'{v:.1f}' for v in epochs)})"
    )
    print(f"  ratio to bare: {rate / bare_rate:.2f}; to bare NHWC: {rate / nhwc_rate:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "bare": bare_rate,
                    "bare_nhwc": nhwc_rate,
                    "loop": epochs,
                    "ratio": rate / bare_rate,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
