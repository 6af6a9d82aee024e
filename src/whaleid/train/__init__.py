"""Learning an embedding model: :class:`TrainConfig` (``config``), the loop (``loop``, built by ``run``,
saved and resumed by ``state``, judged by ``validation``, paced by ``schedule``) and k-fold ensembles (``folds``)."""

from whaleid.train.config import TrainConfig
from whaleid.train.folds import train_folds
from whaleid.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train", "train_folds"]
