package com.sdphone.runner.demo

import android.app.Application
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import androidx.lifecycle.AndroidViewModel
import com.sdphone.runner.HostContract
import com.sdphone.runner.RunController
import com.sdphone.runner.protocol.RunFiles
import com.sdphone.runner.protocol.SpanCat
import com.sdphone.runner.protocol.SpanName
import com.sdphone.runner.protocol.SpanRecord
import com.sdphone.runner.protocol.State
import java.io.File
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.update

/** Timings of the last demo generation, from its trace spans (seconds). */
data class DemoTimings(
    val load: Double = 0.0,
    val textEncoder: Double? = null,
    val stepMedian: Double? = null,
    val vaeDecoder: Double? = null,
    val generation: Double? = null,
)

data class DemoState(
    val engine: String = HostContract.ENGINE_LITERT,
    val variant: String = DemoRequests.VARIANTS.last(),
    val promptText: String = "",
    val sourceRunId: String? = null,
    val steps: String = "20",
    val seed: String = "42",
    val running: Boolean = false,
    val step: Int = 0,
    val totalSteps: Int = 0,
    val image: Bitmap? = null,
    val timings: DemoTimings? = null,
    val message: String? = null,
)

class DemoViewModel(app: Application) : AndroidViewModel(app) {
    private val _state = MutableStateFlow(DemoState())
    val state: StateFlow<DemoState> = _state

    private val filesRoot: File = app.getExternalFilesDir(null) ?: app.filesDir
    private val runsRoot = File(filesRoot, "runs")
    private val demoRoot = File(filesRoot, "demo")

    init {
        refreshSource()
    }

    fun setEngine(engine: String) = _state.update { it.copy(engine = engine) }

    fun setVariant(variant: String) {
        _state.update { it.copy(variant = variant) }
        refreshSource()
    }

    fun setPrompt(text: String) = _state.update { it.copy(promptText = text) }

    fun setSteps(text: String) = _state.update { it.copy(steps = text.filter { c -> c.isDigit() }.take(3)) }

    fun setSeed(text: String) = _state.update { it.copy(seed = text.filter { c -> c.isDigit() }.take(10)) }

    /** Picks up the latest pushed request of the selected variant (its prompt, steps and seed). */
    fun refreshSource() {
        val src = DemoRequests.latest(runsRoot, _state.value.variant)
        _state.update {
            if (src == null) {
                it.copy(
                    sourceRunId = null,
                    message = "No pushed request for variant '${it.variant}' in ${runsRoot.path}. " +
                        "Run one from the host first (python -m host.deploy ...): the demo reuses its tokens and models.",
                )
            } else if (src.request.runId == it.sourceRunId) {
                it // same source: keep the user's edits
            } else {
                it.copy(
                    sourceRunId = src.request.runId, promptText = src.request.prompt.text,
                    steps = src.request.scheduler.steps.toString(), seed = src.request.noise.seed.toString(), message = null,
                )
            }
        }
    }

    fun generate() {
        val st = _state.value
        if (st.running) return
        val steps = st.steps.toIntOrNull()
        val seed = st.seed.toLongOrNull()
        if (steps == null || steps !in 1..200 || seed == null) {
            _state.update { it.copy(message = "steps must be 1..200 and seed a number") }
            return
        }
        val src = DemoRequests.latest(runsRoot, st.variant)
        if (src == null) {
            refreshSource()
            return
        }
        val dir = try {
            DemoRequests.prepare(
                src, demoRoot, st.variant, steps, seed,
                promptText = if (st.engine == HostContract.ENGINE_MEDIAPIPE) st.promptText else null,
            )
        } catch (e: Exception) {
            _state.update { it.copy(message = "cannot prepare the demo run: ${e.message}") }
            return
        }
        val spans = java.util.Collections.synchronizedList(ArrayList<SpanRecord>())
        _state.update { it.copy(running = true, step = 0, totalSteps = steps, message = "running ${dir.name}", timings = null) }
        val started = RunController.start(
            getApplication<Application>(), dir, st.engine, File(HostContract.DEVICE_MEDIAPIPE_MODEL_DIR),
            onStep = { i, n -> _state.update { it.copy(step = i + 1, totalSteps = n) } },
            onRecord = { r -> if (r is SpanRecord) spans.add(r) },
            onDone = { status ->
                val png = File(dir, RunFiles.IMAGE_PNG)
                val bmp = if (status.state == State.OK && png.isFile) BitmapFactory.decodeFile(png.path) else null
                val timings = timingsOf(synchronized(spans) { spans.toList() })
                _state.update {
                    it.copy(
                        running = false, image = bmp ?: it.image, timings = timings,
                        message = if (status.state == State.OK) "done: ${dir.path}" else "error: ${status.message}",
                    )
                }
            },
        )
        if (!started) {
            _state.update { it.copy(running = false) }
        }
    }

    companion object {
        fun timingsOf(spans: List<SpanRecord>): DemoTimings {
            fun one(name: String) = spans.firstOrNull { it.name == name && it.cat != SpanCat.LOAD }?.dur
            val steps = spans.filter { it.name == SpanName.UNET_STEP && it.cat == SpanCat.STEP }.map { it.dur }.sorted()
            val median = if (steps.isEmpty()) null else if (steps.size % 2 == 1) steps[steps.size / 2] else (steps[steps.size / 2 - 1] + steps[steps.size / 2]) / 2
            return DemoTimings(
                load = spans.filter { it.cat == SpanCat.LOAD }.sumOf { it.dur },
                textEncoder = one(SpanName.TEXT_ENCODER),
                stepMedian = median,
                vaeDecoder = one(SpanName.VAE_DECODER),
                generation = spans.firstOrNull { it.cat == SpanCat.TOTAL }?.dur,
            )
        }
    }
}
