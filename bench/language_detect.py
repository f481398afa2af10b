"""Language detection: per-record cost, memory and accuracy of detect_language (a benchmark, not a test).

Each variant runs in a fresh process, so its resident memory and lingua's model loading are its own:

- router: `intake.languages = []`, the script router alone (en by stopwords, the rest other);
- lingua: the default (lingua's high-accuracy mode, models loaded on first need), English by the
  stopword rule confirmed by lingua;
- lingua-preloaded: the same with every model loaded when the detector is built;
- lingua-low: lingua's low-accuracy mode (trigram models only);
- english-by-rule / english-by-lingua: the default, but English decided by the stopword rule alone or
  by lingua alone.

Texts: the labelled set (tests/monitor/intake/data/languages.jsonl, short prompts of 15 labels); a
realistic mix as intake reads it (the last user turn and the completion, each up to 800 characters):
the demo traffic (chatterbot dialogs, stdlib code, the written exchanges in eight more languages) and
long prompts of 300 to 1,600 characters; and chatterbot-corpus turns in English, Spanish, German,
French, Portuguese and Indonesian (real short chat, none of it written for this benchmark).

    python bench/language_detect.py                        # every variant, a table
    python bench/language_detect.py --out bench/results/language_detect.json
    python bench/language_detect.py --variant lingua       # one variant, its JSON
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from decoder.reference.corpus import chatterbot_data_dir, parse_conversations
from monitor.base.languages import DEFAULT_LANGUAGES
from monitor.intake.language import DEFAULT_MIN_CONFIDENCE, ProseLanguages, detect_language
from monitor.intake.pipeline import LANGUAGE_PROBE_CHARS
from monitor.service.demo_traffic import WRITTEN_LANGUAGES, each_language, traffic

if TYPE_CHECKING:
    from lingua import LanguageDetector

ROOT = Path(__file__).resolve().parent.parent
LABELLED = ROOT / "tests" / "monitor" / "intake" / "data" / "languages.jsonl"
CHATTERBOT = {"en": "english", "es": "spanish", "de": "german", "fr": "french", "pt": "portuguese", "id": "indonesian"}
MIX = {"en": 0.5, "code": 0.2, "zh": 0.15, "ja": 0.05}  # the demo's story languages; 10% more in the others
VARIANTS = ("router", "lingua", "lingua-preloaded", "lingua-low", "english-by-rule", "english-by-lingua")


class Variant(ProseLanguages):
    """The default detector, built or deciding another way."""

    def __init__(self, name: str) -> None:
        super().__init__(() if name == "router" else DEFAULT_LANGUAGES, DEFAULT_MIN_CONFIDENCE)
        self.name = name

    def build(self) -> LanguageDetector:
        from lingua import IsoCode639_1, LanguageDetectorBuilder

        builder = LanguageDetectorBuilder.from_iso_codes_639_1(*[getattr(IsoCode639_1, c.upper()) for c in self.codes])
        if self.name == "lingua-preloaded":
            builder = builder.with_preloaded_language_models()
        if self.name == "lingua-low":
            builder = builder.with_low_accuracy_mode()
        return builder.build()

    def decide(self, prose: str, english_by_rule: bool) -> str:
        if self.name == "english-by-rule" and english_by_rule:
            return "en"
        return super().decide(prose, english_by_rule and self.name != "english-by-lingua")


def resident_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def labelled() -> list[tuple[str, str]]:
    with LABELLED.open(encoding="utf-8") as lines:
        return [(row["label"], row["text"]) for row in map(json.loads, lines)]


def intake_text(record: dict[str, Any]) -> str:
    last_user = next(m["content"] for m in reversed(record["messages"]) if m["role"] == "user")
    return f"{last_user[:LANGUAGE_PROBE_CHARS]}\n{record['completion'][:LANGUAGE_PROBE_CHARS]}"


def long_prompts(count: int, rng: random.Random) -> list[str]:
    """Paragraphs of 300 to 1,600 characters, each of labelled sentences in one language."""
    by_language: dict[str, list[str]] = {}
    for label, text in labelled():
        if label in DEFAULT_LANGUAGES:
            by_language.setdefault(label, []).append(text)
    prompts = []
    for _ in range(count):
        sentences = by_language[rng.choice(list(by_language))]
        paragraph = ""
        target = rng.randint(300, 1600)
        while len(paragraph) < target:
            paragraph += rng.choice(sentences) + " "
        prompts.append(paragraph.strip())
    return prompts


def realistic_mix(count: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    records = list(traffic(int(count * 0.8), MIX, seed=seed))
    records += list(each_language(WRITTEN_LANGUAGES, count // 10 // len(WRITTEN_LANGUAGES) + 1, seed=seed))
    texts = [intake_text(record) for record in records] + long_prompts(count // 10, rng)
    rng.shuffle(texts)
    return texts[:count]


def chatterbot_turns() -> dict[str, list[str]]:
    turns = {}
    for code, directory in CHATTERBOT.items():
        found = set()
        for path in sorted((chatterbot_data_dir() / directory).glob("*.yml")):
            found |= {turn.strip() for c in parse_conversations(path.read_text(encoding="utf-8")) for turn in c}
        turns[code] = sorted(turn for turn in found if turn)
    return turns


def timings_ms(texts: Sequence[str], detect: Callable[[str], str], repeats: int = 3) -> dict[str, float]:
    """Wall-clock and CPU time per record: on a shared machine the wall clock's tail is mostly time
    spent waiting for a core, which the process's CPU time leaves out."""
    wall, cpu = [], []
    for _ in range(repeats):
        for text in texts:
            started, started_cpu = time.perf_counter(), time.process_time()
            detect(text)
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
    wall.sort()
    cpu.sort()
    return {
        "median_ms": round(1000 * statistics.median(wall), 4),
        "p99_ms": round(1000 * wall[int(0.99 * len(wall))], 4),
        "cpu_median_ms": round(1000 * statistics.median(cpu), 4),
        "cpu_p99_ms": round(1000 * cpu[int(0.99 * len(cpu))], 4),
    }


