import Darwin
import Foundation
import os

/// This process's memory as the system accounts it against the app's limit (Xcode's memory gauge).
enum PhysFootprint {
    static let source = "phys_footprint"

    /// (phys_footprint, lifetime peak when the kernel reports it) from task_info(TASK_VM_INFO).
    static func read() -> (current: UInt64, peak: UInt64?)? {
        var info = task_vm_info_data_t()
        let wordSize = MemoryLayout<natural_t>.size
        var count = mach_msg_type_number_t(MemoryLayout<task_vm_info_data_t>.size / wordSize)
        let result = withUnsafeMutablePointer(to: &info) { pointer in
            pointer.withMemoryRebound(to: integer_t.self, capacity: Int(count)) { words in
                task_info(mach_task_self_, task_flavor_t(TASK_VM_INFO), words, &count)
            }
        }
        guard result == KERN_SUCCESS else { return nil }
        var peak: UInt64? = nil
        // ledger_phys_footprint_peak arrived in a later revision of the struct: use it only if returned.
        if let offset = MemoryLayout<task_vm_info_data_t>.offset(of: \task_vm_info_data_t.ledger_phys_footprint_peak),
            Int(count) * wordSize >= offset + MemoryLayout<Int64>.size,
            info.ledger_phys_footprint_peak > 0
        {
            peak = UInt64(info.ledger_phys_footprint_peak)
        }
        return (UInt64(info.phys_footprint), peak)
    }

    /// Bytes the app can still allocate before it hits its limit (iOS 13+).
    static func available() -> Int {
        Int(os_proc_available_memory())
    }
}

/// Samples phys_footprint into `memory` records every interval (plus one at start and stop), and turns
/// the system's memory warnings into `oom` / `warning` events and thermal changes into `thermal` events.
final class MemoryMonitor {
    private let tracer: Tracer
    private let interval: TimeInterval
    private let queue = DispatchQueue(label: "dev.sdphone.memory", qos: .utility)
    private var timer: DispatchSourceTimer?
    private var pressure: DispatchSourceMemoryPressure?
    private var observers: [NSObjectProtocol] = []
    private var peakSeen: UInt64 = 0
    private var stopped = false

    /// UIApplication.didReceiveMemoryWarningNotification, by its string value (usable off the main actor).
    static let memoryWarningNotification = Notification.Name("UIApplicationDidReceiveMemoryWarningNotification")

    init(tracer: Tracer, interval: TimeInterval) {
        self.tracer = tracer
        self.interval = max(interval, 0.001)
    }

    func start() {
        queue.sync { sample() }
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + interval, repeating: interval, leeway: .milliseconds(2))
        timer.setEventHandler { [weak self] in self?.sample() }
        queue.sync { self.timer = timer }
        timer.resume()

        let pressure = DispatchSource.makeMemoryPressureSource(eventMask: [.warning, .critical], queue: queue)
        pressure.setEventHandler { [weak self] in
            guard let self = self, let event = self.pressure?.data else { return }
            let critical = event.contains(.critical)
            self.report(critical ? "oom" : "warning",
                        critical ? "memory pressure critical" : "memory pressure warning",
                        source: "DISPATCH_SOURCE_TYPE_MEMORYPRESSURE")
        }
        queue.sync { self.pressure = pressure }
        pressure.resume()

        let center = NotificationCenter.default
        observers.append(center.addObserver(forName: MemoryMonitor.memoryWarningNotification, object: nil, queue: nil) {
            [weak self] _ in
            self?.queue.async {
                self?.report("oom", "didReceiveMemoryWarning", source: "UIApplicationDidReceiveMemoryWarningNotification")
            }
        })
        observers.append(center.addObserver(forName: ProcessInfo.thermalStateDidChangeNotification, object: nil, queue: nil) {
            [weak self] _ in
            self?.queue.async { self?.thermalChanged() }
        })
    }

    /// Stop sampling (idempotent) and take a last sample.
    func stop() {
        let observers = self.observers
        self.observers = []
        observers.forEach { NotificationCenter.default.removeObserver($0) }
        queue.sync {
            guard !stopped else { return }
            timer?.cancel()
            pressure?.cancel()
            sample()
            stopped = true
        }
    }

    /// The largest footprint seen so far.
    var peak: UInt64 { queue.sync { peakSeen } }

    // Runs on `queue`.
    private func sample() {
        guard !stopped, let reading = PhysFootprint.read() else { return }
        peakSeen = max(peakSeen, reading.current, reading.peak ?? 0)
        try? tracer.write(.memory(MemoryRecord(t: tracer.now(), rssBytes: reading.current,
                                               source: PhysFootprint.source, peakBytes: peakSeen)))
    }

    // Runs on `queue`.
    private func report(_ name: String, _ message: String, source: String) {
        guard !stopped else { return }
        let footprint = PhysFootprint.read()?.current ?? 0
        try? tracer.event(name, message, args: [
            "source": .string(source),
            "phys_footprint": .int(Int(clamping: footprint)),
            "available_bytes": .int(PhysFootprint.available()),
        ])
        sample()
    }

    // Runs on `queue`.
    private func thermalChanged() {
        guard !stopped else { return }
        let state = DeviceInfoProvider.thermalStateName(ProcessInfo.processInfo.thermalState)
        try? tracer.event("thermal", "thermal state \(state)", args: ["state": .string(state)])
    }
}
