package com.sdphone.runner.runner

import com.sdphone.runner.protocol.EventName
import com.sdphone.runner.protocol.Keys
import com.sdphone.runner.protocol.LoadPhase
import com.sdphone.runner.protocol.MemoryRecord
import com.sdphone.runner.protocol.MetaRecord
import com.sdphone.runner.protocol.ModelSpec
import com.sdphone.runner.protocol.ProtocolError
import com.sdphone.runner.protocol.Residency
import com.sdphone.runner.protocol.RunFiles
import com.sdphone.runner.protocol.RunRequest
import com.sdphone.runner.protocol.RunStatus
import com.sdphone.runner.protocol.RuntimeSpec
import com.sdphone.runner.protocol.SpanCat
import com.sdphone.runner.protocol.SpanName
import com.sdphone.runner.protocol.State
import com.sdphone.runner.protocol.TraceWriter
import com.sdphone.runner.protocol.json
import com.sdphone.runner.protocol.oneLine
import com.sdphone.runner.protocol.writeFileAtomically
import com.sdphone.runner.protocol.Json
import java.io.File
import java.util.Locale

/** What the runner needs from the device (Android: [com.sdphone.runner.runner.AndroidPlatform]; tests: a fake). */
interface Platform {
    /** meta.runner_version, e.g. "1.0.0 (litert 2.3.0)". */
    val runnerVersion: String

    /** meta.device: model, os, soc and any extras. */
    fun deviceInfo(): Map<String, Any?>

    /** A memory record from a second source (Android: Debug.MemoryInfo PSS), or null. */
    fun debugMemory(t: Double): MemoryRecord?
}

/**
 * One execution of one run folder's files: trace, status, memory sampler and the failure path,
 * shared by the LiteRT runner and the MediaPipe peer. Follows docs/protocol.md, "Failure":
 * meta first, status "running" right after it, and on any error an "error" event then an error status.
 */
class RunSession(val runDir: File, val platform: Platform, listener: RecordListener?) : AutoCloseable {
    val clock = Clock()
    private val writer: TraceWriter
    val tracer: Tracer
    var rawRequest: String? = null
    var request: RunRequest? = null
    private var metaWritten = false
    private var sampler: MemorySampler? = null

    init {
        if (!runDir.isDirectory) {
            throw RunnerError("$runDir: run folder not found")
        }
        for (stale in listOf(RunFiles.TRACE, RunFiles.IMAGE_PNG, RunFiles.IMAGE_F32, RunFiles.STATUS)) {
            File(runDir, stale).delete()
        }
        writer = try {
            TraceWriter(File(runDir, RunFiles.TRACE))
        } catch (e: java.io.IOException) {
            throw RunnerError("${File(runDir, RunFiles.TRACE)}: cannot write the trace (${e.message})")
        }
        tracer = Tracer(writer, clock, listener)
        current.set(this)
    }

    /** The request's run id; from the raw file when the request is invalid; null when unreadable. */
    val runId: String?
        get() = request?.runId ?: RunRequest.rawRunId(rawRequest)

    fun writeMeta(runtime: RuntimeSpec?, delegate: String?, extras: Map<String, Any?>) {
        tracer.write(
            MetaRecord(
                t = tracer.now(), runId = runId, runnerVersion = platform.runnerVersion, device = platform.deviceInfo(),
                accelerator = runtime?.accelerator, precision = runtime?.precision, threads = runtime?.threads,
                delegate = if (runtime == null) null else delegate, residency = runtime?.residency, runtimeExtras = extras,
            ),
        )
        metaWritten = true
    }

    fun status(state: String, message: String? = null, images: List<String>? = null): RunStatus {
        val st = RunStatus(
            state = state, runId = runId, message = message,
            finishedT = if (state == State.RUNNING) null else tracer.now(), images = images,
        )
        writeFileAtomically(File(runDir, RunFiles.STATUS), Json.write(st.toJson()) + "\n")
        return st
    }

    fun startSampler(intervalMs: Int) {
        sampler = MemorySampler(tracer, intervalMs.toLong()).start()
    }

    fun stopSampler() {
        sampler?.stop()
    }

    /** Reads request.json into [rawRequest] and parses it strictly into [request]. */
    fun readRequest(): RunRequest {
        val f = File(runDir, RunFiles.REQUEST)
        val text = try {
            f.readText(Charsets.UTF_8)
        } catch (e: java.io.IOException) {
            throw ProtocolError("$f: cannot read (${e.message})")
        }
        rawRequest = text
        val r = RunRequest.parse(text)
        request = r
        return r
    }

