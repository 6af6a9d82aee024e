"""End to end on synthetic fins: catalog -> train -> embed -> identify -> evaluate, with the real pretrained lite0."""

import json

from whaleid.catalog import holdout_photos, read_catalog
from whaleid.embed import Embedder
from whaleid.evaluate import evaluate
from whaleid.identify import Identifier
from whaleid.index import build_index
from whaleid.synth import make_catalog
from whaleid.train import TrainConfig, train


def test_fine_tuning_learns_to_match_held_out_photos(tmp_path):
    csv = make_catalog(tmp_path / "fins", n_individuals=24, photos_per_individual=(6, 8), size=128, seed=0, variation=0.5)
    gallery, queries = holdout_photos(read_catalog(csv), 0.25, seed=0)
    config = TrainConfig(img_size=96, epochs=10, batch_size=16, lr=2e-3, backbone_lr=5e-4, num_workers=0)
    result = train(gallery, config, tmp_path / "run", progress=False)

    embedder = Embedder.from_checkpoint(result.checkpoint, num_workers=0)
    g, q = embedder.embed_catalog(gallery, progress=False), embedder.embed_catalog(queries, progress=False)
    identifier = Identifier(build_index(g.vectors), g.table["individual_id"].tolist())
    report = evaluate([r.ids for r in identifier.rank(q.vectors)], q.table["individual_id"].tolist())

    # Chance: the truth at a uniformly random rank among 24 individuals, (1 + 1/2 + ... + 1/5) / 24 = 0.095.
    chance = sum(1 / r for r in range(1, 6)) / 24
    assert report.map5 > 2 * chance, report
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.7 * losses[0], losses
