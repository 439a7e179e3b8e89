"""Training and evaluation of EquiAV models; the library (:mod:`equiav`) never imports this package.

* :mod:`~equiav.training.trainer`: the one training loop (:class:`~equiav.training.trainer.Trainer`) and the
  :class:`~equiav.training.trainer.TrainingTask` interface; :mod:`~equiav.training.run_config` holds the options
  every run has.
* Tasks: :mod:`~equiav.training.pretrain` (EquiAV's objective) and :mod:`~equiav.training.finetune` (classification),
  each a command (``python -m equiav.training.pretrain`` / ``.finetune``).
* The objective's pieces: :mod:`~equiav.training.losses`, :mod:`~equiav.training.augment` (the augmentations that
  produce the vectors of :mod:`equiav.aug_vectors`), :mod:`~equiav.training.classification` (labelled items, mixup,
  the classification loss and evaluation).
* Data: :mod:`~equiav.training.datasets` (manifests, videos, shards, AV-digits), :mod:`~equiav.training.sampler`,
  :mod:`~equiav.training.prepare` (extraction and shard writing).
* Runs: :mod:`~equiav.training.distributed` (process group and collectives), :mod:`~equiav.training.rng`,
  :mod:`~equiav.training.checkpoint` (files) and :mod:`~equiav.training.resume` (what a checkpoint restores),
  :mod:`~equiav.training.schedule`, :mod:`~equiav.training.logger`, :mod:`~equiav.training.options` (dataclass
  configs from JSON and the command line).
* Evaluation: :mod:`~equiav.training.evaluate` (``equiav eval retrieval | classify | probe``),
  :mod:`~equiav.training.probe`, :mod:`~equiav.training.metrics`, :mod:`~equiav.training.loading`.
"""
