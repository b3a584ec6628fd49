package com.sdphone.runner.protocol

/*
 * Every JSON key and every fixed value this runner reads or writes, in one file.
 *
 * The rest of the code never spells a key as a string literal: it goes through these constants.
 * tests/apps/test_android_app.py reads this file with tree-sitter and checks it against
 * the JSON schemas in host/protocol/: an object marked @SchemaObject must have exactly the schema's
 * properties at that JSON pointer (open objects: at least them), an object marked @SchemaEnum must
 * have exactly the values of the schema's enum / const at the pointer(s), and every key constant must
 * be used by a read or write somewhere. Renaming a key on either side fails that test.
 */

/** This object's constants are the property names of the schema object at [pointer] (file#/json/pointer). */
@Target(AnnotationTarget.CLASS)
@Retention(AnnotationRetention.SOURCE)
annotation class SchemaObject(val pointer: String, val open: Boolean = false)

/** This object's constants are the allowed values (enum or const) at [pointers]; a subset when [subset]. */
@Target(AnnotationTarget.CLASS)
@Retention(AnnotationRetention.SOURCE)
annotation class SchemaEnum(val pointers: Array<String>, val subset: Boolean = false)

/** Protocol version written into request.json and the trace's meta record. */
const val PROTOCOL_VERSION = 1

/** The files of a run folder (docs/protocol.md, "Run folder"). */
object RunFiles {
    const val REQUEST = "request.json"
    const val NOISE = "noise.bin"
    const val MODELS_DIR = "models"
    const val TRACE = "trace.jsonl"
    const val IMAGE_PNG = "image.png"
    const val IMAGE_F32 = "image.f32"
    const val STATUS = "status.json"

    /** Block models of the per-block pass sit in `<models_dir>/blocks/`. */
    const val BLOCKS_DIR = "blocks"
}

object Keys {
    @SchemaObject(pointer = "run_request.schema.json#")
    object Request {
        const val SCHEMA = "schema"
        const val VERSION = "version"
        const val RUN_ID = "run_id"
        const val MODELS_DIR = "models_dir"
        const val MODELS = "models"
        const val PROMPT = "prompt"
        const val NOISE = "noise"
        const val SCHEDULER = "scheduler"
        const val GUIDANCE_SCALE = "guidance_scale"
        const val VAE_SCALING_FACTOR = "vae_scaling_factor"
        const val IMAGE = "image"
        const val RUNTIME = "runtime"
        const val PROFILING = "profiling"
    }

    @SchemaObject(pointer = "run_request.schema.json#/properties/models")
    object Models {
        const val TEXT_ENCODER = "text_encoder"
        const val UNET = "unet"
        const val VAE_DECODER = "vae_decoder"
    }

    @SchemaObject(pointer = "run_request.schema.json#/\$defs/model")
    object Model {
        const val FILE = "file"
        const val SHA256 = "sha256"
        const val SIGNATURE = "signature"
        const val INPUTS = "inputs"
        const val OUTPUTS = "outputs"
    }

    @SchemaObject(pointer = "run_request.schema.json#/\$defs/block_model")
    object BlockModel {
        const val NAME = "name"
        const val FILE = "file"
        const val SHA256 = "sha256"
        const val SIGNATURE = "signature"
        const val INPUTS = "inputs"
        const val OUTPUTS = "outputs"
    }

    @SchemaObject(pointer = "run_request.schema.json#/\$defs/tensor")
    object Tensor {
        const val NAME = "name"
        const val SHAPE = "shape"
        const val DTYPE = "dtype"
    }

    @SchemaObject(pointer = "run_request.schema.json#/properties/prompt")
    object Prompt {
        const val TEXT = "text"
        const val NEGATIVE = "negative"
        const val TOKENIZER = "tokenizer"
        const val TOKENS = "tokens"
    }

    @SchemaObject(pointer = "run_request.schema.json#/properties/noise")
    object Noise {
        const val FILE = "file"
        const val SHAPE = "shape"
        const val DTYPE = "dtype"
        const val SEED = "seed"
        const val SHA256 = "sha256"
        const val GENERATOR = "generator"
    }

    @SchemaObject(pointer = "run_request.schema.json#/properties/scheduler")
    object Scheduler {
        const val NAME = "name"
        const val STEPS = "steps"
        const val INIT_SCALE = "init_scale"
        const val TIMESTEP = "timestep"
        const val IN_SCALE = "in_scale"
        const val D_X = "d_x"
        const val D_EPS = "d_eps"
        const val X_X = "x_x"
        const val X_D = "x_d"
        const val X_DPREV = "x_dprev"
        const val SIGMAS = "sigmas"
        const val KARRAS = "karras"
        const val T_EMB = "t_emb"
    }

