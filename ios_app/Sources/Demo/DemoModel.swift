import Foundation
import SwiftUI
import UIKit

enum DemoVariant: String, CaseIterable, Identifiable {
    case baseline, optimized
    var id: String { rawValue }
}

enum DemoAccelerator: String, CaseIterable, Identifiable {
    case gpuFP16 = "GPU fp16"
    case gpuFP32 = "GPU fp32"
    case cpu = "CPU fp32"
    case npu = "Neural Engine"

    var id: String { rawValue }

    /// (runtime.accelerator, runtime.precision) of the request.
    var runtime: (String, String) {
        switch self {
        case .gpuFP16: return ("gpu", "fp16")
        case .gpuFP32: return ("gpu", "fp32")
        case .cpu: return ("cpu", "fp32")
        case .npu: return ("npu", "fp16")
        }
    }
}

struct TimingRow: Identifiable {
    let label: String
    let value: String
    var id: String { label }
}

/// State of the demo screen. Generation runs the same Runner as a host run, on a run folder of its own.
final class DemoModel: ObservableObject {
    @Published var variant: DemoVariant = .optimized
    @Published var steps = 20
    @Published var seed = 42
    @Published var accelerator: DemoAccelerator = .gpuFP16
    @Published private(set) var source: PushedRun? = nil
    @Published private(set) var isRunning = false
    @Published private(set) var phase = ""
    @Published private(set) var stepsDone = 0
    @Published private(set) var image: UIImage? = nil
    @Published private(set) var timings: [TimingRow] = []
    @Published private(set) var errorMessage: String? = nil

    private var stepDurations: [Double] = []
    private var loadSeconds = 0.0
    private var peakBytes: UInt64 = 0

    var promptText: String { source?.request.prompt.text ?? "" }

    var progress: Double { steps > 0 ? min(Double(stepsDone) / Double(steps), 1) : 0 }

    var canGenerate: Bool { source != nil && !isRunning }

    /// " (<run_id>)" of the pushed run the demo starts from, or "".
    var sourceLabel: String {
        guard let source = source else { return "" }
        return " (\(source.request.runId))"
    }

    /// Pick the newest pushed run of `variant` (the selected one: @Published publishes before it changes).
    @MainActor
    func refresh(variant: DemoVariant) {
        source = PushedRun.latest(variant: variant.rawValue)
        if source == nil {
            errorMessage = "No pushed \(variant.rawValue) run in \(HostContract.documentsRunRoot). Run one from the host first (python -m host.deploy --device <iphone profile>)."
        } else if !isRunning {
            errorMessage = nil
        }
    }

    @MainActor
    func generate() {
        guard let source = source, !isRunning else { return }
        let (acceleratorName, precision) = accelerator.runtime
        let settings = DemoSettings(steps: steps, seed: seed, accelerator: acceleratorName, precision: precision)
        let directory: URL
        do {
            directory = try DemoRequest.prepare(from: source, settings: settings)
        } catch {
            errorMessage = Runner.describe(error)
            return
        }
        isRunning = true
        errorMessage = nil
        image = nil
        timings = []
        stepsDone = 0
        stepDurations = []
        loadSeconds = 0
        peakBytes = 0
        phase = "Verifying and loading models"
        UIApplication.shared.isIdleTimerDisabled = true

        DispatchQueue.global(qos: .userInitiated).async {
            let runner = Runner(runDirectory: directory)
            runner.onRecord = { record in
                Task { @MainActor in self.apply(record) }
            }
            let status = runner.run()
            Task { @MainActor in self.finish(status, directory: directory) }
        }
    }

    @MainActor
    private func apply(_ record: TraceRecord) {
        switch record {
        case .span(let span):
            switch span.name {
            case "load":
                loadSeconds += span.dur
                var loadPhase = ""
                if case .string(let value)? = span.args?["phase"] {
                    loadPhase = value
                }
                phase = "Loaded \(span.component ?? "model") (\(loadPhase))"
            case "text_encoder":
                addTiming("Text encoder", seconds: span.dur)
                phase = "Denoising"
            case "unet_step":
                stepsDone += 1
                stepDurations.append(span.dur)
                phase = "Step \(stepsDone) of \(steps)"
            case "vae_decoder":
                addTiming("VAE decoder", seconds: span.dur)
            case "generation":
                addTiming("Generation", seconds: span.dur)
            default:
                break
            }
        case .memory(let sample):
            peakBytes = max(peakBytes, sample.peakBytes ?? sample.rssBytes)
        case .event(let event) where event.name == "oom" || event.name == "warning" || event.name == "error":
            phase = "\(event.name): \(event.message)"
        case .meta, .event:
            break
        }
    }

    @MainActor
    private func addTiming(_ label: String, seconds: Double) {
        timings.append(TimingRow(label: label, value: String(format: "%.2f s", seconds)))
    }

    @MainActor
    private func finish(_ status: RunStatus, directory: URL) {
        isRunning = false
        UIApplication.shared.isIdleTimerDisabled = false
        if !stepDurations.isEmpty {
            let mean = stepDurations.reduce(0, +) / Double(stepDurations.count)
            timings.insert(TimingRow(label: "UNet step (mean of \(stepDurations.count))",
                                     value: String(format: "%.3f s", mean)), at: 0)
        }
        timings.insert(TimingRow(label: "Model loads (cold + warm)", value: String(format: "%.2f s", loadSeconds)), at: 0)
        if peakBytes > 0 {
            timings.append(TimingRow(label: "Peak phys_footprint",
                                     value: String(format: "%.0f MiB", Double(peakBytes) / 1_048_576)))
        }
        if status.state == .ok {
            phase = "Done: \(directory.lastPathComponent)"
            image = UIImage(contentsOfFile: directory.appendingPathComponent(ProtocolFiles.imagePng).path)
        } else {
            phase = "Failed"
            errorMessage = status.message
        }
    }
}
