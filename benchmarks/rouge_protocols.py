"""A model's ROUGE as its replies stand, as the paper's code scores them, and beside a constant reply.

    python benchmarks/rouge_protocols.py --predictions FILE [--dataset DIR] [--seed 42] [--draws 200]

FILE: `pecrs evaluate ... --predictions FILE` of a split with generation on (its records with a
`reference` and a `generated` reply, one per recommender turn). For those replies, and for the
constant reply (the training split's ROUGE-1 medoid, as `pecrs.evaluate.constant_reply_baseline`
chooses it, --seed as `train.seed`, 42 by default) given at every one of those turns, it prints ROUGE-1/2 as the texts stand (`rouge1`), as
the released PECRS code scores them (`rouge1_paper_protocol`: "A: " before both, [ITEM] written
"[MOVIE_ID]") and the F-1 of [ITEM]. The released code's validation (engine_validation.py) scores
every reply, as these do; the earlier engine.py versions of its history scored only the last reply
of each evaluation batch (8 samples, the test dialogues shuffled): `last_of_8` gives the mean and
spread of that ROUGE-1 over --draws shuffles, how far a number computed that way could land from
the whole split's. No model runs: seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import _common as C

BATCH = 8  # the released code's eval_bs


def last_reply_of_each_batch(records: list[dict], draws: int, rng) -> list[list[int]]:
    """For each of `draws` shuffles, the indices into the replies of the released code's ROUGE
    sample: the test dialogues in a random order, their samples (every item of a turn one sample)
    in batches of BATCH, the last reply of each."""
    reply_of = np.cumsum(["generated" in r for r in records]) - 1      # record -> its reply's index
    by_dialogue: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_dialogue.setdefault(r["dialogue_id"], []).append(i)
    dialogues = list(by_dialogue.values())
    samples = []
    for _ in range(draws):
        order = [i for d in rng.permutation(len(dialogues)) for i in dialogues[d]]
        batches = [[reply_of[i] for i in order[start:start + BATCH] if "generated" in records[i]]
                   for start in range(0, len(order), BATCH)]
        samples.append([replies[-1] for replies in batches if replies])
    return samples


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--predictions", required=True, help="a `pecrs evaluate --predictions` file with replies")
    p.add_argument("--dataset", default=str(C.DATASETS / "inspired"), help="its training split gives the constant reply")
    p.add_argument("--train-split", default="train")
    p.add_argument("--seed", type=int, default=42, help="the constant reply's draw (train.seed)")
    p.add_argument("--draws", type=int, default=200, help="shuffles for the last-of-each-batch spread")
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    from pecrs.data import ITEM
    from pecrs.evaluate import MEDOID_REPLIES, training_replies
    from pecrs.loaders import load_dataset
    from pecrs.metrics.generation import item_f1, medoid_reply, rouge_pairs, rouge_pairs_paper_protocol

    path = Path(args.predictions)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    replies = [r for r in records if "generated" in r]
    if not replies:
        raise SystemExit(f"{path}: no record has a 'generated' reply (evaluated with --no-generate?)")
    references = [r["reference"] for r in replies]
    bundle = load_dataset(args.dataset)
    # the constant reply of `pecrs evaluate` and `pecrs experiment main` (constant_reply_baseline)
    constant = medoid_reply(training_replies(bundle, args.train_split), max_replies=MEDOID_REPLIES, seed=args.seed)

    samples = last_reply_of_each_batch(records, args.draws, np.random.default_rng(0))
    result = {"predictions": str(path), "replies": len(replies), "constant_reply": constant}
    for name, generated in (("model", [r["generated"] for r in replies]), ("constant_reply_scores", [constant] * len(replies))):
        r1, r2 = rouge_pairs(generated, references)
        p1, p2 = rouge_pairs_paper_protocol(generated, references)
        subset = np.array([100 * p1[s].mean() for s in samples])
        result[name] = {
            "rouge1": 100 * r1.mean(), "rouge2": 100 * r2.mean(),
            "rouge1_paper_protocol": 100 * p1.mean(), "rouge2_paper_protocol": 100 * p2.mean(),
            "f1_item": item_f1([ITEM in g for g in generated], [ITEM in t for t in references]),
            "last_of_8": {"replies": len(samples[0]), "rouge1_paper_protocol_mean": float(subset.mean()),
                          "sd": float(subset.std()), "p2.5": float(np.percentile(subset, 2.5)),
                          "p97.5": float(np.percentile(subset, 97.5))}}
    m, c = result["model"], result["constant_reply_scores"]
    C.emit(args, result, f"RG-1/RG-2 model {m['rouge1']:.2f}/{m['rouge2']:.2f} (paper's code "
                         f"{m['rouge1_paper_protocol']:.2f}/{m['rouge2_paper_protocol']:.2f}), constant reply "
                         f"{c['rouge1']:.2f}/{c['rouge2']:.2f} ({c['rouge1_paper_protocol']:.2f}/"
                         f"{c['rouge2_paper_protocol']:.2f}); F-1 {m['f1_item']:.1f} vs {c['f1_item']:.1f}")


if __name__ == "__main__":
    main()
