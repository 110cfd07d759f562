"""Reads a shard stream in its own process (the resume tests need a fresh process, as a restarted job has).

python read_stream.py LOCATION SEED WORKERS RANK WORLD LIMIT STATE_IN STATE_OUT
prints the keys it read as JSON; LIMIT 0 = to the end; STATE_IN/STATE_OUT '-' = none.
"""

import itertools
import json
import sys

from ardiff_scale.data.shards import ShardSet
from ardiff_scale.data.stream import ShardLoader, ShardStream, StreamOptions


def main() -> None:
    location, seed, workers, rank, world, limit, state_in, state_out = sys.argv[1:9]
    stream = ShardStream(ShardSet.open(location), StreamOptions(seed=int(seed)), int(rank), int(world))
    loader = ShardLoader(stream, num_workers=int(workers))
    if state_in != "-":
        with open(state_in) as f:
            loader.load_state_dict(json.load(f))
    samples = itertools.islice(loader, int(limit)) if int(limit) else loader
    keys = [f"{s['__url__'].rsplit('/', 1)[-1]}/{s['__key__']}" for s in samples]
    if state_out != "-":
        with open(state_out, "w") as f:
            json.dump(loader.state_dict(), f)
    print(json.dumps(keys))


if __name__ == "__main__":
    main()
