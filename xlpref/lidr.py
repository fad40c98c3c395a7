"""Language Imbalance Driven Rewarding (LIDR): the policy's English answers are preferred, via self-translation.

The paper's main baseline (Yang et al., "Language Imbalance Driven Rewarding for Multilingual
Self-improving", ICLR 2025), as the annotator ``lidr`` of the loop's annotation stage. Per training
prompt (the same id in English and in each target language L):

1. The policy pi_t answers the English and the L instruction: greedy, repetition penalty 1.1, one
   user turn of its chat template (the authors' decoding).
2. It translates its English answer into L and its L answer into English: greedy, repetition
   penalty 1.0 (the authors' translation script does not pass its 1.1 on; a penalty would also punish
   copying names and numbers from the source), with :data:`TRANSLATION_INSTRUCTION`. The authors primed
   the answer with a ``<translated>`` tag and parsed it back; our sampler answers plain chat turns, so
   the instruction asks for the translation only (the ``translate-to-english`` reward, in
   :mod:`xlpref.reward`, does use the ICR authors' primed prompt).
3. Pairs (:func:`build_lidr_pairs`), for every target L:
   English: chosen = the English answer, rejected = the English translation of the L answer;
   L: chosen = the L translation of the English answer, rejected = the L answer.
   A prompt marked ``is_translation_task`` (translating it would change the task) keeps the
   untranslated English answer as chosen in both pairs, as the authors' preprocessing does.

Decisions:

- One English pair per (prompt, target language), as the authors build them (one DPO file per
  language pair); with several targets a prompt gives several English pairs. An English pair
  identical to an earlier one of the same prompt (same rejected text) is dropped as a duplicate.
- A pair is dropped, and counted per language, when an answer it needs is empty
  (``dropped_empty_answer``), its translation is empty (``dropped_empty_translation``) or is its
  source text unchanged (``dropped_identical``: an untranslated text would put the wrong language
  into the pair), when chosen equals rejected (``dropped_no_preference``), or as a duplicate
  (``dropped_duplicate``). Texts are compared after ``strip()``. Per language
  ``pairs + sum(dropped_*) == attempted``.
- PAIRS.jsonl contract (the same as ``xlpref pairs``): ``id``, ``lang``, ``prompt`` (the instruction
  in the pair's language), ``chosen``, ``rejected``, ``chosen_reward`` and ``rejected_reward`` (``null``:
  LIDR has no reward, only an order), ``alpha`` (``null``: no length control), plus ``annotator``
  ("lidr"), ``source_lang`` (the language whose answer was translated into the pair: L for English
  pairs, "en" for L pairs) and ``is_translation_task``. ``(id, lang, source_lang)`` is unique.
- The loop's sampled responses are not used: LIDR makes its own greedy answers
  (:attr:`LIDRAnnotator.needs_samples` is False). With a run store, answers and translations are
  resumable record logs (``{stage_dir}/lidr_answers.jsonl``, ``lidr_translations.jsonl``).

Example::

    from xlpref.lidr import LIDRAnnotator
    from xlpref.data import MINI_DIR, load_train_prompts
    from xlpref.models import build_tiny_model
    prompts = load_train_prompts(MINI_DIR / "train_prompts" / "mini", ["en", "es"], limit=2)
    result = LIDRAnnotator(max_new_tokens=8).annotate(prompts=prompts, languages=["en", "es"],
                                                      policy=build_tiny_model("tiny-random-gemma3"))
    print(result.summary["es"], result.pairs[:1])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from xlpref.errors import InputError
from xlpref.languages import check_languages, language_name
from xlpref.pairs import PairsResult
from xlpref.records import RecordStore

#: What the policy is asked to translate an answer; ``{language}`` is the English name of the target.
TRANSLATION_INSTRUCTION = "Translate the following text into {language}. Output only the translation.\n\n{text}"
#: The authors' decoding: greedy answers with repetition penalty 1.1, greedy translations without one.
ANSWER_REPETITION_PENALTY = 1.1
TRANSLATION_REPETITION_PENALTY = 1.0
DROP_REASONS = ("dropped_empty_answer", "dropped_empty_translation", "dropped_identical", "dropped_no_preference",
                "dropped_duplicate")
#: The key of answer and translation records in the run store (the sampler's record key).
RECORD_KEY = ("lang", "id", "sample_index")


def translation_instruction(text: str, lang: str) -> str:
    """The instruction asking the policy to translate ``text`` into ``lang``."""
    return TRANSLATION_INSTRUCTION.format(language=language_name(lang), text=text)


@dataclass(frozen=True)
class LIDRPrompt:
    """One training prompt: its instruction per language (same id), and whether it asks for a translation."""

    id: str | int
    instructions: Mapping[str, str]
    is_translation_task: bool = False


def target_languages(languages: Sequence[str]) -> list[str]:
    """The non-English languages; LIDR needs at least one."""
    targets = [lang for lang in check_languages(list(languages)) if lang != "en"]
    if not targets:
        raise InputError(f"languages {list(languages)} have no language besides English; LIDR pairs English with "
                         "weaker languages, expected e.g. en,es,de", field="languages")
    return targets


def prompts_from_train_prompts(by_lang: Mapping[str, Sequence[Any]], languages: Sequence[str]) -> list[LIDRPrompt]:
    """:class:`LIDRPrompt` s from ``{lang: [TrainPrompt]}`` (the loop's prompts); English must be present."""
    needed = ["en", *target_languages(languages)]
    missing = [lang for lang in needed if lang not in by_lang]
    if missing:
        raise InputError(f"no training prompts for {missing}; LIDR needs each language and English", field="prompts")
    index = {lang: {p.instruction_id: p for p in by_lang[lang]} for lang in needed}
    prompts = []
    for english in by_lang["en"]:
        versions = {lang: index[lang].get(english.instruction_id) for lang in needed}
        absent = [lang for lang, p in versions.items() if p is None]
        if absent:
            raise InputError(f"prompt {english.instruction_id!r} has no {absent} version; expected the same ids in "
                             "every language", field="prompts")
        prompts.append(LIDRPrompt(english.instruction_id, {lang: p.instruction for lang, p in versions.items()},
                                  any(p.is_translation_task for p in versions.values())))
    return prompts


def prompts_from_requests(requests: Sequence[Any]) -> list[LIDRPrompt]:
    """:class:`LIDRPrompt` s from sampler requests (:func:`xlpref.sampling_prompts.requests_from_prompts`)."""
    grouped: dict[Any, dict] = {}
    marks: dict[Any, bool] = {}
    for request in requests:
        grouped.setdefault(request.id, {"en": request.prompt_en})[request.lang] = request.prompt
        marks[request.id] = marks.get(request.id, False) or bool(request.meta.get("is_translation_task", False))
    return [LIDRPrompt(i, texts, marks[i]) for i, texts in grouped.items()]


# -- pairs from answers and translations (pure) ------------------------------------------------------

def _counts() -> dict[str, Any]:
    return {"attempted": 0, "pairs": 0, "translation_tasks": 0, **dict.fromkeys(DROP_REASONS, 0)}


def _drop_reason(chosen: str, rejected: str, source: str | None, translation: str | None) -> str | None:
    """Why (chosen, rejected) cannot be a pair, or None; ``translation`` is the translated side, of ``source``."""
    if translation is not None:
        if not translation.strip():
            return "dropped_empty_translation"
        if translation.strip() == source.strip():
            return "dropped_identical"
    if chosen.strip() == rejected.strip():
        return "dropped_no_preference"
    return None


def _lookup(table: Mapping, key: tuple, what: str) -> str:
    if key not in table:
        raise InputError(f"no {what} for {key}; expected one for every prompt and language used", field=what)
    value = table[key]
    if not isinstance(value, str):
        raise InputError(f"{what} {key} is {type(value).__name__}; expected a string", field=what)
    return value


def build_lidr_pairs(prompts: Sequence[LIDRPrompt], languages: Sequence[str], answers: Mapping[tuple, str],
                     translations: Mapping[tuple, str]) -> PairsResult:
    """LIDR pairs and a per-language summary; see the module docstring for the rules.

    Args:
        languages: the training languages; English pairs are made when "en" is among them.
        answers: ``{(lang, id): the policy's answer}`` for English and every target language.
        translations: ``{(source_lang, target_lang, id): translation}`` of the answer ``(source_lang, id)``,
            for every pair that needs one (not for empty answers, nor English-to-L for translation tasks).
    Returns:
        English pairs (prompt order, then target order), then each target language's pairs.
    Raises:
        InputError: no target language, or a needed answer or translation is missing.
    """
    targets = target_languages(languages)
    has_english = "en" in languages
    summary = {lang: _counts() for lang in (["en"] if has_english else []) + targets}
    english_pairs: list[dict] = []
    target_pairs: dict[str, list[dict]] = {lang: [] for lang in targets}

    def attempt(lang: str, prompt: LIDRPrompt, source_lang: str, reason: str | None, chosen: str, rejected: str,
                kept: list[dict]) -> None:
        counts = summary[lang]
        counts["attempted"] += 1
        counts["translation_tasks"] += prompt.is_translation_task
        if reason is not None:
            counts[reason] += 1
            return
        kept.append({"id": prompt.id, "lang": lang, "prompt": prompt.instructions[lang], "chosen": chosen,
                     "rejected": rejected, "chosen_reward": None, "rejected_reward": None, "alpha": None,
                     "annotator": "lidr", "source_lang": source_lang, "is_translation_task": prompt.is_translation_task})

    for prompt in prompts:
        english = _lookup(answers, ("en", prompt.id), "answer")
        seen_english: set[str] = set()
        for lang in targets:
            native = _lookup(answers, (lang, prompt.id), "answer")
            has_answers = bool(english.strip() and native.strip())
            if has_english:
                reason, rejected = "dropped_empty_answer", ""
                if has_answers:
                    rejected = _lookup(translations, (lang, "en", prompt.id), "translation")
                    reason = _drop_reason(english, rejected, native, rejected)
                    if reason is None and rejected.strip() in seen_english:
                        reason = "dropped_duplicate"
                    if reason is None:
                        seen_english.add(rejected.strip())
                attempt("en", prompt, lang, reason, english, rejected, english_pairs)
            reason, chosen = "dropped_empty_answer", ""
            if has_answers and prompt.is_translation_task:
                chosen = english
                reason = _drop_reason(chosen, native, None, None)
            elif has_answers:
                chosen = _lookup(translations, ("en", lang, prompt.id), "translation")
                reason = _drop_reason(chosen, native, english, chosen)
            attempt(lang, prompt, "en", reason, chosen, native, target_pairs[lang])

    pairs = english_pairs + [pair for lang in targets for pair in target_pairs[lang]]
    for lang, counts in summary.items():
        made = [p for p in pairs if p["lang"] == lang]
        counts["pairs"] = len(made)
        counts["mean_len_chosen"] = sum(len(p["chosen"]) for p in made) / len(made) if made else None
        counts["mean_len_rejected"] = sum(len(p["rejected"]) for p in made) / len(made) if made else None
    return PairsResult(pairs, summary)


def render_lidr_summary(summary: Mapping[str, Mapping]) -> Any:
    """The summary as a rich table: one column per language, one line per count (keys starting with "_" skipped)."""
    from rich.table import Table

    langs = [lang for lang in summary if not lang.startswith("_")]
    table = Table(title="LIDR pairs", caption="pairs + dropped = attempted; English: one attempt per prompt and "
                  "target language; lengths in characters", caption_justify="left")
    table.add_column("")
    for lang in langs:
        table.add_column(lang, justify="right")
    lines = [("attempted", "attempted"), ("pairs", "pairs"), ("translation_tasks", "translation-task attempts"),
             *((reason, reason.replace("_", " ")) for reason in DROP_REASONS),
             ("mean_len_chosen", "mean length chosen"), ("mean_len_rejected", "mean length rejected")]
    for key, label in lines:
        values = [summary[lang][key] for lang in langs]
        table.add_row(label, *("-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v) for v in values),
                      end_section=key in ("translation_tasks", DROP_REASONS[-1]))
    return table


# -- the loop's annotator ---------------------------------------------------------------------------

class LIDRAnnotator:
    """Registry annotator ``lidr``: greedy answers and self-translations by the policy pi_t, then pairs.

    Settings (from the run config's ``annotator`` block, or any object with these attributes, and/or keywords):
    ``max_new_tokens`` (answers and translations), ``batch_size`` (prompts per generation batch),
    ``backend`` (sampler: ``hf`` or ``vllm``).
    """

    name = "lidr"
    #: LIDR makes its own greedy answers; the loop's sampled responses are not used.
    needs_samples = False
    DEFAULTS: ClassVar[dict[str, Any]] = {"max_new_tokens": 256, "batch_size": 8, "backend": "hf"}

    def __init__(self, config: Any = None, *, seed: int = 0, console: Any = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.DEFAULTS))
        if unknown:
            raise InputError(f"unknown options {unknown}; expected some of {sorted(self.DEFAULTS)}")
        self.settings = {k: getattr(config, k, v) for k, v in self.DEFAULTS.items()} | options
        self.seed = seed  # greedy decoding uses no randomness; recorded with every answer
        self.console = console
        self.compute_report: dict | None = None

    def _params(self, repetition_penalty: float) -> Any:
        from xlpref.sampling import SamplingParams

        return SamplingParams(n=1, temperature=0, max_new_tokens=self.settings["max_new_tokens"], seed=self.seed,
                              batch_size=self.settings["batch_size"], repetition_penalty=repetition_penalty)

    def annotate(self, *, prompts: Mapping[str, Sequence[Any]] | Sequence[LIDRPrompt], languages: Sequence[str],
                 policy: Any, store: RecordStore | None = None, stage_dir: str | None = None, progress: bool = True,
                 compute: Any = None, **_context: Any) -> PairsResult:
        """Answers, translations and pairs for ``prompts`` in ``languages`` by ``policy``.

        Args:
            prompts: ``{lang: [TrainPrompt]}`` (the loop's) or a list of :class:`LIDRPrompt`.
            policy: pi_t, a spec or folder for :func:`xlpref.models.load_model`, or a ``(model, tokenizer)``.
            store: a :class:`xlpref.records.RecordStore`; answers and translations become resumable logs in it.
            compute: a :class:`xlpref.cluster.ComputeConfig`; engine ``ray`` generates on its worker actors
                (``compute_report`` then holds their summary).
            _context: the loop's other keywords (samples, reward_policy, reference): not used by LIDR.
        Returns:
            The pairs and the summary per language, plus ``_tokens`` (tokens generated, all records).
        """
        from xlpref.ray_stages import make_stage_sampler

        targets = target_languages(languages)
        items = list(prompts) if not isinstance(prompts, Mapping) else prompts_from_train_prompts(prompts, languages)
        if not items:
            raise InputError("no training prompts; expected at least one", field="prompts")
        sampler = make_stage_sampler(self.settings["backend"], policy, compute)
        try:
            answer_records = self._generate(sampler, answer_requests(items, targets), ANSWER_REPETITION_PENALTY,
                                            store, stage_dir, "lidr_answers", progress)
            answers = {(r["lang"], r["id"]): r["response"] for r in answer_records}
            requests = translation_requests(items, targets, answers, has_english="en" in languages)
            translation_records = self._generate(sampler, requests, TRANSLATION_REPETITION_PENALTY, store,
                                                 stage_dir, "lidr_translations", progress)
        finally:
            sampler.close()
            self.compute_report = getattr(sampler, "report", None)
        translations = {(r["source_lang"], r["lang"], r["source_id"]): r["response"] for r in translation_records}
        result = build_lidr_pairs(items, languages, answers, translations)
        tokens = sum(r.get("n_response_tokens", 0) for r in answer_records + translation_records)
        summary = {**result.summary, "_tokens": tokens}
        if self.console is not None:
            self.console.print(render_lidr_summary(summary))
        return PairsResult(result.pairs, summary)

    def _generate(self, sampler: Any, requests: list, repetition_penalty: float, store: RecordStore | None, stage_dir: str | None,
                  name: str, progress: bool) -> list[dict]:
        from xlpref.sampling import sample_to_log

        if not requests:
            return []
        params = self._params(repetition_penalty)
        if store is None:
            return sampler.sample(requests, params, progress=progress)
        log = store.record_log(f"{stage_dir}/{name}" if stage_dir else name, key=RECORD_KEY)
        return sample_to_log(sampler, requests, params, log, progress=progress)


def answer_requests(prompts: Sequence[LIDRPrompt], targets: Sequence[str]) -> list:
    """One request per prompt in English and in each target language (language by language)."""
    from xlpref.sampling import SampleRequest

    return [SampleRequest(p.id, lang, p.instructions[lang], p.instructions["en"],
                          {"is_translation_task": p.is_translation_task})
            for lang in ["en", *targets] for p in prompts]


def translation_requests(prompts: Sequence[LIDRPrompt], targets: Sequence[str], answers: Mapping[tuple, str], *,
                         has_english: bool = True) -> list:
    """The translations the pairs need: English answer -> L, L answer -> English (when English pairs are made).

    Empty answers are not translated (their pairs are dropped), nor are English answers to translation
    tasks (kept untranslated). A request's ``lang`` is the translation's language and its ``id``
    ``"{source_lang}:{prompt id}"`` (unique per language); ``source_lang`` and ``source_id`` go to ``meta``.
    """
    from xlpref.sampling import SampleRequest

    def request(source_lang: str, lang: str, prompt: LIDRPrompt, text: str) -> SampleRequest:
        instruction = translation_instruction(text, lang)
        return SampleRequest(f"{source_lang}:{prompt.id}", lang, instruction, instruction,
                             {"source_lang": source_lang, "source_id": prompt.id})

    requests = []
    for lang in targets:
        for prompt in prompts:
            english, native = answers[("en", prompt.id)], answers[(lang, prompt.id)]
            if not (english.strip() and native.strip()):
                continue
            if not prompt.is_translation_task:
                requests.append(request("en", lang, prompt, english))
            if has_english:
                requests.append(request(lang, "en", prompt, native))
    return requests
