"""Where a camera-size photo's crop time goes: decoding, the saliency mask, and the box.

Happywhale sample photos upscaled to 4000 px wide (as in crop_throughput.py) are timed stage by
stage: a full JPEG decode, a draft decode (PIL's DCT scaling at 1/``--scale``),
`saliency_masks` on the full photo (letterbox to 224, the model, the heat map back to full
resolution) and `crop_box` on that full-resolution mask. It also reports how far the box moves
when the mask comes from the draft-decoded photo instead (then scaled to full resolution), which
is what draft decoding would change.

    .venv/bin/python benchmarks/crop_profile.py --n 8
    .venv/bin/python benchmarks/crop_profile.py --n 24 --scale 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from whaleid.data.images import open_image
from whaleid.preprocess.crops import CropSettings
from whaleid.preprocess.saliency import INPUT_SIZE, _session, saliency_masks

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "happywhale-sample"


def saliency_model_ms(batch: int = 8, repeats: int = 3) -> float:
    """ms per photo of the saliency ViT alone, on batches of letterboxed input."""
    session = _session()
    images = np.zeros((batch, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    session.run(None, {session.get_inputs()[0].name: images})
    start = time.perf_counter()
    for _ in range(repeats):
        session.run(None, {session.get_inputs()[0].name: images})
    return 1000 * (time.perf_counter() - start) / (batch * repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--scale", type=int, default=4, help="the draft decode's DCT scale: 2, 4 or 8")
    args = parser.parse_args()
    settings = CropSettings()
    saliency_masks([Image.new("RGB", (64, 64))])  # the ONNX session, started outside the timings
    seconds = {"full decode": 0.0, "draft decode": 0.0, "saliency mask": 0.0, "box": 0.0}
    shifts = []
    model_alone = saliency_model_ms()

    with tempfile.TemporaryDirectory() as folder:
        for source in sorted(SAMPLE.rglob("*.jpg"))[: args.n]:
            with Image.open(source) as small:
                width, height = small.size
                path = Path(folder) / "photo.jpg"
                small.convert("RGB").resize((args.width, round(height * args.width / width)), Image.BICUBIC).save(
                    path, quality=92
                )
            start = time.perf_counter()
            photo = open_image(path)
            seconds["full decode"] += time.perf_counter() - start
            start = time.perf_counter()
            with Image.open(path) as draft:
                draft.draft("RGB", (draft.width // args.scale, draft.height // args.scale))
                reduced = draft.convert("RGB")
            seconds["draft decode"] += time.perf_counter() - start
            start = time.perf_counter()
            mask = saliency_masks([photo])[0]
            seconds["saliency mask"] += time.perf_counter() - start
            start = time.perf_counter()
            full = settings.box(mask)
            seconds["box"] += time.perf_counter() - start
            scaled = cv2.resize(saliency_masks([reduced])[0], photo.size, interpolation=cv2.INTER_LINEAR)
            shifts.append(int(np.abs(np.subtract(full.box, settings.box(scaled).box)).max()))
    report = {f"{k} ms": round(1000 * v / args.n, 1) for k, v in seconds.items()}
    report["saliency model alone ms (batch 8)"] = round(model_alone, 1)
    report["box shift px (draft mask), per photo"] = shifts
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