def per_label(pairs: list[tuple[str, str]]) -> dict[str, list[float]]:
    true, found = Counter(t for t, _ in pairs), Counter(g for _, g in pairs)
    right = Counter(t for t, g in pairs if t == g)
    return {
        label: [round(right[label] / found[label], 3) if found[label] else 0.0, round(right[label] / true[label], 3)]
        for label in sorted(true)
    }


def corpus_shares(turns: dict[str, list[str]], detect: Callable[[str], str]) -> dict[str, dict[str, float]]:
    """Per chatterbot language: the share labelled as itself, as English, and as other."""
    shares = {}
    for code, texts in turns.items():
        labels = Counter(detect(text) for text in texts)
        prose = len(texts) - labels["code"]
        shares[code] = {
            "itself": round(labels[code] / prose, 3),
            "en": round(labels["en"] / prose, 3),
            "other": round(labels["other"] / prose, 3),
            "turns": prose,
        }
    return shares


def relabelled(texts: Sequence[str], detect: Callable[[str], str]) -> dict[str, int]:
    """How many texts the router alone labels otherwise, by "router label -> label"; "other" moving to a
    configured language is the point, any other move changes a label stored before."""
    alone = Variant("router")
    pairs = [(detect_language(text, alone), detect(text)) for text in texts]
    moves = Counter(f"{before} -> {after}" for before, after in pairs if before != after)
    return dict(moves.most_common())


def run_variant(name: str) -> dict[str, Any]:
    before = resident_mb()
    languages = Variant(name)
    started = time.perf_counter()
    if languages.codes:
        languages.detector()
    built_s = time.perf_counter() - started

    def detect(text: str) -> str:
        return detect_language(text, languages)

    rows = labelled()
    mix = realistic_mix()
    started = time.perf_counter()
    pairs = [(label, detect(text)) for label, text in rows]
    first_pass_s = time.perf_counter() - started
    scores = per_label(pairs)
    judged = [score for label, score in scores.items() if label in DEFAULT_LANGUAGES]
    return {
        "variant": name,
        "build_s": round(built_s, 2),
        "first_pass_s": round(first_pass_s, 2),
        "rss_added_mb": round(resident_mb() - before, 1),
        "labelled": {"records": len(rows), **timings_ms([text for _, text in rows], detect)},
        "realistic": {"records": len(mix), **timings_ms(mix, detect)},
        "relabelled_from_the_router": relabelled(mix + [text for _, text in rows], detect),
        "accuracy": round(sum(t == g for t, g in pairs) / len(pairs), 3),
        "lowest_precision_recall_of_the_nine": min(min(score) for score in judged),
        "per_label_precision_recall": scores,
        "chatterbot": corpus_shares(chatterbot_turns(), detect),
    }


def table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'variant':18} {'RSS+MB':>7} {'load s':>6} {'lab med':>8} {'lab p99':>8} {'mix med':>8} {'mix p99':>8} "
        f"{'cpu p99':>8} {'acc':>5} {'min P/R':>7} {'en kept':>7} {'en->xx':>6} {'xx->en':>6} {'xx kept':>7}"
    )
    lines = [head]
    for r in results:
        chat = r["chatterbot"]
        others = [code for code in chat if code != "en"]
        english = chat["en"]
        lines.append(
            f"{r['variant']:18} {r['rss_added_mb']:7.0f} {r['build_s'] + r['first_pass_s']:6.2f} "
            f"{r['labelled']['median_ms']:8.3f} {r['labelled']['p99_ms']:8.3f} "
            f"{r['realistic']['median_ms']:8.3f} {r['realistic']['p99_ms']:8.3f} {r['realistic']['cpu_p99_ms']:8.3f} "
            f"{r['accuracy']:5.3f} "
            f"{r['lowest_precision_recall_of_the_nine']:7.3f} {english['itself']:7.3f} "
            f"{1 - english['itself'] - english['other']:6.3f} "
            f"{statistics.mean(chat[c]['en'] for c in others):6.3f} "
            f"{statistics.mean(chat[c]['itself'] for c in others):7.3f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant in this process, print its JSON")
    parser.add_argument("--out", type=Path, help="write every variant's results here as JSON")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant)))
        return
    results = []
    for name in VARIANTS:
        command = [sys.executable, __file__, "--variant", name]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(f"{name} done", file=sys.stderr)
    print(table(results))
    print("ms per record on the labelled set (lab) and the realistic mix (mix), wall clock; cpu p99: the mix's, in CPU")
    print("time. en kept / en->xx: chatterbot English turns labelled en / another language; xx->en, xx kept: the")
    print("mean over chatterbot es, de, fr, pt, id of turns labelled en / as themselves")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
