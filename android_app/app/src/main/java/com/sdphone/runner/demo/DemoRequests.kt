package com.sdphone.runner.demo

import com.sdphone.runner.protocol.Json
import com.sdphone.runner.protocol.NoiseSpec
import com.sdphone.runner.protocol.RunFiles
import com.sdphone.runner.protocol.RunRequest
import com.sdphone.runner.protocol.TensorNames
import com.sdphone.runner.protocol.writeFileAtomically
import com.sdphone.runner.runner.Runner
import com.sdphone.runner.runner.bytesSha256
import com.sdphone.runner.runner.floatsToLeBytes
import com.sdphone.runner.runner.writeBytesSynced
import java.io.File
import java.text.SimpleDateFormat
import java.util.Date
import java.util.Locale
import java.util.TimeZone

/** A host-pushed run folder and its parsed request. */
class PushedRun(val dir: File, val request: RunRequest)

/**
 * The demo screen runs host-prepared requests only: the tokens come from the host's tokenizer (there is
 * none on the phone). It takes the latest pushed request of a variant and derives a new run folder
 * from it, with the user's steps and seed.
 */
object DemoRequests {
    /** Model variants the host builds; a run_id ends with "_<variant>" (e.g. 20261121T233000Z_optimized). */
    val VARIANTS = listOf("baseline", "optimized")

    /** The newest run folder under [runsRoot] whose request parses and whose run_id ends with "_[variant]". */
    fun latest(runsRoot: File, variant: String): PushedRun? {
        val dirs = runsRoot.listFiles { f -> f.isDirectory }?.toList() ?: return null
        return dirs
            .mapNotNull { d ->
                val f = File(d, RunFiles.REQUEST)
                if (!f.isFile) return@mapNotNull null
                try {
                    Pair(f.lastModified(), PushedRun(d, RunRequest.parse(f.readText())))
                } catch (e: Exception) {
                    null
                }
            }
            .filter { it.second.request.runId.endsWith("_$variant") }
            .maxByOrNull { it.first }
            ?.second
    }

    /**
     * Writes `<demoRoot>/<run_id>/request.json` + noise.bin derived from [source]: its models (by absolute
     * path), tokens and runtime; [steps] steps (the host's table when unchanged, else [DemoScheduler]);
     * noise from [seed] with [DemoNoise] (not the host's generator); one measured generation, no
     * per-block or per-op profiling. [promptText] replaces prompt.text (only the MediaPipe engine reads it).
     */
    fun prepare(source: PushedRun, demoRoot: File, variant: String, steps: Int, seed: Long, promptText: String? = null): File {
        val src = source.request
        val stamp = SimpleDateFormat("yyyyMMdd'T'HHmmss'Z'", Locale.ROOT).apply { timeZone = TimeZone.getTimeZone("UTC") }.format(Date())
        val runId = "demo_${stamp}_$variant"
        val dir = File(demoRoot, runId)
        if (!dir.mkdirs() && !dir.isDirectory) {
            throw java.io.IOException("cannot create $dir")
        }
        val noise = DemoNoise.gaussian(seed, src.noise.shape.fold(1) { a, b -> a * b })
        val noiseBytes = floatsToLeBytes(noise)
        writeBytesSynced(File(dir, RunFiles.NOISE), noiseBytes)
        val scheduler = if (steps == src.scheduler.steps) {
            src.scheduler
        } else {
            DemoScheduler.table(src.scheduler.name, steps, src.scheduler.karras, src.unet.input(TensorNames.T_EMB).shape.last())
        }
        val req = src.copy(
            runId = runId,
            modelsDir = Runner.modelsDir(source.dir, src).absolutePath,
            prompt = if (promptText == null) src.prompt else src.prompt.copy(text = promptText),
            noise = NoiseSpec(
                file = RunFiles.NOISE, shape = src.noise.shape, dtype = src.noise.dtype, seed = seed,
                sha256 = bytesSha256(noiseBytes), generator = DemoNoise.GENERATOR,
            ),
            scheduler = scheduler,
            runtime = src.runtime.copy(warmup = 0, repeats = 1),
            profiling = src.profiling.copy(perOp = false, perBlock = false, blockModels = emptyList(), blockSteps = null),
        ).check()
        writeFileAtomically(File(dir, RunFiles.REQUEST), Json.write(RunRequest.toJson(req)) + "\n")
        return dir
    }
}
