"""ONNX Runtime (CPU) inference engine."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class OrtEngine:
    name = "onnxruntime"

    def __init__(self, onnx_path, threads: int | None = None):
        import onnxruntime as ort  # lazy: keeps `import restore` fast and ORT optional

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One big conv graph: parallelism lives inside the ops, not between them.
        opts.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # errors only: the CLI stays quiet
        self.path = Path(onnx_path)
        # Built once; ORT re-plans per new input shape but keeps the optimised graph.
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]
