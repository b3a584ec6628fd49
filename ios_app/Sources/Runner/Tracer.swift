import Foundation

/// Seconds since the runner started, on the monotonic clock.
final class RunClock {
    private let origin = DispatchTime.now().uptimeNanoseconds

    func now() -> Double {
        Double(DispatchTime.now().uptimeNanoseconds - origin) / 1e9
    }
}

/// Rounded to microseconds, as every runner writes times.
func roundMicro(_ seconds: Double) -> Double {
    (seconds * 1e6).rounded() / 1e6
}

/// Writes records stamped with the run clock; `span` times a block of code.
final class Tracer {
    let writer: TraceWriter
    let clock: RunClock
    /// Sees every record after it is written (on the thread that wrote it).
    var onRecord: ((TraceRecord) -> Void)?

    init(writer: TraceWriter, clock: RunClock = RunClock(), onRecord: ((TraceRecord) -> Void)? = nil) {
        self.writer = writer
        self.clock = clock
        self.onRecord = onRecord
    }

    func now() -> Double { roundMicro(clock.now()) }

    func write(_ record: TraceRecord) throws {
        try writer.write(record)
        onRecord?(record)
    }

    func event(_ name: String, _ message: String, args: TraceArgs? = nil) throws {
        try write(.event(EventRecord(t: now(), name: name, message: message, args: args)))
    }

    /// Time `body` and write its span when it finishes (nothing when it throws).
    func span<T>(_ name: String, _ cat: SpanCategory, component: String? = nil, step: Int? = nil,
                 repeatIndex: Int = 0, warmup: Bool = false, args: TraceArgs? = nil,
                 _ body: () throws -> T) throws -> T
    {
        let start = clock.now()
        let result = try body()
        let end = clock.now()
        try write(.span(SpanRecord(
            t: roundMicro(end), name: name, cat: cat, start: roundMicro(start), dur: roundMicro(end - start),
            component: component, step: step, repeatIndex: repeatIndex, warmup: warmup, args: args)))
        return result
    }
}
