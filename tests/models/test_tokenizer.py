"""models.tokenizer: CLIP BPE from local files (checked against transformers) and the fallback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the hub

import pytest

from models.tokenizer import (
    ClipBpeTokenizer,
    FallbackTokenizer,
    Tokenizer,
    TokenizerError,
    get_tokenizer,
)
from tests.models.ckpt_factory import write_tokenizer_dir

PROMPTS = [
    "a photo of a cat",
    "An astronaut riding a horse on Mars!!",
    "",
    "  héllo   wörld 123, the dog's ",
    "photo " * 100,  # longer than 77 tokens: truncated, EOS kept
]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return write_tokenizer_dir(tmp_path_factory.mktemp("tok") / "tokenizer", vocab_size=1000)


def test_clip_bpe_matches_transformers(tok_dir):
    from transformers import CLIPTokenizer

    ref = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    tok = ClipBpeTokenizer(tok_dir)
    assert isinstance(tok, Tokenizer)
    assert (tok.kind, tok.vocab_size, tok.max_length, tok.source) == ("clip-bpe", 1000, 77, str(tok_dir))
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        assert ids == ref(prompt, padding="max_length", max_length=77, truncation=True)["input_ids"], prompt
        assert len(ids) == 77 and ids[0] == 998
    # SD 1.x layout: BOS, tokens, EOS, then padding with <|endoftext|> (= EOS).
    cat = tok.encode("a photo of a cat")  # 5 whole-word tokens in the tiny vocab
    assert cat[0] == 998 and 999 not in cat[1:6] and cat[6:] == [999] * 71
    assert tok.encode("photo " * 100)[-1] == 999 and 999 not in tok.encode("photo " * 100)[:-1]


def test_clip_bpe_pad_token_from_folder(tmp_path):
    """A folder that names another pad token (as SD 2.x's does with "!") is followed, like transformers."""
    from transformers import CLIPTokenizer

    d = write_tokenizer_dir(tmp_path / "tok")
    (d / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "!"}}))
    (d / "tokenizer_config.json").write_text(json.dumps({"pad_token": "!"}))
    ids = ClipBpeTokenizer(d).encode("a cat")
    ref = CLIPTokenizer.from_pretrained(str(d), local_files_only=True)
    assert ids == ref("a cat", padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert ids[-1] == json.loads((d / "vocab.json").read_text())["!"]


def test_clip_bpe_needs_both_files(tmp_path):
    d = write_tokenizer_dir(tmp_path / "tok")
    (d / "merges.txt").unlink()
    with pytest.raises(TokenizerError, match="merges.txt is missing"):
        ClipBpeTokenizer(d)


def test_get_tokenizer_picks_kind(tok_dir, tmp_path):
    assert get_tokenizer(tok_dir, 1000).kind == "clip-bpe"
    fb = get_tokenizer(None, 1000)
    assert fb.kind == "fallback" and fb.vocab_size == 1000 and "fallback" in fb.source
    empty = tmp_path / "empty"
    empty.mkdir()
    assert get_tokenizer(empty, 1000).kind == "fallback"
    with pytest.raises(TokenizerError, match="1000 tokens, the text encoder only 500"):
        get_tokenizer(tok_dir, 500)


def test_fallback_layout_and_determinism():
    tok = FallbackTokenizer(1000)
    assert isinstance(tok, Tokenizer) and tok.kind == "fallback"
    ids = tok.encode("A photo of a cat, on Mars!")
    assert len(ids) == 77
    words = ["a", "photo", "of", "a", "cat", ",", "on", "mars", "!"]
    assert ids[0] == 998 and ids[1 + len(words)] == 999 and set(ids[2 + len(words):]) == {999}
    assert all(1 <= i <= 997 for i in ids[1:1 + len(words)])
    assert ids[1] == ids[4]  # same word, same id
    assert ids == FallbackTokenizer(1000).encode("a  PHOTO of a cat , on mars !")
    assert tok.encode("a photo of a dog") != tok.encode("a photo of a cat")
    assert tok.encode("") == [998, 999] + [999] * 75
    long = tok.encode("word " * 200)
    assert len(long) == 77 and long[-1] == 999 and 999 not in long[:-1]


def test_fallback_is_stable_across_processes():
    """Ids come from sha256, not hash(): a process with another hash seed gives the same ids."""
    code = "from models.tokenizer import FallbackTokenizer; print(FallbackTokenizer(49408).encode('a red fox'))"
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert len(outs) == 1
    assert outs.pop().strip() == str(FallbackTokenizer(49408).encode("a red fox"))


def test_fallback_rejects_tiny_vocab():
    with pytest.raises(TokenizerError):
        FallbackTokenizer(3)
