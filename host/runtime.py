"""A thin wrapper over the LiteRT interpreter (ai-edge-litert) running one model signature on the CPU."""
from __future__ import annotations

import os
import time

import numpy as np

from host.errors import HarnessError


class ModelLoadError(HarnessError):
    pass


class LiteRtModel:
    """One .tflite file, its single signature, run with XNNPACK on ``threads`` CPU threads."""

    def __init__(self, path: str, threads: int = 2):
        from ai_edge_litert.interpreter import Interpreter

        if not os.path.isfile(path):
            raise ModelLoadError(f"{path}: model file not found")
        t0 = time.perf_counter()
        try:
            self._interp = Interpreter(model_path=path, num_threads=threads)
            sigs = self._interp.get_signature_list()
            if len(sigs) != 1:
                raise ValueError(f"expected one signature, found {len(sigs)}")
            self.signature = next(iter(sigs))
            self._runner = self._interp.get_signature_runner(self.signature)
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{path}: not a loadable LiteRT model ({str(e).splitlines()[0]})") from None
        self.load_seconds = time.perf_counter() - t0
        self.path = path
        self.inputs = {k: (tuple(v["shape"]), np.dtype(v["dtype"]).name) for k, v in self._runner.get_input_details().items()}
        self.outputs = {k: (tuple(v["shape"]), np.dtype(v["dtype"]).name) for k, v in self._runner.get_output_details().items()}

    def run(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        missing = set(self.inputs) - set(inputs)
        if missing:
            raise HarnessError(f"{self.path}: missing input {sorted(missing)[0]!r}")
        feed = {k: np.ascontiguousarray(inputs[k], dtype=self.inputs[k][1]) for k in self.inputs}
        return {k: np.array(v) for k, v in self._runner(**feed).items()}


class CompiledLiteRtModel:
    """The same surface as :class:`LiteRtModel` over LiteRT's ``CompiledModel`` API on the CPU accelerator
    (XNNPACK), the API the Android app uses. ``weight_cache``: a file for XNNPACK's weight cache; the first
    load packs the weights into it, later loads map the packed weights from it instead of packing again
    (and keep them as file-backed pages that the kernel can drop, instead of anonymous memory)."""

    def __init__(self, path: str, threads: int = 2, weight_cache: str | None = None):
        from ai_edge_litert.compiled_model import CompiledModel, CpuOptions, HardwareAccelerator, Options

        if not os.path.isfile(path):
            raise ModelLoadError(f"{path}: model file not found")
        t0 = time.perf_counter()
        cpu = CpuOptions(num_threads=threads, xnnpack_weight_cache_path=weight_cache or "")
        try:
            self._model = CompiledModel.from_file(path, options=Options(HardwareAccelerator.CPU, cpu_options=cpu))
            sigs = self._model.get_signature_list()
            if len(sigs) != 1:
                raise ValueError(f"expected one signature, found {len(sigs)}")
            self.signature = next(iter(sigs))
            ins = self._model.get_input_tensor_details(self.signature)
            outs = self._model.get_output_tensor_details(self.signature)
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{path}: not a loadable LiteRT model ({str(e).splitlines()[0]})") from None
        self.load_seconds = time.perf_counter() - t0
        self.path = path
        self.weight_cache = weight_cache
        self.inputs = {k: (tuple(v["shape"]), np.dtype(v["dtype"]).name) for k, v in ins.items()}
        self.outputs = {k: (tuple(v["shape"]), np.dtype(v["dtype"]).name) for k, v in outs.items()}
        self._in_buffers = self._model.create_input_buffers(0)
        self._out_buffers = self._model.create_output_buffers(0)

    def run(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        missing = set(self.inputs) - set(inputs)
        if missing:
            raise HarnessError(f"{self.path}: missing input {sorted(missing)[0]!r}")
        for buf, (name, (shape, dtype)) in zip(self._in_buffers, self.inputs.items()):
            buf.write(np.ascontiguousarray(inputs[name], dtype=dtype).reshape(shape))
        self._model.run_by_index(0, self._in_buffers, self._out_buffers)
        return {name: np.asarray(buf.read(int(np.prod(shape)), np.dtype(dtype))).reshape(shape)
                for buf, (name, (shape, dtype)) in zip(self._out_buffers, self.outputs.items())}
