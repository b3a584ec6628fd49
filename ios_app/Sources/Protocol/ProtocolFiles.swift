// Names and versions fixed by the run protocol (docs/protocol.md, host/protocol/constants.py).

enum ProtocolFiles {
    /// The RunRequest, written by the host.
    static let request = "request.json"
    /// Initial latents, float32 little-endian NCHW [1, C, h, w].
    static let noise = "noise.bin"
    /// Default folder of the .tflite files (request.models_dir).
    static let modelsDir = "models"
    /// Trace records, one JSON object per line.
    static let trace = "trace.jsonl"
    /// The generated image, 8-bit RGB.
    static let imagePng = "image.png"
    /// The decoder output, float32 little-endian NCHW [1, 3, H, W] in [-1, 1].
    static let imageF32 = "image.f32"
    /// The final status, written last.
    static let status = "status.json"
}

enum ProtocolConstants {
    static let version = 1
    static let requestSchema = "sdphone.run_request"
    static let traceSchema = "sdphone.trace"
    /// The three components, in the order a generation runs them.
    static let components = ["text_encoder", "unet", "vae_decoder"]
    /// Tensor names the algorithm feeds (the signatures built by host/build).
    static let textEncoderInput = "input_ids"
    static let unetSample = "sample"
    static let unetTimeEmbedding = "t_emb"
    static let unetContext = "context"
    static let vaeInput = "latents"
    /// The name of the whole UNet's spans beside the block chain (`profiling.block_reference`); no block takes it.
    static let referenceBlock = "unet"
}
