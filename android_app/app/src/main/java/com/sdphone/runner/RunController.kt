package com.sdphone.runner

import android.content.ComponentCallbacks2
import android.content.Context
import android.content.res.Configuration
import android.util.Log
import com.sdphone.runner.mediapipe.MediaPipeRunner
import com.sdphone.runner.protocol.EventRecord
import com.sdphone.runner.protocol.RunStatus
import com.sdphone.runner.protocol.SpanCat
import com.sdphone.runner.protocol.SpanRecord
import com.sdphone.runner.protocol.State
import com.sdphone.runner.protocol.TraceRecord
import com.sdphone.runner.protocol.oneLine
import com.sdphone.runner.runner.AndroidPlatform
import com.sdphone.runner.runner.LiteRtBackendFactory
import com.sdphone.runner.runner.RecordListener
import com.sdphone.runner.runner.RunSession
import com.sdphone.runner.runner.Runner
import com.sdphone.runner.runner.RunnerError
import com.sdphone.runner.runner.StepListener
import java.io.File
import java.util.Locale
import java.util.concurrent.atomic.AtomicReference

/**
 * Process-wide: runs one run folder at a time on a background thread and tells the host about it on
 * logcat (tag HostContract.LOG_TAG) with the three stable line shapes of HostContract:
 * `RUN_STARTED run_dir=.. engine=..`, `RUN_PROGRESS run_dir=.. ..`, `RUN_FINISHED run_dir=.. state=.. message=..`.
 */
object RunController {
    private val active = AtomicReference<String?>(null)
    private var callbacksRegistered = false

    /** Memory pressure while a run is active becomes an "oom" event in its trace (see docs/protocol.md). */
    private val memoryCallbacks = object : ComponentCallbacks2 {
        @Suppress("DEPRECATION")
        override fun onTrimMemory(level: Int) {
            val name = when (level) {
                ComponentCallbacks2.TRIM_MEMORY_RUNNING_CRITICAL -> "TRIM_MEMORY_RUNNING_CRITICAL"
                ComponentCallbacks2.TRIM_MEMORY_COMPLETE -> "TRIM_MEMORY_COMPLETE"
                else -> return // RUNNING_MODERATE / LOW and UI_HIDDEN are not pressure worth a record
            }
            RunSession.current.get()?.memoryPressure("onTrimMemory($name)", level)
        }

        override fun onLowMemory() {
            RunSession.current.get()?.memoryPressure("onLowMemory()", ComponentCallbacks2.TRIM_MEMORY_COMPLETE)
        }

        override fun onConfigurationChanged(newConfig: Configuration) {}
    }

    /** The run folder being executed, or null. */
    val activeRunDir: String?
        get() = active.get()

    fun log(line: String) {
        Log.i(HostContract.LOG_TAG, line)
    }

    /** Resolves the intent's run_dir: it must lie inside this app's external files dir. */
    fun resolveRunDir(context: Context, path: String): File {
        val root = context.getExternalFilesDir(null) ?: throw RunnerError("external storage is not available")
        val dir = File(path).canonicalFile
        val rootPath = root.canonicalFile.path + File.separator
        if (!(dir.path + File.separator).startsWith(rootPath)) {
            throw RunnerError("$path: run folders must be inside ${root.path} (HostContract.DEVICE_RUNS_ROOT)")
        }
        return dir
    }

    /**
     * Starts [runDir] on a new thread unless a run is active (then that folder gets an error status and
     * nothing else runs). [onStep] and [onDone] are called on the worker thread.
     */
    fun start(
        context: Context,
        runDir: File,
        engine: String,
        mediapipeModelDir: File,
        onStep: StepListener? = null,
        onRecord: RecordListener? = null,
        onDone: (RunStatus) -> Unit = {},
    ): Boolean {
        val app = context.applicationContext
        synchronized(this) {
            if (!callbacksRegistered) {
                app.registerComponentCallbacks(memoryCallbacks)
                callbacksRegistered = true
            }
        }
        val tag = "run_dir=${runDir.path}"
        if (!active.compareAndSet(null, runDir.path)) {
            val busy = "another run is in progress (${active.get()})"
            val status = rejectRun(app, runDir, busy)
            log("${HostContract.LOG_FINISHED_MARKER} $tag state=${status.state} message=${status.message}")
            onDone(status)
            return false
        }
        log("${HostContract.LOG_STARTED_MARKER} $tag engine=$engine")
        val listener = RecordListener { r ->
            describe(r)?.let { log("${HostContract.LOG_PROGRESS_MARKER} $tag $it") }
            onRecord?.onRecord(r)
        }
        val worker = Thread({
            val status = try {
                when (engine) {
                    HostContract.ENGINE_LITERT -> Runner(AndroidPlatform(app), LiteRtBackendFactory(), listener, onStep).run(runDir)
                    HostContract.ENGINE_MEDIAPIPE -> MediaPipeRunner(
                        app, AndroidPlatform(app, "mediapipe ${BuildConfig.MEDIAPIPE_VERSION}"), mediapipeModelDir, listener, onStep,
                    ).run(runDir)
                    else -> rejectRun(app, runDir, "unknown engine '$engine' (expected ${HostContract.ENGINE_LITERT} or ${HostContract.ENGINE_MEDIAPIPE})")
                }
            } catch (e: Throwable) {
                RunStatus(state = State.ERROR, runId = null, message = oneLine("${e.javaClass.name}: ${e.message}"))
            } finally {
                active.set(null)
            }
            log("${HostContract.LOG_FINISHED_MARKER} $tag state=${status.state} message=${oneLine(status.message ?: "")}")
            onDone(status)
        }, "sdphone-run")
        worker.priority = Thread.MAX_PRIORITY
        worker.start()
        return true
    }

    /** Writes the protocol's failure files into [runDir] without running anything. */
    private fun rejectRun(context: Context, runDir: File, why: String): RunStatus = try {
        RunSession(runDir, AndroidPlatform(context), null).use { s ->
            try {
                s.readRequest()
            } catch (e: Exception) {
                // the error below is the point; an unreadable request only leaves run_id null
            }
            s.fail(RunnerError(why))
        }
    } catch (e: RunnerError) {
        RunStatus(state = State.ERROR, runId = null, message = oneLine(e.message))
    }

    /** The logcat progress line for a record, or null for records not worth a line. */
    private fun describe(r: TraceRecord): String? = when (r) {
        is SpanRecord -> when (r.cat) {
            SpanCat.STEP -> "step=${(r.step ?: 0) + 1} repeat=${r.repeat} warmup=${r.warmup} dur=${String.format(Locale.ROOT, "%.3f", r.dur)}"
            SpanCat.TOTAL, SpanCat.COMPONENT, SpanCat.LOAD -> "${r.name} component=${r.component} repeat=${r.repeat} warmup=${r.warmup} dur=${String.format(Locale.ROOT, "%.3f", r.dur)}"
            else -> null
        }
        is EventRecord -> "event=${r.name} message=${oneLine(r.message)}"
        else -> null
    }
}
