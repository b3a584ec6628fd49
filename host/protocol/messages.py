"""The protocol's messages as frozen dataclasses: RunRequest (request.json), trace records, Status.

Every message has ``to_dict()`` (JSON-ready, lists not tuples, optional fields left out when unset)
and ``from_dict(data)`` (schema-validated first, so a bad file fails with a one-line
:class:`ProtocolError` naming the file and the JSON path). ``RunRequest.from_dict`` also checks the
rules a JSON Schema cannot express (array lengths that depend on ``steps``, shapes that must agree).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Mapping, Union

from host.protocol.constants import (  # noqa: F401  (re-exported)
    COMPONENTS, IMAGE_F32, IMAGE_PNG, MODELS_DIR, NOISE_FILE, PROTOCOL_VERSION, RECORD_TYPES, REQUEST_FILE,
    REQUEST_SCHEMA, REQUEST_VERSION, RUNNERS, SPAN_CATS, STATES, STATUS_FILE, TEXT_ENCODER_INPUT, TRACE_FILE,
    TRACE_SCHEMA, TRACE_VERSION, UNET_INPUTS, VAE_INPUT,
)
from host.protocol.validation import (  # noqa: F401  (re-exported)
    ProtocolError, validate_request, validate_status, validate_trace_record,
)
from host.schedulers import SchedulerTable


def _plain(value: Any) -> Any:
    """Dataclass / tuple / mapping -> JSON-ready dict / list; ``None`` fields of dataclasses are dropped."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _fields_dict(obj: Any, nullable: tuple[str, ...] = ()) -> dict[str, Any]:
    """Fields in declaration order; ``None`` values are left out except for the ``nullable`` fields."""
    return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)
            if getattr(obj, f.name) is not None or f.name in nullable}


# ---------------------------------------------------------------------------------------------
# RunRequest and its parts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One signature input or output: name, static shape, dtype name (numpy spelling)."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TensorSpec":
        return cls(name=d["name"], shape=tuple(int(s) for s in d["shape"]), dtype=d["dtype"])


def _tensors(items: Any) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec.from_dict(t) for t in items)


@dataclass(frozen=True)
class ModelSpec:
    """A component's .tflite file (relative to ``models_dir``), its sha256 and its one signature."""

    file: str
    sha256: str
    signature: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        return cls(file=d["file"], sha256=d["sha256"], signature=d["signature"],
                   inputs=_tensors(d["inputs"]), outputs=_tensors(d["outputs"]))

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)


@dataclass(frozen=True)
class BlockModelSpec:
    """One piece of the UNet for per-block profiling; the chain feeds tensors forward by name."""

    name: str
    file: str
    signature: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BlockModelSpec":
        return cls(name=d["name"], file=d["file"], signature=d["signature"], inputs=_tensors(d["inputs"]),
                   outputs=_tensors(d["outputs"]), sha256=d.get("sha256"))


@dataclass(frozen=True)
class PromptSpec:
    """The prompt, tokenized on the host: ``tokens[0]`` unconditional/negative, ``tokens[1]`` conditional."""

    text: str
    negative: str
    tokenizer: str
    tokens: tuple[tuple[int, ...], tuple[int, ...]]

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PromptSpec":
        rows = tuple(tuple(int(i) for i in row) for row in d["tokens"])
        return cls(text=d["text"], negative=d["negative"], tokenizer=d["tokenizer"], tokens=rows)  # type: ignore[arg-type]


@dataclass(frozen=True)
class NoiseSpec:
    """The initial latents file: float32 little-endian NCHW, made on the host from ``seed``."""

    file: str
    shape: tuple[int, ...]
    dtype: str
    seed: int
    sha256: str
    generator: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "NoiseSpec":
        return cls(file=d["file"], shape=tuple(int(s) for s in d["shape"]), dtype=d["dtype"], seed=int(d["seed"]),
                   sha256=d["sha256"], generator=d.get("generator"))


