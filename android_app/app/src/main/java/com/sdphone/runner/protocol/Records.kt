package com.sdphone.runner.protocol

/**
 * Trace records (one line of trace.jsonl each) and the run status, as written by this runner.
 * Field names and presence follow host/protocol/trace_record.schema.json and status.schema.json:
 * span.component / span.step are always written (null allowed), optional fields are left out when null.
 */
sealed class TraceRecord {
    abstract val t: Double

    abstract fun toJson(): Map<String, Any?>
}

data class MetaRecord(
    override val t: Double,
    val runId: String?,
    val runnerVersion: String,
    /** Must hold model, os and soc (Keys.Device); more keys are allowed. */
    val device: Map<String, Any?>,
    val accelerator: String?,
    val precision: String?,
    val threads: Int?,
    val delegate: String?,
    /** runtime.residency of the request ("all" / "phase"); null when the request could not be read. */
    val residency: String? = null,
    /** Extra meta.runtime keys (Keys.MetaRuntime extras), e.g. the engine. */
    val runtimeExtras: Map<String, Any?> = emptyMap(),
) : TraceRecord() {
    override fun toJson(): Map<String, Any?> = json {
        put(Keys.Meta.TYPE, RecordType.META)
        put(Keys.Meta.T, t)
        put(Keys.Meta.SCHEMA, SchemaId.TRACE)
        put(Keys.Meta.VERSION, PROTOCOL_VERSION)
        put(Keys.Meta.RUN_ID, runId)
        put(Keys.Meta.RUNNER, RunnerName.ANDROID)
        put(Keys.Meta.RUNNER_VERSION, runnerVersion)
        put(Keys.Meta.DEVICE, device)
        put(
            Keys.Meta.RUNTIME,
            json {
                put(Keys.MetaRuntime.ACCELERATOR, accelerator)
                put(Keys.MetaRuntime.PRECISION, precision)
                put(Keys.MetaRuntime.THREADS, threads)
                put(Keys.MetaRuntime.DELEGATE, delegate)
                put(Keys.MetaRuntime.RESIDENCY, residency)
                for ((k, v) in runtimeExtras) {
                    put(k, v)
                }
            },
        )
    }
}

data class SpanRecord(
    override val t: Double,
    val name: String,
    val cat: String,
    val start: Double,
    val dur: Double,
    val component: String?,
    val step: Int?,
    val repeat: Int,
    val warmup: Boolean,
    val args: Map<String, Any?>? = null,
) : TraceRecord() {
    override fun toJson(): Map<String, Any?> = json {
        put(Keys.Span.TYPE, RecordType.SPAN)
        put(Keys.Span.T, t)
        put(Keys.Span.NAME, name)
        put(Keys.Span.CAT, cat)
        put(Keys.Span.START, start)
        put(Keys.Span.DUR, dur)
        put(Keys.Span.COMPONENT, component)
        put(Keys.Span.STEP, step)
        put(Keys.Span.REPEAT, repeat)
        put(Keys.Span.WARMUP, warmup)
        putOpt(Keys.Span.ARGS, args)
    }
}

data class MemoryRecord(
    override val t: Double,
    val rssBytes: Long,
    val source: String,
    val peakBytes: Long? = null,
) : TraceRecord() {
    override fun toJson(): Map<String, Any?> = json {
        put(Keys.Memory.TYPE, RecordType.MEMORY)
        put(Keys.Memory.T, t)
        put(Keys.Memory.RSS_BYTES, rssBytes)
        put(Keys.Memory.SOURCE, source)
        putOpt(Keys.Memory.PEAK_BYTES, peakBytes)
    }
}

data class EventRecord(
    override val t: Double,
    val name: String,
    val message: String,
    val args: Map<String, Any?>? = null,
) : TraceRecord() {
    override fun toJson(): Map<String, Any?> = json {
        put(Keys.Event.TYPE, RecordType.EVENT)
        put(Keys.Event.T, t)
        put(Keys.Event.NAME, name)
        put(Keys.Event.MESSAGE, message)
        putOpt(Keys.Event.ARGS, args)
    }
}

/** status.json: "running" right after meta, "ok" / "error" last. */
data class RunStatus(
    val state: String,
    val runId: String?,
    val message: String? = null,
    val finishedT: Double? = null,
    val images: List<String>? = null,
) {
    fun toJson(): Map<String, Any?> = json {
        put(Keys.Status.STATE, state)
        put(Keys.Status.RUN_ID, runId)
        putOpt(Keys.Status.MESSAGE, message)
        putOpt(Keys.Status.FINISHED_T, finishedT)
        putOpt(Keys.Status.IMAGES, images)
    }

    companion object {
        /** Reads a status.json (the demo shows the last one). */
        fun parse(text: String): RunStatus {
            val o = JsonObj.parse(text, RunFiles.STATUS)
            val st = RunStatus(
                state = o.getString(Keys.Status.STATE),
                runId = o.getNullableString(Keys.Status.RUN_ID),
                message = o.optString(Keys.Status.MESSAGE),
                finishedT = if (o.has(Keys.Status.FINISHED_T)) o.getDouble(Keys.Status.FINISHED_T) else null,
                images = if (o.has(Keys.Status.IMAGES)) o.getArray(Keys.Status.IMAGES).map { it as String } else null,
            )
            o.finish()
            return st
        }
    }
}

/** Makes a message fit status.message / event.message: one line, no runs of whitespace. */
fun oneLine(text: String?): String = (text ?: "").split(Regex("\\s+")).filter { it.isNotEmpty() }.joinToString(" ")
