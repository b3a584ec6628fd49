package com.sdphone.runner.mediapipe

import android.content.Context
import android.graphics.Bitmap
import com.google.mediapipe.framework.image.BitmapExtractor
import com.google.mediapipe.tasks.vision.imagegenerator.ImageGenerator
import com.google.mediapipe.tasks.vision.imagegenerator.ImageGenerator.ImageGeneratorOptions
import com.sdphone.runner.BuildConfig
import com.sdphone.runner.HostContract
import com.sdphone.runner.protocol.AcceleratorName
import com.sdphone.runner.protocol.EventName
import com.sdphone.runner.protocol.Keys
import com.sdphone.runner.protocol.LoadPhase
import com.sdphone.runner.protocol.Residency
import com.sdphone.runner.protocol.RunFiles
import com.sdphone.runner.protocol.RunStatus
import com.sdphone.runner.protocol.SpanCat
import com.sdphone.runner.protocol.SpanName
import com.sdphone.runner.protocol.State
import com.sdphone.runner.protocol.json
import com.sdphone.runner.protocol.oneLine
import com.sdphone.runner.runner.Platform
import com.sdphone.runner.runner.Png
import com.sdphone.runner.runner.RecordListener
import com.sdphone.runner.runner.RunSession
import com.sdphone.runner.runner.RunnerError
import com.sdphone.runner.runner.StepListener
import com.sdphone.runner.runner.stage
import com.sdphone.runner.runner.writeBytesSynced
import java.io.File

/**
 * Google's MediaPipe Image Generator (SD 1.x, its own converted weights) run through the same run
 * protocol, as a peer to compare this project's LiteRT models against on the same phone.
 *
 * From request.json it takes run_id, prompt.text, scheduler.steps (iterations), noise.seed,
 * runtime.warmup / repeats and profiling.memory_interval_ms; the image must be 512x512 (MediaPipe's
 * fixed output). It does not use the request's tokens, noise, scheduler table, guidance or models:
 * MediaPipe tokenizes, draws its noise from the seed and schedules on its own, so its images are not
 * pixel-comparable with the protocol runners; its timings are. A warning event says so in every trace.
 *
 * Spans: one "load" (component "image_generator", phase cold, file = the weights folder), per
 * generation a "generation" span (cat total) and one "unet_step" span (cat step) per iteration, timed
 * around ImageGenerator.execute(). The API exposes no per-component timing: the first iteration also
 * encodes the prompt and the last one also decodes the image (args.includes says so).
 */
