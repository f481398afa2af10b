"""A toy EAGLE-3 trainer driven only through files, as retrain.external drives speculators: it reads a
train.jsonl and a verifier directory, trains with specwatch's own training loop for a few steps and
writes a speculators checkpoint.

    python tests/retrain/external_trainer.py --target /tmp/tiny-ref/target --data corpus/train.jsonl \\
        --output out --aux-layer-ids 0,1,2 --draft-vocab-size 512 [--from-pretrained DIR] [--init DIR] \\
        [--steps 3] [--fail] [--hang] [--hold-until FILE]

Each start appends its pid to OUT/starts.log and writes OUT/args.json before anything else; the
checkpoint goes to OUT/checkpoint-final. --fail exits 3, --hang never ends, --hold-until waits for a
file to appear before training. --init starts from a head other than --from-pretrained.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

FAIL_STATUS = 3


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--aux-layer-ids", required=True)
    parser.add_argument("--draft-vocab-size", type=int, required=True)
    parser.add_argument("--from-pretrained", default="")
    parser.add_argument("--init", default="")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--hold-until", type=Path, default=None)
    return parser.parse_args(argv)


def record_start(args: argparse.Namespace) -> None:
    args.output.mkdir(parents=True, exist_ok=True)
    with (args.output / "starts.log").open("a", encoding="utf-8") as starts:
        starts.write(f"{os.getpid()}\n")
    recorded = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    (args.output / "args.json").write_text(json.dumps(recorded), encoding="utf-8")


def train(args: argparse.Namespace) -> Path:
    import torch

    from decoder import create_draft, load_draft, load_target
    from decoder.exchange import tokenize_exchange
    from decoder.formats.speculators import export_speculators_head
    from decoder.training import FitConfig, fit_draft, pack_token_batches
    from retrain.corpus import CorpusSample

    torch.set_num_threads(1)
    target = load_target(args.target, device="cpu")
    start = args.init or args.from_pretrained
    aux_layer_ids = tuple(int(layer) for layer in args.aux_layer_ids.split(","))
    if start:
        draft = load_draft(start, target, check_target=False)
    else:
        torch.manual_seed(0)
        draft = create_draft("eagle3", target, aux_layer_ids=aux_layer_ids, draft_vocab_size=args.draft_vocab_size)
    lines = args.data.read_text(encoding="utf-8").splitlines()
    samples = [CorpusSample.from_json(json.loads(line)) for line in lines if line.strip()]
    sequences = [tokenize_exchange(target, sample.exchange).sequence for sample in samples]
    batches = pack_token_batches(sequences, sequence_length=64, batch_size=2)
    result = fit_draft(target, draft, batches, FitConfig(steps=args.steps, warmup_steps=0, learning_rate=1e-4))
    print(f"trained {args.steps} steps, loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}", flush=True)
    checkpoint = args.output / "checkpoint-final"
    export_speculators_head(draft, target, checkpoint)
    return checkpoint


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    record_start(args)
    print(f"external trainer {os.getpid()} starts", flush=True)
    if args.fail:
        print("failing as asked", flush=True)
        return FAIL_STATUS
    while args.hang or (args.hold_until is not None and not args.hold_until.exists()):
        time.sleep(0.1)
    print(f"wrote {train(args)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
