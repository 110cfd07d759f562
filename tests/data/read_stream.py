"""Reads a shard stream in its own process (the resume tests need a fresh process, as a restarted job has).

python read_stream.py LOCATION SEED WORKERS RANK WORLD LIMIT STATE_IN STATE_OUT [BATCH]
prints the keys of the batches it read, in order, as JSON; LIMIT 0 = to the end, else a number of batches;
STATE_IN/STATE_OUT '-' = none; BATCH: samples per batch (default 4).
"""

import itertools
import json
import sys

from ardiff_scale.data.pipeline import BatchMaker
from ardiff_scale.data.shards import ShardSet
from ardiff_scale.data.stream import BatchLoader, BatchStream, StreamOptions


def main() -> None:
    location, seed, workers, rank, world, limit, state_in, state_out = sys.argv[1:9]
    batch = int(sys.argv[9]) if len(sys.argv) > 9 else 4
    maker = BatchMaker("pretrain", source_len=160, target_len=48, mask_fraction=0.3, seed=int(seed))
    stream = BatchStream(ShardSet.open(location), StreamOptions(seed=int(seed)), int(rank), int(world), batch, maker)
    loader = BatchLoader(stream, num_workers=int(workers))
    if state_in != "-":
        with open(state_in) as f:
            loader.load_state_dict(json.load(f))
    batches = itertools.islice(loader, int(limit)) if int(limit) else loader
    keys = [key for b in batches for key in b.keys]
    if state_out != "-":
        with open(state_out, "w") as f:
            json.dump(loader.state_dict(), f)
    print(json.dumps(keys))


if __name__ == "__main__":
    main()
