"""Per-op latency of one LiteRT model signature on this CPU, read from LiteRT's own profiler.

The Python ``ai_edge_litert`` API has no profiler, but the ``libLiteRt.so`` shipped in the same
wheel exports the LiteRT C API, profiler included. This module drives it with ctypes: environment
-> model -> options (CPU accelerator, thread count, profiling on) -> compiled model -> host-memory
tensor buffers -> ``LiteRtRunCompiledModel`` with ``LiteRtStartProfiler``/``LiteRtStopProfiler``
around each run -> ``LiteRtGetProfilerEvents``. Layouts and signatures follow the headers of
google-ai-edge/LiteRT at the commit that bumped the SDK to 2.3.0 (``litert/c/litert_profiler.h``,
``litert_profiler_event.h``, ``litert_compiled_model.h``, ``litert_options.h``,
``litert_opaque_options.h``, ``options/litert_runtime_options.h``, ``litert_tensor_buffer.h``,
``litert_model.h``, ``litert_layout.h``, ``litert_model_types.h``, ``litert_common.h``); every
function used is checked against the library's exports at load time.

How the switches reach the runtime (verified against ai-edge-litert 2.3.0 on x86-64):

* Profiling: the runtime options are an *opaque* option with identifier
  ``"runtime_options_string"`` whose payload is a TOML string; ``enable_profiling = true`` makes
  ``LiteRtCreateCompiledModel`` create a profiler and attach it to its TFLite interpreter
  (``LiteRtCompiledModelGetProfiler`` returns it; the compiled model owns it).
* CPU options: opaque option, TOML payload (``num_threads``, ``kernel_mode``). The XNNPACK
  accelerator reads it under identifier ``"xnnpack"`` while the compiled model reads it (for the
  interpreter's own thread count and the kernel resolver) under ``"cpu_delegate"``; we attach the
  same payload under both. ``kernel_mode = "builtin"`` only takes effect via ``"xnnpack"``.
* Host buffers handed to ``LiteRtCreateTensorBufferFromHostMemory`` must be 64-byte aligned, else
  it returns status 3 (kLiteRtStatusErrorRuntimeFailure); we allocate aligned numpy arrays.

What the events are (``OpEvent.event_type`` is the LiteRT ``LiteRtProfilerEventType`` name):

* ``kernel_mode="xnnpack"`` (default; the production CPU path, same as ``host.runtime``): the
  XNNPACK delegate sets ``kTfLiteDelegateFlagsPerOperatorProfiling``, so the interpreter does
  *not* emit one event per delegate partition; instead, after each partition runs, XNNPACK reports
  one ``DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT`` per *XNNPACK operator* (tag e.g.
  ``"Convolution (NHWC, F32) IGEMM"``, ``"Static Reshape (NC)"``), with the operator's index inside
  that partition's XNNPACK runtime as ``node_index`` and the partition's ordinal as ``partition``.
  These are XNNPACK's operators, not TFLite nodes: XNNPACK may fuse, split or add operators
  (e.g. a TFLite CONV_2D can be a Transpose + Convolution), and the events carry no TFLite node
  index. Their times are XNNPACK's own, whole microseconds (tiny ops read 0) and they have no
  start timestamp (``start_us`` is None). Nodes XNNPACK did not take run as TFLite kernels and
  appear as ``OPERATOR_INVOKE_EVENT`` with the TFLite op name (``"RESIZE_NEAREST_NEIGHBOR"``),
  the TFLite node index and a start time. The events are in execution order.
  ``disable_delegate_clustering = true`` (runtime option) was tried: it changes node ordering for
  partitioning, not granularity (same events). The interpreter's "force delegate node profiling"
  switch is not reachable through the runtime options, so per-partition totals are not reported;
  ``OpProfile.invoke_us`` minus the op sum is the unattributed remainder.
* ``kernel_mode="builtin"``: no XNNPACK; every TFLite node runs a builtin kernel and appears as
  one ``OPERATOR_INVOKE_EVENT`` with its TFLite op name and node index: exact per-node
  granularity, but the timings are of the (slower) builtin kernels, not of the XNNPACK path.
* Always also present, as ``DEFAULT`` events: ``"Invoke"`` (the whole interpreter invoke),
  ``"LiteRT::Run[buffer registration]"`` and ``"LiteRT::Run[Buffer sync]"``. Telemetry events are
  dropped.

Failures of the C API (library or a function missing, a call returning an error status, no events)
raise ``OpProfilerUnavailable`` with a one-line reason so callers can fall back to block timing.
"""
from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from host.errors import HarnessError