class MediaPipeRunner(
    private val context: Context,
    private val platform: Platform,
    private val modelDir: File,
    private val listener: RecordListener? = null,
    private val onStep: StepListener? = null,
) {
    fun run(runDir: File): RunStatus {
        val session = try {
            RunSession(runDir, platform, listener)
        } catch (e: RunnerError) {
            return RunStatus(state = State.ERROR, runId = null, message = oneLine(e.message))
        }
        session.use { s ->
            return try {
                execute(s)
            } catch (e: Throwable) {
                s.fail(e)
            }
        }
    }

    private fun execute(s: RunSession): RunStatus {
        val extras = linkedMapOf<String, Any?>(
            Keys.MetaRuntime.ENGINE to HostContract.ENGINE_MEDIAPIPE,
            Keys.MetaRuntime.API to "tasks-vision-image-generator ${BuildConfig.MEDIAPIPE_VERSION}",
        )
        val req = try {
            s.readRequest()
        } catch (e: Exception) {
            s.writeMeta(null, null, extras)
            throw e
        }
        // MediaPipe picks its own delegate (GPU) and precision, and holds its one generator for the whole
        // run; the trace says what is known.
        val runtime = req.runtime.copy(accelerator = AcceleratorName.GPU, residency = Residency.ALL)
        s.writeMeta(runtime, DELEGATE, extras)
        s.status(State.RUNNING)
        s.startSampler(req.profiling.memoryIntervalMs)
        val tracer = s.tracer
        if (req.height != 512 || req.width != 512) {
            throw RunnerError("image ${req.height}x${req.width}: the MediaPipe Image Generator makes 512x512 images only")
        }
        val steps = req.scheduler.steps
        val seed = req.noise.seed.toInt()
        tracer.event(
            EventName.WARNING,
            "mediapipe engine: own tokenizer, noise (seed $seed), scheduler and guidance; request tokens, noise.bin, " +
                "scheduler table and negative prompt are not used; images are not pixel-comparable, timings are",
            json {
                put(Keys.Args.ENGINE, HostContract.ENGINE_MEDIAPIPE)
                put(Keys.Args.SEED, seed)
                put(Keys.Args.ITERATIONS, steps)
            },
        )
        if (req.profiling.perOp || req.profiling.perBlock) {
            tracer.event(EventName.WARNING, "mediapipe engine: per_op and per_block profiling are not available")
        }
        if (req.runtime.residency == Residency.PHASE) {
            tracer.event(EventName.WARNING, "mediapipe engine: runtime.residency 'phase' is not available, the image generator is loaded once and held for the whole run")
        }
        if (!modelDir.isDirectory) {
            throw RunnerError("$modelDir: MediaPipe Image Generator weights folder not found")
        }

        val generator = tracer.span(
            SpanName.LOAD, SpanCat.LOAD, component = COMPONENT,
            args = json {
                put(Keys.Args.PHASE, LoadPhase.COLD)
                put(Keys.Args.FILE, modelDir.absolutePath)
            },
        ) {
            stage("load MediaPipe Image Generator ($modelDir)") {
                val options = ImageGeneratorOptions.builder().setImageGeneratorModelDirectory(modelDir.absolutePath).build()
                ImageGenerator.createFromOptions(context, options)
            }
        }
        try {
            val total = req.runtime.warmup + req.runtime.repeats
            var bitmap: Bitmap? = null
            for (n in 0 until total) {
                val warm = n < req.runtime.warmup
                val repeat = if (warm) n else n - req.runtime.warmup
                bitmap = tracer.span(SpanName.GENERATION, SpanCat.TOTAL, repeat = repeat, warmup = warm) {
                    generator.setInputs(req.prompt.text, steps, seed)
                    var last: Bitmap? = null
                    for (i in 0 until steps) {
                        val includes = ArrayList<String>()
                        if (i == 0) includes.add(Keys.Models.TEXT_ENCODER)
                        if (i == steps - 1) includes.add(Keys.Models.VAE_DECODER)
                        val args = json {
                            put(Keys.Args.ENGINE, HostContract.ENGINE_MEDIAPIPE)
                            putOpt(Keys.Args.INCLUDES, if (includes.isEmpty()) null else includes)
                        }
                        val result = tracer.span(SpanName.UNET_STEP, SpanCat.STEP, component = Keys.Models.UNET, step = i, repeat = repeat, warmup = warm, args = args) {
                            stage("mediapipe iteration $i") { generator.execute(false) }
                        }
                        if (i == steps - 1) {
                            val image = result?.generatedImage() ?: throw RunnerError("mediapipe: no image after the last iteration")
                            last = BitmapExtractor.extract(image)
                        }
                        onStep?.onStep(i, steps)
                    }
                    last
                }
                tracer.event(
                    EventName.PROGRESS, "generation ${n + 1}/$total done",
                    json {
                        put(Keys.Args.REPEAT, repeat)
                        put(Keys.Args.WARMUP, warm)
                    },
                )
                platform.debugMemory(tracer.now())?.let { tracer.write(it) }
            }
            val bmp = bitmap ?: throw RunnerError("mediapipe: no image")
            writeBytesSynced(File(s.runDir, RunFiles.IMAGE_PNG), Png.encodeRgb(bmp.width, bmp.height, rgbOf(bmp)))
            tracer.event(EventName.PROGRESS, "image saved", json { put(Keys.Args.FILE, RunFiles.IMAGE_PNG) })
        } finally {
            generator.close()
        }
        s.stopSampler()
        return s.status(State.OK, images = listOf(RunFiles.IMAGE_PNG))
    }

    companion object {
        const val DELEGATE = "mediapipe-image-generator"
        const val COMPONENT = "image_generator"

        fun rgbOf(bmp: Bitmap): ByteArray {
            val w = bmp.width
            val h = bmp.height
            val px = IntArray(w * h)
            bmp.getPixels(px, 0, w, 0, 0, w, h)
            val out = ByteArray(w * h * 3)
            for (i in px.indices) {
                val c = px[i]
                out[i * 3] = (c shr 16 and 0xff).toByte()
                out[i * 3 + 1] = (c shr 8 and 0xff).toByte()
                out[i * 3 + 2] = (c and 0xff).toByte()
            }
            return out
        }
    }
}
