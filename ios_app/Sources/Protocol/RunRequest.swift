import Foundation

// request.json: the RunRequest, as in host/protocol/run_request.schema.json.
// Every CodingKeys raw value is a schema key; tests/apps/test_ios_app.py checks both directions.

/// One input or output of a model signature.
struct TensorSpec: Codable, Equatable {
    var name: String
    var shape: [Int]
    var dtype: String

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, shape, dtype
    }

    var elementCount: Int { shape.reduce(1, *) }
}

/// One of the three components: its file, checksum and signature.
struct ModelSpec: Codable, Equatable {
    var file: String
    var sha256: String
    var signature: String
    var inputs: [TensorSpec]
    var outputs: [TensorSpec]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case file, sha256, signature, inputs, outputs
    }

    func input(_ name: String) -> TensorSpec? { inputs.first { $0.name == name } }

    /// The tensor the algorithm reads: the first output.
    var outputName: String { outputs[0].name }
}

/// One model of the per-block profiling chain (sha256 optional).
struct BlockModelSpec: Codable, Equatable {
    var name: String
    var file: String
    var sha256: String?
    var signature: String
    var inputs: [TensorSpec]
    var outputs: [TensorSpec]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, file, sha256, signature, inputs, outputs
    }
}

struct ModelsSpec: Codable, Equatable {
    var textEncoder: ModelSpec
    var unet: ModelSpec
    var vaeDecoder: ModelSpec

    enum CodingKeys: String, CodingKey, CaseIterable {
        case textEncoder = "text_encoder"
        case unet
        case vaeDecoder = "vae_decoder"
    }

    /// (component name, spec) in the order a generation runs them.
    var all: [(String, ModelSpec)] {
        [("text_encoder", textEncoder), ("unet", unet), ("vae_decoder", vaeDecoder)]
    }
}

struct PromptSpec: Codable, Equatable {
    var text: String
    var negative: String
    var tokenizer: String
    /// Row 0: unconditional / negative prompt, row 1: conditional prompt.
    var tokens: [[Int]]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case text, negative, tokenizer, tokens
    }
}

struct NoiseSpec: Codable, Equatable {
    var file: String
    var shape: [Int]
    var dtype: String
    var seed: Int
    var sha256: String
    var generator: String?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case file, shape, dtype, seed, sha256, generator
    }
}

/// The host's scheduler table (host/schedulers.py SchedulerTable.to_dict()) plus the t_emb rows.
struct SchedulerSpec: Codable, Equatable {
    var name: String
    var steps: Int
    var initScale: Double
    var timestep: [Double]
    var inScale: [Double]
    var dX: [Double]
    var dEps: [Double]
    var xX: [Double]
    var xD: [Double]
    var xDprev: [Double]
    var sigmas: [Double]
    var karras: Bool
    /// Row i: the UNet's sinusoidal timestep projection of timestep[i].
    var tEmb: [[Double]]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, steps
        case initScale = "init_scale"
        case timestep
        case inScale = "in_scale"
        case dX = "d_x"
        case dEps = "d_eps"
        case xX = "x_x"
        case xD = "x_d"
        case xDprev = "x_dprev"
        case sigmas, karras
        case tEmb = "t_emb"
    }
}

struct ImageSpec: Codable, Equatable {
    var height: Int
    var width: Int

    enum CodingKeys: String, CodingKey, CaseIterable {
        case height, width
    }
}

struct RuntimeSpec: Codable, Equatable {
    /// "cpu" | "gpu" | "npu"
    var accelerator: String
    /// "fp32" | "fp16"
    var precision: String
    var threads: Int
    var warmup: Int
    var repeats: Int
    /// "all": the three models held for the whole run; "phase": each loaded for its stage only.
    /// Optional in request.json, "all" when absent.
    var residency: String

    static let defaultResidency = "all"

    enum CodingKeys: String, CodingKey, CaseIterable {
        case accelerator, precision, threads, warmup, repeats, residency
    }
}

extension RuntimeSpec {
    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        accelerator = try c.decode(String.self, forKey: .accelerator)
        precision = try c.decode(String.self, forKey: .precision)
        threads = try c.decode(Int.self, forKey: .threads)
        warmup = try c.decode(Int.self, forKey: .warmup)
        repeats = try c.decode(Int.self, forKey: .repeats)
        residency = try c.decodeIfPresent(String.self, forKey: .residency) ?? RuntimeSpec.defaultResidency
    }
}

