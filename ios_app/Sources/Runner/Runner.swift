import Foundation
import os

// The iOS runner: executes one run folder exactly as docs/protocol.md says (host/runner/ is the
// reference: run.py for the flow, pipeline.py for the algorithm), and writes trace, images and status
// back into the folder.

/// The request's numbers as float32 / int32 buffers, ready for the loop.
struct RunInputs {
    let ids: [Int32]  // [2, L]
    let noise: [Float]  // [1, C, h, w]
    let tEmb: [[Float]]  // [steps][C0]
    let inScale: [Float]
    let dX: [Float]
    let dEps: [Float]
    let xX: [Float]
    let xD: [Float]
    let xDprev: [Float]
    let initScale: Float
    let guidance: Float
    let vaeScale: Float

    /// Read and verify noise.bin (sha256 and size) and convert the request's tables.
    static func load(_ runDirectory: URL, _ request: RunRequest) throws -> RunInputs {
        let noiseURL = RunFiles.resolve(runDirectory, request.noise.file)
        try RunFiles.verify(noiseURL, sha256: request.noise.sha256, what: "noise")
        let raw = try Data(contentsOf: noiseURL)
        let want = request.noise.shape.reduce(1, *) * 4
        guard raw.count == want else {
            throw RunnerError("\(noiseURL.path): \(raw.count) bytes, expected \(want) for float32 \(request.noise.shape)")
        }
        let s = request.scheduler
        func f32(_ values: [Double]) -> [Float] { values.map { Float($0) } }
        return RunInputs(
            ids: request.prompt.tokens.flatMap { row in row.map { Int32($0) } },
            noise: TensorData.floats(raw),
            tEmb: s.tEmb.map(f32),
            inScale: f32(s.inScale), dX: f32(s.dX), dEps: f32(s.dEps),
            xX: f32(s.xX), xD: f32(s.xD), xDprev: f32(s.xDprev),
            initScale: Float(s.initScale),
            guidance: Float(request.guidanceScale),
            vaeScale: Float(request.vaeScalingFactor))
    }
}

/// Loads one component for one stage (residency "phase"): (component, spec, repeat, warmup) -> model.
typealias StageLoader = (String, ModelSpec, Int, Bool) throws -> LiteRTModel

/// The three components and the names of their outputs. A component is either held for the whole run
/// (runtime.residency "all") or nil, and then `stageLoader` loads it for its stage only ("phase").
final class LoadedModels {
    let textEncoder: LiteRTModel?
    let unet: LiteRTModel?
    let vaeDecoder: LiteRTModel?
    let textEncoderOutput: String
    let unetOutput: String
    let vaeOutput: String
    private let specs: ModelsSpec
    private let stageLoader: StageLoader?

    /// Residency "all": the three models, loaded before the first generation and held to the end.
    init(textEncoder: LiteRTModel, unet: LiteRTModel, vaeDecoder: LiteRTModel, request: RunRequest) {
        self.textEncoder = textEncoder
        self.unet = unet
        self.vaeDecoder = vaeDecoder
        textEncoderOutput = request.models.textEncoder.outputName
        unetOutput = request.models.unet.outputName
        vaeOutput = request.models.vaeDecoder.outputName
        specs = request.models
        stageLoader = nil
    }

    /// Residency "phase": nothing held; every generation loads each model right before its stage.
    init(request: RunRequest, stageLoader: @escaping StageLoader) {
        textEncoder = nil
        unet = nil
        vaeDecoder = nil
        textEncoderOutput = request.models.textEncoder.outputName
        unetOutput = request.models.unet.outputName
        vaeOutput = request.models.vaeDecoder.outputName
        specs = request.models
        self.stageLoader = stageLoader
    }