class OpProfilerUnavailable(HarnessError):
    """The LiteRT C-API profiler cannot be used here (``str()`` says why, on one line)."""


# ---------------------------------------------------------------------------------------------
# C declarations (x86-64 / arm64 LP64 layouts; sizes asserted below against the headers' static_asserts)

_P = ctypes.c_void_p
_STATUS_NAMES = {
    0: "Ok", 1: "ErrorInvalidArgument", 2: "ErrorMemoryAllocationFailure", 3: "ErrorRuntimeFailure",
    4: "ErrorMissingInputTensor", 5: "ErrorUnsupported", 6: "ErrorNotFound", 7: "ErrorTimeoutExpired",
    8: "ErrorWrongVersion", 9: "ErrorUnknown", 10: "ErrorAlreadyExists", 100: "Cancelled",
    500: "ErrorFileIO", 501: "ErrorInvalidFlatbuffer", 502: "ErrorDynamicLoading",
    503: "ErrorSerialization", 504: "ErrorCompilation",
}
_MAX_RANK = 8
_HW_CPU = 1  # kLiteRtHwAcceleratorCpu
_LOCK_READ = 0  # kLiteRtTensorBufferLockModeRead
_ENV_TAG_MIN_LOGGER_SEVERITY = 25  # kLiteRtEnvOptionTagMinLoggerSeverity
_ANY_TYPE_INT = 2  # kLiteRtAnyTypeInt
_LOG_ERROR = 3  # kLiteRtLogSeverityError
_HOST_ALIGN = 64  # LITERT_HOST_MEMORY_BUFFER_ALIGNMENT

# LiteRtElementType -> numpy dtype
_ELEMENT_TYPES = {
    1: np.float32, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16, 9: np.int8,
    10: np.float16, 11: np.float64, 13: np.uint64, 16: np.uint32, 17: np.uint16,
}
# LiteRtProfilerEventType
_EVENT_TYPES = {
    1: "DEFAULT", 2: "OPERATOR_INVOKE_EVENT", 4: "DELEGATE_OPERATOR_INVOKE_EVENT",
    8: "DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT", 16: "GENERAL_RUNTIME_INSTRUMENTATION_EVENT",
}
_OP_EVENT_TYPES = frozenset({"OPERATOR_INVOKE_EVENT", "DELEGATE_OPERATOR_INVOKE_EVENT",
                             "DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT"})
_DELEGATE_EVENT_TYPES = frozenset({"DELEGATE_OPERATOR_INVOKE_EVENT", "DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT"})
KERNEL_MODES = ("xnnpack", "builtin")


class _Layout(ctypes.Structure):  # LiteRtLayout: rank:7 + has_strides:1 bitfield, dims, strides
    _fields_ = [("rank", ctypes.c_uint32, 7), ("has_strides", ctypes.c_uint32, 1),
                ("dimensions", ctypes.c_int32 * _MAX_RANK), ("strides", ctypes.c_uint32 * _MAX_RANK)]


class _RankedTensorType(ctypes.Structure):  # LiteRtRankedTensorType
    _fields_ = [("element_type", ctypes.c_int), ("layout", _Layout)]


