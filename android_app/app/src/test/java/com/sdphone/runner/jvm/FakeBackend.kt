package com.sdphone.runner.jvm

import com.sdphone.runner.protocol.MemoryRecord
import com.sdphone.runner.protocol.ModelSpec
import com.sdphone.runner.protocol.RuntimeSpec
import com.sdphone.runner.protocol.TensorNames
import com.sdphone.runner.runner.BackendFactory
import com.sdphone.runner.runner.LoadedModel
import com.sdphone.runner.runner.ModelBackend
import com.sdphone.runner.runner.Platform
import com.sdphone.runner.runner.RunnerError
import com.sdphone.runner.runner.Tensor
import java.io.File

/*
 * Deterministic stand-ins for the three SD components and two UNet blocks, so that the runner's
 * protocol code runs on a plain JVM. tests/apps/test_android_app.py computes the same functions
 * with numpy (same float32 operations, same order) and compares image.f32 bit for bit.
 *
 *   text_encoder  emb[b, l, d]  = (ids[b, l] % 1000) * 0.001f + d * 0.01f
 *   unet          out[b, ...]   = sample[b, ...] * 0.5f + t_emb[b, 0] * 0.01f + context[b, 1, 0] * 0.1f
 *   vae_decoder   img[0, c, y, x] = latents[0, c, y / 8, x / 8] * 0.5f - 0.1f   (c < 3)
 *   blk_a         h = sample * 0.5f + t_emb[b, 0] * 0.01f
 *   blk_b         noise_pred = h + context[b, 1, 0] * 0.1f      (so the chain equals the unet exactly)
 */
class FakeBackendFactory : BackendFactory {
    /** What happened to the component models of the run (runtime.residency shows here). */
    val ledger = ModelLedger()

    override fun delegate(runtime: RuntimeSpec): String? = "fake"

    override val runtimeExtras: Map<String, Any?> = linkedMapOf("engine" to "fake-jvm")

    override fun create(runtime: RuntimeSpec): ModelBackend = FakeBackend(ledger)
}

/** Loads of the three component models (block models are not counted), and how many were open at once. */
class ModelLedger {
    var loads = 0
        private set
    var live = 0
        private set
    var peakLive = 0
        private set

    fun opened() {
        loads++
        live++
        peakLive = maxOf(peakLive, live)
    }

    fun closed() {
        live--
    }

    fun toJson(): Map<String, Any?> = linkedMapOf("loads" to loads, "peak_live" to peakLive, "live_at_end" to live)
}

class FakeBackend(private val ledger: ModelLedger = ModelLedger()) : ModelBackend {
    override fun load(file: File, spec: ModelSpec): LoadedModel {
        if (!file.isFile) throw RunnerError("$file: not found")
        val component = spec.signature in COMPONENTS
        if (component) ledger.opened()
        return FakeModel(spec) { if (component) ledger.closed() }
    }

    override fun close() {}

    companion object {
        val COMPONENTS = setOf("text_encoder", "unet", "vae_decoder")
    }
}

private class FakeModel(val spec: ModelSpec, private val onClose: () -> Unit) : LoadedModel {
    private var closed = false

    override fun run(inputs: Map<String, Tensor>): Map<String, Tensor> {
        if (closed) throw RunnerError("fake backend: ${spec.name} run after close()")
        val out = spec.outputs.first()
        val data: FloatArray = when (spec.signature) {
            "text_encoder" -> {
                val ids = inputs.getValue(TensorNames.INPUT_IDS) as Tensor.I32
                val l = ids.shape[1]
                val d = out.shape[2]
                FloatArray(out.size) { i ->
                    val b = i / (l * d)
                    val li = (i / d) % l
                    val di = i % d
                    (ids.data[b * l + li] % 1000).toFloat() * 0.001f + di.toFloat() * 0.01f
                }
            }
            "unet" -> unetLike(inputs, out.size, withContext = true, withTemb = true, base = TensorNames.SAMPLE, scale = 0.5f)
            "blk_a" -> unetLike(inputs, out.size, withContext = false, withTemb = true, base = TensorNames.SAMPLE, scale = 0.5f)
            "blk_b" -> unetLike(inputs, out.size, withContext = true, withTemb = false, base = "h", scale = 1.0f)
            "vae_decoder" -> {
                val lat = inputs.getValue(TensorNames.LATENTS) as Tensor.F32
                val lh = lat.shape[2]
                val lw = lat.shape[3]
                val h = out.shape[2]
                val w = out.shape[3]
                FloatArray(out.size) { i ->
                    val c = i / (h * w)
                    val y = (i / w) % h
                    val x = i % w
                    lat.data[c * lh * lw + (y / 8) * lw + (x / 8)] * 0.5f - 0.1f
                }
            }
            else -> throw RunnerError("fake backend: unknown signature ${spec.signature}")
        }
        return mapOf(out.name to Tensor.F32(out.shape, data))
    }

    private fun unetLike(inputs: Map<String, Tensor>, size: Int, withContext: Boolean, withTemb: Boolean, base: String, scale: Float): FloatArray {
        val s = inputs.getValue(base) as Tensor.F32
        val per = size / 2
        val temb = inputs[TensorNames.T_EMB] as Tensor.F32?
        val ctx = inputs[TensorNames.CONTEXT] as Tensor.F32?
        return FloatArray(size) { i ->
            val b = i / per
            var v = if (scale == 1.0f) s.data[i] else s.data[i] * scale
            if (withTemb) v += temb!!.data[b * temb.shape[1]] * 0.01f
            if (withContext) {
                val l = ctx!!.shape[1]
                val d = ctx.shape[2]
                v += ctx.data[b * l * d + 1 * d + 0] * 0.1f
            }
            v
        }
    }

    override fun close() {
        if (!closed) {
            closed = true
            onClose()
        }
    }
}

class JvmPlatform : Platform {
    override val runnerVersion = "1.0.0 (jvm test)"

    override fun deviceInfo(): Map<String, Any?> = linkedMapOf(
        "model" to "jvm", "os" to System.getProperty("os.name"), "soc" to System.getProperty("os.arch"),
    )

    override fun debugMemory(t: Double): MemoryRecord? = null
}
