package com.sdphone.runner.protocol

import java.io.Closeable
import java.io.File
import java.io.FileOutputStream

/**
 * Appends trace records to trace.jsonl, one JSON object per line, durable line by line:
 * every line is written whole, flushed and fsynced (FileDescriptor.sync) before [write] returns,
 * so a runner killed mid-run leaves valid JSONL (at most the last line cut short).
 * Thread-safe: the memory sampler writes from its own thread.
 */
class TraceWriter(file: File) : Closeable {
    private val out = FileOutputStream(file, true)
    private var closed = false

    @Synchronized
    fun write(record: TraceRecord) {
        writeLine(Json.write(record.toJson()))
    }

    @Synchronized
    fun writeLine(line: String) {
        check(!closed) { "trace writer is closed" }
        require('\n' !in line) { "a trace line must not contain a newline" }
        out.write((line + "\n").toByteArray(Charsets.UTF_8))
        out.flush()
        out.fd.sync()
    }

    @Synchronized
    override fun close() {
        if (!closed) {
            closed = true
            out.close()
        }
    }
}

/** Writes [text] to [file] atomically (temp file, fsync, rename), as status.json must never be half-written. */
fun writeFileAtomically(file: File, text: String) {
    val tmp = File(file.parentFile, file.name + ".tmp")
    FileOutputStream(tmp).use { s ->
        s.write(text.toByteArray(Charsets.UTF_8))
        s.flush()
        s.fd.sync()
    }
    if (!tmp.renameTo(file)) {
        file.delete()
        if (!tmp.renameTo(file)) {
            throw java.io.IOException("cannot rename $tmp to $file")
        }
    }
}
