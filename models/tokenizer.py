"""Prompt tokenizers for the SD 1.x text encoder.

Two kinds, one interface (``Tokenizer``): ``encode(text)`` returns exactly ``max_length`` token ids,
``[BOS, tokens..., EOS, PAD...]``, truncated so that BOS and EOS always fit.

* ``ClipBpeTokenizer`` (kind ``"clip-bpe"``): the real CLIP byte-level BPE tokenizer, i.e. transformers'
  ``CLIPTokenizer`` built from a checkpoint's local ``vocab.json`` + ``merges.txt`` (never the hub). For
  SD 1.x this pads with ``<|endoftext|>`` (id 49407 for CLIP ViT-L), exactly as
  ``CLIPTokenizer(..., padding="max_length", truncation=True)`` does.
* ``FallbackTokenizer`` (kind ``"fallback"``): a deterministic stand-in for models that have random weights
  and no tokenizer files. Its ids carry no meaning for a trained text encoder; it only makes the model
  input depend on the prompt.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

DEFAULT_MAX_LENGTH = 77


class TokenizerError(ValueError):
    """A tokenizer folder that cannot be used, or a tokenizer that does not fit the text encoder."""


@runtime_checkable
class Tokenizer(Protocol):
    """What the pipeline needs from a tokenizer."""

    kind: str  # "clip-bpe" | "fallback"
    vocab_size: int  # number of ids the tokenizer can emit (all ids are < vocab_size)
    max_length: int  # length of every encode() result
    source: str  # where it came from (a folder, or a description of the fallback)

    def encode(self, text: str) -> list[int]:
        """Exactly ``max_length`` ids: BOS, the prompt's tokens (truncated), EOS, then padding."""
        ...


class ClipBpeTokenizer:
    """transformers' ``CLIPTokenizer`` built from ``vocab.json`` + ``merges.txt`` in ``tokenizer_dir``.

    Special tokens are CLIP's (``<|startoftext|>``, ``<|endoftext|>``); the pad token is taken from the
    folder's ``special_tokens_map.json`` / ``tokenizer_config.json`` when they name one (SD 1.x: ``<|endoftext|>``).
    """

    kind = "clip-bpe"

    def __init__(self, tokenizer_dir: str | Path, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        from transformers import CLIPTokenizer

        d = Path(tokenizer_dir)
        vocab_file, merges_file = d / "vocab.json", d / "merges.txt"
        for f in (vocab_file, merges_file):
            if not f.is_file():
                raise TokenizerError(f"{d}: {f.name} is missing (a CLIP tokenizer needs vocab.json and merges.txt)")
        if max_length < 2:
            raise TokenizerError(f"max_length={max_length} leaves no room for BOS and EOS")
        try:
            vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
            merges = _read_merges(merges_file)
        except (OSError, ValueError) as e:
            raise TokenizerError(f"{d}: cannot read the tokenizer files: {e}") from None
        if not isinstance(vocab, dict):
            raise TokenizerError(f"{vocab_file}: expected a JSON object mapping tokens to ids")
        pad = _configured_pad_token(d) or "<|endoftext|>"
        self._tok = CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad, model_max_length=max_length)
        self.max_length = max_length
        self.vocab_size = len(self._tok)
        self.source = str(d)
        self.bos_id = int(self._tok.bos_token_id)
        self.eos_id = int(self._tok.eos_token_id)
        self.pad_id = int(self._tok.pad_token_id)

    def encode(self, text: str) -> list[int]:
        ids = self._tok(text, padding="max_length", max_length=self.max_length, truncation=True)["input_ids"]
        return [int(i) for i in ids]

    def __repr__(self) -> str:
        return f"ClipBpeTokenizer({self.source!r}, vocab_size={self.vocab_size}, max_length={self.max_length})"


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#version"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"merges.txt line {line!r} is not two symbols")
        merges.append((parts[0], parts[1]))
    return merges


def _configured_pad_token(d: Path) -> str | None:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = d / name
        if not f.is_file():
            continue
        try:
            pad = json.loads(f.read_text(encoding="utf-8")).get("pad_token")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str) and pad:
            return pad
    return None


_WORD_RE = re.compile(r"[^\W_]+|[^\w\s]", re.UNICODE)


class FallbackTokenizer:
    """Deterministic, meaning-free tokenizer for models without tokenizer files (e.g. random weights).

    Text is lower-cased and split into runs of letters/digits and single punctuation marks. Each piece
    maps to ``1 + (first 8 bytes of sha256(piece) mod (vocab_size - 3))``, a stable id independent of
    the Python process (no ``hash()`` randomisation).

    Reserved ids, mirroring CLIP's layout (BOS and EOS are the last two ids of the vocabulary):
      * 0: never emitted;
      * 1 .. vocab_size-3: words;
      * vocab_size-2: BOS;
      * vocab_size-1: EOS, also used as padding (as SD 1.x pads with ``<|endoftext|>``).
    """

    kind = "fallback"

    def __init__(self, vocab_size: int, max_length: int = DEFAULT_MAX_LENGTH, source: str = "fallback") -> None:
        if vocab_size < 4:
            raise TokenizerError(f"fallback tokenizer needs vocab_size >= 4, got {vocab_size}")
        if max_length < 2:
            raise TokenizerError(f"max_length={max_length} leaves no room for BOS and EOS")
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.source = source
        self.bos_id = vocab_size - 2
        self.eos_id = vocab_size - 1
        self.pad_id = self.eos_id

    def word_id(self, word: str) -> int:
        digest = hashlib.sha256(word.encode("utf-8")).digest()
        return 1 + int.from_bytes(digest[:8], "big") % (self.vocab_size - 3)

    def encode(self, text: str) -> list[int]:
        words = _WORD_RE.findall(text.lower())[: self.max_length - 2]
        ids = [self.bos_id] + [self.word_id(w) for w in words] + [self.eos_id]
        return ids + [self.pad_id] * (self.max_length - len(ids))

    def __repr__(self) -> str:
        return f"FallbackTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"


def has_clip_files(tokenizer_dir: str | Path | None) -> bool:
    """True when ``tokenizer_dir`` holds ``vocab.json`` and ``merges.txt``."""
    if tokenizer_dir is None:
        return False
    d = Path(tokenizer_dir)
    return (d / "vocab.json").is_file() and (d / "merges.txt").is_file()


def get_tokenizer(tokenizer_dir: str | Path | None, vocab_size: int,
                  max_length: int = DEFAULT_MAX_LENGTH) -> Tokenizer:
    """CLIP BPE from ``tokenizer_dir`` when it has vocab.json + merges.txt, else the fallback.

    ``vocab_size`` is the text encoder's embedding count: a CLIP tokenizer that can emit larger ids
    is rejected (TokenizerError), since those ids would index past the embedding table.
    """
    if has_clip_files(tokenizer_dir):
        tok = ClipBpeTokenizer(tokenizer_dir, max_length)  # type: ignore[arg-type]
        if tok.vocab_size > vocab_size:
            raise TokenizerError(
                f"{tokenizer_dir}: the tokenizer has {tok.vocab_size} tokens, the text encoder only {vocab_size}"
            )
        return tok
    why = "no tokenizer folder" if tokenizer_dir is None else f"{tokenizer_dir} has no vocab.json + merges.txt"
    return FallbackTokenizer(vocab_size, max_length, source=f"fallback ({why})")