class _MemoryUsage(ctypes.Structure):  # LiteRtMemoryUsage
    _fields_ = [("total_allocated_bytes", ctypes.c_size_t), ("in_use_allocated_bytes", ctypes.c_size_t),
                ("private_footprint_bytes", ctypes.c_size_t)]


class _ProfiledEventData(ctypes.Structure):  # ProfiledEventData
    _fields_ = [("tag", ctypes.c_char_p), ("event_type", ctypes.c_int),
                ("start_timestamp_us", ctypes.c_uint64), ("elapsed_time_us", ctypes.c_uint64),
                ("begin_mem_usage", _MemoryUsage), ("end_mem_usage", _MemoryUsage),
                ("event_metadata1", ctypes.c_uint64), ("event_metadata2", ctypes.c_uint64),
                ("event_source", ctypes.c_int)]


class _AnyValue(ctypes.Union):
    _fields_ = [("bool_value", ctypes.c_bool), ("int_value", ctypes.c_int64), ("real_value", ctypes.c_double),
                ("str_value", ctypes.c_char_p), ("ptr_value", ctypes.c_void_p)]


class _Any(ctypes.Structure):  # LiteRtAny
    _fields_ = [("type", ctypes.c_int), ("value", _AnyValue)]


class _EnvOption(ctypes.Structure):  # LiteRtEnvOption
    _fields_ = [("tag", ctypes.c_int), ("value", _Any)]


if ctypes.sizeof(ctypes.c_void_p) == 8:
    assert ctypes.sizeof(_Layout) == 68 and _Layout.dimensions.offset == 4
    assert ctypes.sizeof(_RankedTensorType) == 72 and _RankedTensorType.layout.offset == 4
    assert ctypes.sizeof(_Any) == 16 and ctypes.sizeof(_EnvOption) == 24 and _EnvOption.value.offset == 8

_szp = ctypes.POINTER(ctypes.c_size_t)
_pp = ctypes.POINTER(_P)
_cpp = ctypes.POINTER(ctypes.c_char_p)
# name -> (restype, argtypes); restype int is LiteRtStatus
_FUNCTIONS = {
    "LiteRtCreateEnvironment": (ctypes.c_int, [ctypes.c_int, ctypes.POINTER(_EnvOption), _pp]),
    "LiteRtDestroyEnvironment": (None, [_P]),
    "LiteRtCreateModelFromFile": (ctypes.c_int, [_P, ctypes.c_char_p, _pp]),
    "LiteRtDestroyModel": (None, [_P]),
    "LiteRtGetNumModelSignatures": (ctypes.c_int, [_P, _szp]),
    "LiteRtGetModelSignature": (ctypes.c_int, [_P, ctypes.c_size_t, _pp]),
    "LiteRtGetSignatureKey": (ctypes.c_int, [_P, _cpp]),
    "LiteRtGetNumSignatureInputs": (ctypes.c_int, [_P, _szp]),
    "LiteRtGetNumSignatureOutputs": (ctypes.c_int, [_P, _szp]),
    "LiteRtGetSignatureInputName": (ctypes.c_int, [_P, ctypes.c_size_t, _cpp]),
    "LiteRtGetSignatureOutputName": (ctypes.c_int, [_P, ctypes.c_size_t, _cpp]),
    "LiteRtGetSignatureInputTensorByIndex": (ctypes.c_int, [_P, ctypes.c_size_t, _pp]),
    "LiteRtGetSignatureOutputTensorByIndex": (ctypes.c_int, [_P, ctypes.c_size_t, _pp]),
    "LiteRtGetTensorTypeId": (ctypes.c_int, [_P, ctypes.POINTER(ctypes.c_int)]),
    "LiteRtGetRankedTensorType": (ctypes.c_int, [_P, ctypes.POINTER(_RankedTensorType)]),
    "LiteRtCreateOptions": (ctypes.c_int, [_pp]),
    "LiteRtDestroyOptions": (None, [_P]),
    "LiteRtSetOptionsHardwareAccelerators": (ctypes.c_int, [_P, ctypes.c_int]),
    "LiteRtCreateOpaqueOptions": (ctypes.c_int, [ctypes.c_char_p, _P, _P, _pp]),
    "LiteRtDestroyOpaqueOptions": (None, [_P]),
    "LiteRtAddOpaqueOptions": (ctypes.c_int, [_P, _P]),
    "LiteRtCreateCompiledModel": (ctypes.c_int, [_P, _P, _P, _pp]),
    "LiteRtDestroyCompiledModel": (None, [_P]),
    "LiteRtRunCompiledModel": (ctypes.c_int, [_P, ctypes.c_size_t, ctypes.c_size_t, _pp, ctypes.c_size_t, _pp]),
    "LiteRtCompiledModelGetProfiler": (ctypes.c_int, [_P, _pp]),
    "LiteRtCreateTensorBufferFromHostMemory": (
        ctypes.c_int, [ctypes.POINTER(_RankedTensorType), _P, ctypes.c_size_t, _P, _pp]),
    "LiteRtDestroyTensorBuffer": (None, [_P]),
    "LiteRtLockTensorBuffer": (ctypes.c_int, [_P, _pp, ctypes.c_int]),
    "LiteRtUnlockTensorBuffer": (ctypes.c_int, [_P]),
    "LiteRtStartProfiler": (ctypes.c_int, [_P]),
    "LiteRtStopProfiler": (ctypes.c_int, [_P]),
    "LiteRtGetNumProfilerEvents": (ctypes.c_int, [_P, ctypes.POINTER(ctypes.c_int)]),
    "LiteRtGetProfilerEvents": (ctypes.c_int, [_P, ctypes.c_int, ctypes.POINTER(_ProfiledEventData)]),
}