    /// `body` with the component's model: the held one, or one loaded now (a `load` span, phase "stage",
    /// inside the generation) that is released when `body` returns: this frame holds its only reference.
    func withStage<T>(_ component: String, repeatIndex: Int, warmup: Bool, _ body: (LiteRTModel) throws -> T)
        throws -> T
    {
        let held: LiteRTModel?
        switch component {
        case "text_encoder": held = textEncoder
        case "unet": held = unet
        case "vae_decoder": held = vaeDecoder
        default: throw RunnerError("\(component): not a component")
        }
        if let model = held {
            return try body(model)
        }
        guard let stageLoader = stageLoader, let spec = specs.all.first(where: { $0.0 == component })?.1 else {
            throw RunnerError("\(component): not loaded and no stage loader to load it")
        }
        let model = try stageLoader(component, spec, repeatIndex, warmup)
        return try withExtendedLifetime(model) { try body(model) }
    }
}

/// One generation's results; `unetIO` holds (sample fed, raw noise_pred) per step when recorded.
struct Generation {
    let context: [Float]  // [2, L, D]
    let latents: [Float]  // final x [1, C, h, w], before 1 / vae_scaling_factor
    let image: [Float]  // decoder output [1, 3, H, W], about [-1, 1]
    var unetIO: [(sample: [Float], noisePred: [Float])]
}

final class Runner {
    /// "1.0.0 (TensorFlowLiteSwift ~> 2.17.0, metal)" style; the pod version is pinned in the Podfile.
    static let liteRTDistribution = "TensorFlowLiteSwift ~> 2.17.0"

    let runDirectory: URL
    /// Sees every trace record after it is written, on the writing thread (memory samples included).
    var onRecord: ((TraceRecord) -> Void)?

    private let log = Logger(subsystem: HostContract.logSubsystem, category: HostContract.logCategory)
    private var tracer: Tracer!
    private var rawRequest: Data?
    private var request: RunRequest?
    private var metaWritten = false
    private var monitor: MemoryMonitor?

    init(runDirectory: URL) {
        self.runDirectory = runDirectory.standardizedFileURL
    }

    private func url(_ name: String) -> URL { runDirectory.appendingPathComponent(name) }

