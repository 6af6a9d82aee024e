"""Experiments on a split: the demo's zero-shot vs fine-tuned protocol, recipes, pseudo-label rounds."""