    @SchemaObject(pointer = "run_request.schema.json#/properties/image")
    object Image {
        const val HEIGHT = "height"
        const val WIDTH = "width"
    }

    @SchemaObject(pointer = "run_request.schema.json#/properties/runtime")
    object Runtime {
        const val ACCELERATOR = "accelerator"
        const val PRECISION = "precision"
        const val THREADS = "threads"
        const val WARMUP = "warmup"
        const val REPEATS = "repeats"
        const val RESIDENCY = "residency"
    }

    @SchemaObject(pointer = "run_request.schema.json#/properties/profiling")
    object Profiling {
        const val MEMORY_INTERVAL_MS = "memory_interval_ms"
        const val PER_OP = "per_op"
        const val PER_BLOCK = "per_block"
        const val BLOCK_MODELS = "block_models"
        const val BLOCK_STEPS = "block_steps"
        const val BLOCK_REFERENCE = "block_reference"
    }

    @SchemaObject(pointer = "trace_record.schema.json#/\$defs/meta")
    object Meta {
        const val TYPE = "type"
        const val T = "t"
        const val SCHEMA = "schema"
        const val VERSION = "version"
        const val RUN_ID = "run_id"
        const val RUNNER = "runner"
        const val RUNNER_VERSION = "runner_version"
        const val DEVICE = "device"
        const val RUNTIME = "runtime"
    }

    /** meta.device: model, os, soc required; more keys allowed (the object is open). */
    @SchemaObject(pointer = "trace_record.schema.json#/\$defs/meta/properties/device", open = true)
    object Device {
        const val MODEL = "model"
        const val OS = "os"
        const val SOC = "soc"
        const val MANUFACTURER = "manufacturer"
        const val SOC_MANUFACTURER = "soc_manufacturer"
        const val HARDWARE = "hardware"
        const val ABI = "abi"
        const val RAM_BYTES = "ram_bytes"
        const val API_LEVEL = "api_level"
        const val FINGERPRINT = "fingerprint"
    }

    /** meta.runtime: the four protocol keys, the request's residency, plus this runner's extras (the object is open). */
    @SchemaObject(pointer = "trace_record.schema.json#/\$defs/meta/properties/runtime", open = true)
    object MetaRuntime {
        const val ACCELERATOR = "accelerator"
        const val PRECISION = "precision"
        const val THREADS = "threads"
        const val DELEGATE = "delegate"
        const val RESIDENCY = "residency"
        const val ENGINE = "engine"
        const val API = "api"
    }

    @SchemaObject(pointer = "trace_record.schema.json#/\$defs/span")
    object Span {
        const val TYPE = "type"
        const val T = "t"
        const val NAME = "name"
        const val CAT = "cat"
        const val START = "start"
        const val DUR = "dur"
        const val COMPONENT = "component"
        const val STEP = "step"
        const val REPEAT = "repeat"
        const val WARMUP = "warmup"
        const val ARGS = "args"
    }

    @SchemaObject(pointer = "trace_record.schema.json#/\$defs/memory")
    object Memory {
        const val TYPE = "type"
        const val T = "t"
        const val RSS_BYTES = "rss_bytes"
        const val SOURCE = "source"
        const val PEAK_BYTES = "peak_bytes"
    }

    @SchemaObject(pointer = "trace_record.schema.json#/\$defs/event")
    object Event {
        const val TYPE = "type"
        const val T = "t"
        const val NAME = "name"
        const val MESSAGE = "message"
        const val ARGS = "args"
    }

    @SchemaObject(pointer = "status.schema.json#")
    object Status {
        const val STATE = "state"
        const val RUN_ID = "run_id"
        const val MESSAGE = "message"
        const val FINISHED_T = "finished_t"
        const val IMAGES = "images"
    }

    /** Keys inside `args` objects (open objects: not fixed by the schemas; docs/protocol.md names them). */
    object Args {
        const val PHASE = "phase"
        const val FILE = "file"
        const val REPEAT = "repeat"
        const val WARMUP = "warmup"
        const val ERROR_TYPE = "error_type"
        const val STAGE = "stage"
        const val LEVEL = "level"
        const val OUTPUT = "output"
        const val MAX_ABS_DIFF = "max_abs_diff"
        const val ENGINE = "engine"
        const val INCLUDES = "includes"
        const val SEED = "seed"
        const val ITERATIONS = "iterations"
        const val REFERENCE = "reference"
    }
}