class _Lib:
    def __init__(self, path: str):
        try:
            self.dll = ctypes.CDLL(path)
        except OSError as e:
            raise OpProfilerUnavailable(f"cannot load {path}: {str(e).splitlines()[0]}") from None
        for name, (restype, argtypes) in _FUNCTIONS.items():
            try:
                fn = getattr(self.dll, name)
            except AttributeError:
                raise OpProfilerUnavailable(f"{os.path.basename(path)} does not export {name}") from None
            fn.restype, fn.argtypes = restype, argtypes
            setattr(self, name, fn)
        libc = ctypes.CDLL(None)
        self.malloc = libc.malloc
        self.malloc.restype, self.malloc.argtypes = _P, [ctypes.c_size_t]
        self.free_ptr = ctypes.cast(libc.free, _P)  # payload destructor for opaque options

    def check(self, name: str, *args) -> None:
        status = getattr(self, name)(*args)
        if status != 0:
            raise OpProfilerUnavailable(
                f"{name} failed with status {status} (kLiteRtStatus{_STATUS_NAMES.get(status, '?')})")


_LIB: _Lib | None = None


def default_library_path() -> str:
    try:
        import ai_edge_litert
    except ImportError:
        raise OpProfilerUnavailable("ai_edge_litert is not installed") from None
    return os.path.join(os.path.dirname(os.path.abspath(ai_edge_litert.__file__)), "libLiteRt.so")


