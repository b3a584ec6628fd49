import Foundation
import SwiftUI
import UIKit
import os

/// Prints trace records to stdout (the host sees them through DVT process control), one line each.
enum StdoutEcho {
    private static let lock = NSLock()
    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return encoder
    }()

    static func echo(_ record: TraceRecord) {
        if case .memory = record { return }
        lock.lock()
        defer { lock.unlock() }
        guard let data = try? encoder.encode(record), let line = String(data: data, encoding: .utf8) else { return }
        print(HostContract.stdoutRecordPrefix + line)
        fflush(stdout)
    }
}

/// Runs one run folder for the host on a background queue, keeps the app awake and in front while it
/// runs (Metal work is not allowed in the background), then exits with HostContract's exit code.
final class HeadlessController: ObservableObject {
    @Published var headline = "Starting"
    @Published var stepsDone = 0
    @Published var lastEvent = ""
    @Published var finished: RunStatus? = nil

    let runDirectory: URL?
    let launchError: String?
    private var started = false
    private var backgroundTask: UIBackgroundTaskIdentifier = .invalid
    private var observers: [NSObjectProtocol] = []
    private let log = Logger(subsystem: HostContract.logSubsystem, category: HostContract.logCategory)

    init(runDirectory: URL?, launchError: String?) {
        self.runDirectory = runDirectory
        self.launchError = launchError
    }

    @MainActor
    func start() {
        guard !started else { return }
        started = true
        guard let runDirectory = runDirectory else {
            let message = launchError ?? "no run folder"
            log.error("launch: \(message, privacy: .public)")
            headline = "Launch error"
            finished = RunStatus(state: .error, runId: nil, message: message, finishedT: 0)
            exitSoon(code: HostContract.exitCodeError)
            return
        }
        headline = "Running \(runDirectory.lastPathComponent)"
        log.info("headless run \(runDirectory.path, privacy: .public)")
        UIApplication.shared.isIdleTimerDisabled = true
        backgroundTask = UIApplication.shared.beginBackgroundTask(withName: "sdphone-run") { [weak self] in
            self?.endBackgroundTask()
        }
        // Metal command buffers fail once the app is in the background: say so in the log.
        let name = Notification.Name("UIApplicationDidEnterBackgroundNotification")
        let log = self.log
        observers.append(NotificationCenter.default.addObserver(forName: name, object: nil, queue: .main) { _ in
            log.warning("the app went to the background during a run; GPU work will fail")
        })

        DispatchQueue.global(qos: .userInitiated).async {
            let runner = Runner(runDirectory: runDirectory)
            runner.onRecord = { record in
                StdoutEcho.echo(record)
                Task { @MainActor in self.apply(record) }
            }
            let status = runner.run()
            Task { @MainActor in self.finish(status) }
        }
    }

    @MainActor
    private func apply(_ record: TraceRecord) {
        switch record {
        case .span(let span) where span.name == "unet_step":
            stepsDone += 1
        case .event(let event):
            lastEvent = "\(event.name): \(event.message)"
        case .meta, .span, .memory:
            break
        }
    }

    @MainActor
    private func finish(_ status: RunStatus) {
        finished = status
        headline = status.state == .ok ? "Done" : "Failed"
        let code = status.state == .ok ? HostContract.exitCodeOk : HostContract.exitCodeError
        exitSoon(code: code)
    }

    @MainActor
    private func exitSoon(code: Int) {
        // Give the log and stdout a moment, then leave: the host waits for status.json and the exit.
        Task { @MainActor in
            try? await Task.sleep(nanoseconds: 500_000_000)
            self.endBackgroundTask()
            exit(Int32(code))
        }
    }

    @MainActor
    private func endBackgroundTask() {
        if backgroundTask != .invalid {
            UIApplication.shared.endBackgroundTask(backgroundTask)
            backgroundTask = .invalid
        }
    }
}

/// What the phone shows while the host drives it.
struct HeadlessRunView: View {
    @StateObject private var controller: HeadlessController

    init(runDirectory: URL) {
        _controller = StateObject(wrappedValue: HeadlessController(runDirectory: runDirectory, launchError: nil))
    }

    init(launchError: String) {
        _controller = StateObject(wrappedValue: HeadlessController(runDirectory: nil, launchError: launchError))
    }

    var body: some View {
        VStack(alignment: .leading, spacing: 12) {
            Text("SDPhone: host run").font(.headline)
            Text(controller.headline).font(.title2)
            if let directory = controller.runDirectory {
                Text(directory.path).font(.caption).foregroundColor(.secondary).lineLimit(3)
            }
            Text("UNet steps done: \(controller.stepsDone)").monospacedDigit()
            if !controller.lastEvent.isEmpty {
                Text(controller.lastEvent).font(.footnote).lineLimit(3)
            }
            if let status = controller.finished {
                Text("\(status.state.rawValue): \(status.message ?? "")").font(.footnote).lineLimit(4)
            }
            Text("Keep the app in front until it exits by itself.").font(.footnote).foregroundColor(.secondary)
            Spacer()
        }
        .padding()
        .onAppear { controller.start() }
    }
}