struct ProfilingSpec: Codable, Equatable {
    var memoryIntervalMs: Int
    var perOp: Bool
    var perBlock: Bool
    var blockModels: [BlockModelSpec]
    /// Time the block chain at the first N steps only; 0 or absent: every step.
    var blockSteps: Int?
    /// Time the whole UNet beside the chain at each of those steps; absent: true.
    var blockReference: Bool?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case memoryIntervalMs = "memory_interval_ms"
        case perOp = "per_op"
        case perBlock = "per_block"
        case blockModels = "block_models"
        case blockSteps = "block_steps"
        case blockReference = "block_reference"
    }
}

struct RunRequest: Codable, Equatable {
    var schema: String
    var version: Int
    var runId: String
    var modelsDir: String
    var models: ModelsSpec
    var prompt: PromptSpec
    var noise: NoiseSpec
    var scheduler: SchedulerSpec
    var guidanceScale: Double
    var vaeScalingFactor: Double
    var image: ImageSpec
    var runtime: RuntimeSpec
    var profiling: ProfilingSpec

    enum CodingKeys: String, CodingKey, CaseIterable {
        case schema, version
        case runId = "run_id"
        case modelsDir = "models_dir"
        case models, prompt, noise, scheduler
        case guidanceScale = "guidance_scale"
        case vaeScalingFactor = "vae_scaling_factor"
        case image, runtime, profiling
    }
}

// MARK: - Reading and checking

/// A request that cannot be run; the message is one line naming the file and the JSON path.
struct RequestError: Error, CustomStringConvertible {
    let message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}

extension RunRequest {
    static let runIdPattern = "^[A-Za-z0-9._+-]+$"

    /// Decode `data` (the bytes of request.json), reject unknown keys and check the cross-field rules.
    static func decode(_ data: Data) throws -> RunRequest {
        let raw: Any
        do {
            raw = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw RequestError("\(ProtocolFiles.request): not valid JSON")
        }
        guard let object = raw as? [String: Any] else {
            throw RequestError("\(ProtocolFiles.request): $: must be an object")
        }
        try rejectUnknownKeys(object)
        let request: RunRequest
        do {
            request = try JSONDecoder().decode(RunRequest.self, from: data)
        } catch let error as DecodingError {
            throw RequestError("\(ProtocolFiles.request): \(describe(error))")
        }
        try request.check()
        return request
    }

    /// `run_id` of a request that may not decode (for the meta record and status of a failed run).
    static func rawRunId(_ data: Data?) -> String? {
        guard let data = data,
            let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
        else { return nil }
        return object[CodingKeys.runId.rawValue] as? String
    }

    /// The protocol's strictness: unknown keys are errors in every closed object.
    static func rejectUnknownKeys(_ object: [String: Any]) throws {
        try closed(object, RunRequest.CodingKeys.self, "$")
        if let models = object["models"] as? [String: Any] {
            try closed(models, ModelsSpec.CodingKeys.self, "$.models")
            for (component, value) in models {
                guard let model = value as? [String: Any] else { continue }
                let path = "$.models.\(component)"
                try closed(model, ModelSpec.CodingKeys.self, path)
                try tensors(model, path)
            }
        }
        let nested: [(String, [String])] = [
            ("prompt", PromptSpec.CodingKeys.allCases.map { $0.rawValue }),
            ("noise", NoiseSpec.CodingKeys.allCases.map { $0.rawValue }),
            ("scheduler", SchedulerSpec.CodingKeys.allCases.map { $0.rawValue }),
            ("image", ImageSpec.CodingKeys.allCases.map { $0.rawValue }),
            ("runtime", RuntimeSpec.CodingKeys.allCases.map { $0.rawValue }),
            ("profiling", ProfilingSpec.CodingKeys.allCases.map { $0.rawValue }),
        ]
        for (key, known) in nested {
            if let sub = object[key] as? [String: Any] {
                try closed(sub, Set(known), "$.\(key)")
            }
        }
        if let profiling = object["profiling"] as? [String: Any],
            let blocks = profiling["block_models"] as? [[String: Any]]
        {
            for (i, block) in blocks.enumerated() {
                let path = "$.profiling.block_models[\(i)]"
                try closed(block, BlockModelSpec.CodingKeys.self, path)
                try tensors(block, path)
            }
        }
    }

