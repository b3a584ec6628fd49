package com.sdphone.runner.runner

import com.sdphone.runner.protocol.Dtype
import com.sdphone.runner.protocol.ModelSpec
import com.sdphone.runner.protocol.RuntimeSpec
import java.io.File

/** A dense tensor: float32 or int32 data in row-major order with its shape. */
sealed class Tensor {
    abstract val shape: IntArray

    val size: Int
        get() = shape.fold(1) { a, b -> a * b }

    class F32(override val shape: IntArray, val data: FloatArray) : Tensor() {
        init {
            require(data.size == size) { "float tensor ${shape.toList()} needs $size values, has ${data.size}" }
        }
    }

    class I32(override val shape: IntArray, val data: IntArray) : Tensor() {
        init {
            require(data.size == size) { "int tensor ${shape.toList()} needs $size values, has ${data.size}" }
        }
    }

    val dtype: String
        get() = when (this) {
            is F32 -> Dtype.FLOAT32
            is I32 -> Dtype.INT32
        }

    fun floats(what: String): FloatArray = (this as? F32)?.data ?: throw RunnerError("$what: expected float32, got $dtype")
}

/** A loaded model: runs its signature on named inputs and returns every output by name. */
interface LoadedModel : AutoCloseable {
    fun run(inputs: Map<String, Tensor>): Map<String, Tensor>
}

/**
 * Loads .tflite files for one run. The Android app uses [LiteRtBackend]; JVM tests use a fake.
 * [load] must check the model's signature against [spec] (names, shapes, dtypes) and fail naming the file.
 */
interface ModelBackend : AutoCloseable {
    fun load(file: File, spec: ModelSpec): LoadedModel
}

/** Creates the backend for a request's runtime settings (accelerator, precision, threads). */
interface BackendFactory {
    /** meta.runtime.delegate for these settings, e.g. "xnnpack" or "litert-gpu" (written before loading). */
    fun delegate(runtime: RuntimeSpec): String?

    /** Extra meta.runtime keys (an open object), e.g. the API used. */
    val runtimeExtras: Map<String, Any?>

    /** Fails with a [RunnerError] for settings this backend cannot honour (never silently falls back). */
    fun create(runtime: RuntimeSpec): ModelBackend
}

/** A run that cannot go on: missing or corrupt file, unsupported setting, model failure. One line. */
class RunnerError(message: String, cause: Throwable? = null) : Exception(message, cause)
