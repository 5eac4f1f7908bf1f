"""Build one TensorRT engine plan from an ONNX graph (run as a subprocess by the TensorRT backend).

    python -m restore.backends.trt_build --onnx G.onnx --plan P.plan --spec SPEC.json \
        [--timing-cache T.cache]

Needs the full `tensorrt` package (the builder); the lean/dispatch runtimes can only load plans.
Progress goes to stdout as JSON lines fed by TensorRT's IProgressMonitor:

    {"event": "phase_start", "phase": "...", "parent": null, "steps": 7}
    {"event": "step", "phase": "...", "step": 3}
    {"event": "phase_finish", "phase": "..."}
    {"event": "done", "plan": "...", "seconds": 41.2}     or    {"event": "error", "message": "..."}

TensorRT's own log (warnings and up, or everything with --verbose) and any traceback go to
stderr, which the caller sends to a log file that it keeps when the build fails. The plan and
the timing cache are written with checksummed sidecars (see trt_cache).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def strongly_typed(trt) -> bool:
    """TensorRT 11 only builds strongly typed networks; 10.x offers them as an option."""
    major = int(str(trt.__version__).split(".")[0])
    return major >= 11 or hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def _network_flags(trt) -> int:
    kinds = trt.NetworkDefinitionCreationFlag
    major = int(str(trt.__version__).split(".")[0])
    if major >= 11:
        return 0  # strongly typed by default; the old flags are gone
    if hasattr(kinds, "STRONGLY_TYPED"):  # 10.x: precision comes from the graph's tensor types
        return 1 << int(kinds.STRONGLY_TYPED)
    return 1 << int(kinds.EXPLICIT_BATCH)  # older releases: weak typing, explicit batch


def build(onnx_path: Path, plan: Path, spec_dict: dict, timing_cache: Path | None, verbose: bool = False) -> None:
    import tensorrt as trt

    from restore.backends.trt_cache import Profile, discard, load_timing_cache, write_checked

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if verbose or int(severity) <= int(trt.ILogger.Severity.WARNING):
                print(f"[TensorRT {str(severity).rsplit('.', 1)[-1]}] {msg}", file=sys.stderr, flush=True)

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            emit("phase_start", phase=phase_name, parent=parent_phase, steps=int(num_steps))

        def step_complete(self, phase_name, step):
            emit("step", phase=phase_name, step=int(step))
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            emit("phase_finish", phase=phase_name)

    start = time.time()
    found = trt.__version__
    if spec_dict.get("trt_version") and spec_dict["trt_version"] != found:
        raise RuntimeError(f"cache key says TensorRT {spec_dict['trt_version']}, this process has {found}")
    precision = spec_dict["precision"]
    profile = Profile.from_dict(spec_dict["profile"])
    logger = Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    with tempfile.TemporaryDirectory(prefix="restore-trt-") as tmp:
        source = onnx_path
        if precision == "fp16" and strongly_typed(trt):  # the graph itself must be fp16
            from restore.backends.onnx_fp16 import convert_file

            source = Path(tmp) / "model.fp16.onnx"
            convert_file(onnx_path, source)
        if not parser.parse_from_file(str(source)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    if spec_dict.get("workspace_mb"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec_dict["workspace_mb"]) << 20)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(spec_dict.get("opt_level", 3))
    for flag in spec_dict.get("flags", []):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if precision == "fp16" and not strongly_typed(trt):
        config.set_flag(trt.BuilderFlag.FP16)  # older TensorRT: weak typing is all there is
    inp = network.get_input(0)
    tp = builder.create_optimization_profile()
    tp.set_shape(inp.name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(tp)
    if hasattr(config, "progress_monitor"):
        config.progress_monitor = Monitor()
    cache = None
    if timing_cache is not None:
        seed = load_timing_cache(timing_cache)  # b"" when missing or damaged (checksum)
        try:
            cache = config.create_timing_cache(seed)
            if cache is None:
                raise RuntimeError("TensorRT refused the timing cache")
        except Exception as e:  # noqa: BLE001 - intact file TensorRT still rejects: start afresh
            print(f"timing cache {timing_cache.name} rejected ({e}); starting an empty one", file=sys.stderr)
            discard(timing_cache)
            cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT returned no engine (see the log above)")
    data = bytes(memoryview(serialized))
    seconds = round(time.time() - start, 1)
    write_checked(plan, data, {"key": spec_dict, "onnx": str(onnx_path), "build_seconds": seconds,
                               "trt_version": found})
    if cache is not None:
        write_checked(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())),
                      {"trt_version": found})
    emit("done", plan=str(plan), seconds=seconds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m restore.backends.trt_build", description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", required=True, type=Path)
    ap.add_argument("--plan", required=True, type=Path)
    ap.add_argument("--spec", required=True, type=Path, help="BuildSpec JSON (see trt_cache.BuildSpec.to_dict)")
    ap.add_argument("--timing-cache", type=Path)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    try:
        spec = json.loads(args.spec.read_text())
        build(args.onnx, args.plan, spec, args.timing_cache, args.verbose)
        return 0
    except Exception as e:  # noqa: BLE001 - reported as one event; the traceback goes to the log
        import traceback

        traceback.print_exc(file=sys.stderr)
        emit("error", message=f"{type(e).__name__}: {e}".splitlines()[0][:300])
        return 1


if __name__ == "__main__":
    sys.exit(main())
