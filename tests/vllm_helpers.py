"""Tiny models vLLM can serve on a CPU, for the tests that run vLLM for real.

Example::

    from vllm_helpers import tiny_llama_for_vllm
    model, tokenizer = tiny_llama_for_vllm(max_position_embeddings=512, tie_word_embeddings=True, embedding_std=0.5)
    model.save_pretrained("/tmp/tiny"); tokenizer.save_pretrained("/tmp/tiny")
"""

from __future__ import annotations

from typing import Any


def tiny_llama_for_vllm(*, max_position_embeddings: int, tie_word_embeddings: bool,
                        embedding_std: float) -> tuple[Any, Any]:
    """A random two-layer Llama with head size 32 (vLLM's CPU attention supports 32..512, not the tiny spec's 8).

    Weights are drawn after ``torch.manual_seed(0)``, larger than the default init (``embedding_std``
    for embeddings, 0.2 elsewhere) so that greedy output depends on the prompt; a caller that draws
    more numbers continues the same random stream.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from xlpref.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                         max_position_embeddings=max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=tie_word_embeddings)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0, embedding_std if "embed" in name else 0.2)
    return model, tokenizer
