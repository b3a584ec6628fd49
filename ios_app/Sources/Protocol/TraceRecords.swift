import Foundation

// trace.jsonl records, as in host/protocol/trace_record.schema.json.
// Keys the schema requires but allows to be null (span component / step, meta run_id and runtime values)
// are always written, as null when absent; optional keys are left out when absent.

/// `cat` of a span record.
enum SpanCategory: String, Codable, CaseIterable {
    case load, component, step, block, op, total
}

/// Record types (the `type` key).
enum RecordType {
    static let meta = "meta"
    static let span = "span"
    static let memory = "memory"
    static let event = "event"
}

/// `meta.device`: an open object. model, os and soc are the schema's keys; everything else the app
/// reports (product_type, gpu, ram_bytes, ...) goes in `extra`, written as further keys of the object.
struct DeviceInfo: Codable, Equatable {
    var model: String
    var os: String
    var soc: String
    var extra: [String: JSONValue] = [:]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case model, os, soc
    }

    init(model: String, os: String, soc: String, extra: [String: JSONValue] = [:]) {
        self.model = model
        self.os = os
        self.soc = soc
        self.extra = extra
    }

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        model = try c.decode(String.self, forKey: .model)
        os = try c.decode(String.self, forKey: .os)
        soc = try c.decode(String.self, forKey: .soc)
        extra = try OpenObject.extras(decoder, known: CodingKeys.allCases.map { $0.rawValue })
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(model, forKey: .model)
        try c.encode(os, forKey: .os)
        try c.encode(soc, forKey: .soc)
        try OpenObject.encode(extra, to: encoder, known: CodingKeys.allCases.map { $0.rawValue })
    }
}

/// `meta.runtime`: accelerator, precision, threads, delegate (each may be null, always written); open
/// beyond those: `extra` holds residency (the request's runtime.residency, null when it could not be read),
/// precision_loss_allowed and metal_wait_type.
struct RuntimeInfo: Codable, Equatable {
    var accelerator: String?
    var precision: String?
    var threads: Int?
    var delegate: String?
    var extra: [String: JSONValue] = [:]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case accelerator, precision, threads, delegate
    }

    init(accelerator: String?, precision: String?, threads: Int?, delegate: String?,
         extra: [String: JSONValue] = [:])
    {
        self.accelerator = accelerator
        self.precision = precision
        self.threads = threads
        self.delegate = delegate
        self.extra = extra
    }

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        accelerator = try c.decodeIfPresent(String.self, forKey: .accelerator)
        precision = try c.decodeIfPresent(String.self, forKey: .precision)
        threads = try c.decodeIfPresent(Int.self, forKey: .threads)
        delegate = try c.decodeIfPresent(String.self, forKey: .delegate)
        extra = try OpenObject.extras(decoder, known: CodingKeys.allCases.map { $0.rawValue })
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeNullable(accelerator, forKey: .accelerator)
        try c.encodeNullable(precision, forKey: .precision)
        try c.encodeNullable(threads, forKey: .threads)
        try c.encodeNullable(delegate, forKey: .delegate)
        try OpenObject.encode(extra, to: encoder, known: CodingKeys.allCases.map { $0.rawValue })
    }
}

/// A key chosen at run time: the further keys of the protocol's open objects.
struct DynamicKey: CodingKey {
    let stringValue: String
    var intValue: Int? { nil }

    init(_ name: String) { stringValue = name }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { return nil }
}

/// Reading and writing the keys of an open object beyond its fixed ones.
enum OpenObject {
    static func extras(_ decoder: Decoder, known: [String]) throws -> [String: JSONValue] {
        let c = try decoder.container(keyedBy: DynamicKey.self)
        var result: [String: JSONValue] = [:]
        for key in c.allKeys where !known.contains(key.stringValue) {
            result[key.stringValue] = try c.decode(JSONValue.self, forKey: key)
        }
        return result
    }

    static func encode(_ extra: [String: JSONValue], to encoder: Encoder, known: [String]) throws {
        var c = encoder.container(keyedBy: DynamicKey.self)
        for key in extra.keys.sorted() where !known.contains(key) {
            try c.encode(extra[key] ?? .null, forKey: DynamicKey(key))
        }
    }
}

