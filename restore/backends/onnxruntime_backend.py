"""ONNX Runtime (CPU) inference engine."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it), not all the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class OrtEngine:
    name = "onnxruntime"

    def __init__(self, onnx_path, threads: int | None = None):
        import onnxruntime as ort  # lazy: keeps `import restore` fast and ORT optional

        opts = ort.SessionOptions()
        # ENABLE_ALL includes the NCHWc layout transform (blocked convs): measurably faster than
        # EXTENDED on the LIPT graph (`restore bench`).
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One big conv graph: parallelism lives inside the ops, not between them.
        opts.intra_op_num_threads = int(threads or usable_cores())
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # No busy-waiting between ops: the ops of these graphs are long (milliseconds), so
        # spinning buys little on an idle machine (LIPT-Tiny x2, 320x184, 2 cores: within ~5 %,
        # either way run to run) and steals cores from whatever shares them, our own video
        # decode/encode threads included (loaded 2-core machine: ~20 % slower medians with it).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # errors only: the CLI stays quiet
        self.path = Path(onnx_path)
        # Built once; ORT re-plans per new input shape but keeps the optimised graph.
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]
