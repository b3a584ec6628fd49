package com.sdphone.runner.runner

import com.sdphone.runner.protocol.Keys
import com.sdphone.runner.protocol.ModelSpec
import com.sdphone.runner.protocol.RunRequest
import com.sdphone.runner.protocol.SpanCat
import com.sdphone.runner.protocol.SpanName
import com.sdphone.runner.protocol.TensorNames
import com.sdphone.runner.protocol.json

/*
 * The protocol's generation algorithm (docs/protocol.md), exactly as host/runner/pipeline.py runs it:
 * float32 state, the same operation order (so the same rounding), CFG with batch 2
 * (row 0 unconditional, row 1 conditional), decoder input x / vae_scaling_factor.
 */

/** The request's numbers as float32 arrays, ready for the loop (host/runner/loading.py Inputs). */
class Inputs(
    val ids: Tensor.I32,
    val noise: FloatArray,
    val latentShape: IntArray,
    val tEmb: List<FloatArray>,
    val inScale: FloatArray,
    val dX: FloatArray,
    val dEps: FloatArray,
    val xX: FloatArray,
    val xD: FloatArray,
    val xDprev: FloatArray,
    val initScale: Float,
    val guidance: Float,
    val vaeScale: Float,
) {
    companion object {
        fun of(request: RunRequest, noise: FloatArray): Inputs {
            val rows = request.prompt.tokens
            val ids = IntArray(rows.size * rows[0].size)
            for ((r, row) in rows.withIndex()) {
                row.copyInto(ids, r * row.size)
            }
            val s = request.scheduler
            fun f32(a: DoubleArray) = FloatArray(a.size) { a[it].toFloat() }
            return Inputs(
                ids = Tensor.I32(intArrayOf(rows.size, rows[0].size), ids),
                noise = noise,
                latentShape = request.noise.shape,
                tEmb = s.tEmb.map { f32(it) },
                inScale = f32(s.inScale), dX = f32(s.dX), dEps = f32(s.dEps),
                xX = f32(s.xX), xD = f32(s.xD), xDprev = f32(s.xDprev),
                initScale = s.initScale.toFloat(),
                guidance = request.guidanceScale.toFloat(),
                vaeScale = request.vaeScalingFactor.toFloat(),
            )
        }
    }
}

/**
 * The three components and the names of their first outputs. A component is either held for the whole
 * run (runtime.residency "all": [held]) or loaded by a [StageLoader] for its stage only ("phase": [perStage]).
 */
class Models private constructor(
    private val resident: Map<String, LoadedModel>,
    private val stageLoader: StageLoader?,
    request: RunRequest,
) : AutoCloseable {
    private val specs = request.components.associateBy { it.name }
    val textEncoderOutput = request.textEncoder.outputs.first().name
    val unetOutput = request.unet.outputs.first().name
    val vaeOutput = request.vaeDecoder.outputs.first().name

    /**
     * [block] with [component]'s model: the held one, or one the stage loader loads now (its `load` span,
     * phase "stage", falls inside the generation) and that is closed as soon as [block] returns or throws.
     */
    fun <T> runStage(component: String, repeat: Int, warmup: Boolean, block: (LoadedModel) -> T): T {
        val held = resident[component]
        if (held != null) {
            return block(held)
        }
        val loader = stageLoader ?: throw RunnerError("$component: not loaded and no stage loader to load it")
        return loader.load(specs.getValue(component), repeat, warmup).use(block)
    }

    override fun close() {
        resident.values.forEach { it.close() }
    }

    companion object {
        /** Residency "all": the three models, loaded before the first generation, held until [close]. */
        fun held(textEncoder: LoadedModel, unet: LoadedModel, vaeDecoder: LoadedModel, request: RunRequest) = Models(
            linkedMapOf(Keys.Models.TEXT_ENCODER to textEncoder, Keys.Models.UNET to unet, Keys.Models.VAE_DECODER to vaeDecoder),
            null,
            request,
        )

        /** Residency "phase": nothing held; every generation loads each model right before its stage. */
        fun perStage(request: RunRequest, loader: StageLoader) = Models(emptyMap(), loader, request)
    }
}