def _load(library_path: str | None) -> _Lib:
    global _LIB
    if library_path is not None:
        if not os.path.isfile(library_path):
            raise OpProfilerUnavailable(f"{library_path}: LiteRT C library not found")
        return _Lib(library_path)
    if _LIB is None:
        path = default_library_path()
        if not os.path.isfile(path):
            raise OpProfilerUnavailable(f"{path}: LiteRT C library not found in the ai_edge_litert wheel")
        _LIB = _Lib(path)
    return _LIB


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class OpEvent:
    """One profiler event of one profiled run.

    ``tag``: the op name as LiteRT reports it: a TFLite op (``"CONV_2D"``) for
    ``OPERATOR_INVOKE_EVENT``, an XNNPACK operator (``"Convolution (NHWC, F32) IGEMM"``) for
    delegate events, a runtime phase (``"Invoke"``) for ``DEFAULT``. ``op_type``: the tag without
    XNNPACK's parenthesised layout/kernel detail (``"Convolution"``). ``node_index``: TFLite node
    index for ``OPERATOR_INVOKE_EVENT``; XNNPACK operator index inside its partition for delegate
    events; None otherwise. ``partition``: ordinal (0-based, in execution order) of the XNNPACK
    partition a delegate event belongs to. ``start_us``: start relative to the run's first
    timestamped event, None where LiteRT records none (XNNPACK events). ``elapsed_us``: duration,
    whole microseconds. ``subgraph``: TFLite subgraph index of an ``OPERATOR_INVOKE_EVENT``. ``run``: 0-based
    index of the profiled run.
    """

    run: int
    tag: str
    op_type: str
    event_type: str
    elapsed_us: int
    start_us: int | None = None
    node_index: int | None = None
    partition: int | None = None
    subgraph: int | None = None

    @property
    def is_op(self) -> bool:
        return self.event_type in _OP_EVENT_TYPES

    @property
    def is_delegated(self) -> bool:
        return self.event_type in _DELEGATE_EVENT_TYPES


