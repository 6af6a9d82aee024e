"""The embedding network, its pretrained backbones, losses, augmentation, checkpoints and batched embedding."""