@SchemaEnum(
    pointers = [
        "trace_record.schema.json#/\$defs/meta/properties/type",
        "trace_record.schema.json#/\$defs/span/properties/type",
        "trace_record.schema.json#/\$defs/memory/properties/type",
        "trace_record.schema.json#/\$defs/event/properties/type",
    ],
)
object RecordType {
    const val META = "meta"
    const val SPAN = "span"
    const val MEMORY = "memory"
    const val EVENT = "event"
}

@SchemaEnum(pointers = ["run_request.schema.json#/properties/schema", "trace_record.schema.json#/\$defs/meta/properties/schema"])
object SchemaId {
    const val RUN_REQUEST = "sdphone.run_request"
    const val TRACE = "sdphone.trace"
}

@SchemaEnum(pointers = ["trace_record.schema.json#/\$defs/meta/properties/runner"], subset = true)
object RunnerName {
    const val ANDROID = "android"
}

@SchemaEnum(pointers = ["trace_record.schema.json#/\$defs/span/properties/cat"])
object SpanCat {
    const val LOAD = "load"
    const val COMPONENT = "component"
    const val STEP = "step"
    const val BLOCK = "block"
    const val OP = "op"
    const val TOTAL = "total"
}

@SchemaEnum(pointers = ["status.schema.json#/properties/state"])
object State {
    const val OK = "ok"
    const val ERROR = "error"
    const val RUNNING = "running"
}

@SchemaEnum(pointers = ["run_request.schema.json#/properties/runtime/properties/accelerator"])
object AcceleratorName {
    const val CPU = "cpu"
    const val GPU = "gpu"
    const val NPU = "npu"
}

@SchemaEnum(pointers = ["run_request.schema.json#/properties/runtime/properties/precision"])
object PrecisionName {
    const val FP32 = "fp32"
    const val FP16 = "fp16"
}

/** runtime.residency: models held for the whole run (the default) or loaded for their stage only. */
@SchemaEnum(pointers = ["run_request.schema.json#/properties/runtime/properties/residency"])
object Residency {
    const val ALL = "all"
    const val PHASE = "phase"
}

@SchemaEnum(pointers = ["run_request.schema.json#/\$defs/tensor/properties/dtype"])
object Dtype {
    const val FLOAT32 = "float32"
    const val FLOAT16 = "float16"
    const val INT32 = "int32"
    const val INT64 = "int64"
    const val INT8 = "int8"
    const val UINT8 = "uint8"
    const val BOOL = "bool"
}

@SchemaEnum(pointers = ["run_request.schema.json#/properties/scheduler/properties/name"])
object SchedulerName {
    const val DDIM = "ddim"
    const val DPMPP_2M = "dpmpp_2m"
    const val EULER = "euler"
}

@SchemaEnum(pointers = ["run_request.schema.json#/properties/prompt/properties/tokenizer"])
object TokenizerName {
    const val CLIP_BPE = "clip-bpe"
    const val FALLBACK = "fallback"
}

/** Span names (docs/protocol.md, "Span names"). */
object SpanName {
    const val LOAD = "load"
    const val TEXT_ENCODER = "text_encoder"
    const val UNET_STEP = "unet_step"
    const val VAE_DECODER = "vae_decoder"
    const val GENERATION = "generation"

    /** The whole UNet timed beside the block chain (cat block; profiling.block_reference); no block takes this name. */
    const val REFERENCE_BLOCK = "unet"
}

/** Event names in use (docs/protocol.md, "Additions": Events). */
object EventName {
    const val PROGRESS = "progress"
    const val WARNING = "warning"
    const val ERROR = "error"
    const val OOM = "oom"
    const val PER_BLOCK_CHECK = "per_block_check"
}

/** args.phase of load spans. */
object LoadPhase {
    const val COLD = "cold"
    const val WARM = "warm"

    /** Residency "phase": a component loaded inside a generation, right before its stage. */
    const val STAGE = "stage"

    /** The UNet loaded again for the per-block pass, to be timed beside the chain. */
    const val REFERENCE = "reference"
}

/** memory.source values written by this runner. */
object MemorySource {
    /** /proc/self/status VmRSS (peak: VmHWM), sampled every profiling.memory_interval_ms. */
    const val PROC_STATUS = "proc_status"

    /** android.os.Debug.MemoryInfo total PSS (graphics included), once after each generation. */
    const val ANDROID_DEBUG = "android_debug"
}

/** Tensor names the algorithm feeds and reads (host/protocol/constants.py: TEXT_ENCODER_INPUT, UNET_INPUTS, VAE_INPUT). */
object TensorNames {
    const val INPUT_IDS = "input_ids"
    const val SAMPLE = "sample"
    const val T_EMB = "t_emb"
    const val CONTEXT = "context"
    const val LATENTS = "latents"
}