@dataclass(frozen=True)
class OpProfile:
    """Events of ``runs`` profiled runs plus the outputs of the last one.

    Iterating it (or ``len``) goes over ``events``, so it reads like the ``list[OpEvent]`` it wraps.
    """

    model_path: str
    signature: str
    kernel_mode: str
    threads: int
    events: tuple[OpEvent, ...]
    outputs: dict[str, np.ndarray] = field(repr=False)
    run_wall_us: tuple[float, ...]

    def __iter__(self):
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    @property
    def runs(self) -> int:
        return len(self.run_wall_us)

    def op_events(self, run: int | None = None) -> list[OpEvent]:
        return [e for e in self.events if e.is_op and (run is None or e.run == run)]

    def op_time_us(self, run: int) -> int:
        return sum(e.elapsed_us for e in self.op_events(run))

    def invoke_us(self, run: int) -> int | None:
        """The interpreter's own ``Invoke`` event for ``run`` (None if LiteRT did not emit one)."""
        for e in self.events:
            if e.run == run and e.event_type == "DEFAULT" and e.tag == "Invoke":
                return e.elapsed_us
        return None

    def by_op_type(self, run: int | None = None) -> dict[str, int]:
        """Summed microseconds per ``op_type`` (over ``run`` or all runs), largest first."""
        acc: dict[str, int] = {}
        for e in self.op_events(run):
            acc[e.op_type] = acc.get(e.op_type, 0) + e.elapsed_us
        return dict(sorted(acc.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------------------------------------
# Profiling


@dataclass
class _TensorSpec:
    name: str
    ctype: _RankedTensorType
    dtype: np.dtype
    shape: tuple[int, ...]


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + _HOST_ALIGN, np.uint8)
    off = (-raw.ctypes.data) % _HOST_ALIGN
    return raw[off:off + nbytes].view(dtype).reshape(shape)


def _op_type(tag: str) -> str:
    return tag.split(" (", 1)[0].strip() or tag


def _decode(raw, run: int) -> list[OpEvent]:
    events: list[OpEvent] = []
    partition = -1
    for ev in raw:
        etype = _EVENT_TYPES.get(ev.event_type)
        if etype is None:  # telemetry events carry settings, not timings
            continue
        tag = (ev.tag or b"").decode("utf-8", "replace")
        start = int(ev.start_timestamp_us) or None
        node = sub = part = None
        if etype == "OPERATOR_INVOKE_EVENT":
            node, sub = int(ev.event_metadata1), int(ev.event_metadata2)
        elif etype in _DELEGATE_EVENT_TYPES:
            node = int(ev.event_metadata1)
            if node == 0 or partition < 0:
                partition += 1
            part = partition
        events.append(OpEvent(run=run, tag=tag, op_type=_op_type(tag), event_type=etype,
                              elapsed_us=int(ev.elapsed_time_us), start_us=start, node_index=node,
                              partition=part, subgraph=sub))
    starts = [e.start_us for e in events if e.start_us is not None]
    t0 = min(starts) if starts else None
    if t0 is not None:
        events = [e if e.start_us is None else replace(e, start_us=e.start_us - t0) for e in events]
    return events


def profile_ops(model_path: str, inputs: dict[str, np.ndarray], threads: int = 2, runs: int = 1, *,
                warmup: int = 1, kernel_mode: str = "xnnpack", signature: str | None = None,
                library_path: str | None = None, quiet: bool = True) -> OpProfile:
    """Run ``signature`` of ``model_path`` on the LiteRT CPU accelerator with the profiler on.

    ``warmup`` unprofiled runs come first (the first invoke pays one-off costs), then ``runs``
    profiled ones; the events of each are tagged with its 0-based ``run``. ``kernel_mode``:
    ``"xnnpack"`` (production path, XNNPACK-operator granularity) or ``"builtin"`` (TFLite-node
    granularity on builtin kernels); see the module docstring. ``quiet`` raises this library
    instance's log threshold to errors. Raises ``OpProfilerUnavailable`` when the C API cannot
    deliver events, ``HarnessError`` for bad inputs.
    """
    if kernel_mode not in KERNEL_MODES:
        raise HarnessError(f"kernel_mode must be one of {KERNEL_MODES}, not {kernel_mode!r}")
    if threads < 1 or runs < 1 or warmup < 0:
        raise HarnessError("threads and runs must be >= 1 and warmup >= 0")
    if not os.path.isfile(model_path):
        from host.runtime import ModelLoadError
        raise ModelLoadError(f"{model_path}: model file not found")
    lib = _load(library_path)
    P = _P

    env, model, opts, cm = P(), P(), P(), P()
    buffers: list[P] = []
    keep: list[np.ndarray] = []
    try:
        if quiet:
            opt = _EnvOption(tag=_ENV_TAG_MIN_LOGGER_SEVERITY)
            opt.value.type = _ANY_TYPE_INT
            opt.value.value.int_value = _LOG_ERROR
            lib.check("LiteRtCreateEnvironment", 1, ctypes.byref(opt), ctypes.byref(env))
        else:
            lib.check("LiteRtCreateEnvironment", 0, None, ctypes.byref(env))
        status = lib.LiteRtCreateModelFromFile(env, os.fsencode(model_path), ctypes.byref(model))
        if status != 0:
            from host.runtime import ModelLoadError
            raise ModelLoadError(f"{model_path}: not a loadable LiteRT model "
                                 f"(LiteRtCreateModelFromFile status {status})")

        sig, sig_index, sig_key = _pick_signature(lib, model, signature, model_path)
        in_specs = _tensor_specs(lib, sig, "Input")
        out_specs = _tensor_specs(lib, sig, "Output")
        for spec in in_specs + out_specs:
            if any(d < 0 for d in spec.shape):
                raise OpProfilerUnavailable(f"{model_path}: tensor {spec.name!r} has a dynamic shape {spec.shape}")
        feed = _check_inputs(inputs, in_specs, model_path)

        lib.check("LiteRtCreateOptions", ctypes.byref(opts))
        lib.check("LiteRtSetOptionsHardwareAccelerators", opts, _HW_CPU)
        cpu_toml = f"num_threads = {int(threads)}\n"
        if kernel_mode != "xnnpack":
            cpu_toml += f'kernel_mode = "{kernel_mode}"\n'
        for ident in ("xnnpack", "cpu_delegate"):
            _add_opaque(lib, opts, ident, cpu_toml)
        _add_opaque(lib, opts, "runtime_options_string", "enable_profiling = true\n")
        lib.check("LiteRtCreateCompiledModel", env, model, opts, ctypes.byref(cm))
        profiler = P()
        lib.check("LiteRtCompiledModelGetProfiler", cm, ctypes.byref(profiler))
        if not profiler.value:
            raise OpProfilerUnavailable("LiteRtCompiledModelGetProfiler returned no profiler "
                                        "(runtime option enable_profiling not honoured)")

        in_arr = (P * len(in_specs))()
        out_arr = (P * len(out_specs))()
        for specs, arr, src in ((in_specs, in_arr, feed), (out_specs, out_arr, None)):
            for i, spec in enumerate(specs):
                host = _aligned_empty(spec.shape, spec.dtype)
                host[...] = src[spec.name] if src is not None else 0
                keep.append(host)
                buf = P()
                lib.check("LiteRtCreateTensorBufferFromHostMemory", ctypes.byref(spec.ctype),
                          P(host.ctypes.data), host.nbytes, None, ctypes.byref(buf))
                buffers.append(buf)
                arr[i] = buf

        def run_once() -> float:
            t = time.perf_counter()
            lib.check("LiteRtRunCompiledModel", cm, sig_index, len(in_specs), in_arr, len(out_specs), out_arr)
            return (time.perf_counter() - t) * 1e6

        for _ in range(warmup):
            run_once()
        events: list[OpEvent] = []
        walls: list[float] = []
        for r in range(runs):
            lib.check("LiteRtStartProfiler", profiler)
            try:
                walls.append(run_once())
            finally:
                lib.check("LiteRtStopProfiler", profiler)
            n = ctypes.c_int()
            lib.check("LiteRtGetNumProfilerEvents", profiler, ctypes.byref(n))
            if n.value <= 0:
                raise OpProfilerUnavailable(f"the LiteRT profiler recorded no events for run {r}")
            raw = (_ProfiledEventData * n.value)()
            lib.check("LiteRtGetProfilerEvents", profiler, n.value, raw)
            decoded = _decode(raw, r)
            if not any(e.is_op for e in decoded):
                raise OpProfilerUnavailable(f"the LiteRT profiler recorded {n.value} events for run {r} "
                                            "but none for an op")
            events.extend(decoded)

        outputs = {}
        for spec, buf in zip(out_specs, buffers[len(in_specs):]):
            addr = P()
            lib.check("LiteRtLockTensorBuffer", buf, ctypes.byref(addr), _LOCK_READ)
            try:
                out = np.empty(spec.shape, spec.dtype)
                ctypes.memmove(out.ctypes.data, addr.value, out.nbytes)
            finally:
                lib.LiteRtUnlockTensorBuffer(buf)
            outputs[spec.name] = out
        return OpProfile(model_path=model_path, signature=sig_key, kernel_mode=kernel_mode, threads=threads,
                         events=tuple(events), outputs=outputs, run_wall_us=tuple(walls))
    finally:
        for buf in buffers:
            lib.LiteRtDestroyTensorBuffer(buf)
        if cm.value:
            lib.LiteRtDestroyCompiledModel(cm)
        if opts.value:
            lib.LiteRtDestroyOptions(opts)
        if model.value:
            lib.LiteRtDestroyModel(model)
        if env.value:
            lib.LiteRtDestroyEnvironment(env)
        del keep


def _add_opaque(lib: _Lib, opts: _P, identifier: str, toml: str) -> None:
    data = toml.encode() + b"\0"
    mem = lib.malloc(len(data))
    if not mem:
        raise OpProfilerUnavailable("malloc failed for an options payload")
    ctypes.memmove(mem, data, len(data))
    opaque = _P()
    status = lib.LiteRtCreateOpaqueOptions(identifier.encode(), _P(mem), lib.free_ptr, ctypes.byref(opaque))
    if status != 0:
        ctypes.CDLL(None).free(_P(mem))
        raise OpProfilerUnavailable(f"LiteRtCreateOpaqueOptions({identifier}) failed with status {status}")
    status = lib.LiteRtAddOpaqueOptions(opts, opaque)  # takes ownership on success
    if status != 0:
        lib.LiteRtDestroyOpaqueOptions(opaque)
        raise OpProfilerUnavailable(f"LiteRtAddOpaqueOptions({identifier}) failed with status {status}")


def _pick_signature(lib: _Lib, model: _P, wanted: str | None, path: str) -> tuple[_P, int, str]:
    n = ctypes.c_size_t()
    lib.check("LiteRtGetNumModelSignatures", model, ctypes.byref(n))
    keys = []
    for i in range(n.value):
        sig, key = _P(), ctypes.c_char_p()
        lib.check("LiteRtGetModelSignature", model, i, ctypes.byref(sig))
        lib.check("LiteRtGetSignatureKey", sig, ctypes.byref(key))
        keys.append((sig, i, (key.value or b"").decode()))
    if not keys:
        raise OpProfilerUnavailable(f"{path}: the model has no signature")
    if wanted is None:
        if len(keys) != 1:
            raise HarnessError(f"{path}: {len(keys)} signatures ({', '.join(k for *_, k in keys)}); name one")
        return keys[0]
    for entry in keys:
        if entry[2] == wanted:
            return entry
    raise HarnessError(f"{path}: no signature {wanted!r} (has {', '.join(k for *_, k in keys)})")


def _tensor_specs(lib: _Lib, sig: _P, kind: str) -> list[_TensorSpec]:
    n = ctypes.c_size_t()
    lib.check(f"LiteRtGetNumSignature{kind}s", sig, ctypes.byref(n))
    specs = []
    for i in range(n.value):
        name, tensor, type_id = ctypes.c_char_p(), _P(), ctypes.c_int()
        lib.check(f"LiteRtGetSignature{kind}Name", sig, i, ctypes.byref(name))
        lib.check(f"LiteRtGetSignature{kind}TensorByIndex", sig, i, ctypes.byref(tensor))
        lib.check("LiteRtGetTensorTypeId", tensor, ctypes.byref(type_id))
        label = (name.value or b"").decode()
        if type_id.value != 0:  # kLiteRtRankedTensorType
            raise OpProfilerUnavailable(f"{kind.lower()} {label!r} is unranked")
        rtt = _RankedTensorType()
        lib.check("LiteRtGetRankedTensorType", tensor, ctypes.byref(rtt))
        dtype = _ELEMENT_TYPES.get(rtt.element_type)
        if dtype is None:
            raise OpProfilerUnavailable(f"{kind.lower()} {label!r} has unsupported element type {rtt.element_type}")
        shape = tuple(int(d) for d in rtt.layout.dimensions[:rtt.layout.rank])
        specs.append(_TensorSpec(label, rtt, np.dtype(dtype), shape))
    return specs


def _check_inputs(inputs: dict[str, np.ndarray], specs: list[_TensorSpec], path: str) -> dict[str, np.ndarray]:
    names = {s.name for s in specs}
    missing = sorted(names - set(inputs))
    if missing:
        raise HarnessError(f"{path}: missing input {missing[0]!r}")
    extra = sorted(set(inputs) - names)
    if extra:
        raise HarnessError(f"{path}: unknown input {extra[0]!r} (inputs: {', '.join(sorted(names))})")
    feed = {}
    for s in specs:
        a = np.ascontiguousarray(inputs[s.name], dtype=s.dtype)
        if a.shape != s.shape:
            raise HarnessError(f"{path}: input {s.name!r} has shape {a.shape}, the model wants {s.shape}")
        feed[s.name] = a
    return feed
