import Foundation
import Metal

/// What this phone is: the `device` object of the meta record. Uses no UIKit (safe off the main thread).
enum DeviceInfoProvider {
    /// The hardware identifier, e.g. "iPhone15,3" (device_profiles/*.toml match.product_types).
    static func productType() -> String {
        if let simulated = ProcessInfo.processInfo.environment["SIMULATOR_MODEL_IDENTIFIER"] {
            return simulated
        }
        var system = utsname()
        uname(&system)
        return withUnsafeBytes(of: &system.machine) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    static func osVersion() -> String {
        let v = ProcessInfo.processInfo.operatingSystemVersion
        return "iOS \(v.majorVersion).\(v.minorVersion).\(v.patchVersion)"
    }

    static func thermalStateName(_ state: ProcessInfo.ThermalState) -> String {
        switch state {
        case .nominal: return "nominal"
        case .fair: return "fair"
        case .serious: return "serious"
        case .critical: return "critical"
        @unknown default: return "unknown"
        }
    }

    static func appVersion() -> String {
        let info = Bundle.main.infoDictionary ?? [:]
        let version = info["CFBundleShortVersionString"] as? String ?? "0"
        let build = info["CFBundleVersion"] as? String ?? "0"
        return "\(version) (\(build))"
    }

    static func current() -> DeviceInfo {
        // The Metal device is named after the chip ("Apple A16 GPU"): the closest thing to a SoC name iOS gives.
        let gpu = MTLCreateSystemDefaultDevice()?.name
        var soc = gpu ?? "unknown"
        if soc.hasSuffix(" GPU") {
            soc = String(soc.dropLast(4))
        }
        let product = productType()
        let process = ProcessInfo.processInfo
        var extra: [String: JSONValue] = [
            "product_type": .string(product),
            "ram_bytes": .int(Int(clamping: process.physicalMemory)),
            "cpu_cores": .int(process.activeProcessorCount),
            "available_memory_bytes": .int(PhysFootprint.available()),
            "thermal_state": .string(thermalStateName(process.thermalState)),
            "low_power_mode": .bool(process.isLowPowerModeEnabled),
            "app_version": .string(appVersion()),
        ]
        if let gpu = gpu {
            extra["gpu"] = .string(gpu)
        }
        return DeviceInfo(model: product, os: osVersion(), soc: soc, extra: extra)
    }
}