    /// Execute the run folder. Never throws: failures end as an `error` event and an error status
    /// (when the folder is writable at all). Returns the final status.
    func run() -> RunStatus {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: runDirectory.path, isDirectory: &isDirectory), isDirectory.boolValue
        else {
            let message = "\(runDirectory.path): run folder not found"
            log.error("\(message, privacy: .public)")
            return RunStatus(state: .error, runId: nil, message: message, finishedT: 0)
        }
        for stale in [ProtocolFiles.trace, ProtocolFiles.imagePng, ProtocolFiles.imageF32, ProtocolFiles.status] {
            try? FileManager.default.removeItem(at: url(stale))
        }
        let writer: TraceWriter
        do {
            writer = try TraceWriter(url: url(ProtocolFiles.trace))
        } catch {
            let message = "\(url(ProtocolFiles.trace).path): cannot write the trace (\(error.localizedDescription))"
            log.error("\(message, privacy: .public)")
            let status = RunStatus(state: .error, runId: nil, message: message, finishedT: 0)
            try? status.write(to: runDirectory)
            return status
        }
        defer { writer.close() }
        tracer = Tracer(writer: writer, onRecord: onRecord)
        do {
            let status = try execute()
            log.info("run \(status.runId ?? "?", privacy: .public): ok in \(status.finishedT ?? 0) s")
            return status
        } catch {
            return fail(error)
        }
    }

    // MARK: - Records

    private func writeMeta(runId: String?, runtime: RuntimeSpec?, delegate: DelegateSetup?) throws {
        var extra: [String: JSONValue] = ["residency": runtime.map { JSONValue.string($0.residency) } ?? .null]
        if let delegate = delegate {
            extra["precision_loss_allowed"] = .bool(delegate.precisionLossAllowed)
            if let waitType = delegate.metalWaitType {
                extra["metal_wait_type"] = .string(waitType)
            }
        }
        let info = RuntimeInfo(accelerator: runtime?.accelerator, precision: runtime?.precision,
                               threads: runtime?.threads, delegate: delegate?.name, extra: extra)
        let version = "\(DeviceInfoProvider.appVersion()) (\(Runner.liteRTDistribution))"
        try tracer.write(.meta(MetaRecord(t: tracer.now(), runId: runId, runnerVersion: version,
                                          device: DeviceInfoProvider.current(), runtime: info)))
        metaWritten = true
    }

    private var runId: String? { request?.runId ?? RunRequest.rawRunId(rawRequest) }

    @discardableResult
    private func writeStatus(_ state: RunState, message: String? = nil, images: [String]? = nil) throws -> RunStatus {
        let status = RunStatus(state: state, runId: runId, message: message,
                               finishedT: state == .running ? nil : tracer.now(), images: images)
        try status.write(to: runDirectory)
        return status
    }

    /// Record `error`: meta (if not yet written), one `error` event, the error status. Never throws.
    private func fail(_ error: Error) -> RunStatus {
        let message = RunStatus.oneLine(Runner.describe(error))
        let errorType = String(describing: type(of: error))
        log.error("run failed: \(message, privacy: .public)")
        monitor?.stop()
        if !metaWritten {
            try? writeMeta(runId: runId, runtime: nil, delegate: nil)
        }
        try? tracer.event("error", message, args: ["error_type": .string(errorType)])
        let status = RunStatus(state: .error, runId: runId, message: message, finishedT: tracer.now())
        try? status.write(to: runDirectory)
        return status
    }

    static func describe(_ error: Error) -> String {
        if let error = error as? RunnerError { return error.message }
        if let error = error as? RequestError { return error.message }
        let text = (error as? LocalizedError)?.errorDescription ?? String(describing: error)
        let line = text.split(whereSeparator: { $0.isNewline }).first.map(String.init) ?? ""
        return line.isEmpty ? String(describing: type(of: error)) : "\(type(of: error)): \(line)"
    }

    // MARK: - The run

    private func execute() throws -> RunStatus {
        let requestURL = url(ProtocolFiles.request)
        do {
            rawRequest = try Data(contentsOf: requestURL)
        } catch {
            throw RunnerError("\(requestURL.path): cannot read the request (\(error.localizedDescription))")
        }
        let req = try RunRequest.decode(rawRequest ?? Data())
        request = req
        let rt = req.runtime
        let prof = req.profiling
        let delegate = try? DelegateSetup.forRuntime(accelerator: rt.accelerator, precision: rt.precision)
        try writeMeta(runId: req.runId, runtime: rt, delegate: delegate)
        try writeStatus(.running)
        let monitor = MemoryMonitor(tracer: tracer, interval: Double(prof.memoryIntervalMs) / 1000)
        self.monitor = monitor
        monitor.start()
        // The unsupported combinations fail here, after meta and the running status.
        let setup = try DelegateSetup.forRuntime(accelerator: rt.accelerator, precision: rt.precision)
        log.info("run \(req.runId, privacy: .public): \(rt.accelerator, privacy: .public) \(rt.precision, privacy: .public), delegate \(setup.name, privacy: .public)")

        // Verify everything before loading anything.
        let inputs = try RunInputs.load(runDirectory, req)
        let modelsDir = RunFiles.modelsDirectory(runDirectory, req)
        let blocks = prof.perBlock ? prof.blockModels : []
        for (component, spec) in req.models.all {
            try RunFiles.verify(RunFiles.resolve(modelsDir, spec.file), sha256: spec.sha256, what: component)
        }
        for block in blocks {
            try RunFiles.verify(RunFiles.resolve(modelsDir, block.file), sha256: block.sha256, what: "block \(block.name)")
        }

        var models: LoadedModels?
        if rt.residency == "phase" {
            // The same load measurements, each instance released before the next component loads; every
            // generation then loads each model right before its stage and releases it right after.
            for (component, spec) in req.models.all {
                _ = try load(spec, component: component, modelsDir, rt, setup)
            }
            models = LoadedModels(request: req) { component, spec, repeatIndex, warmup in
                try self.loadModel(RunFiles.resolve(modelsDir, spec.file), signature: spec.signature,
                                   inputs: spec.inputs, outputs: spec.outputs, component: component,
                                   threads: rt.threads, setup: setup, phases: ["stage"],
                                   repeatIndex: repeatIndex, warmup: warmup)
            }
        } else {
            models = LoadedModels(
                textEncoder: try load(req.models.textEncoder, component: "text_encoder", modelsDir, rt, setup),
                unet: try load(req.models.unet, component: "unet", modelsDir, rt, setup),
                vaeDecoder: try load(req.models.vaeDecoder, component: "vae_decoder", modelsDir, rt, setup),
                request: req)
        }
        if prof.perOp {
            try tracer.event("warning", "per_op profiling is not available in the ios runner (TensorFlowLiteSwift has no op profiler); skipped")
        }

        let steps = req.scheduler.steps
        let total = rt.warmup + rt.repeats
        var generation: Generation? = nil
        for n in 0..<total {
            let warm = n < rt.warmup
            let repeatIndex = warm ? n : n - rt.warmup
            generation = try generate(models!, inputs, steps: steps, repeatIndex: repeatIndex, warmup: warm,
                                      record: !blocks.isEmpty && n == total - 1)
            try tracer.event("progress", "generation \(n + 1)/\(total) done",
                             args: ["repeat": .int(repeatIndex), "warmup": .bool(warm)])
        }
        guard let gen = generation else { throw RunnerError("no generation ran") }
        try writeImages(gen, req)

        if !blocks.isEmpty {
            let unetOutput = req.models.unet.outputName
            models = nil  // the block chain replaces the UNet from here on: free its memory first
            var loaded: [(BlockModelSpec, LiteRTModel)] = []
            for block in blocks {
                let model = try loadModel(RunFiles.resolve(modelsDir, block.file), signature: block.signature,
                                          inputs: block.inputs, outputs: block.outputs, component: block.name,
                                          threads: rt.threads, setup: setup, phases: ["cold"])
                loaded.append((block, model))
            }
            // The whole UNet again, timed beside the chain (it and the blocks are held together).
            let whole: LiteRTModel? = try (prof.blockReference ?? true)
                ? loadModel(RunFiles.resolve(modelsDir, req.models.unet.file), signature: req.models.unet.signature,
                            inputs: req.models.unet.inputs, outputs: req.models.unet.outputs, component: "unet",
                            threads: rt.threads, setup: setup, phases: ["reference"])
                : nil
            let worst = try profileBlocks(loaded, gen, inputs, unetOutput: unetOutput, repeatIndex: rt.repeats - 1,
                                          maxSteps: prof.blockSteps ?? 0, reference: whole)
            if let worst = worst {
                try tracer.event("per_block_check", String(format: "block chain vs unet: max |diff| %.3g", worst),
                                 args: ["output": .string(unetOutput), "max_abs_diff": .double(worst)])
            }
        }
        _ = models
        monitor.stop()
        return try writeStatus(.ok, images: [ProtocolFiles.imagePng])
    }

    private func load(_ spec: ModelSpec, component: String, _ modelsDir: URL, _ rt: RuntimeSpec,
                      _ setup: DelegateSetup) throws -> LiteRTModel
    {
        try loadModel(RunFiles.resolve(modelsDir, spec.file), signature: spec.signature, inputs: spec.inputs,
                      outputs: spec.outputs, component: component, threads: rt.threads, setup: setup,
                      phases: ["cold", "warm"])
    }

    /// Load `path` once per phase (a "warm" load is a second load of the same file), one `load` span each;
    /// returns the last instance, its signature checked against the request. Stage loads (residency
    /// "phase") pass the generation's `repeatIndex` / `warmup` for their span.
    private func loadModel(_ path: URL, signature: String, inputs: [TensorSpec], outputs: [TensorSpec],
                           component: String, threads: Int, setup: DelegateSetup, phases: [String],
                           repeatIndex: Int = 0, warmup: Bool = false) throws -> LiteRTModel
    {
        var model: LiteRTModel? = nil
        for phase in phases {
            model = nil  // release the previous instance before loading the next
            let args: TraceArgs = [
                "phase": .string(phase), "file": .string(path.lastPathComponent), "delegate": .string(setup.name),
            ]
            model = try tracer.span("load", .load, component: component, repeatIndex: repeatIndex, warmup: warmup,
                                    args: args) {
                try LiteRTModel(path: path, signature: signature, threads: threads, delegate: setup)
            }
        }
        guard let loaded = model else { throw RunnerError("\(path.path): no load phase") }
        try loaded.checkSignature(inputs: inputs, outputs: outputs)
        return loaded
    }

    /// The UNet inputs of one step: batch 0 unconditional, batch 1 conditional (same latents).
    static func unetFeed(_ m: [Float], _ tEmbRow: [Float], _ context: [Float]) -> [String: Data] {
        [
            ProtocolConstants.unetSample: TensorData.bytes(m + m),
            ProtocolConstants.unetTimeEmbedding: TensorData.bytes(tEmbRow + tEmbRow),
            ProtocolConstants.unetContext: TensorData.bytes(context),
        ]
    }

    /// One full generation, exactly the protocol's loop, in float32; spans for every stage. With residency
    /// "phase" each stage (text encoder, the UNet for all steps, the decoder) runs on a model loaded right
    /// before it and released right after it, so only one component is in memory at a time.
    private func generate(_ models: LoadedModels, _ inputs: RunInputs, steps: Int, repeatIndex: Int, warmup: Bool,
                          record: Bool) throws -> Generation
    {
        var io: [(sample: [Float], noisePred: [Float])] = []
        var context: [Float] = []
        var x: [Float] = []
        var image: [Float] = []
        try tracer.span("generation", .total, repeatIndex: repeatIndex, warmup: warmup) {
            context = try models.withStage("text_encoder", repeatIndex: repeatIndex, warmup: warmup) { textEncoder in
                try tracer.span("text_encoder", .component, component: "text_encoder", repeatIndex: repeatIndex,
                                warmup: warmup) {
                    let out = try textEncoder.run([ProtocolConstants.textEncoderInput: TensorData.bytes(inputs.ids)])
                    return try Runner.output(out, models.textEncoderOutput, "text_encoder")
                }
            }
            let n = inputs.noise.count
            x = inputs.noise.map { $0 * inputs.initScale }
            try models.withStage("unet", repeatIndex: repeatIndex, warmup: warmup) { unet in
                var dPrev = [Float](repeating: 0, count: n)
                for i in 0..<steps {
                    try tracer.span("unet_step", .step, component: "unet", step: i, repeatIndex: repeatIndex,
                                    warmup: warmup) {
                        let inScale = inputs.inScale[i]
                        let m = x.map { $0 * inScale }
                        let out = try unet.run(Runner.unetFeed(m, inputs.tEmb[i], context))
                        let e = try Runner.output(out, models.unetOutput, "unet")
                        guard e.count == 2 * n else {
                            throw RunnerError("unet step \(i): output has \(e.count) values, expected \(2 * n)")
                        }
                        let g = inputs.guidance
                        let dX = inputs.dX[i], dEps = inputs.dEps[i]
                        let xX = inputs.xX[i], xD = inputs.xD[i], xDprev = inputs.xDprev[i]
                        var next = [Float](repeating: 0, count: n)
                        var d = [Float](repeating: 0, count: n)
                        for j in 0..<n {
                            let uncond = e[j]
                            let eps = uncond + g * (e[n + j] - uncond)
                            let dj = x[j] * dX + eps * dEps
                            next[j] = x[j] * xX + dj * xD + dPrev[j] * xDprev
                            d[j] = dj
                        }
                        x = next
                        dPrev = d
                        if record {
                            io.append((sample: m + m, noisePred: e))
                        }
                    }
                }
            }
            image = try models.withStage("vae_decoder", repeatIndex: repeatIndex, warmup: warmup) { vaeDecoder in
                try tracer.span("vae_decoder", .component, component: "vae_decoder", repeatIndex: repeatIndex,
                                warmup: warmup) {
                    let scale = inputs.vaeScale
                    let latents = x.map { $0 / scale }
                    let out = try vaeDecoder.run([ProtocolConstants.vaeInput: TensorData.bytes(latents)])
                    return try Runner.output(out, models.vaeOutput, "vae_decoder")
                }
            }
        }
        return Generation(context: context, latents: x, image: image, unetIO: io)
    }

    private static func output(_ outputs: [String: [Float]], _ name: String, _ component: String) throws -> [Float] {
        guard let values = outputs[name] else {
            throw RunnerError("\(component): no output named '\(name)' (have \(outputs.keys.sorted()))")
        }
        return values
    }

    /// image.f32 (the raw decoder output) and image.png (8-bit RGB).
    private func writeImages(_ gen: Generation, _ req: RunRequest) throws {
        let height = req.image.height
        let width = req.image.width
        guard gen.image.count == 3 * height * width else {
            throw RunnerError("vae_decoder: output has \(gen.image.count) values, expected 3x\(height)x\(width)")
        }
        try TensorData.bytes(gen.image).write(to: url(ProtocolFiles.imageF32), options: .atomic)
        try RunFiles.writePNG(rgb: RunFiles.rgbBytes(gen.image, height: height, width: width), width: width,
                              height: height, to: url(ProtocolFiles.imagePng))
    }

    /// Time every block at every step of the recorded generation, fed that step's UNet inputs; each block
    /// takes its inputs by name from the pool of everything produced so far. With a `reference` (the whole
    /// UNet) it runs on the same feed beside each step's chain, one block span named
    /// `ProtocolConstants.referenceBlock`: before the chain at even steps, after it at odd ones, so that a
    /// drift of the phone's speed (heat) weighs on both sides alike. One warm-up round on step 0's inputs
    /// comes first (spans marked warmup): the first chain after the pass's loads runs slow. Returns the
    /// largest |difference| between the chain's UNet-output tensor and the UNet's, or nil when it has none.
    private func profileBlocks(_ blocks: [(BlockModelSpec, LiteRTModel)], _ gen: Generation, _ inputs: RunInputs,
                               unetOutput: String, repeatIndex: Int, maxSteps: Int,
                               reference: LiteRTModel?) throws -> Double?
    {
        var worst: Double? = nil
        func feedOf(_ i: Int) -> [String: [Float]] {
            [
                ProtocolConstants.unetSample: gen.unetIO[i].sample,
                ProtocolConstants.unetTimeEmbedding: inputs.tEmb[i] + inputs.tEmb[i],
                ProtocolConstants.unetContext: gen.context,
            ]
        }
        func whole(_ feed: [String: [Float]], _ i: Int, warmup: Bool = false) throws {
            guard let reference = reference else { return }
            var feeds: [String: Data] = [:]
            for (name, values) in feed { feeds[name] = TensorData.bytes(values) }
            _ = try tracer.span(ProtocolConstants.referenceBlock, .block, component: "unet", step: i,
                                repeatIndex: repeatIndex, warmup: warmup, args: ["reference": .bool(true)]) {
                try reference.run(feeds)
            }
        }
        func chain(_ feed: [String: [Float]], _ i: Int, warmup: Bool = false) throws -> [String: [Float]] {
            var pool = feed
            for (spec, model) in blocks {
                var feeds: [String: Data] = [:]
                for tensor in spec.inputs {
                    guard let values = pool[tensor.name] else {
                        throw RunnerError("block \(spec.name): input '\(tensor.name)' is not produced by the UNet inputs or an earlier block")
                    }
                    feeds[tensor.name] = TensorData.bytes(values)
                }
                let out = try tracer.span(spec.name, .block, component: "unet", step: i, repeatIndex: repeatIndex,
                                          warmup: warmup) {
                    try model.run(feeds)
                }
                pool.merge(out) { _, new in new }
            }
            return pool
        }
        if !gen.unetIO.isEmpty {
            try whole(feedOf(0), 0, warmup: true)
            _ = try chain(feedOf(0), 0, warmup: true)
        }
        let recorded = maxSteps > 0 ? Array(gen.unetIO.prefix(maxSteps)) : gen.unetIO
        for (i, step) in recorded.enumerated() {
            let feed = feedOf(i)  // the UNet's inputs at this step
            if i % 2 == 0 { try whole(feed, i) }
            let pool = try chain(feed, i)
            if i % 2 == 1 { try whole(feed, i) }
            if let got = pool[unetOutput], got.count == step.noisePred.count {
                var diff: Float = 0
                for j in 0..<got.count {
                    diff = max(diff, abs(got[j] - step.noisePred[j]))
                }
                worst = max(worst ?? 0, Double(diff))
            }
        }
        return worst
    }
}
