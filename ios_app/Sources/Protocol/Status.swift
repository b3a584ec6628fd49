import Foundation

// status.json, as in host/protocol/status.schema.json. Written "running" right after the meta record,
// then "ok" or "error" last of all; a runner that dies leaves "running" behind.

enum RunState: String, Codable, CaseIterable {
    case ok, error, running
}

struct RunStatus: Codable, Equatable {
    var state: RunState
    /// null only when the request could not be read.
    var runId: String?
    /// One line; required for "error".
    var message: String?
    /// Seconds on the trace clock; required for "ok" and "error".
    var finishedT: Double?
    /// Image files of the run folder; required for "ok".
    var images: [String]?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case state
        case runId = "run_id"
        case message
        case finishedT = "finished_t"
        case images
    }

    init(state: RunState, runId: String?, message: String? = nil, finishedT: Double? = nil, images: [String]? = nil) {
        self.state = state
        self.runId = runId
        self.message = message.map(RunStatus.oneLine)
        self.finishedT = finishedT
        self.images = images
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(state, forKey: .state)
        try c.encodeNullable(runId, forKey: .runId)
        try c.encodeIfPresent(message, forKey: .message)
        try c.encodeIfPresent(finishedT, forKey: .finishedT)
        try c.encodeIfPresent(images, forKey: .images)
    }

    /// Collapse whitespace (newlines included) so that the message is one line.
    static func oneLine(_ text: String) -> String {
        text.split(whereSeparator: { $0.isWhitespace || $0.isNewline }).joined(separator: " ")
    }

    /// Write `status.json` into `directory` atomically (a reader never sees half a file).
    func write(to directory: URL) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        var data = try encoder.encode(self)
        data.append(0x0A)
        try data.write(to: directory.appendingPathComponent(ProtocolFiles.status), options: .atomic)
    }
}
