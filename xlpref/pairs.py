"""Preference pairs from scored responses: per prompt and language, chosen = argmax, rejected = argmin.

Decisions (METHOD.md step 3, made exact):

- Groups are ``(lang, id)``; candidates keep input order. ``len`` is ``len(response)`` in Python
  characters (code points), so Thai, Chinese and Bengali count what a reader sees, not bytes.
- Score ``s = reward - alpha * len``. chosen = the first argmax of ``s`` among the eligible candidates,
  rejected = the first argmin of ``s`` over all candidates of the group. With ``upper_bound`` a
  candidate with ``s >= upper_bound`` is not eligible as chosen (with no length control ``s = reward``).
- Skipped groups, counted per language: fewer than two distinct response texts
  (``skipped_few_distinct``); all rewards equal, ``max == min`` (``skipped_equal_rewards``); and, at the
  chosen alpha, no preference left: no eligible candidate, or the best eligible one is also the
  lowest (``skipped_upper_bound`` when the bound excluded a candidate, else ``skipped_equal_rewards``:
  all scores tie). A pair never has chosen == rejected.
- alpha, per language: the grid ``round(k * alpha_step, 10)`` for k = 0, 1, ... while below 1 (1000
  values for 0.001). For each alpha the pairs are built with the rules above and
  ``|mean(len(chosen) - len(rejected))|`` is taken over that language's pairs (an alpha giving no
  pair never wins); the smallest alpha of the minimum wins (exact ties: integer sums divided by
  integer counts are correctly rounded). Computed with numpy over (alphas x groups x candidates).
  ``length_control=False`` means alpha = 0.
- Records scored with the ``translate-to-english`` reward in English make no pair (the authors'
  ``generate_preference_pair.py`` skips English under that reward: its translation is the response
  itself); their groups are counted as ``skipped_english_translate``.
- A pair: ``id``, ``lang``, ``prompt`` (the target-language instruction of the samples),
  ``chosen``, ``rejected``, ``chosen_reward``, ``rejected_reward`` (raw rewards), ``alpha``; pairs come in
  the order their group first appears in the input. The summary per language: ``pairs``, the three
  skip counts, ``alpha``, ``mean_len_chosen``, ``mean_len_rejected`` (None without pairs), and the
  answer-language check (``language_rates``, on by default): ``target_rate_samples``,
  ``target_rate_chosen``, ``target_rate_rejected``, the percent of the language's responses, of its
  chosen and of its rejected responses identified in that language
  (:func:`xlpref.language_id.target_language_rate`; None where no text has letters): a reward that
  prefers answers in the wrong language shows as chosen below rejected before training on it.
- A NaN or infinite reward, a missing field or a wrong type raises :class:`InputError` naming the
  file (``source``), line (record position + 1) and field.

Example::

    from xlpref.pairs import build_pairs
    rows = [{"lang": "es", "id": 1, "prompt": "Hola", "response": r, "reward": x}
            for r, x in [("corto", 1.0), ("una respuesta larga", 2.0), ("mala", -1.0)]]
    result = build_pairs(rows)
    print(result.pairs[0]["chosen"], result.summary["es"]["alpha"])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from xlpref.errors import InputError
from xlpref.jsonio import is_finite_number
from xlpref.languages import check_language_code
from xlpref.records import RecordStore

#: Fields a scored record needs to take part in a pair.
SCORED_FIELDS = ("lang", "id", "prompt", "response", "reward")
#: The largest alpha grid accepted (alpha_step >= 1e-5).
MAX_GRID = 100_000
#: alphas x groups x candidates evaluated at once (bounds memory, keeps numpy busy).
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class PairsResult:
    """The pairs, and a summary per language."""

    pairs: list[dict]
    summary: dict[str, dict]


def check_scored_record(record: dict, *, path: Any = None, line: int | None = None,
                        index: int | None = None) -> None:
    """Raise :class:`InputError` naming file, line (or record) and field when a scored record is unusable."""
    where = {"path": path, "line": line, "record": None if line is not None else index}
    for name in SCORED_FIELDS:
        if name not in record:
            raise InputError(f"missing field; expected {', '.join(SCORED_FIELDS)}", field=name, **where)
    for name in ("lang", "prompt", "response"):
        if not isinstance(record[name], str):
            raise InputError(f"got {type(record[name]).__name__}; expected a string", field=name, **where)
    check_language_code(record["lang"], field="lang", **where)
    if isinstance(record["id"], bool) or not isinstance(record["id"], (int, str)):
        raise InputError(f"got {record['id']!r}; expected an integer or a string", field="id", **where)
    if not is_finite_number(record["reward"]):
        raise InputError(f"got {record['reward']!r}; expected a finite number", field="reward", **where)


def alpha_grid(step: float) -> np.ndarray:
    """0, step, 2*step, ... below 1, each rounded to 10 decimals."""
    if not is_finite_number(step) or step <= 0:
        raise InputError(f"got {step!r}; expected a number > 0", field="alpha_step")
    if 1 / step > MAX_GRID:
        raise InputError(f"got {step!r}: more than {MAX_GRID} alphas; expected alpha_step >= {1 / MAX_GRID}",
                         field="alpha_step")
    values = []
    while (alpha := round(len(values) * step, 10)) < 1:
        values.append(alpha)
    return np.array(values, dtype=np.float64)


@dataclass
class _Language:
    """One language's eligible groups as padded arrays (groups x candidates)."""

    groups: list[list[int]]     # record indices per group, input order
    rewards: np.ndarray         # float64, padded with 0
    lengths: np.ndarray         # int64, padded with 0
    is_real: np.ndarray         # bool: a candidate, not padding

    @classmethod
    def of(cls, groups: list[list[int]], rewards: list[float], lengths: list[int]) -> _Language:
        width = max((len(g) for g in groups), default=1)
        shape = (len(groups), width)
        r, n, real = np.zeros(shape), np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=bool)
        for row, members in enumerate(groups):
            r[row, : len(members)] = [rewards[i] for i in members]
            n[row, : len(members)] = [lengths[i] for i in members]
            real[row, : len(members)] = True
        return cls(groups, r, n, real)

    def choose(self, alphas: np.ndarray, upper_bound: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """chosen and rejected candidate, and whether they make a pair, for each (alpha, group)."""
        scores = self.rewards[None] - alphas[:, None, None] * self.lengths[None]
        is_eligible = self.is_real[None] if upper_bound is None else self.is_real[None] & (scores < upper_bound)
        best = np.where(is_eligible, scores, -np.inf)
        worst = np.where(self.is_real[None], scores, np.inf)
        chosen, rejected = best.argmax(-1), worst.argmin(-1)
        # The best eligible score above the lowest score <=> chosen != rejected (first-index ties).
        has_pair = (np.take_along_axis(best, chosen[..., None], -1)
                    > np.take_along_axis(worst, rejected[..., None], -1))[..., 0]
        return chosen, rejected, has_pair

    def best_alpha(self, alphas: np.ndarray, upper_bound: float | None) -> float:
        """The smallest alpha minimising |mean(len(chosen) - len(rejected))| over the pairs."""
        best_value, best_alpha = math.inf, float(alphas[0])
        rows = np.arange(len(self.groups))[None]
        per_chunk = max(1, _CHUNK_ELEMENTS // max(1, self.rewards.size))
        for start in range(0, len(alphas), per_chunk):
            chunk = alphas[start:start + per_chunk]
            chosen, rejected, has_pair = self.choose(chunk, upper_bound)
            diff = self.lengths[rows, chosen] - self.lengths[rows, rejected]
            counts = has_pair.sum(-1)
            sums = np.where(has_pair, diff, 0).sum(-1)
            with np.errstate(divide="ignore", invalid="ignore"):
                objective = np.where(counts > 0, np.abs(sums / np.maximum(counts, 1)), np.inf)
            k = int(objective.argmin())
            if objective[k] < best_value:
                best_value, best_alpha = float(objective[k]), float(chunk[k])
        return best_alpha


def _group_records(records: list[dict]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault((record["lang"], record["id"]), []).append(index)
    return groups


def build_pairs(records: list[dict], *, length_control: bool = True, alpha_step: float = 0.001,
                upper_bound: float | None = None, source: str | None = None,
                language_rates: bool = True) -> PairsResult:
    """One (chosen, rejected) pair per (lang, id) from scored records; see the module docstring for the rules.

    Args:
        source: the file the records came from, named in errors (line = position + 1).
        language_rates: add the target-language rates of samples, chosen and rejected to the summary.

    Raises:
        InputError: a missing field, a wrong type, a NaN or infinite reward, a bad alpha_step or upper_bound.
    """
    for index, record in enumerate(records):
        check_scored_record(record, path=source, line=index + 1 if source else None, index=index)
    if upper_bound is not None and not is_finite_number(upper_bound):
        raise InputError(f"got {upper_bound!r}; expected a finite number", field="upper_bound")
    alphas = alpha_grid(alpha_step) if length_control else np.zeros(1)
    is_skipped_english = [r["lang"] == "en" and r.get("reward_type") == "translate-to-english" for r in records]
    skipped_english = len({(r["lang"], r["id"]) for r, skip in zip(records, is_skipped_english) if skip})
    records = [r for r, skip in zip(records, is_skipped_english) if not skip]
    rewards = [float(r["reward"]) for r in records]
    lengths = [len(r["response"]) for r in records]
    groups = _group_records(records)
    summary: dict[str, dict] = {}
    pair_of_group: dict[tuple, dict] = {}
    if skipped_english and "en" not in {key[0] for key in groups}:
        summary["en"] = {"pairs": 0, "skipped_few_distinct": 0, "skipped_equal_rewards": 0, "skipped_upper_bound": 0,
                         "skipped_english_translate": skipped_english, "alpha": 0.0, "mean_len_chosen": None,
                         "mean_len_rejected": None}
    for lang in dict.fromkeys(key[0] for key in groups):
        counts = {"pairs": 0, "skipped_few_distinct": 0, "skipped_equal_rewards": 0, "skipped_upper_bound": 0}
        eligible = []
        for key, members in groups.items():
            if key[0] != lang:
                continue
            if len({records[i]["response"] for i in members}) < 2:
                counts["skipped_few_distinct"] += 1
            elif max(rewards[i] for i in members) == min(rewards[i] for i in members):
                counts["skipped_equal_rewards"] += 1
            else:
                eligible.append(key)
        language = _Language.of([groups[k] for k in eligible], rewards, lengths)
        alpha = language.best_alpha(alphas, upper_bound) if eligible else 0.0
        chosen_at, rejected_at, has_pair = (values[0] for values in language.choose(np.array([alpha]), upper_bound))
        for row, key in enumerate(eligible):
            members = groups[key]
            if not has_pair[row]:
                is_bound_skip = upper_bound is not None and any(
                    rewards[i] - alpha * lengths[i] >= upper_bound for i in members)
                counts["skipped_upper_bound" if is_bound_skip else "skipped_equal_rewards"] += 1
                continue
            chosen, rejected = records[members[chosen_at[row]]], records[members[rejected_at[row]]]
            pair_of_group[key] = {
                "id": key[1], "lang": lang, "prompt": records[members[0]]["prompt"],
                "chosen": chosen["response"], "rejected": rejected["response"],
                "chosen_reward": float(chosen["reward"]), "rejected_reward": float(rejected["reward"]), "alpha": alpha,
            }
        made = [pair_of_group[k] for k in eligible if k in pair_of_group]
        counts["pairs"] = len(made)
        if lang == "en" and skipped_english:
            counts["skipped_english_translate"] = skipped_english
        summary[lang] = {
            **counts, "alpha": alpha,
            "mean_len_chosen": float(np.mean([len(p["chosen"]) for p in made])) if made else None,
            "mean_len_rejected": float(np.mean([len(p["rejected"]) for p in made])) if made else None,
        }
        if language_rates:
            summary[lang].update(_language_rates(lang, [records[i]["response"] for k in groups if k[0] == lang
                                                        for i in groups[k]], made))
    return PairsResult([pair_of_group[k] for k in groups if k in pair_of_group], summary)


def _language_rates(lang: str, responses: list[str], pairs: list[dict]) -> dict[str, float | None]:
    from xlpref.language_id import target_language_rate

    return {"target_rate_samples": target_language_rate(responses, lang),
            "target_rate_chosen": target_language_rate([p["chosen"] for p in pairs], lang),
            "target_rate_rejected": target_language_rate([p["rejected"] for p in pairs], lang)}


LANGUAGE_RATE_COLUMNS = {"target_rate_samples": "in lang % all", "target_rate_chosen": "in lang % chosen",
                         "target_rate_rejected": "in lang % rejected"}


def render_pairs_summary(summary: dict[str, dict]) -> Any:
    """The summary as a rich table, one row per language (with the answer-language rates when present)."""
    from rich.table import Table

    has_rates = any("target_rate_samples" in row for row in summary.values())
    table = Table(title="preference pairs (skipped groups; mean lengths in characters"
                        + ("; % of responses in the prompt's language)" if has_rates else ")"))
    for column in ("lang", "pairs", "skip <2 distinct", "skip equal", "skip bound", "alpha", "len chosen",
                   "len rejected", *(LANGUAGE_RATE_COLUMNS.values() if has_rates else ())):
        table.add_column(column, justify="left" if column == "lang" else "right")
    for lang, row in summary.items():
        def length(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        rates = [length(row.get(key)) for key in LANGUAGE_RATE_COLUMNS] if has_rates else []
        table.add_row(lang, str(row["pairs"]), str(row["skipped_few_distinct"]), str(row["skipped_equal_rewards"]),
                      str(row["skipped_upper_bound"]), f"{row['alpha']:g}", length(row["mean_len_chosen"]),
                      length(row["mean_len_rejected"]), *rates)
    english = sum(row.get("skipped_english_translate", 0) for row in summary.values())
    if english:
        table.caption = f"{english} English groups make no pair under the translate-to-english reward (as the authors')"
    return table


# -- the loop's annotator -------------------------------------------------------------------------

class ImplicitRewardAnnotator:
    """Registry annotator ``implicit-reward``: score samples with the implicit reward, then build pairs.

    Settings (from an the run config's ``annotator`` block, or any object with these attributes, and/or keywords): ``reward``,
    ``token_span`` (:data:`xlpref.reward.TOKEN_SPANS`), ``length_control``, ``alpha_step``, ``upper_bound``,
    ``max_batch_tokens`` and ``translation_max_new_tokens`` (for ``translate-to-english``; the scoring
    policy translates).
    """

    name = "implicit-reward"
    DEFAULTS: ClassVar[dict[str, Any]] = {"reward": "cross-lingual", "length_control": True, "alpha_step": 0.001, "upper_bound": None,
                "max_batch_tokens": 4096, "translation_max_new_tokens": 8192, "token_span": "authors"}

    def __init__(self, config: Any = None, *, seed: int = 0, console: Any = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.DEFAULTS))
        if unknown:
            raise InputError(f"unknown options {unknown}; expected some of {sorted(self.DEFAULTS)}")
        self.settings = {k: getattr(config, k, v) for k, v in self.DEFAULTS.items()} | options
        self.seed = seed  # greedy translation and scoring use no randomness; kept for the annotator interface
        self.console = console
        self.compute_report: dict | None = None

    def annotate(self, *, samples: list[dict], reference: Any, reward_policy: Any = None, policy: Any = None,
                 tokenizer: Any = None, store: RecordStore | None = None, stage_dir: str | None = None, progress: bool = True,
                 compute: Any = None, **_context: Any) -> PairsResult:
        """Score ``samples`` with (reward_policy or policy, reference), then build pairs.

        Models are specs for :func:`xlpref.models.load_model` or ``(model, tokenizer)`` pairs; the same
        spec twice is loaded once (reward 0). With ``store`` the scores are resumable in
        ``{stage_dir}/scored.jsonl``. With ``compute`` of engine ``ray`` the blocks are scored on its
        worker actors (:class:`xlpref.ray_stages.RayScorer`; ``compute_report`` holds their summary).
        Other keywords of the loop (prompts, languages) are not needed.
        """
        from xlpref.reward import SCORE_KEY, check_same_tokenizer, make_reward_function, score_records

        scorer = reward_policy if reward_policy is not None else policy
        if scorer is None:
            raise InputError("no policy given; expected reward_policy or policy", field="reward_policy")
        reward = make_reward_function(self.settings["reward"])
        if hasattr(reward, "max_new_tokens"):
            reward.max_new_tokens = self.settings["translation_max_new_tokens"]
        options = {"max_batch_tokens": self.settings["max_batch_tokens"], "token_span": self.settings["token_span"]}
        log = None
        if store is not None:
            log = store.record_log(f"{stage_dir}/scored" if stage_dir else "scored", key=SCORE_KEY)
        if compute is not None and compute.engine == "ray":
            from xlpref.ray_stages import RayScorer

            workers = RayScorer(compute, scorer, reference, reward, **options)
            try:
                scored = score_records(samples, None, None, None, reward, log=log, progress=progress,
                                       scorer=workers, **options)
            finally:
                workers.close()
                self.compute_report = workers.report
        else:
            policy_model, policy_tokenizer = _load(scorer, tokenizer)
            if reference == scorer:
                reference_model = policy_model
            else:
                reference_model, reference_tokenizer = _load(reference, policy_tokenizer)
                check_same_tokenizer(policy_tokenizer, reference_tokenizer)
            scored = score_records(samples, policy_model, reference_model, policy_tokenizer, reward, log=log,
                                   progress=progress, **options)
        result = build_pairs(scored, length_control=self.settings["length_control"],
                             alpha_step=self.settings["alpha_step"], upper_bound=self.settings["upper_bound"])
        if self.console is not None:
            self.console.print(render_pairs_summary(result.summary))
        return result


def _load(model: Any, tokenizer: Any) -> tuple[Any, Any]:
    """A (model, tokenizer) from a spec, a pair, or a model plus the given tokenizer."""
    if isinstance(model, str):
        from xlpref.models import load_model

        return load_model(model)
    if isinstance(model, tuple):
        return model
    if tokenizer is None:
        raise InputError("a model object was given without its tokenizer; expected a spec or (model, tokenizer)")
    return model, tokenizer
