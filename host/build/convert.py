"""PyTorch module -> .tflite through litert-torch, one signature per component."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch

from host.errors import BuildError


class _Named(torch.nn.Module):
    """Gives the single output a stable signature name (e.g. "noise_pred")."""

    def __init__(self, module: torch.nn.Module, output: str):
        super().__init__()
        self.module, self.output = module, output

    def forward(self, **inputs):
        return {self.output: self.module(**inputs)}


def quant_config(quantization: str):
    if quantization == "fp32":
        return None
    from litert_torch.generative.quantize import quant_recipes

    if quantization == "fp16":
        return quant_recipes.full_fp16_recipe()
    if quantization == "int8":
        return quant_recipes.full_dynamic_recipe()
    raise BuildError(f"unknown quantization {quantization!r}")


#: Every component but these is converted with litert-torch's ``lightweight_conversion``: constants of 1 MiB
#: and more go into MLIR as resource blobs instead of uniqued ``DenseElementsAttr``s (building those hashed and
#: copied every weight: half of the lowering time in a py-spy profile), and what the converter can then no
#: longer fold (weight transposes) is run once through LiteRT at conversion time ("runtime constant folding").
#: Measured on this project's host, full-size sd14 baseline, cold: UNet build 279.5 -> 173.5-225.1 s, VAE
#: decoder 95.1 -> 84.8 s, same op histograms and gate errors. Not the text encoder: the optimizer pass that
#: runs after the folding fuses each layer norm into the next projection and leaves that weight arithmetic
#: (12 FULLY_CONNECTED + 12 MUL on constants) in the graph for every call; ``tflite_info.constant_only_ops``
#: is the check.
DEFAULT_CONVERSION = ("text_encoder",)


def convert(component: str, module: torch.nn.Module, inputs: dict[str, torch.Tensor], output: str | None,
            quantization: str, out_path: Path) -> None:
    """Converts ``module`` (single output named ``output``, or a module returning a dict when None)."""
    import litert_torch

    wrapped = _Named(module, output).eval() if output else module
    try:
        with _output_to(out_path.with_name("convert.log")):
            edge = litert_torch.signature(component, wrapped, sample_kwargs=inputs).convert(
                quant_config=quant_config(quantization),
                lightweight_conversion=component not in DEFAULT_CONVERSION,
            )
            edge.export(str(out_path))
    except BuildError:
        raise
    except Exception as e:  # the converter raises many types; the message names the component
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise BuildError(f"{component}: conversion failed ({type(e).__name__}: {first})") from e


@contextlib.contextmanager
def _output_to(log_path: Path):
    """Sends the converter's chatter (Python and native, stdout and stderr) to a log file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