    private static func tensors(_ model: [String: Any], _ path: String) throws {
        for kind in ["inputs", "outputs"] {
            for (i, tensor) in ((model[kind] as? [[String: Any]]) ?? []).enumerated() {
                try closed(tensor, TensorSpec.CodingKeys.self, "\(path).\(kind)[\(i)]")
            }
        }
    }

    private static func closed<K: CodingKey & CaseIterable>(_ object: [String: Any], _ keys: K.Type, _ path: String)
        throws
    {
        try closed(object, Set(K.allCases.map { $0.stringValue }), path)
    }

    private static func closed(_ object: [String: Any], _ known: Set<String>, _ path: String) throws {
        if let extra = object.keys.sorted().first(where: { !known.contains($0) }) {
            throw RequestError("\(ProtocolFiles.request): \(path).\(extra): unknown key")
        }
    }

    private static func describe(_ error: DecodingError) -> String {
        func path(_ keys: [CodingKey]) -> String {
            keys.reduce("$") { acc, key in
                if let index = key.intValue { return "\(acc)[\(index)]" }
                return "\(acc).\(key.stringValue)"
            }
        }
        switch error {
        case .keyNotFound(let key, let context):
            return "\(path(context.codingPath + [key])): missing"
        case .typeMismatch(let type, let context):
            return "\(path(context.codingPath)): expected \(type)"
        case .valueNotFound(let type, let context):
            return "\(path(context.codingPath)): expected \(type), got null"
        case .dataCorrupted(let context):
            return "\(path(context.codingPath)): \(context.debugDescription)"
        @unknown default:
            return "\(error)"
        }
    }

