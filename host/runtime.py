"""A thin wrapper over the LiteRT interpreter (ai-edge-litert) running one model signature on the CPU."""
from __future__ import annotations

import os
import time

import numpy as np

from host.errors import HarnessError
from host.native import watch_file_pages


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


def check_flatbuffer(path: str) -> None:
    """Walk the .tflite's structure without reading its weights (milliseconds, even at 3.4 GB): the file
    identifier, every buffer's extent (inline or at an offset past the flatbuffer) within the file, every
    tensor's buffer and every operator's opcode index in range. CompiledModel crashes the process on a
    truncated file where the Interpreter raises, so files go through this first."""
    import mmap
    import struct

    from ai_edge_litert import schema_py_generated as schema

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 16:
                raise ValueError(f"{size} bytes")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                if bytes(mm[4:8]) != b"TFL3":
                    raise ValueError("no TFL3 file identifier")
                model = schema.Model.GetRootAs(mm, 0)
                n_buffers, n_codes = model.BuffersLength(), model.OperatorCodesLength()
                for i in range(n_buffers):
                    b = model.Buffers(i)
                    if b is None:
                        continue
                    if b.Offset() > 1:
                        end = b.Offset() + b.Size()
                    else:
                        o = b._tab.Offset(4)
                        end = b._tab.Vector(o) + b.DataLength() if o else 0
                    if end > size:
                        raise ValueError(f"buffer {i} ends at byte {end}, past the end of the file ({size})")
                for g in range(model.SubgraphsLength()):
                    sg = model.Subgraphs(g)
                    for t in range(sg.TensorsLength()):
                        if sg.Tensors(t).Buffer() >= max(n_buffers, 1):
                            raise ValueError(f"tensor {t} refers to buffer {sg.Tensors(t).Buffer()} of {n_buffers}")
                    for k in range(sg.OperatorsLength()):
                        if sg.Operators(k).OpcodeIndex() >= n_codes:
                            raise ValueError(f"operator {k} has opcode index {sg.Operators(k).OpcodeIndex()}")
            finally:
                mm.close()
    except (ValueError, IndexError, struct.error, TypeError, AttributeError) as e:
        raise ModelLoadError(f"{path}: not a loadable LiteRT model (corrupt or truncated flatbuffer: {e})") from None


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
        check_flatbuffer(path)
        cpu = CpuOptions(num_threads=threads, xnnpack_weight_cache_path=weight_cache or "")
        try:
            # XNNPACK reads the model file to pack its weights inside these calls, from one thread (the first
            # tensor query allocates the tensors: XNNPACK prepares its subgraph and clears memory there too); a
            # native thread keeps the file's pages already read from piling up beside the packed copies (the
            # full-size `cpu` UNet's load peaked at 9.89 GiB without it, 5.76 GiB with it), another faults in the
            # fresh memory from the second core
            with watch_file_pages(path) as self.load_watch:
                self._model = CompiledModel.from_file(path, options=Options(HardwareAccelerator.CPU, cpu_options=cpu))
                sigs = self._model.get_signature_list()
                if len(sigs) != 1:
                    raise ValueError(f"expected one signature, found {len(sigs)}")
                self.signature = next(iter(sigs))
                ins = self._model.get_input_tensor_details(self.signature)
                outs = self._model.get_output_tensor_details(self.signature)
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{path}: not a loadable LiteRT model ({str(e).splitlines()[0]})") from None
        # XNNPACK has packed the weights it runs (into the cache file or, for constant BATCH_MATMUL operands such as
        # the Winograd kernels, into anonymous memory) and does not read those pages of the model file again
        self.released_bytes = release_file_pages(path)
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


_MADV_DONTNEED = 4


def release_file_pages(path: str, maps: str = "/proc/self/maps") -> int:
    """Unmap from this process the resident pages of every read-only mapping of ``path`` (``madvise`` with
    MADV_DONTNEED); returns the bytes of address range advised. The data stays in the file and the page cache: a
    later read faults it in again, so this only stops the process from holding pages it no longer reads. Measured
    on the full-size ``cpu`` UNet: 3.86 GiB of the model file stay mapped after XNNPACK has packed the Winograd
    kernels from them; 0.04 GiB come back over two steps. Writable mappings are never touched (their pages may
    hold the only copy of a change). No-op (0) where /proc or madvise is unavailable."""
    import ctypes

    real = os.path.realpath(path)
    ranges = []
    try:
        with open(maps) as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].rstrip("\n") == real and "w" not in parts[1]:
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    ranges.append((lo, hi))
    except OSError:
        return 0
    if not ranges:
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    done = 0
    for lo, hi in ranges:
        if madvise(lo, hi - lo, _MADV_DONTNEED) == 0:
            done += hi - lo
    return done


