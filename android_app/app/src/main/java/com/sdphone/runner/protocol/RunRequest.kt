package com.sdphone.runner.protocol

/**
 * The RunRequest (request.json), parsed strictly: missing keys, wrong types and unknown keys all fail
 * with the dotted path of the problem, like the host's schema check. [check] adds the cross-field rules
 * of docs/protocol.md ("Additions").
 */
class ProtocolError(message: String) : Exception(message)

data class TensorSpec(val name: String, val shape: IntArray, val dtype: String) {
    val size: Int
        get() = shape.fold(1) { a, b -> a * b }

    fun describe(): String = "$name ${shape.toList()} $dtype"

    companion object {
        fun parse(o: JsonObj): TensorSpec {
            val spec = TensorSpec(
                name = o.getString(Keys.Tensor.NAME),
                shape = o.getInts(Keys.Tensor.SHAPE),
                dtype = o.getString(Keys.Tensor.DTYPE),
            )
            o.finish()
            return spec
        }

        fun toJson(t: TensorSpec): Map<String, Any?> = json {
            put(Keys.Tensor.NAME, t.name)
            put(Keys.Tensor.SHAPE, t.shape.toList())
            put(Keys.Tensor.DTYPE, t.dtype)
        }
    }
}

/** A model file: one of the three components (name = component) or a block model of the per-block pass. */
data class ModelSpec(
    val name: String,
    val file: String,
    val sha256: String?,
    val signature: String,
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>,
) {
    fun input(name: String): TensorSpec =
        inputs.firstOrNull { it.name == name } ?: throw ProtocolError("$file: the request lists no input '$name'")

    companion object {
        fun parseComponent(component: String, o: JsonObj): ModelSpec {
            val spec = ModelSpec(
                name = component,
                file = o.getString(Keys.Model.FILE),
                sha256 = o.getString(Keys.Model.SHA256),
                signature = o.getString(Keys.Model.SIGNATURE),
                inputs = o.getObjects(Keys.Model.INPUTS).map { TensorSpec.parse(it) },
                outputs = o.getObjects(Keys.Model.OUTPUTS).map { TensorSpec.parse(it) },
            )
            o.finish()
            return spec
        }

        fun parseBlock(o: JsonObj): ModelSpec {
            val spec = ModelSpec(
                name = o.getString(Keys.BlockModel.NAME),
                file = o.getString(Keys.BlockModel.FILE),
                sha256 = o.optString(Keys.BlockModel.SHA256),
                signature = o.getString(Keys.BlockModel.SIGNATURE),
                inputs = o.getObjects(Keys.BlockModel.INPUTS).map { TensorSpec.parse(it) },
                outputs = o.getObjects(Keys.BlockModel.OUTPUTS).map { TensorSpec.parse(it) },
            )
            o.finish()
            return spec
        }

        fun componentToJson(m: ModelSpec): Map<String, Any?> = json {
            put(Keys.Model.FILE, m.file)
            put(Keys.Model.SHA256, m.sha256)
            put(Keys.Model.SIGNATURE, m.signature)
            put(Keys.Model.INPUTS, m.inputs.map { TensorSpec.toJson(it) })
            put(Keys.Model.OUTPUTS, m.outputs.map { TensorSpec.toJson(it) })
        }

        fun blockToJson(m: ModelSpec): Map<String, Any?> = json {
            put(Keys.BlockModel.NAME, m.name)
            put(Keys.BlockModel.FILE, m.file)
            putOpt(Keys.BlockModel.SHA256, m.sha256)
            put(Keys.BlockModel.SIGNATURE, m.signature)
            put(Keys.BlockModel.INPUTS, m.inputs.map { TensorSpec.toJson(it) })
            put(Keys.BlockModel.OUTPUTS, m.outputs.map { TensorSpec.toJson(it) })
        }
    }
}

data class PromptSpec(val text: String, val negative: String, val tokenizer: String, val tokens: List<IntArray>)

data class NoiseSpec(
    val file: String,
    val shape: IntArray,
    val dtype: String,
    val seed: Long,
    val sha256: String,
    val generator: String?,
)