/// The first record of every trace.
struct MetaRecord: Codable, Equatable {
    var type: String = RecordType.meta
    var t: Double
    var schema: String = ProtocolConstants.traceSchema
    var version: Int = ProtocolConstants.version
    var runId: String?
    var runner: String = HostContract.runner
    var runnerVersion: String
    var device: DeviceInfo
    var runtime: RuntimeInfo

    enum CodingKeys: String, CodingKey, CaseIterable {
        case type, t, schema, version
        case runId = "run_id"
        case runner
        case runnerVersion = "runner_version"
        case device, runtime
    }

    init(t: Double, runId: String?, runnerVersion: String, device: DeviceInfo, runtime: RuntimeInfo) {
        self.t = t
        self.runId = runId
        self.runnerVersion = runnerVersion
        self.device = device
        self.runtime = runtime
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(type, forKey: .type)
        try c.encode(t, forKey: .t)
        try c.encode(schema, forKey: .schema)
        try c.encode(version, forKey: .version)
        try c.encodeNullable(runId, forKey: .runId)
        try c.encode(runner, forKey: .runner)
        try c.encode(runnerVersion, forKey: .runnerVersion)
        try c.encode(device, forKey: .device)
        try c.encode(runtime, forKey: .runtime)
    }
}

/// A timed interval: load, component, step, block, op or total.
struct SpanRecord: Codable, Equatable {
    var type: String = RecordType.span
    var t: Double
    var name: String
    var cat: SpanCategory
    var start: Double
    var dur: Double
    var component: String?
    var step: Int?
    var repeatIndex: Int
    var warmup: Bool
    var args: TraceArgs?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case type, t, name, cat, start, dur, component, step
        case repeatIndex = "repeat"
        case warmup, args
    }

    init(t: Double, name: String, cat: SpanCategory, start: Double, dur: Double, component: String?, step: Int?,
         repeatIndex: Int, warmup: Bool, args: TraceArgs?)
    {
        self.t = t
        self.name = name
        self.cat = cat
        self.start = start
        self.dur = dur
        self.component = component
        self.step = step
        self.repeatIndex = repeatIndex
        self.warmup = warmup
        self.args = args
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(type, forKey: .type)
        try c.encode(t, forKey: .t)
        try c.encode(name, forKey: .name)
        try c.encode(cat, forKey: .cat)
        try c.encode(start, forKey: .start)
        try c.encode(dur, forKey: .dur)
        try c.encodeNullable(component, forKey: .component)
        try c.encodeNullable(step, forKey: .step)
        try c.encode(repeatIndex, forKey: .repeatIndex)
        try c.encode(warmup, forKey: .warmup)
        try c.encodeIfPresent(args, forKey: .args)
    }
}

/// A memory sample of this process (iOS: phys_footprint).
struct MemoryRecord: Codable, Equatable {
    var type: String = RecordType.memory
    var t: Double
    var rssBytes: UInt64
    var source: String
    var peakBytes: UInt64?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case type, t
        case rssBytes = "rss_bytes"
        case source
        case peakBytes = "peak_bytes"
    }

    init(t: Double, rssBytes: UInt64, source: String, peakBytes: UInt64?) {
        self.t = t
        self.rssBytes = rssBytes
        self.source = source
        self.peakBytes = peakBytes
    }
}

/// Something that happened: progress, warning, error, oom, per_block_check, thermal.
struct EventRecord: Codable, Equatable {
    var type: String = RecordType.event
    var t: Double
    var name: String
    var message: String
    var args: TraceArgs?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case type, t, name, message, args
    }

    init(t: Double, name: String, message: String, args: TraceArgs?) {
        self.t = t
        self.name = name
        self.message = message
        self.args = args
    }
}

/// One line of trace.jsonl.
enum TraceRecord: Encodable {
    case meta(MetaRecord)
    case span(SpanRecord)
    case memory(MemoryRecord)
    case event(EventRecord)

    func encode(to encoder: Encoder) throws {
        switch self {
        case .meta(let record):
            try record.encode(to: encoder)
        case .span(let record):
            try record.encode(to: encoder)
        case .memory(let record):
            try record.encode(to: encoder)
        case .event(let record):
            try record.encode(to: encoder)
        }
    }
}

extension KeyedEncodingContainer {
    /// Write `value`, or an explicit null when it is nil (for keys the schema requires but allows to be null).
    mutating func encodeNullable<T: Encodable>(_ value: T?, forKey key: Key) throws {
        if let value = value {
            try encode(value, forKey: key)
        } else {
            try encodeNil(forKey: key)
        }
    }
}