@dataclass(frozen=True)
class SchedulerSpec:
    """A :class:`SchedulerTable` plus ``t_emb``: row i is the UNet's timestep projection for step i."""

    table: SchedulerTable
    t_emb: tuple[tuple[float, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        return {**self.table.to_dict(), "t_emb": [list(row) for row in self.t_emb]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SchedulerSpec":
        table = SchedulerTable.from_dict({k: v for k, v in d.items() if k != "t_emb"})
        return cls(table=table, t_emb=tuple(tuple(float(v) for v in row) for row in d["t_emb"]))


@dataclass(frozen=True)
class ImageSpec:
    height: int
    width: int

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ImageSpec":
        return cls(height=int(d["height"]), width=int(d["width"]))


@dataclass(frozen=True)
class RuntimeSpec:
    """How to run: accelerator, precision, CPU threads, untimed-but-traced warmups, measured repeats, and how
    long models stay loaded (``residency``: "all" for the whole run, "phase" only while their stage runs)."""

    accelerator: str = "cpu"
    precision: str = "fp32"
    threads: int = 2
    warmup: int = 1
    repeats: int = 1
    residency: str = "all"

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RuntimeSpec":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class ProfilingSpec:
    """What to measure besides the default spans."""

    memory_interval_ms: int = 50
    per_op: bool = False
    per_block: bool = False
    block_models: tuple[BlockModelSpec, ...] = ()
    block_steps: int = 0  # time the block chain at the first N steps only (0: every step)
    # time the whole UNet beside the chain at every profiled step (block span "unet"), so that the chain's
    # sum is compared with a whole step measured at the same time rather than minutes earlier
    block_reference: bool = True

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProfilingSpec":
        return cls(memory_interval_ms=int(d["memory_interval_ms"]), per_op=bool(d["per_op"]),
                   per_block=bool(d["per_block"]),
                   block_models=tuple(BlockModelSpec.from_dict(b) for b in d["block_models"]),
                   block_steps=int(d.get("block_steps", 0)),
                   block_reference=bool(d.get("block_reference", True)))


@dataclass(frozen=True)
class RunRequest:
    """``request.json``: everything a runner needs, precomputed on the host (docs/protocol.md)."""

    SCHEMA: ClassVar[str] = REQUEST_SCHEMA
    VERSION: ClassVar[int] = REQUEST_VERSION

    run_id: str
    models_dir: str
    models: Mapping[str, ModelSpec]
    prompt: PromptSpec
    noise: NoiseSpec
    scheduler: SchedulerSpec
    guidance_scale: float
    vae_scaling_factor: float
    image: ImageSpec
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    profiling: ProfilingSpec = field(default_factory=ProfilingSpec)

    def to_dict(self) -> dict[str, Any]:
        body = _fields_dict(self)
        body["models"] = {c: self.models[c].to_dict() for c in COMPONENTS}
        return {"schema": self.SCHEMA, "version": self.VERSION, **body}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = REQUEST_FILE) -> "RunRequest":
        """Schema-validate ``d``, build the request and check its cross-field rules (:meth:`check`)."""
        validate_request(d, source)
        try:
            scheduler = SchedulerSpec.from_dict(d["scheduler"])
        except ValueError as e:  # SchedulerTable.validate names the field first
            raise ProtocolError(f"{source}: $.scheduler.{e}") from None
        req = cls(
            run_id=d["run_id"], models_dir=d["models_dir"],
            models={c: ModelSpec.from_dict(d["models"][c]) for c in COMPONENTS},
            prompt=PromptSpec.from_dict(d["prompt"]), noise=NoiseSpec.from_dict(d["noise"]), scheduler=scheduler,
            guidance_scale=float(d["guidance_scale"]), vae_scaling_factor=float(d["vae_scaling_factor"]),
            image=ImageSpec.from_dict(d["image"]), runtime=RuntimeSpec.from_dict(d["runtime"]),
            profiling=ProfilingSpec.from_dict(d["profiling"]),
        )
        req.check(source)
        return req

    def check(self, source: str = REQUEST_FILE) -> None:
        """The rules a JSON Schema cannot state; raises ProtocolError naming the JSON path."""

        def fail(path: str, problem: str) -> None:
            raise ProtocolError(f"{source}: {path}: {problem}")

        for comp, names in (("text_encoder", (TEXT_ENCODER_INPUT,)), ("unet", UNET_INPUTS), ("vae_decoder", (VAE_INPUT,))):
            have = [t.name for t in self.models[comp].inputs]
            for name in names:
                if name not in have:
                    fail(f"$.models.{comp}.inputs", f"no input named {name!r} (has {have})")
        ids = self.models["text_encoder"].input(TEXT_ENCODER_INPUT)
        sample = self.models["unet"].input("sample")
        t_emb = self.models["unet"].input("t_emb")
        latents = self.models["vae_decoder"].input(VAE_INPUT)
        image_out = self.models["vae_decoder"].outputs[0]
        assert ids and sample and t_emb and latents
        if ids.shape[0] != 2 or sample.shape[0] != 2 or t_emb.shape[0] != 2:
            fail("$.models", "text_encoder and unet must take a batch of 2 (unconditional, conditional)")
        for row, tokens in enumerate(self.prompt.tokens):
            if len(tokens) != ids.shape[1]:
                fail(f"$.prompt.tokens[{row}]", f"{len(tokens)} ids, the text encoder takes {ids.shape[1]}")
        if tuple(self.noise.shape) != (1, *sample.shape[1:]):
            fail("$.noise.shape", f"{list(self.noise.shape)} does not match unet sample {list(sample.shape)}")
        if tuple(latents.shape) != tuple(self.noise.shape):
            fail("$.models.vae_decoder.inputs", f"latents {list(latents.shape)} differ from noise {list(self.noise.shape)}")
        if len(image_out.shape) != 4 or tuple(image_out.shape[2:]) != (self.image.height, self.image.width):
            fail("$.image", f"{self.image.height}x{self.image.width} does not match the decoder output {list(image_out.shape)}")
        steps = self.scheduler.table.steps
        if len(self.scheduler.t_emb) != steps:
            fail("$.scheduler.t_emb", f"{len(self.scheduler.t_emb)} rows, expected {steps} (scheduler.steps)")
        for i, row in enumerate(self.scheduler.t_emb):
            if len(row) != t_emb.shape[1]:
                fail(f"$.scheduler.t_emb[{i}]", f"{len(row)} values, the unet t_emb takes {t_emb.shape[1]}")
        names = [b.name for b in self.profiling.block_models]
        if len(set(names)) != len(names):
            fail("$.profiling.block_models", "block names must be unique")
        if self.profiling.per_block and not names:
            fail("$.profiling.block_models", "per_block is true but no block models are listed")


# ---------------------------------------------------------------------------------------------
# Trace records
# ---------------------------------------------------------------------------------------------


def _record_dict(rec: Any, nullable: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": rec.TYPE, **_fields_dict(rec, nullable)}


@dataclass(frozen=True)
class MetaRecord:
    """First line of every trace: which runner, on what, with which runtime settings."""

    TYPE: ClassVar[str] = "meta"

    t: float
    run_id: str | None
    runner: str
    runner_version: str
    device: Mapping[str, Any]
    runtime: Mapping[str, Any]
    schema: str = TRACE_SCHEMA
    version: int = TRACE_VERSION

    def to_dict(self) -> dict[str, Any]:
        head = {"type": self.TYPE, "t": self.t, "schema": self.schema, "version": self.version}
        return {**head, **_fields_dict(self, nullable=("run_id",))}  # run_id null: request unreadable

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MetaRecord":
        return cls(t=d["t"], run_id=d["run_id"], runner=d["runner"], runner_version=d["runner_version"],
                   device=dict(d["device"]), runtime=dict(d["runtime"]), schema=d["schema"], version=d["version"])


@dataclass(frozen=True)
class SpanRecord:
    """A timed interval: ``start`` and ``dur`` in seconds since the runner started."""

    TYPE: ClassVar[str] = "span"

    t: float
    name: str
    cat: str
    start: float
    dur: float
    component: str | None = None
    step: int | None = None
    repeat: int = 0
    warmup: bool = False
    args: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self, nullable=("component", "step"))  # always present, null allowed

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SpanRecord":
        return cls(t=d["t"], name=d["name"], cat=d["cat"], start=d["start"], dur=d["dur"], component=d["component"],
                   step=d["step"], repeat=d["repeat"], warmup=d["warmup"], args=d.get("args"))


@dataclass(frozen=True)
class MemoryRecord:
    """A memory sample of the runner process."""

    TYPE: ClassVar[str] = "memory"

    t: float
    rss_bytes: int
    source: str
    peak_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MemoryRecord":
        return cls(t=d["t"], rss_bytes=d["rss_bytes"], source=d["source"], peak_bytes=d.get("peak_bytes"))


@dataclass(frozen=True)
class EventRecord:
    """A point event: "progress", "warning", "error", "oom", ..."""

    TYPE: ClassVar[str] = "event"

    t: float
    name: str
    message: str
    args: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _record_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EventRecord":
        return cls(t=d["t"], name=d["name"], message=d["message"], args=d.get("args"))


TraceRecord = Union[MetaRecord, SpanRecord, MemoryRecord, EventRecord]
_RECORD_CLASSES: dict[str, Any] = {c.TYPE: c for c in (MetaRecord, SpanRecord, MemoryRecord, EventRecord)}


def record_from_dict(d: Mapping[str, Any], source: str = TRACE_FILE) -> TraceRecord:
    """Validate one trace line's dict and return the matching record dataclass."""
    validate_trace_record(d, source)
    return _RECORD_CLASSES[d["type"]].from_dict(d)


# ---------------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Status:
    """``status.json``: written "running" at start and "ok" / "error" last."""

    state: str
    run_id: str | None
    message: str | None = None
    finished_t: float | None = None
    images: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self, nullable=("run_id",))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = STATUS_FILE) -> "Status":
        validate_status(d, source)
        images = d.get("images")
        return cls(state=d["state"], run_id=d["run_id"], message=d.get("message"), finished_t=d.get("finished_t"),
                   images=tuple(images) if images is not None else None)

    @property
    def ok(self) -> bool:
        return self.state == "ok"