/** The scheduler table (host/schedulers.py SchedulerTable) plus the per-step t_emb rows. */
data class SchedulerSpec(
    val name: String,
    val steps: Int,
    val initScale: Double,
    val timestep: DoubleArray,
    val inScale: DoubleArray,
    val dX: DoubleArray,
    val dEps: DoubleArray,
    val xX: DoubleArray,
    val xD: DoubleArray,
    val xDprev: DoubleArray,
    val sigmas: DoubleArray,
    val karras: Boolean,
    val tEmb: List<DoubleArray>,
)

data class RuntimeSpec(
    val accelerator: String,
    val precision: String,
    val threads: Int,
    val warmup: Int,
    val repeats: Int,
    /** [Residency.ALL]: the three models held for the whole run; [Residency.PHASE]: loaded for their stage only. */
    val residency: String = Residency.ALL,
)

data class ProfilingSpec(
    val memoryIntervalMs: Int,
    val perOp: Boolean,
    val perBlock: Boolean,
    val blockModels: List<ModelSpec>,
    val blockSteps: Int?,
    /** Time the whole UNet beside the chain at every profiled step; absent: true. */
    val blockReference: Boolean? = null,
)

data class RunRequest(
    val runId: String,
    val modelsDir: String,
    val textEncoder: ModelSpec,
    val unet: ModelSpec,
    val vaeDecoder: ModelSpec,
    val prompt: PromptSpec,
    val noise: NoiseSpec,
    val scheduler: SchedulerSpec,
    val guidanceScale: Double,
    val vaeScalingFactor: Double,
    val height: Int,
    val width: Int,
    val runtime: RuntimeSpec,
    val profiling: ProfilingSpec,
) {
    val components: List<ModelSpec>
        get() = listOf(textEncoder, unet, vaeDecoder)

    /** The per-block pass's block models: empty unless profiling.per_block. */
    val blocks: List<ModelSpec>
        get() = if (profiling.perBlock) profiling.blockModels else emptyList()

    /** The cross-field rules that the schema cannot express (docs/protocol.md, "Additions"). */
    fun check(): RunRequest {
        fun fail(msg: String): Nothing = throw ProtocolError("request.json: $msg")
        if (!RUN_ID_RE.matches(runId)) {
            fail("run_id '$runId' must match ${RUN_ID_RE.pattern}")
        }
        for (m in components + profiling.blockModels) {
            if (!FILE_RE.matches(m.file)) {
                fail("${m.name}: file '${m.file}' must be a relative, '/'-separated path")
            }
        }
        if (!FILE_RE.matches(noise.file)) {
            fail("noise.file '${noise.file}' must be a relative, '/'-separated path")
        }
        val ids = textEncoder.input(TensorNames.INPUT_IDS)
        if (prompt.tokens.size != 2) {
            fail("prompt.tokens must have 2 rows (unconditional, conditional), has ${prompt.tokens.size}")
        }
        for ((i, row) in prompt.tokens.withIndex()) {
            if (row.size != ids.shape.last()) {
                fail("prompt.tokens row $i has ${row.size} tokens, the text encoder takes ${ids.shape.last()}")
            }
        }
        val sample = unet.input(TensorNames.SAMPLE)
        val latentShape = listOf(1) + sample.shape.drop(1)
        if (noise.shape.toList() != latentShape) {
            fail("noise.shape ${noise.shape.toList()} must be $latentShape ([1, C, h, w] of the UNet sample)")
        }
        val latents = vaeDecoder.input(TensorNames.LATENTS)
        if (latents.shape.toList() != latentShape) {
            fail("vae_decoder latents ${latents.shape.toList()} must equal noise.shape $latentShape")
        }
        val s = scheduler
        val lengths = mapOf(
            Keys.Scheduler.TIMESTEP to s.timestep.size, Keys.Scheduler.IN_SCALE to s.inScale.size,
            Keys.Scheduler.D_X to s.dX.size, Keys.Scheduler.D_EPS to s.dEps.size, Keys.Scheduler.X_X to s.xX.size,
            Keys.Scheduler.X_D to s.xD.size, Keys.Scheduler.X_DPREV to s.xDprev.size,
        )
        for ((key, n) in lengths) {
            if (n != s.steps) {
                fail("scheduler.$key has $n entries, steps is ${s.steps}")
            }
        }
        if (s.sigmas.size != s.steps + 1) {
            fail("scheduler.sigmas has ${s.sigmas.size} entries, expected steps + 1 = ${s.steps + 1}")
        }
        val tEmbWidth = unet.input(TensorNames.T_EMB).shape.last()
        if (s.tEmb.size != s.steps) {
            fail("scheduler.t_emb has ${s.tEmb.size} rows, steps is ${s.steps}")
        }
        for ((i, row) in s.tEmb.withIndex()) {
            if (row.size != tEmbWidth) {
                fail("scheduler.t_emb row $i has ${row.size} values, the UNet t_emb is $tEmbWidth wide")
            }
        }
        val image = vaeDecoder.outputs.first()
        if (image.shape.size != 4 || image.shape[2] != height || image.shape[3] != width) {
            fail("image ${height}x$width must equal the decoder output ${image.shape.toList()}")
        }
        val names = profiling.blockModels.map { it.name }
        if (names.toSet().size != names.size) {
            fail("profiling.block_models: block names must be unique")
        }
        if (SpanName.REFERENCE_BLOCK in names) {
            fail("profiling.block_models: the block name '${SpanName.REFERENCE_BLOCK}' is reserved for the whole UNet's reference spans")
        }
        if (profiling.perBlock && profiling.blockModels.isEmpty()) {
            fail("profiling.per_block needs a non-empty profiling.block_models")
        }
        if (runtime.threads < 1 || runtime.repeats < 1 || runtime.warmup < 0) {
            fail("runtime: threads >= 1, repeats >= 1 and warmup >= 0 are required")
        }
        return this
    }

    companion object {
        val RUN_ID_RE = Regex("^[A-Za-z0-9._+-]+$")
        val FILE_RE = Regex("^[^/\\\\]+(/[^/\\\\]+)*$")

        /** Parses request.json text strictly (unknown keys fail) and applies [check]. */
        fun parse(text: String): RunRequest {
            val o = try {
                JsonObj.parse(text, RunFiles.REQUEST)
            } catch (e: JsonError) {
                throw ProtocolError("${RunFiles.REQUEST}: ${e.message}")
            }
            try {
                return fromJson(o).check()
            } catch (e: JsonError) {
                throw ProtocolError("${RunFiles.REQUEST}: ${e.message}")
            }
        }

        /** The run_id of a raw (possibly invalid) request text, or null. */
        fun rawRunId(text: String?): String? {
            if (text == null) {
                return null
            }
            return try {
                val parsed = Json.parse(text)
                (parsed as? Map<*, *>)?.get(Keys.Request.RUN_ID) as? String
            } catch (e: JsonError) {
                null
            }
        }

        fun fromJson(o: JsonObj): RunRequest {
            val schema = o.getString(Keys.Request.SCHEMA)
            if (schema != SchemaId.RUN_REQUEST) {
                throw JsonError("schema: '$schema', expected '${SchemaId.RUN_REQUEST}'")
            }
            val version = o.getInt(Keys.Request.VERSION)
            if (version != PROTOCOL_VERSION) {
                throw JsonError("version: $version, this runner speaks version $PROTOCOL_VERSION")
            }
            val models = o.getObj(Keys.Request.MODELS)
            val textEncoder = ModelSpec.parseComponent(Keys.Models.TEXT_ENCODER, models.getObj(Keys.Models.TEXT_ENCODER))
            val unet = ModelSpec.parseComponent(Keys.Models.UNET, models.getObj(Keys.Models.UNET))
            val vae = ModelSpec.parseComponent(Keys.Models.VAE_DECODER, models.getObj(Keys.Models.VAE_DECODER))
            models.finish()

            val p = o.getObj(Keys.Request.PROMPT)
            val prompt = PromptSpec(
                text = p.getString(Keys.Prompt.TEXT),
                negative = p.getString(Keys.Prompt.NEGATIVE),
                tokenizer = oneOf(p.getString(Keys.Prompt.TOKENIZER), "prompt.tokenizer", TokenizerName.CLIP_BPE, TokenizerName.FALLBACK),
                tokens = p.getIntRows(Keys.Prompt.TOKENS),
            )
            p.finish()

            val n = o.getObj(Keys.Request.NOISE)
            val noise = NoiseSpec(
                file = n.getString(Keys.Noise.FILE),
                shape = n.getInts(Keys.Noise.SHAPE),
                dtype = oneOf(n.getString(Keys.Noise.DTYPE), "noise.dtype", Dtype.FLOAT32),
                seed = n.getLong(Keys.Noise.SEED),
                sha256 = n.getString(Keys.Noise.SHA256),
                generator = n.optString(Keys.Noise.GENERATOR),
            )
            n.finish()

            val s = o.getObj(Keys.Request.SCHEDULER)
            val scheduler = SchedulerSpec(
                name = oneOf(s.getString(Keys.Scheduler.NAME), "scheduler.name", SchedulerName.DDIM, SchedulerName.DPMPP_2M, SchedulerName.EULER),
                steps = s.getInt(Keys.Scheduler.STEPS),
                initScale = s.getDouble(Keys.Scheduler.INIT_SCALE),
                timestep = s.getDoubles(Keys.Scheduler.TIMESTEP),
                inScale = s.getDoubles(Keys.Scheduler.IN_SCALE),
                dX = s.getDoubles(Keys.Scheduler.D_X),
                dEps = s.getDoubles(Keys.Scheduler.D_EPS),
                xX = s.getDoubles(Keys.Scheduler.X_X),
                xD = s.getDoubles(Keys.Scheduler.X_D),
                xDprev = s.getDoubles(Keys.Scheduler.X_DPREV),
                sigmas = s.getDoubles(Keys.Scheduler.SIGMAS),
                karras = s.getBool(Keys.Scheduler.KARRAS),
                tEmb = s.getDoubleRows(Keys.Scheduler.T_EMB),
            )
            s.finish()

            val img = o.getObj(Keys.Request.IMAGE)
            val height = img.getInt(Keys.Image.HEIGHT)
            val width = img.getInt(Keys.Image.WIDTH)
            img.finish()

            val r = o.getObj(Keys.Request.RUNTIME)
            val runtime = RuntimeSpec(
                accelerator = oneOf(r.getString(Keys.Runtime.ACCELERATOR), "runtime.accelerator", AcceleratorName.CPU, AcceleratorName.GPU, AcceleratorName.NPU),
                precision = oneOf(r.getString(Keys.Runtime.PRECISION), "runtime.precision", PrecisionName.FP32, PrecisionName.FP16),
                threads = r.getInt(Keys.Runtime.THREADS),
                warmup = r.getInt(Keys.Runtime.WARMUP),
                repeats = r.getInt(Keys.Runtime.REPEATS),
                residency = oneOf(r.optString(Keys.Runtime.RESIDENCY) ?: Residency.ALL, "runtime.residency", Residency.ALL, Residency.PHASE),
            )
            r.finish()

            val pr = o.getObj(Keys.Request.PROFILING)
            val profiling = ProfilingSpec(
                memoryIntervalMs = pr.getInt(Keys.Profiling.MEMORY_INTERVAL_MS),
                perOp = pr.getBool(Keys.Profiling.PER_OP),
                perBlock = pr.getBool(Keys.Profiling.PER_BLOCK),
                blockModels = pr.getObjects(Keys.Profiling.BLOCK_MODELS).map { ModelSpec.parseBlock(it) },
                blockSteps = pr.optInt(Keys.Profiling.BLOCK_STEPS),
                blockReference = pr.optBool(Keys.Profiling.BLOCK_REFERENCE),
            )
            pr.finish()

            val request = RunRequest(
                runId = o.getString(Keys.Request.RUN_ID),
                modelsDir = o.getString(Keys.Request.MODELS_DIR),
                textEncoder = textEncoder,
                unet = unet,
                vaeDecoder = vae,
                prompt = prompt,
                noise = noise,
                scheduler = scheduler,
                guidanceScale = o.getDouble(Keys.Request.GUIDANCE_SCALE),
                vaeScalingFactor = o.getDouble(Keys.Request.VAE_SCALING_FACTOR),
                height = height,
                width = width,
                runtime = runtime,
                profiling = profiling,
            )
            o.finish()
            return request
        }

        private fun oneOf(value: String, path: String, vararg allowed: String): String {
            if (value !in allowed) {
                throw JsonError("$path: '$value' is not one of ${allowed.joinToString(", ")}")
            }
            return value
        }

        /** request.json for [r] (the demo writes derived requests this way). */
        fun toJson(r: RunRequest): Map<String, Any?> = json {
            put(Keys.Request.SCHEMA, SchemaId.RUN_REQUEST)
            put(Keys.Request.VERSION, PROTOCOL_VERSION)
            put(Keys.Request.RUN_ID, r.runId)
            put(Keys.Request.MODELS_DIR, r.modelsDir)
            put(
                Keys.Request.MODELS,
                json {
                    put(Keys.Models.TEXT_ENCODER, ModelSpec.componentToJson(r.textEncoder))
                    put(Keys.Models.UNET, ModelSpec.componentToJson(r.unet))
                    put(Keys.Models.VAE_DECODER, ModelSpec.componentToJson(r.vaeDecoder))
                },
            )
            put(
                Keys.Request.PROMPT,
                json {
                    put(Keys.Prompt.TEXT, r.prompt.text)
                    put(Keys.Prompt.NEGATIVE, r.prompt.negative)
                    put(Keys.Prompt.TOKENIZER, r.prompt.tokenizer)
                    put(Keys.Prompt.TOKENS, r.prompt.tokens.map { it.toList() })
                },
            )
            put(
                Keys.Request.NOISE,
                json {
                    put(Keys.Noise.FILE, r.noise.file)
                    put(Keys.Noise.SHAPE, r.noise.shape.toList())
                    put(Keys.Noise.DTYPE, r.noise.dtype)
                    put(Keys.Noise.SEED, r.noise.seed)
                    put(Keys.Noise.SHA256, r.noise.sha256)
                    putOpt(Keys.Noise.GENERATOR, r.noise.generator)
                },
            )
            val s = r.scheduler
            put(
                Keys.Request.SCHEDULER,
                json {
                    put(Keys.Scheduler.NAME, s.name)
                    put(Keys.Scheduler.STEPS, s.steps)
                    put(Keys.Scheduler.INIT_SCALE, s.initScale)
                    put(Keys.Scheduler.TIMESTEP, s.timestep.toList())
                    put(Keys.Scheduler.IN_SCALE, s.inScale.toList())
                    put(Keys.Scheduler.D_X, s.dX.toList())
                    put(Keys.Scheduler.D_EPS, s.dEps.toList())
                    put(Keys.Scheduler.X_X, s.xX.toList())
                    put(Keys.Scheduler.X_D, s.xD.toList())
                    put(Keys.Scheduler.X_DPREV, s.xDprev.toList())
                    put(Keys.Scheduler.SIGMAS, s.sigmas.toList())
                    put(Keys.Scheduler.KARRAS, s.karras)
                    put(Keys.Scheduler.T_EMB, s.tEmb.map { it.toList() })
                },
            )
            put(Keys.Request.GUIDANCE_SCALE, r.guidanceScale)
            put(Keys.Request.VAE_SCALING_FACTOR, r.vaeScalingFactor)
            put(
                Keys.Request.IMAGE,
                json {
                    put(Keys.Image.HEIGHT, r.height)
                    put(Keys.Image.WIDTH, r.width)
                },
            )
            put(
                Keys.Request.RUNTIME,
                json {
                    put(Keys.Runtime.ACCELERATOR, r.runtime.accelerator)
                    put(Keys.Runtime.PRECISION, r.runtime.precision)
                    put(Keys.Runtime.THREADS, r.runtime.threads)
                    put(Keys.Runtime.WARMUP, r.runtime.warmup)
                    put(Keys.Runtime.REPEATS, r.runtime.repeats)
                    put(Keys.Runtime.RESIDENCY, r.runtime.residency)
                },
            )
            put(
                Keys.Request.PROFILING,
                json {
                    put(Keys.Profiling.MEMORY_INTERVAL_MS, r.profiling.memoryIntervalMs)
                    put(Keys.Profiling.PER_OP, r.profiling.perOp)
                    put(Keys.Profiling.PER_BLOCK, r.profiling.perBlock)
                    put(Keys.Profiling.BLOCK_MODELS, r.profiling.blockModels.map { ModelSpec.blockToJson(it) })
                    putOpt(Keys.Profiling.BLOCK_STEPS, r.profiling.blockSteps)
                    putOpt(Keys.Profiling.BLOCK_REFERENCE, r.profiling.blockReference)
                },
            )
        }
    }
}