/** Loads a component for one stage (residency "phase"); its load span carries the generation's repeat / warmup. */
fun interface StageLoader {
    fun load(spec: ModelSpec, repeat: Int, warmup: Boolean): LoadedModel
}

/** One generation's results; [unetIo] holds (sample fed, raw UNet output) per step when recorded. */
class Generation(
    val context: Tensor.F32,
    val latents: FloatArray,
    val image: Tensor.F32,
    val unetIo: List<Pair<Tensor.F32, Tensor.F32>>,
)

/** Called after every UNet step (the demo's progress bar); step is 0-based. */
fun interface StepListener {
    fun onStep(step: Int, steps: Int)
}

private fun output(outs: Map<String, Tensor>, name: String, what: String): Tensor.F32 {
    val t = outs[name] ?: throw RunnerError("$what: the model returned no output '$name'")
    return t as? Tensor.F32 ?: throw RunnerError("$what: output '$name' is not float32")
}

/** The UNet inputs of one step: batch 0 unconditional, batch 1 conditional (same latents). */
fun unetFeed(m: FloatArray, latentShape: IntArray, tEmbRow: FloatArray, context: Tensor.F32): Map<String, Tensor> {
    val n = m.size
    val sample = FloatArray(2 * n)
    m.copyInto(sample, 0)
    m.copyInto(sample, n)
    val w = tEmbRow.size
    val tEmb = FloatArray(2 * w)
    tEmbRow.copyInto(tEmb, 0)
    tEmbRow.copyInto(tEmb, w)
    val sampleShape = latentShape.copyOf()
    sampleShape[0] = 2
    return mapOf(
        TensorNames.SAMPLE to Tensor.F32(sampleShape, sample),
        TensorNames.T_EMB to Tensor.F32(intArrayOf(2, w), tEmb),
        TensorNames.CONTEXT to context,
    )
}

/**
 * One full generation with spans for every stage (host/runner/pipeline.py generate). With residency
 * "phase" each stage (text encoder, the UNet for all steps, the decoder) runs on a model loaded right
 * before it and released right after it, so only one component is in memory at a time.
 */