    /// The schema's value rules and the cross-field rules of docs/protocol.md ("Additions").
    func check() throws {
        func fail(_ path: String, _ message: String) -> RequestError {
            RequestError("\(ProtocolFiles.request): \(path): \(message)")
        }
        guard schema == ProtocolConstants.requestSchema else {
            throw fail("$.schema", "expected \"\(ProtocolConstants.requestSchema)\", got \"\(schema)\"")
        }
        guard version == ProtocolConstants.version else {
            throw fail("$.version", "expected \(ProtocolConstants.version), got \(version)")
        }
        guard runId.range(of: RunRequest.runIdPattern, options: .regularExpression) != nil, runId.count <= 200 else {
            throw fail("$.run_id", "\"\(runId)\" does not match \(RunRequest.runIdPattern)")
        }
        for (component, spec) in models.all {
            guard !spec.file.hasPrefix("/"), !spec.file.contains("\\"), !spec.file.isEmpty else {
                throw fail("$.models.\(component).file", "must be a relative, '/'-separated path")
            }
            guard !spec.inputs.isEmpty, !spec.outputs.isEmpty else {
                throw fail("$.models.\(component)", "needs at least one input and one output")
            }
        }
        for (i, block) in profiling.blockModels.enumerated() {
            guard !block.file.isEmpty, !block.file.contains("\\"), !block.inputs.isEmpty, !block.outputs.isEmpty else {
                throw fail("$.profiling.block_models[\(i)]", "needs a file, inputs and outputs")
            }
        }
        guard ["cpu", "gpu", "npu"].contains(runtime.accelerator) else {
            throw fail("$.runtime.accelerator", "\"\(runtime.accelerator)\" is not one of cpu, gpu, npu")
        }
        guard ["fp32", "fp16"].contains(runtime.precision) else {
            throw fail("$.runtime.precision", "\"\(runtime.precision)\" is not one of fp32, fp16")
        }
        guard ["all", "phase"].contains(runtime.residency) else {
            throw fail("$.runtime.residency", "\"\(runtime.residency)\" is not one of all, phase")
        }
        guard runtime.threads >= 1, runtime.warmup >= 0, runtime.repeats >= 1 else {
            throw fail("$.runtime", "threads and repeats must be >= 1, warmup >= 0")
        }
        guard profiling.memoryIntervalMs >= 1 else {
            throw fail("$.profiling.memory_interval_ms", "must be >= 1")
        }
        guard image.height >= 64, image.width >= 64, image.height % 64 == 0, image.width % 64 == 0 else {
            throw fail("$.image", "height and width must be positive multiples of 64")
        }

        // prompt.tokens rows have the text encoder's input length.
        guard let ids = models.textEncoder.input(ProtocolConstants.textEncoderInput), ids.shape.count == 2 else {
            throw fail("$.models.text_encoder.inputs", "needs a 2-d input named \(ProtocolConstants.textEncoderInput)")
        }
        guard prompt.tokens.count == 2 else {
            throw fail("$.prompt.tokens", "expected 2 rows (unconditional, conditional), got \(prompt.tokens.count)")
        }
        for (i, row) in prompt.tokens.enumerated() where row.count != ids.shape[1] {
            throw fail("$.prompt.tokens[\(i)]", "\(row.count) tokens, the text encoder takes \(ids.shape[1])")
        }

        // noise.shape = [1, C, h, w] of the UNet sample, equal to the decoder's latents.
        guard let sample = models.unet.input(ProtocolConstants.unetSample), sample.shape.count == 4 else {
            throw fail("$.models.unet.inputs", "needs a 4-d input named \(ProtocolConstants.unetSample)")
        }
        let latentShape = [1] + Array(sample.shape.dropFirst())
        guard noise.shape == latentShape else {
            throw fail("$.noise.shape", "\(noise.shape), the UNet sample needs \(latentShape)")
        }
        guard noise.dtype == "float32" else { throw fail("$.noise.dtype", "must be float32") }
        guard let latents = models.vaeDecoder.input(ProtocolConstants.vaeInput), latents.shape == latentShape else {
            throw fail("$.models.vae_decoder.inputs", "needs an input \(ProtocolConstants.vaeInput) of shape \(latentShape)")
        }
        let decoded = models.vaeDecoder.outputs[0].shape
        guard decoded.count == 4, decoded[2] == image.height, decoded[3] == image.width else {
            throw fail("$.image", "\(image.height)x\(image.width), the decoder outputs \(decoded)")
        }

        // Every scheduler array has `steps` entries (sigmas steps + 1); t_emb rows have the UNet's width.
        let s = scheduler
        guard s.steps >= 1 else { throw fail("$.scheduler.steps", "must be >= 1") }
        let arrays: [(String, [Double])] = [
            ("timestep", s.timestep), ("in_scale", s.inScale), ("d_x", s.dX), ("d_eps", s.dEps),
            ("x_x", s.xX), ("x_d", s.xD), ("x_dprev", s.xDprev),
        ]
        for (key, values) in arrays where values.count != s.steps {
            throw fail("$.scheduler.\(key)", "\(values.count) entries, expected steps = \(s.steps)")
        }
        guard s.sigmas.count == s.steps + 1 else {
            throw fail("$.scheduler.sigmas", "\(s.sigmas.count) entries, expected steps + 1 = \(s.steps + 1)")
        }
        guard let tEmbInput = models.unet.input(ProtocolConstants.unetTimeEmbedding), tEmbInput.shape.count == 2 else {
            throw fail("$.models.unet.inputs", "needs a 2-d input named \(ProtocolConstants.unetTimeEmbedding)")
        }
        guard s.tEmb.count == s.steps else {
            throw fail("$.scheduler.t_emb", "\(s.tEmb.count) rows, expected steps = \(s.steps)")
        }
        for (i, row) in s.tEmb.enumerated() where row.count != tEmbInput.shape[1] {
            throw fail("$.scheduler.t_emb[\(i)]", "\(row.count) values, the UNet t_emb is \(tEmbInput.shape[1]) wide")
        }

        // Block names are unique and not the reference's; per_block needs block models.
        var seen = Set<String>()
        for (i, block) in profiling.blockModels.enumerated() {
            guard seen.insert(block.name).inserted else {
                throw fail("$.profiling.block_models[\(i)].name", "duplicate block name \"\(block.name)\"")
            }
            guard block.name != ProtocolConstants.referenceBlock else {
                throw fail("$.profiling.block_models[\(i)].name",
                           "\"\(block.name)\" is reserved for the whole UNet's reference spans")
            }
        }
        if profiling.perBlock && profiling.blockModels.isEmpty {
            throw fail("$.profiling.block_models", "per_block is true but no block models are listed")
        }
        if let blockSteps = profiling.blockSteps, blockSteps < 0 {
            throw fail("$.profiling.block_steps", "must be >= 0")
        }
    }
}
