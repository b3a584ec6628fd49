package com.sdphone.runner.runner

import com.sdphone.runner.protocol.EventRecord
import com.sdphone.runner.protocol.MemoryRecord
import com.sdphone.runner.protocol.MemorySource
import com.sdphone.runner.protocol.SpanRecord
import com.sdphone.runner.protocol.TraceRecord
import com.sdphone.runner.protocol.TraceWriter
import java.io.File
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit

/** Seconds since the runner started, on the monotonic clock (System.nanoTime, CLOCK_MONOTONIC on Android). */
class Clock {
    private val t0 = System.nanoTime()

    fun now(): Double = (System.nanoTime() - t0) / 1e9
}

/** Rounds seconds to microseconds, as the Python runner does. */
fun roundUs(seconds: Double): Double = Math.round(seconds * 1e6) / 1e6

/** Sees every record after it is written (logcat lines, the demo's progress bar). */
fun interface RecordListener {
    fun onRecord(record: TraceRecord)
}

/** Writes stamped records to a [TraceWriter]; [span] times a block of code. */
class Tracer(private val writer: TraceWriter, val clock: Clock, private val listener: RecordListener? = null) {
    fun now(): Double = roundUs(clock.now())

    fun write(record: TraceRecord) {
        writer.write(record)
        listener?.onRecord(record)
    }

    fun event(name: String, message: String, args: Map<String, Any?>? = null) {
        write(EventRecord(t = now(), name = name, message = message, args = args))
    }

    /** Times [block] and writes its span when it returns (nothing when it throws), like the Python runner. */
    inline fun <T> span(
        name: String,
        cat: String,
        component: String? = null,
        step: Int? = null,
        repeat: Int = 0,
        warmup: Boolean = false,
        args: Map<String, Any?>? = null,
        block: () -> T,
    ): T {
        val start = clock.now()
        val result = block()
        val end = clock.now()
        write(
            SpanRecord(
                t = roundUs(end), name = name, cat = cat, start = roundUs(start), dur = roundUs(end - start),
                component = component, step = step, repeat = repeat, warmup = warmup, args = args,
            ),
        )
        return result
    }
}

/** (VmRSS, VmHWM) in bytes from /proc/self/status, or null where it cannot be read. */
fun readProcStatus(file: File = File("/proc/self/status")): Pair<Long, Long?>? {
    var rss: Long? = null
    var hwm: Long? = null
    try {
        file.forEachLine { line ->
            val key = line.substringBefore(':')
            if (key == "VmRSS" || key == "VmHWM") {
                val kb = line.substringAfter(':').trim().split(Regex("\\s+")).first().toLongOrNull()
                if (kb != null) {
                    if (key == "VmRSS") rss = kb * 1024 else hwm = kb * 1024
                }
            }
        }
    } catch (e: java.io.IOException) {
        return null
    }
    val r = rss ?: return null
    return Pair(r, hwm)
}

/**
 * A daemon thread writing one memory record (source "proc_status": VmRSS, VmHWM as peak_bytes) every
 * [intervalMs], plus one at start and one at [stop].
 */
class MemorySampler(private val tracer: Tracer, private val intervalMs: Long) {
    private val stopped = CountDownLatch(1)
    private var thread: Thread? = null

    fun sample() {
        val got = readProcStatus() ?: return
        tracer.write(MemoryRecord(t = tracer.now(), rssBytes = got.first, source = MemorySource.PROC_STATUS, peakBytes = got.second))
    }

    fun start(): MemorySampler {
        val th = Thread({
            try {
                while (true) {
                    sample()
                    if (stopped.await(intervalMs, TimeUnit.MILLISECONDS)) {
                        return@Thread
                    }
                }
            } catch (e: Exception) {
                // The trace went away (closed, disk full): stop quietly, the run reports its own errors.
            }
        }, "memory-sampler")
        th.isDaemon = true
        thread = th
        th.start()
        return this
    }

    /** Stops the thread (idempotent) and takes a last sample. */
    fun stop() {
        if (stopped.count == 0L) {
            return
        }
        stopped.countDown()
        thread?.join()
        try {
            sample()
        } catch (e: Exception) {
            // as above
        }
    }
}
