# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Training of TwinBrainVLA policies: dataset of action chunks, trainer loop, ``twinbrain train``.

The right brain, the state encoder and the action expert are trained with the flow-matching loss; the
left brain stays frozen and bit-identical to its initial weights (checked by hash at every save).
Nothing here imports rclpy; torch is imported by ``dataset`` and ``trainer``, not by ``cli`` at
import time.

Modules:
    dataset: ``FrameSource`` protocol over a LeRobot v3 dataset, ``ChunkDataset`` (current frame +
        next H actions with a mask at episode ends), norm statistics, dataset fingerprint, collator.
    trainer: ``TrainConfig`` and ``Trainer`` (AdamW groups, warm-up + cosine, clipping, bf16,
        accelerate or plain torch, safetensors/JSON checkpoints, resume).
    cli: ``add_train_args`` / ``train_main`` for ``twinbrain train``.
"""