fun generate(
    models: Models,
    inputs: Inputs,
    steps: Int,
    tracer: Tracer,
    repeat: Int,
    warmup: Boolean,
    record: Boolean = false,
    onStep: StepListener? = null,
): Generation {
    val io = ArrayList<Pair<Tensor.F32, Tensor.F32>>()
    var ctx: Tensor.F32? = null
    var x = FloatArray(0)
    var img: Tensor.F32? = null
    tracer.span(SpanName.GENERATION, SpanCat.TOTAL, repeat = repeat, warmup = warmup) {
        val c = models.runStage(Keys.Models.TEXT_ENCODER, repeat, warmup) { textEncoder ->
            tracer.span(SpanName.TEXT_ENCODER, SpanCat.COMPONENT, component = Keys.Models.TEXT_ENCODER, repeat = repeat, warmup = warmup) {
                stage("text_encoder") {
                    output(textEncoder.run(mapOf(TensorNames.INPUT_IDS to inputs.ids)), models.textEncoderOutput, "text_encoder")
                }
            }
        }
        ctx = c
        val n = inputs.noise.size
        x = FloatArray(n) { inputs.noise[it] * inputs.initScale }
        models.runStage(Keys.Models.UNET, repeat, warmup) { unet ->
            var dPrev = FloatArray(n)
            for (i in 0 until steps) {
                val (sample, e) = tracer.span(SpanName.UNET_STEP, SpanCat.STEP, component = Keys.Models.UNET, step = i, repeat = repeat, warmup = warmup) {
                    stage("unet step $i") {
                        val inScale = inputs.inScale[i]
                        val m = FloatArray(n) { x[it] * inScale }
                        val feed = unetFeed(m, inputs.latentShape, inputs.tEmb[i], c)
                        val out = output(unet.run(feed), models.unetOutput, "unet step $i")
                        val e = out.data
                        if (e.size != 2 * n) {
                            throw RunnerError("unet step $i: output has ${e.size} values, expected ${2 * n}")
                        }
                        val g = inputs.guidance
                        val dx = inputs.dX[i]
                        val deps = inputs.dEps[i]
                        val xx = inputs.xX[i]
                        val xd = inputs.xD[i]
                        val xdp = inputs.xDprev[i]
                        val xNew = FloatArray(n)
                        val d = FloatArray(n)
                        for (k in 0 until n) {
                            val e0 = e[k]
                            val eps = e0 + g * (e[n + k] - e0)
                            val dk = x[k] * dx + eps * deps
                            d[k] = dk
                            xNew[k] = x[k] * xx + dk * xd + dPrev[k] * xdp
                        }
                        x = xNew
                        dPrev = d
                        Pair(feed.getValue(TensorNames.SAMPLE) as Tensor.F32, out)
                    }
                }
                if (record) {
                    io.add(Pair(sample, e))
                }
                onStep?.onStep(i, steps)
            }
        }
        img = models.runStage(Keys.Models.VAE_DECODER, repeat, warmup) { vaeDecoder ->
            tracer.span(SpanName.VAE_DECODER, SpanCat.COMPONENT, component = Keys.Models.VAE_DECODER, repeat = repeat, warmup = warmup) {
                stage("vae_decoder") {
                    val vs = inputs.vaeScale
                    val latents = Tensor.F32(inputs.latentShape, FloatArray(n) { x[it] / vs })
                    output(vaeDecoder.run(mapOf(TensorNames.LATENTS to latents)), models.vaeOutput, "vae_decoder")
                }
            }
        }
    }
    return Generation(context = ctx!!, latents = x, image = img!!, unetIo = io)
}

/** Runs [block]; failures other than [RunnerError] and OOM become a RunnerError prefixed with [what]. */
inline fun <T> stage(what: String, block: () -> T): T {
    try {
        return block()
    } catch (e: RunnerError) {
        throw e
    } catch (e: StageOutOfMemory) {
        throw e
    } catch (e: OutOfMemoryError) {
        throw StageOutOfMemory(what, e)
    } catch (e: Exception) {
        throw RunnerError("$what: ${e.javaClass.name}: ${firstLine(e.message)}", e)
    }
}

/** An OutOfMemoryError inside a named stage (the runner turns it into "oom" then "error" events). */
class StageOutOfMemory(val stage: String, val error: OutOfMemoryError) : RuntimeException("$stage: java.lang.OutOfMemoryError: ${firstLine(error.message)}", error)

fun firstLine(text: String?): String = (text ?: "").trim().lineSequence().firstOrNull()?.trim() ?: ""

/**
 * `round(clip((img + 1) / 2, 0, 1) * 255)` as HWC RGB bytes (img is [1, 3, H, W] float32).
 * Same float32 operations as host/runner/pipeline.py to_uint8_hwc; round half to even like numpy's rint.
 */
fun toRgb8(image: Tensor.F32): ByteArray {
    val s = image.shape
    require(s.size == 4 && s[0] == 1 && s[1] == 3) { "image must be [1, 3, H, W], is ${s.toList()}" }
    val h = s[2]
    val w = s[3]
    val plane = h * w
    val out = ByteArray(plane * 3)
    val d = image.data
    for (c in 0 until 3) {
        for (p in 0 until plane) {
            var v = (d[c * plane + p] + 1.0f) / 2.0f
            if (v < 0.0f) v = 0.0f
            if (v > 1.0f) v = 1.0f
            v *= 255.0f
            val r = Math.rint(v.toDouble())
            out[p * 3 + c] = (if (r.isNaN()) 0 else r.toInt()).toByte()
        }
    }
    return out
}

