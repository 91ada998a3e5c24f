"""Export a torch module to ONNX once, check it against eager, cache it, and open it with ONNX Runtime.

An export is only kept if ONNX Runtime reproduces the eager outputs within ``tolerance`` on a fixed input, so a
cached ``.onnx`` file is a checked one (it is written under a temp name and renamed into place after the check).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcmfh.io import atomic_write_bytes, atomic_write_json


@dataclass(frozen=True)
class OnnxSpec:
    key: str  # names the file: everything that changes the graph (weights digest, opset, head)
    input_shape: tuple[int, ...]  # of the check input; dim 0 (batch) is exported as dynamic
    opset: int = 17
    dynamic_dims: tuple[int, ...] = (0,)  # input dims exported as dynamic (dim 0 of the output too)
    int_high: int = 0  # > 0: the input is int64 token ids, checked on random ids in [0, int_high)
    tolerance: float = 1e-4
    check_seed: int = 0


class OnnxMismatch(RuntimeError):
    """ONNX Runtime does not reproduce the eager module within tolerance."""


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def _session(path: Path | bytes, threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or (os.cpu_count() or 1)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: ORT warns about unused initialisers on every load
    model = str(path) if isinstance(path, Path) else path
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _export_bytes(module: Any, example: Any, opset: int, dynamic_dims: tuple[int, ...] = (0,)) -> bytes:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but needs no onnxscript
        torch.onnx.export(
            module,
            (example,),
            buf,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {d: f"dim{d}" for d in dynamic_dims}, "output": {0: "dim0"}},
            opset_version=opset,
            dynamo=False,
        )
    return buf.getvalue()


def load_or_export(
    spec: OnnxSpec, build_module: Callable[[], Any], cache_dir: Path, threads: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """An ORT session for ``spec``: from ``cache_dir`` if exported before, else exported, checked and cached.

    Raises OnnxMismatch when the export does not reproduce eager within tolerance (nothing is cached then).
    """
    path = cache_dir / f"{spec.key}-opset{spec.opset}.onnx"
    info_path = path.with_suffix(".json")
    if path.is_file():
        info: dict[str, Any] = {"path": str(path), "exported": False}
        return _session(path, threads), info

    import torch

    module = build_module().eval()
    rng = np.random.default_rng(spec.check_seed)
    if spec.int_high:
        x = torch.from_numpy(rng.integers(0, spec.int_high, spec.input_shape, dtype=np.int64))
    else:
        x = torch.from_numpy(rng.standard_normal(spec.input_shape).astype(np.float32))
    t0 = time.perf_counter()
    with torch.inference_mode():
        want = module(x).numpy()
    data = _export_bytes(module, x, spec.opset, spec.dynamic_dims)
    session = _session(data, threads)
    got = session.run(None, {"input": x.numpy()})[0]
    diff = float(np.max(np.abs(got - want)))
    if not diff <= spec.tolerance:  # also catches NaN
        raise OnnxMismatch(f"ONNX export differs from eager by {diff:.3g} > {spec.tolerance:g}")
    atomic_write_bytes(path, data)
    info = {
        "path": str(path),
        "exported": True,
        "max_abs_diff": diff,
        "tolerance": spec.tolerance,
        "opset": spec.opset,
        "torch": torch.__version__,
        "export_seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_json(info_path, info)
    return session, info
