import Foundation

/// Appends trace records to trace.jsonl, one JSON object per line, and makes every line durable
/// (write, then synchronize(), i.e. fsync) before returning: a runner that dies leaves every finished
/// record on disk, at worst with the last line cut short. Thread-safe.
final class TraceWriter {
    let url: URL
    private let handle: FileHandle
    private let encoder: JSONEncoder
    private let lock = NSLock()
    private var closed = false

    /// Start a new trace at `url` (replacing an old file), or append to it when `append` is true.
    init(url: URL, append: Bool = false) throws {
        self.url = url
        let fileManager = FileManager.default
        if !append || !fileManager.fileExists(atPath: url.path) {
            guard fileManager.createFile(atPath: url.path, contents: nil) else {
                throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: url.path])
            }
        }
        handle = try FileHandle(forWritingTo: url)
        if append {
            try handle.seekToEnd()
        }
        encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
    }

    deinit {
        close()
    }

    /// The JSON line of `record`, newline included.
    func line(for record: TraceRecord) throws -> Data {
        lock.lock()
        defer { lock.unlock() }
        var data = try encoder.encode(record)
        data.append(0x0A)
        return data
    }

    /// Append `record` as one line, then synchronize the file.
    func write(_ record: TraceRecord) throws {
        let data = try line(for: record)
        lock.lock()
        defer { lock.unlock() }
        guard !closed else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: url.path, NSLocalizedDescriptionKey: "trace is closed"])
        }
        try handle.write(contentsOf: data)
        try handle.synchronize()
    }

    var isClosed: Bool {
        lock.lock()
        defer { lock.unlock() }
        return closed
    }

    func close() {
        lock.lock()
        defer { lock.unlock() }
        if !closed {
            try? handle.close()
            closed = true
        }
    }
}