    /** Records [err]: an "oom" event for out-of-memory, meta (if not yet), "error" event, error status. Never throws. */
    fun fail(err: Throwable): RunStatus {
        val message = oneLine(messageOf(err)).ifEmpty { err.javaClass.simpleName }
        try {
            stopSampler()
        } catch (e: Exception) {
            // already failing
        }
        try {
            if (!metaWritten) {
                writeMeta(null, null, emptyMap())
            }
            val oom = oomOf(err)
            if (oom != null) {
                tracer.event(EventName.OOM, oneLine(oom.message ?: "OutOfMemoryError"), json { put(Keys.Args.STAGE, (err as? StageOutOfMemory)?.stage) })
            }
            tracer.event(EventName.ERROR, message, json { put(Keys.Args.ERROR_TYPE, errorType(err)) })
        } catch (e: Exception) {
            // the trace itself failed (disk full): the status below still tells
        }
        return try {
            status(State.ERROR, message)
        } catch (e: Exception) {
            RunStatus(state = State.ERROR, runId = runId, message = message)
        }
    }

    override fun close() {
        current.compareAndSet(this, null)
        try {
            stopSampler()
        } finally {
            writer.close()
        }
    }

    /** Records memory pressure reported by the OS (onTrimMemory) as an "oom" event, with its level. */
    fun memoryPressure(message: String, level: Int) {
        try {
            tracer.event(EventName.OOM, message, json { put(Keys.Args.LEVEL, level) })
        } catch (e: Exception) {
            // the trace is closed or failing: nothing to add
        }
    }

    companion object {
        /** The session being executed in this process, if any (for OS callbacks such as onTrimMemory). */
        val current = java.util.concurrent.atomic.AtomicReference<RunSession?>(null)

        fun messageOf(err: Throwable): String = when (err) {
            is RunnerError, is ProtocolError, is StageOutOfMemory -> err.message ?: ""
            else -> "${err.javaClass.name}: ${firstLine(err.message)}"
        }

        fun errorType(err: Throwable): String = when (err) {
            is StageOutOfMemory -> "OutOfMemoryError"
            is RunnerError -> err.cause?.javaClass?.simpleName ?: "RunnerError"
            else -> err.javaClass.simpleName
        }

        fun oomOf(err: Throwable): OutOfMemoryError? = when (err) {
            is StageOutOfMemory -> err.error
            is OutOfMemoryError -> err
            else -> null
        }
    }
}

/**
 * The LiteRT runner: executes a run folder's request.json with this project's models and writes
 * trace.jsonl, image.png, image.f32 and status.json (docs/protocol.md). [run] never throws: it returns
 * the final status, which is also in status.json (when the folder is writable).
 */
