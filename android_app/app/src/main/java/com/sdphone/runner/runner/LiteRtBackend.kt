package com.sdphone.runner.runner

import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import com.google.ai.edge.litert.Environment
import com.google.ai.edge.litert.TensorBuffer
import com.google.ai.edge.litert.TensorType
import com.sdphone.runner.BuildConfig
import com.sdphone.runner.protocol.AcceleratorName
import com.sdphone.runner.protocol.Dtype
import com.sdphone.runner.protocol.Keys
import com.sdphone.runner.protocol.ModelSpec
import com.sdphone.runner.protocol.PrecisionName
import com.sdphone.runner.protocol.RuntimeSpec
import com.sdphone.runner.protocol.TensorSpec
import java.io.File

/**
 * Runs .tflite models with LiteRT's CompiledModel API (com.google.ai.edge.litert).
 *
 * - accelerator "gpu": Accelerator.GPU only (the litert-gpu artifact; ML Drift on OpenCL), precision
 *   FP16 for "fp16" and FP32 for "fp32". No CPU fallback: a model the GPU cannot take fails the run
 *   instead of being timed on the CPU while the trace says "gpu".
 * - accelerator "cpu": Accelerator.CPU (XNNPACK) with runtime.threads threads; "fp16" sets XNNPACK's
 *   FORCE_FP16 flag (with its default QS8 | QU8 flags).
 * - accelerator "npu": refused (needs vendor dispatch libraries and NPU-compiled models).
 *
 * One [Environment] per run, without LiteRT's compiler cache, so that a "cold" load compiles from
 * scratch and a "warm" load only benefits from the OS page cache (as on the host runner). With
 * runtime.residency "phase" every stage load compiles its model again in that environment, and closing
 * the model after its stage ([LiteRtModel.close]: its tensor buffers, then CompiledModel.close()) frees
 * its weights and accelerator memory before the next component loads.
 */
class LiteRtBackendFactory : BackendFactory {
    override fun delegate(runtime: RuntimeSpec): String? = when (runtime.accelerator) {
        AcceleratorName.CPU -> "xnnpack"
        AcceleratorName.GPU -> "litert-gpu"
        else -> null
    }

    override val runtimeExtras: Map<String, Any?> = linkedMapOf(
        Keys.MetaRuntime.ENGINE to "litert",
        Keys.MetaRuntime.API to "CompiledModel ${BuildConfig.LITERT_VERSION}",
    )

    override fun create(runtime: RuntimeSpec): ModelBackend {
        val options = when (runtime.accelerator) {
            AcceleratorName.GPU -> CompiledModel.Options(Accelerator.GPU).apply {
                gpuOptions = CompiledModel.GpuOptions(
                    precision = if (runtime.precision == PrecisionName.FP16) {
                        CompiledModel.GpuOptions.Precision.FP16
                    } else {
                        CompiledModel.GpuOptions.Precision.FP32
                    },
                )
            }
            AcceleratorName.CPU -> CompiledModel.Options(Accelerator.CPU).apply {
                cpuOptions = CompiledModel.CpuOptions(
                    numThreads = runtime.threads,
                    xnnPackFlags = if (runtime.precision == PrecisionName.FP16) XNNPACK_FLAGS_FP16 else null,
                )
            }
            else -> throw RunnerError("runtime.accelerator='${runtime.accelerator}': the android runner supports cpu and gpu")
        }
        val env = Environment.create()
        if (runtime.accelerator == AcceleratorName.GPU && Accelerator.GPU !in env.getAvailableAccelerators()) {
            env.close()
            throw RunnerError("runtime.accelerator='gpu': LiteRT reports no GPU accelerator on this device (OpenCL driver missing?)")
        }
        return LiteRtBackend(env, options)
    }

    companion object {
        /** TFLITE_XNNPACK_DELEGATE_FLAG_QS8 | QU8 | FORCE_FP16 (tflite/delegates/xnnpack/xnnpack_delegate.h). */
        const val XNNPACK_FLAGS_FP16 = 0x1 or 0x2 or 0x4
    }
}

