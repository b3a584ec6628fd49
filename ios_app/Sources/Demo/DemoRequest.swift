import Foundation

/// A run folder the host pushed (Documents/runs/<run_id>/request.json).
struct PushedRun {
    let directory: URL
    let request: RunRequest
    let modified: Date

    /// The variant of a host run id "<UTC stamp>_<variant>" (host/deploy.py), e.g. "optimized".
    var variant: String {
        guard let underscore = request.runId.firstIndex(of: "_") else { return request.runId }
        return String(request.runId[request.runId.index(after: underscore)...])
    }

    /// Every readable pushed run, newest first.
    static func all(in root: URL = LaunchMode.runsRoot) -> [PushedRun] {
        let fileManager = FileManager.default
        guard let entries = try? fileManager.contentsOfDirectory(
            at: root, includingPropertiesForKeys: [.isDirectoryKey], options: [.skipsHiddenFiles])
        else { return [] }
        var runs: [PushedRun] = []
        for directory in entries {
            let requestURL = directory.appendingPathComponent(ProtocolFiles.request)
            guard let data = try? Data(contentsOf: requestURL), let request = try? RunRequest.decode(data) else {
                continue
            }
            let attributes = try? fileManager.attributesOfItem(atPath: requestURL.path)
            let modified = attributes?[.modificationDate] as? Date ?? .distantPast
            runs.append(PushedRun(directory: directory, request: request, modified: modified))
        }
        return runs.sorted { $0.modified > $1.modified }
    }

    /// The newest pushed run of `variant`.
    static func latest(variant: String, in root: URL = LaunchMode.runsRoot) -> PushedRun? {
        all(in: root).first { $0.variant == variant }
    }
}

/// Initial latents from a seed on the phone. NOT the host's generator (numpy PCG64 + its normal
/// sampler): the same seed gives different noise, and so a different image, than a host run.
struct DemoNoise {
    static let generator = "ios demo: SplitMix64 + Box-Muller (differs from the host's numpy PCG64 noise)"

    private var state: UInt64

    init(seed: UInt64) { state = seed }

    private mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    private mutating func uniform() -> Double {
        (Double(next() >> 11) + 1.0) / 9_007_199_254_740_992.0
    }

    /// `count` standard normal samples as float32.
    mutating func normals(_ count: Int) -> [Float] {
        var values: [Float] = []
        values.reserveCapacity(count)
        while values.count < count {
            let radius = (-2.0 * log(uniform())).squareRoot()
            let angle = 2.0 * Double.pi * uniform()
            values.append(Float(radius * cos(angle)))
            if values.count < count {
                values.append(Float(radius * sin(angle)))
            }
        }
        return values
    }
}

/// What the demo screen changes in a pushed request.
struct DemoSettings {
    var steps: Int
    var seed: Int
    var accelerator: String
    var precision: String
}

enum DemoRequest {
    /// Write a new run folder under Documents/demo from `source` with the demo's settings: same models
    /// (read in place from the pushed folder), same tokens, a scheduler table for the new step count, and
    /// noise from the seed made here. Returns the folder.
    static func prepare(from source: PushedRun, settings: DemoSettings, root: URL = LaunchMode.demoRoot) throws -> URL {
        var request = source.request
        guard let tEmbInput = request.models.unet.input(ProtocolConstants.unetTimeEmbedding),
            tEmbInput.shape.count == 2
        else {
            throw RunnerError("the pushed UNet has no 2-d t_emb input")
        }
        request.scheduler = try SchedulerTables.make(
            name: request.scheduler.name, steps: settings.steps, karras: request.scheduler.karras,
            tEmbWidth: tEmbInput.shape[1])

        var noise = DemoNoise(seed: UInt64(max(settings.seed, 0)))
        let bytes = TensorData.bytes(noise.normals(request.noise.shape.reduce(1, *)))
        request.noise.file = ProtocolFiles.noise
        request.noise.seed = max(settings.seed, 0)
        request.noise.sha256 = RunFiles.sha256(of: bytes)
        request.noise.generator = DemoNoise.generator

        request.modelsDir = RunFiles.modelsDirectory(source.directory, source.request).path
        request.runtime.accelerator = settings.accelerator
        request.runtime.precision = settings.precision
        request.runtime.warmup = 0
        request.runtime.repeats = 1
        request.profiling.perOp = false
        request.profiling.perBlock = false
        request.profiling.blockModels = []
        request.profiling.blockSteps = nil

        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        request.runId = "\(formatter.string(from: Date()))_demo_\(source.variant)"
        try request.check()

        let directory = root.appendingPathComponent(request.runId, isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try bytes.write(to: directory.appendingPathComponent(ProtocolFiles.noise), options: .atomic)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(request).write(to: directory.appendingPathComponent(ProtocolFiles.request), options: .atomic)
        return directory
    }
}
