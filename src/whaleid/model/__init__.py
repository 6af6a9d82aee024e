"""The embedding network, its pretrained backbones, losses, augmentation, checkpoints and batched embedding."""

# The one default input size (zero-shot backbones, new models, the CLI); here, so the CLI needs no torch import.
DEFAULT_IMG_SIZE = 224
