"""xlpref: implicit cross-lingual rewarding (ICR) as pluggable stages.

Stages: models, data, sampling, implicit reward, pairs, training. Each is importable and testable
without the CLI (which lives in ``harness``).

Example::

    from xlpref.models import load_model
    model, tokenizer = load_model("tiny-random-llama")
"""

__version__ = "0.1.0"
