import CoreGraphics
import CryptoKit
import Foundation
import ImageIO
import UniformTypeIdentifiers

/// A run that cannot go on (missing or corrupt file, unsupported setting, failed invocation); one line.
struct RunnerError: Error, CustomStringConvertible, LocalizedError {
    let message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
    var errorDescription: String? { message }
}

/// Float32 / Int32 buffers <-> the little-endian bytes of tensors and files.
enum TensorData {
    static func bytes(_ values: [Float]) -> Data {
        var data = Data(count: values.count * 4)
        data.withUnsafeMutableBytes { raw in
            for (i, value) in values.enumerated() {
                raw.storeBytes(of: value.bitPattern.littleEndian, toByteOffset: i * 4, as: UInt32.self)
            }
        }
        return data
    }

    static func bytes(_ values: [Int32]) -> Data {
        var data = Data(count: values.count * 4)
        data.withUnsafeMutableBytes { raw in
            for (i, value) in values.enumerated() {
                raw.storeBytes(of: value.littleEndian, toByteOffset: i * 4, as: Int32.self)
            }
        }
        return data
    }

    /// Little-endian float32 bytes -> values (no alignment assumed).
    static func floats(_ data: Data) -> [Float] {
        let count = data.count / 4
        var words = [UInt32](repeating: 0, count: count)
        _ = words.withUnsafeMutableBytes { data.copyBytes(to: $0, count: count * 4) }
        return words.map { Float(bitPattern: UInt32(littleEndian: $0)) }
    }
}

enum RunFiles {
    /// sha256 of a file, read in chunks (model files are gigabytes).
    static func sha256(of url: URL) throws -> String {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        var hasher = SHA256()
        while true {
            let chunk: Data? = try autoreleasepool { try handle.read(upToCount: 16 << 20) }
            guard let data = chunk, !data.isEmpty else { break }
            hasher.update(data: data)
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    static func sha256(of data: Data) -> String {
        SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }

    /// `url` must exist and, when `sha256` is given, hash to it. Errors name the file.
    static func verify(_ url: URL, sha256 expected: String?, what: String) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), !isDirectory.boolValue else {
            throw RunnerError("\(url.path): \(what) file not found")
        }
        guard let expected = expected else { return }
        let actual = try sha256(of: url)
        guard actual == expected else {
            throw RunnerError("\(url.path): sha256 mismatch (\(what)): request has \(expected.prefix(16))..., file has \(actual.prefix(16))...")
        }
    }

    /// The folder of the model files: request.models_dir relative to the run folder, or absolute.
    static func modelsDirectory(_ runDirectory: URL, _ request: RunRequest) -> URL {
        if request.modelsDir.hasPrefix("/") {
            return URL(fileURLWithPath: request.modelsDir, isDirectory: true).standardizedFileURL
        }
        // The host shares model stores between runs: "../_models/<key>" is usual.
        return resolve(runDirectory, request.modelsDir).standardizedFileURL
    }

    /// Relative, '/'-separated `file` under `base`.
    static func resolve(_ base: URL, _ file: String) -> URL {
        file.split(separator: "/").reduce(base) { $0.appendingPathComponent(String($1)) }
    }

    /// `round(clip((img + 1) / 2, 0, 1) * 255)` as HWC RGB bytes; `image` is [1, 3, H, W] float32.
    static func rgbBytes(_ image: [Float], height: Int, width: Int) -> [UInt8] {
        let plane = height * width
        var out = [UInt8](repeating: 0, count: plane * 3)
        for c in 0..<3 {
            for p in 0..<plane {
                let v = image[c * plane + p]
                let scaled = min(max((v + 1) / 2, 0), 1) * 255
                out[p * 3 + c] = scaled.isNaN ? 0 : UInt8(scaled.rounded(.toNearestOrEven))
            }
        }
        return out
    }

    /// 8-bit RGB PNG (no alpha) through ImageIO.
    static func writePNG(rgb: [UInt8], width: Int, height: Int, to url: URL) throws {
        let bitmapInfo = CGBitmapInfo(rawValue: CGImageAlphaInfo.none.rawValue)
        guard let provider = CGDataProvider(data: Data(rgb) as CFData),
            let image = CGImage(
                width: width, height: height, bitsPerComponent: 8, bitsPerPixel: 24, bytesPerRow: width * 3,
                space: CGColorSpaceCreateDeviceRGB(), bitmapInfo: bitmapInfo, provider: provider, decode: nil,
                shouldInterpolate: false, intent: .defaultIntent),
            let destination = CGImageDestinationCreateWithURL(url as CFURL, UTType.png.identifier as CFString, 1, nil)
        else {
            throw RunnerError("\(url.path): cannot encode the PNG")
        }
        CGImageDestinationAddImage(destination, image, nil)
        guard CGImageDestinationFinalize(destination) else {
            throw RunnerError("\(url.path): cannot write the PNG")
        }
    }
}