/** Runs the block chain once: each block takes its inputs by name from everything produced so far. */
fun runBlocks(
    blocks: List<Pair<ModelSpec, LoadedModel>>,
    feed: Map<String, Tensor>,
    tracer: Tracer,
    step: Int,
    repeat: Int,
    warmup: Boolean = false,
): Map<String, Tensor> {
    val pool = LinkedHashMap(feed)
    for ((spec, model) in blocks) {
        val missing = spec.inputs.map { it.name }.filter { it !in pool }
        if (missing.isNotEmpty()) {
            throw RunnerError("block ${spec.name}: input '${missing[0]}' is not produced by the UNet inputs or an earlier block")
        }
        val args = spec.inputs.associate { it.name to pool.getValue(it.name) }
        val out = tracer.span(spec.name, SpanCat.BLOCK, component = Keys.Models.UNET, step = step, repeat = repeat, warmup = warmup) {
            stage("block ${spec.name} step $step") { model.run(args) }
        }
        pool.putAll(out)
    }
    return pool
}

/**
 * Times every block at every recorded step (the first [maxSteps] when > 0), fed the same UNet inputs
 * as the recorded generation. With a [reference] (the whole UNet) it runs on the same feed beside each
 * step's chain, one block span named [SpanName.REFERENCE_BLOCK]: before the chain at even steps, after it
 * at odd ones, so that a drift of the device's speed (heat) weighs on both sides alike. One warm-up round on
 * step 0's inputs comes first (spans marked warmup): the first chain after the pass's loads runs slow.
 * Returns the largest |difference| between the chain's [unetOutput] and the UNet's own output, or null
 * when the chain never produces a tensor of that name and shape.
 */
fun profileBlocks(
    blocks: List<Pair<ModelSpec, LoadedModel>>,
    gen: Generation,
    inputs: Inputs,
    unetOutput: String,
    tracer: Tracer,
    repeat: Int,
    maxSteps: Int = 0,
    reference: LoadedModel? = null,
): Double? {
    var worst: Double? = null
    fun whole(feed: Map<String, Tensor>, i: Int, warmup: Boolean = false) {
        if (reference != null) {
            tracer.span(
                SpanName.REFERENCE_BLOCK, SpanCat.BLOCK, component = Keys.Models.UNET, step = i, repeat = repeat,
                warmup = warmup, args = json { put(Keys.Args.REFERENCE, true) },
            ) {
                stage("whole unet step $i") { reference.run(feed) }
            }
        }
    }
    fun feedOf(i: Int): Map<String, Tensor> {
        val row = inputs.tEmb[i]
        val tEmb = FloatArray(2 * row.size)
        row.copyInto(tEmb, 0)
        row.copyInto(tEmb, row.size)
        return mapOf(
            TensorNames.SAMPLE to gen.unetIo[i].first,
            TensorNames.T_EMB to Tensor.F32(intArrayOf(2, row.size), tEmb),
            TensorNames.CONTEXT to gen.context,
        )
    }
    if (gen.unetIo.isNotEmpty()) {
        whole(feedOf(0), 0, warmup = true)
        runBlocks(blocks, feedOf(0), tracer, step = 0, repeat = repeat, warmup = true)
    }
    val io = if (maxSteps > 0) gen.unetIo.take(maxSteps) else gen.unetIo
    for ((i, pair) in io.withIndex()) {
        val e = pair.second
        val feed = feedOf(i)
        if (i % 2 == 0) whole(feed, i)
        val pool = runBlocks(blocks, feed, tracer, step = i, repeat = repeat)
        if (i % 2 == 1) whole(feed, i)
        val got = pool[unetOutput] as? Tensor.F32
        if (got != null && got.shape.contentEquals(e.shape)) {
            var diff = 0.0
            for (k in got.data.indices) {
                val dk = Math.abs(got.data[k] - e.data[k]).toDouble()
                if (dk > diff || dk.isNaN()) diff = dk
            }
            val w = worst
            worst = if (w == null) diff else Math.max(w, diff)
        }
    }
    return worst
}
