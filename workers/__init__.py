"""What runs inside one worker process: the model zoo (:mod:`workers.models`), checkpoints
(:mod:`workers.checkpoint`), the per-process model cache (:mod:`workers.model_cache`), batched
CPU/GPU inference (:mod:`workers.inference`) and blur kernels (:mod:`workers.blur`).

This package never imports :mod:`pipeline`.
"""
