"""Names and versions fixed by the run protocol (docs/protocol.md)."""
from __future__ import annotations

PROTOCOL_VERSION = 1

# Files of a run folder.
REQUEST_FILE = "request.json"
NOISE_FILE = "noise.bin"
MODELS_DIR = "models"
TRACE_FILE = "trace.jsonl"
IMAGE_PNG = "image.png"
IMAGE_F32 = "image.f32"
STATUS_FILE = "status.json"

# How the host makes noise.bin from the seed (recorded in request.noise.generator; runners only read the file).
NOISE_GENERATOR = "numpy.random.default_rng(seed).standard_normal(shape, dtype=float32), little-endian NCHW"

# Schema ids and versions written into the files.
REQUEST_SCHEMA = "sdphone.run_request"
REQUEST_VERSION = PROTOCOL_VERSION
TRACE_SCHEMA = "sdphone.trace"
TRACE_VERSION = PROTOCOL_VERSION

# The three components, in the order a generation runs them.
COMPONENTS = ("text_encoder", "unet", "vae_decoder")

# Tensor names the runner algorithm feeds and reads (the signatures built by host/build).
TEXT_ENCODER_INPUT = "input_ids"
UNET_INPUTS = ("sample", "t_emb", "context")
VAE_INPUT = "latents"

# Trace vocabulary.
RECORD_TYPES = ("meta", "span", "memory", "event")
SPAN_CATS = ("load", "component", "step", "block", "op", "total")
# The per-block pass's spans of the whole UNet, run beside the chain (profiling.block_reference): cat "block",
# this name; no block model may take it.
REFERENCE_BLOCK = "unet"
RUNNERS = ("python-host", "android", "ios")
STATES = ("ok", "error", "running")
