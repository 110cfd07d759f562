"""Why a briefly trained model fills masked spans with the same few tokens: undertraining, or the sampler's
nearest-embedding clamp collapsing onto hub embeddings?

For the first --windows span-masked windows of a shard set, the skipping sampler fills the spans three ways,
with the same noise: clamping the predicted x0 to its nearest embedding at every step (the official sampler),
clamping only over the last quarter of the steps, and never clamping (the final rounding head alone). Each row
gives span-token accuracy against the unigram baseline, how varied the generated tokens are, and where the
generated tokens sit among the embedding norms (a clamp that snaps uncertain, shrunken x0 estimates to the
shortest embeddings writes tokens of low norm percentile). A last row says what the model's first x0
estimate looks like: its norm against the embeddings' and the share of its clamp choices that are the 1% of
tokens with the shortest embeddings.

    .venv/bin/python benchmarks/infill_clamp.py --model runs/demo/model --shards runs/demo/shards/valid

Prints a table and writes JSON (default benchmarks/results/infill_clamp.json).
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import islice
from pathlib import Path

import torch

from ardiff_scale.data.infill import infill_scores, span_positions
from ardiff_scale.data.pipeline import open_shards
from ardiff_scale.diffusion import model_time, sample
from ardiff_scale.diffusion.sampler import NearestEmbedding
from ardiff_scale.diffusion.schedule import make_schedule
from ardiff_scale.diffusion.timesteps import decode_schedule, token_step_indices
from ardiff_scale.export import load_model_dir
from ardiff_scale.train.loader import open_loader

RESULTS = Path(__file__).parent / "results"


def fill(model, schedule, batch, length: int, steps: int, form: str, clamp_from: int | None, seed: int):
    """Tokens (windows, length): clamp x0-hat from step clamp_from on (None: never), same noise every call."""
    return sample(model, batch["src_ids"], batch["src_mask"], length, schedule, decode_steps=steps, form=form,
                  clamp=clamp_from is not None, clamp_from=clamp_from or 0,
                  generator=torch.Generator().manual_seed(seed)).tokens[:, 0]


def norm_percentile(tokens: torch.Tensor, norms: torch.Tensor) -> float:
    """Mean percentile (0 = shortest embedding) of the tokens' embedding norms."""
    rank = torch.empty_like(norms)
    rank[norms.argsort()] = torch.arange(norms.numel(), dtype=norms.dtype) / (norms.numel() - 1)
    return float(rank[tokens].mean())


@torch.no_grad()
def first_estimate(model, schedule, batch, length: int, steps: int, form: str, seed: int) -> dict:
    weight = model.embedding_weight().detach().float()
    norms = weight.norm(dim=-1)
    memory = model.encode(batch["src_ids"], batch["src_mask"])
    x = torch.randn((batch["src_ids"].shape[0], length, weight.shape[1]), generator=torch.Generator().manual_seed(seed))
    s = token_step_indices(torch.tensor(decode_schedule(length, schedule.num_steps, steps, form)[:1]), length,
                           schedule.num_steps, form)
    x0 = model.denoise(x, model_time(s, schedule.num_steps).expand(x.shape[0], -1), memory).float()
    ids = NearestEmbedding(weight).index(x0).flatten()
    shortest = norms.argsort()[: max(1, norms.numel() // 100)]
    counts = torch.bincount(ids, minlength=norms.numel())
    return {"x0_norm": float(x0.norm(dim=-1).mean()), "embedding_norm": float(norms.mean()),
            "embedding_norm_min": float(norms.min()),
            "share_on_shortest_1pct": float(counts[shortest].sum() / ids.numel()),
            "distinct": int((counts > 0).sum()), "top5_share": float(counts.topk(5).values.sum() / ids.numel())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory (ardiff pretrain / demo output)")
    parser.add_argument("--shards", help="span-masked shard set (default: the model's data.valid, else data.train)")
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=0, help="sampler steps M (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(RESULTS / "infill_clamp.json"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, config, tokenizer = load_model_dir(args.model)
    location = args.shards or config.data.valid or config.data.train
    loader = open_loader(open_shards(location, tokenizer), config, rank=0, world=1, epochs=1,
                         batch_size=args.windows, num_workers=0)
    batch = next(islice(loader.tensors(), 1))
    length, form = batch["tgt_ids"].shape[1], config.diffusion.timestep_form
    steps = args.steps or config.diffusion.decode_steps
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.num_steps)
    norms = model.embedding_weight().detach().float().norm(dim=-1)
    where = span_positions(batch["tgt_ids"], tokenizer.specials)
    rows = []
    for name, clamp_from in (("clamp every step (official)", 0), ("clamp last quarter", steps - steps // 4),
                             ("no clamp", None)):
        started = time.perf_counter()
        tokens = fill(model, schedule, batch, length, steps, form, clamp_from, args.seed)
        scores = infill_scores(tokens, batch["tgt_ids"], tokenizer.specials)
        common = max(set(tokens[where].tolist()), key=tokens[where].tolist().count)
        rows.append({"sampler": name, **scores.metrics(""), "norm_percentile": norm_percentile(tokens[where], norms),
                     "most_generated": tokenizer.decode([common]) or tokenizer.id_to_piece(common),
                     "seconds": time.perf_counter() - started})
    reference_percentile = norm_percentile(batch["tgt_ids"][where], norms)
    first = first_estimate(model, schedule, batch, length, steps, form, args.seed)
    print(f"model {args.model}, {rows[0]['windows']:.0f} windows of {location}, M = {steps}, "
          f"{rows[0]['span_tokens']:.0f} span tokens; unigram baseline {100 * rows[0]['unigram_accuracy']:.1f}%")
    print(f"{'sampler':<30} {'accuracy':>9} {'distinct':>9} {'top-5':>7} {'norm pct':>9}  most generated")
    for r in rows:
        print(f"{r['sampler']:<30} {100 * r['accuracy']:>8.1f}% {100 * r['distinct']:>8.1f}% "
              f"{100 * r['top5_share']:>6.1f}% {r['norm_percentile']:>9.2f}  {r['most_generated']!r}")
    print(f"{'reference tokens':<30} {'':>9} {'':>9} {'':>7} {reference_percentile:>9.2f}")
    print(f"first x0 estimate: norm {first['x0_norm']:.2f} (embeddings {first['embedding_norm']:.2f}, shortest "
          f"{first['embedding_norm_min']:.2f}); its clamp choices: {first['distinct']} distinct, top-5 "
          f"{100 * first['top5_share']:.0f}%, {100 * first['share_on_shortest_1pct']:.0f}% on the 1% shortest "
          "embeddings")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "shards": location, "steps": steps, "rows": rows,
                               "reference_norm_percentile": reference_percentile, "first_estimate": first},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
