# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Deployment export: fixed-shape ONNX graphs, TensorRT engines, and the backends that run them.

Flow (Isaac-GR00T-style: export ONNX -> build engines per GPU architecture -> verify against PyTorch):

1. ``onnx_export.export_onnx(model, profile, out)``: per deployment profile (batch, cameras,
   resolution, text buckets) the graphs of ``graphs.py`` (vision tower(s), left brain -> per-layer
   K/V, right brain -> action queries, expert step and unrolled loop), host inputs from ``host.py``.
2. ``op_support.check_files``: TensorRT ONNX-parser support table (``trt_onnx_support.yaml``).
3. ``trt_build.build_engines``: engines + ``manifest.json`` per ``sm_XX-trt<version>``
   (``manifest.py`` refuses mismatches); optional INT8/FP8 Q/DQ of the left brain (``quantize.py``).
4. ``runners``: ``OrtRunner``, ``TensorRTRunner``, ``TorchGraphRunner`` behind one interface;
   ``verify.verify_backend`` compares any of them with the eager model (cosine >= 0.999).

Nothing here imports rclpy; onnx, onnxruntime and tensorrt are imported inside functions (the
``export`` extra). CLI: ``cli.py`` (``twinbrain export`` / ``twinbrain verify``).
"""
