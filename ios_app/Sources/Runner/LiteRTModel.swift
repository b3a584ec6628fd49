import Foundation
import TensorFlowLite

/// How a request's runtime maps onto TensorFlow Lite delegates.
struct DelegateSetup {
    /// "metal", "coreml" or "xnnpack" (meta.runtime.delegate).
    let name: String
    let precisionLossAllowed: Bool
    /// Metal only.
    let metalWaitType: String?

    /// gpu: the Metal delegate, fp16 arithmetic allowed when precision is fp16; cpu: XNNPACK in fp32;
    /// npu: the Core ML delegate (Neural Engine, which computes in fp16).
    static func forRuntime(accelerator: String, precision: String) throws -> DelegateSetup {
        switch accelerator {
        case "gpu":
            return DelegateSetup(name: "metal", precisionLossAllowed: precision == "fp16", metalWaitType: "passive")
        case "npu":
            guard precision == "fp16" else {
                throw RunnerError("runtime.precision='\(precision)': the Neural Engine (Core ML delegate) computes in fp16; ask for precision fp16")
            }
            return DelegateSetup(name: "coreml", precisionLossAllowed: true, metalWaitType: nil)
        case "cpu":
            guard precision == "fp32" else {
                throw RunnerError("runtime.precision='\(precision)': the ios runner computes in fp32 on the cpu (XNNPACK)")
            }
            return DelegateSetup(name: "xnnpack", precisionLossAllowed: false, metalWaitType: nil)
        default:
            throw RunnerError("runtime.accelerator='\(accelerator)': not one of cpu, gpu, npu")
        }
    }
}

/// One .tflite file, one of its signatures, run through TensorFlow Lite's SignatureRunner.
/// Inputs and outputs are addressed by their signature names (the names in the request).
final class LiteRTModel {
    let path: URL
    let signature: String
    let delegate: DelegateSetup
    private let interpreter: Interpreter
    private let runner: SignatureRunner
    private var outputsChecked = false
    private var expectedOutputs: [TensorSpec] = []

    init(path: URL, signature: String, threads: Int, delegate: DelegateSetup) throws {
        self.path = path
        self.signature = signature
        self.delegate = delegate
        var options = Interpreter.Options()
        options.threadCount = threads
        var delegates: [Delegate] = []
        switch delegate.name {
        case "metal":
            var metal = MetalDelegate.Options()
            metal.isPrecisionLossAllowed = delegate.precisionLossAllowed
            metal.waitType = .passive
            delegates.append(MetalDelegate(options: metal))
        case "coreml":
            var coreML = CoreMLDelegate.Options()
            coreML.enabledDevices = .neuralEngine
            guard let coreMLDelegate = CoreMLDelegate(options: coreML) else {
                throw RunnerError("runtime.accelerator='npu': this device has no Neural Engine for the Core ML delegate")
            }
            delegates.append(coreMLDelegate)
        default:
            options.isXNNPackEnabled = true
        }
        let loadedInterpreter: Interpreter
        do {
            loadedInterpreter = try Interpreter(modelPath: path.path, options: options,
                                                delegates: delegates.isEmpty ? nil : delegates)
        } catch {
            throw RunnerError("\(path.path): not a loadable LiteRT model with the \(delegate.name) delegate (\(error))")
        }
        let keys = loadedInterpreter.signatureKeys
        guard keys.contains(signature) else {
            throw RunnerError("\(path.path): signature(s) \(keys), the request says '\(signature)'")
        }
        let signatureRunner: SignatureRunner
        do {
            signatureRunner = try loadedInterpreter.signatureRunner(with: signature)
            try signatureRunner.allocateTensors()
        } catch {
            throw RunnerError("\(path.path): cannot prepare signature '\(signature)' (\(error))")
        }
        interpreter = loadedInterpreter
        runner = signatureRunner
    }

    /// The loaded signature must be the one the request describes (names, shapes, dtypes).
    func checkSignature(inputs: [TensorSpec], outputs: [TensorSpec]) throws {
        try checkNames("input", have: runner.inputs, want: inputs)
        try checkNames("output", have: runner.outputs, want: outputs)
        for spec in inputs {
            try compare("input", spec, try runner.input(named: spec.name))
        }
        expectedOutputs = outputs
        // Output buffers of some graphs exist only after the first invocation: check them then.
        do {
            for spec in outputs {
                try compare("output", spec, try runner.output(named: spec.name))
            }
            outputsChecked = true
        } catch let error as SignatureRunnerError where error == .allocateTensorsRequired {
            outputsChecked = false
        }
    }

    private func checkNames(_ kind: String, have: [String], want: [TensorSpec]) throws {
        let haveNames = Set(have)
        let wantNames = Set(want.map { $0.name })
        guard haveNames == wantNames else {
            throw RunnerError("\(path.path): \(kind)s \(haveNames.sorted()), the request says \(wantNames.sorted())")
        }
    }

    private func compare(_ kind: String, _ spec: TensorSpec, _ tensor: Tensor) throws {
        let dtype = LiteRTModel.dtypeName(tensor.dataType)
        guard tensor.shape.dimensions == spec.shape, dtype == spec.dtype else {
            throw RunnerError("\(path.path): \(kind) '\(spec.name)' is \(tensor.shape.dimensions) \(dtype), the request says \(spec.shape) \(spec.dtype)")
        }
    }

    static func dtypeName(_ type: Tensor.DataType) -> String {
        switch type {
        case .float32: return "float32"
        case .float16: return "float16"
        case .int32: return "int32"
        case .int64: return "int64"
        case .uInt8: return "uint8"
        case .bool: return "bool"
        default: return String(describing: type)
        }
    }

    /// Run the signature once; returns every output as float32 values.
    func run(_ feeds: [String: Data]) throws -> [String: [Float]] {
        do {
            try runner.invoke(with: feeds)
        } catch {
            throw RunnerError("\(path.lastPathComponent): invoke failed (\(error))")
        }
        if !outputsChecked {
            for spec in expectedOutputs {
                try compare("output", spec, try runner.output(named: spec.name))
            }
            outputsChecked = true
        }
        var result: [String: [Float]] = [:]
        for name in runner.outputs {
            let tensor = try runner.output(named: name)
            guard tensor.dataType == .float32 else {
                throw RunnerError("\(path.lastPathComponent): output '\(name)' is \(LiteRTModel.dtypeName(tensor.dataType)), the runner reads float32")
            }
            result[name] = TensorData.floats(tensor.data)
        }
        return result
    }
}