class Runner(
    private val platform: Platform,
    private val backends: BackendFactory,
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
                if (e is InterruptedException) {
                    Thread.currentThread().interrupt()
                }
                s.fail(e)
            }
        }
    }

    private fun execute(s: RunSession): RunStatus {
        val req = try {
            s.readRequest()
        } catch (e: Exception) {
            s.writeMeta(null, null, backends.runtimeExtras)
            throw e
        }
        val rt = req.runtime
        val prof = req.profiling
        s.writeMeta(rt, backends.delegate(rt), backends.runtimeExtras)
        s.status(State.RUNNING)
        s.startSampler(prof.memoryIntervalMs)
        val tracer = s.tracer
        if (prof.perOp) {
            tracer.event(EventName.WARNING, "per_op profiling unavailable on the android runner: the LiteRT CompiledModel Kotlin API has no op profiler")
        }

        val noise = loadNoise(s.runDir, req)
        val inputs = Inputs.of(req, noise)
        val mdir = modelsDir(s.runDir, req)
        for (m in req.components) {
            verifyFile(File(mdir, m.file), m.sha256, m.name)
        }
        for (b in req.blocks) {
            verifyFile(File(mdir, b.file), b.sha256, "block ${b.name}")
        }

        val backend = stage("create ${rt.accelerator} backend") { backends.create(rt) }
        backend.use {
            var models: Models? = if (rt.residency == Residency.PHASE) {
                // The same load measurements, each instance closed before the next component loads; every
                // generation then loads each model right before its stage and closes it right after.
                for (m in req.components) {
                    load(backend, mdir, m, tracer).close()
                }
                Models.perStage(req) { spec, repeat, warmup ->
                    load(backend, mdir, spec, tracer, listOf(LoadPhase.STAGE), repeat = repeat, warmup = warmup)
                }
            } else {
                Models.held(
                    textEncoder = load(backend, mdir, req.textEncoder, tracer),
                    unet = load(backend, mdir, req.unet, tracer),
                    vaeDecoder = load(backend, mdir, req.vaeDecoder, tracer),
                    request = req,
                )
            }
            try {
                val steps = req.scheduler.steps
                val total = rt.warmup + rt.repeats
                var gen: Generation? = null
                for (n in 0 until total) {
                    val warm = n < rt.warmup
                    val repeat = if (warm) n else n - rt.warmup
                    gen = generate(models!!, inputs, steps, tracer, repeat, warm, record = req.blocks.isNotEmpty() && n == total - 1, onStep = onStep)
                    tracer.event(
                        EventName.PROGRESS, "generation ${n + 1}/$total done",
                        json {
                            put(Keys.Args.REPEAT, repeat)
                            put(Keys.Args.WARMUP, warm)
                        },
                    )
                    platform.debugMemory(tracer.now())?.let { tracer.write(it) }
                }
                writeImages(s.runDir, gen!!)
                tracer.event(EventName.PROGRESS, "image saved", json { put(Keys.Args.FILE, RunFiles.IMAGE_PNG) })

                if (req.blocks.isNotEmpty()) {
                    val unetOutput = models!!.unetOutput
                    models.close() // the block chain replaces the UNet from here on
                    models = null
                    val loaded = ArrayList<Pair<ModelSpec, LoadedModel>>()
                    var whole: LoadedModel? = null
                    try {
                        for (b in req.blocks) {
                            loaded.add(Pair(b, load(backend, mdir, b, tracer, listOf(LoadPhase.COLD))))
                        }
                        if (prof.blockReference ?: true) {
                            // the whole UNet again, timed beside the chain (holds it and the blocks together)
                            whole = load(backend, mdir, req.unet, tracer, listOf(LoadPhase.REFERENCE))
                        }
                        val worst = profileBlocks(
                            loaded, gen, inputs, unetOutput, tracer, repeat = rt.repeats - 1,
                            maxSteps = prof.blockSteps ?: 0, reference = whole,
                        )
                        if (worst != null) {
                            tracer.event(
                                EventName.PER_BLOCK_CHECK, "block chain vs unet: max |diff| ${String.format(Locale.ROOT, "%.3g", worst)}",
                                json {
                                    put(Keys.Args.OUTPUT, unetOutput)
                                    put(Keys.Args.MAX_ABS_DIFF, worst)
                                },
                            )
                        }
                    } finally {
                        loaded.forEach { it.second.close() }
                        whole?.close()
                    }
                }
            } finally {
                models?.close()
            }
        }
        s.stopSampler()
        return s.status(State.OK, images = listOf(RunFiles.IMAGE_PNG))
    }

    companion object {
        fun modelsDir(runDir: File, req: RunRequest): File {
            val base = File(req.modelsDir)
            return if (base.isAbsolute) base else File(runDir, req.modelsDir)
        }

        /** Reads and verifies noise.bin (sha256 and size). */
        fun loadNoise(runDir: File, req: RunRequest): FloatArray {
            val f = File(runDir, req.noise.file)
            verifyFile(f, req.noise.sha256, "noise")
            val raw = f.readBytes()
            val want = req.noise.shape.fold(1) { a, b -> a * b } * 4
            if (raw.size != want) {
                throw RunnerError("$f: ${raw.size} bytes, expected $want for float32 ${req.noise.shape.toList()}")
            }
            return floatsFromLeBytes(raw)
        }

        /**
         * Loads [spec] once per phase (a "warm" load is a second load of the same file), one load span
         * each (component = model name, args phase and file); returns the last instance. Stage loads
         * (residency "phase") pass the generation's [repeat] / [warmup] for their span.
         */
        fun load(
            backend: ModelBackend,
            mdir: File,
            spec: ModelSpec,
            tracer: Tracer,
            phases: List<String> = listOf(LoadPhase.COLD, LoadPhase.WARM),
            repeat: Int = 0,
            warmup: Boolean = false,
        ): LoadedModel {
            var model: LoadedModel? = null
            for (phase in phases) {
                model?.close() // release the previous instance before loading the next
                model = null
                model = tracer.span(
                    SpanName.LOAD, SpanCat.LOAD, component = spec.name, repeat = repeat, warmup = warmup,
                    args = json {
                        put(Keys.Args.PHASE, phase)
                        put(Keys.Args.FILE, spec.file)
                    },
                ) {
                    stage("load ${spec.name} (${spec.file})") { backend.load(File(mdir, spec.file), spec) }
                }
            }
            return model!!
        }

        fun writeImages(runDir: File, gen: Generation) {
            writeBytesSynced(File(runDir, RunFiles.IMAGE_F32), floatsToLeBytes(gen.image.data))
            val h = gen.image.shape[2]
            val w = gen.image.shape[3]
            writeBytesSynced(File(runDir, RunFiles.IMAGE_PNG), Png.encodeRgb(w, h, toRgb8(gen.image)))
        }
    }
}