def trim_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim(0)``); False where there is none.

    Call it after releasing a model. XNNPACK's packed weights under glibc's mmap threshold come from the heap,
    and after a model is freed its holes stay resident: the runner's prime pass (cold and warm load of each
    model, full-size ``cpu`` set) left 0.47 GiB in one process, 0.06 GiB after a trim."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


RUNTIME_ENV = "SDPHONE_HOST_RUNTIME"   # "interpreter" or "compiled" (CompiledModel with XNNPACK's weight cache)
CACHE_ENV = "SDPHONE_XNNPACK_CACHE"    # folder for XNNPACK weight cache files; "off" disables the cache
RUNTIMES = ("interpreter", "compiled")
DEFAULT_RUNTIME = "compiled"  # measured: host.bench runtime (README, "Speed")


def runtime_choice(env=os.environ) -> str:
    choice = env.get(RUNTIME_ENV) or DEFAULT_RUNTIME
    if choice not in RUNTIMES:
        raise HarnessError(f"{RUNTIME_ENV}={choice!r}: choose one of {', '.join(RUNTIMES)}")
    return choice


def cache_dir(env=os.environ) -> str | None:
    """Where XNNPACK weight caches live (default ``$XDG_CACHE_HOME/sdphone/xnnpack``); None when off."""
    d = env.get(CACHE_ENV)
    if d == "off":
        return None
    return d or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sdphone", "xnnpack")


def model_class(env=os.environ) -> type:
    """The class :func:`open_model` makes on this configuration."""
    return LiteRtModel if runtime_choice(env) == "interpreter" else CompiledLiteRtModel


def delegate_label(env=os.environ) -> str:
    """What the meta record calls the host's CPU path."""
    if runtime_choice(env) == "interpreter":
        return "xnnpack"
    return "xnnpack (CompiledModel" + (", weight cache)" if cache_dir(env) else ")")


#: room left beside a new weight cache (the packed weights take about the model file's size)
CACHE_SPARE_BYTES = 256 << 20


def check_cache_space(folder: str, path: str) -> None:
    """XNNPACK aborts the process when a cache write fails (full disk: SIGABRT from weight_cache.cc); refuse
    first, with the numbers."""
    import shutil

    need = os.path.getsize(path) + CACHE_SPARE_BYTES
    free = shutil.disk_usage(folder).free
    if free < need:
        raise HarnessError(f"{folder}: {free / 2**30:.1f} GiB free, the XNNPACK weight cache of {os.path.basename(path)} "
                           f"needs about {need / 2**30:.1f} GiB; free some space or set {CACHE_ENV}=off")


def open_model(path: str, threads: int = 2, sha256: str | None = None, env=os.environ):
    """The model on the configured host runtime: :class:`LiteRtModel` or :class:`CompiledLiteRtModel` (with a
    weight cache file named after the model's sha256 and the runtime version, made under a lock so that
    concurrent runners never write the same cache at once)."""
    if runtime_choice(env) == "interpreter":
        return LiteRtModel(path, threads=threads)
    folder = cache_dir(env)
    if folder is None:
        return CompiledLiteRtModel(path, threads=threads)
    import fcntl
    from importlib.metadata import version

    from host.hashing import file_sha256

    os.makedirs(folder, exist_ok=True)
    key = (sha256 or file_sha256(path))[:32]
    cache = os.path.join(folder, f"{key}-litert{version('ai-edge-litert')}.xnnpack_cache")
    if os.path.isfile(cache):
        return CompiledLiteRtModel(path, threads=threads, weight_cache=cache)
    with open(cache + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process packs and writes; the others then map its file
        try:
            if os.path.isfile(cache):  # made while we waited
                return CompiledLiteRtModel(path, threads=threads, weight_cache=cache)
            check_cache_space(folder, path)
            # XNNPACK packs the weights and writes the cache while the model is created; written under a
            # temporary name and renamed once complete, so a killed run never leaves a torn cache behind
            tmp = f"{cache}.{os.getpid()}.tmp"
            try:
                model = CompiledLiteRtModel(path, threads=threads, weight_cache=tmp)
                os.replace(tmp, cache)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return model
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