class LiteRtBackend(private val env: Environment, private val options: CompiledModel.Options) : ModelBackend {
    override fun load(file: File, spec: ModelSpec): LoadedModel {
        val model = try {
            CompiledModel.create(file.absolutePath, options, env)
        } catch (e: Exception) {
            throw RunnerError("$file: LiteRT cannot compile it: ${e.javaClass.simpleName}: ${firstLine(e.message)}", e)
        }
        try {
            return LiteRtModel(model, file, spec)
        } catch (e: Exception) {
            model.close()
            throw e
        }
    }

    override fun close() {
        env.close()
    }
}

/**
 * One compiled model with its named input and output buffers, created once per load and reused for every
 * invocation until [close] (end of the run, or end of its stage with residency "phase").
 */
private class LiteRtModel(private val model: CompiledModel, private val file: File, private val spec: ModelSpec) : LoadedModel {
    private val inputBuffers = LinkedHashMap<String, TensorBuffer>()
    private val outputBuffers = LinkedHashMap<String, TensorBuffer>()

    init {
        // The loaded model's signature must be the one the request describes (names, shapes, dtypes).
        // The Kotlin API cannot list a signature's tensors, so extra tensors in the file go unnoticed;
        // every tensor the request names is checked.
        for (t in spec.inputs) {
            checkTensor("input", t, typeOf("input", t) { model.getInputTensorType(t.name, spec.signature) })
            inputBuffers[t.name] = model.createInputBuffer(t.name, spec.signature)
        }
        for (t in spec.outputs) {
            checkTensor("output", t, typeOf("output", t) { model.getOutputTensorType(t.name, spec.signature) })
            outputBuffers[t.name] = model.createOutputBuffer(t.name, spec.signature)
        }
    }

    private inline fun typeOf(kind: String, t: TensorSpec, get: () -> TensorType): TensorType = try {
        get()
    } catch (e: Exception) {
        throw RunnerError("$file: signature '${spec.signature}' has no $kind '${t.name}' (${firstLine(e.message)})", e)
    }

    private fun checkTensor(kind: String, want: TensorSpec, have: TensorType) {
        val dtype = when (have.elementType) {
            TensorType.ElementType.FLOAT -> Dtype.FLOAT32
            TensorType.ElementType.INT -> Dtype.INT32
            TensorType.ElementType.INT64 -> Dtype.INT64
            TensorType.ElementType.INT8 -> Dtype.INT8
            TensorType.ElementType.BOOLEAN -> Dtype.BOOL
            else -> have.elementType.name.lowercase()
        }
        val shape = have.layout?.dimensions?.toList()
        if (dtype != want.dtype || (shape != null && shape != want.shape.toList())) {
            throw RunnerError("$file: $kind '${want.name}' is ${shape ?: "?"} $dtype, the request says ${want.shape.toList()} ${want.dtype}")
        }
    }

    override fun run(inputs: Map<String, Tensor>): Map<String, Tensor> {
        for ((name, buf) in inputBuffers) {
            when (val t = inputs[name] ?: throw RunnerError("$file: no value for input '$name'")) {
                is Tensor.F32 -> buf.writeFloat(t.data)
                is Tensor.I32 -> buf.writeInt(t.data)
            }
        }
        model.run(inputBuffers, outputBuffers, spec.signature)
        val out = LinkedHashMap<String, Tensor>()
        for (t in spec.outputs) {
            val buf = outputBuffers.getValue(t.name)
            out[t.name] = when (t.dtype) {
                Dtype.FLOAT32 -> Tensor.F32(t.shape, buf.readFloat())
                Dtype.INT32 -> Tensor.I32(t.shape, buf.readInt())
                else -> throw RunnerError("$file: output '${t.name}' has dtype ${t.dtype}; the runner reads float32 and int32")
            }
        }
        return out
    }

    override fun close() {
        inputBuffers.values.forEach { it.close() }
        outputBuffers.values.forEach { it.close() }
        model.close()
    }
}
