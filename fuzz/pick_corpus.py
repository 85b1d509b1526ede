#!/usr/bin/env python3
"""Pick a small, high-coverage corpus from a large one.

`cargo fuzz cmin` keeps every input that adds any feature: well over a thousand files for the
peermesh decoders. This keeps the N inputs that together cover the most features instead,
choosing greedily (the input adding the most uncovered features first, the smaller on ties).

Usage (see README.md):
    BIN=target/x86_64-unknown-linux-gnu/release/roundtrip
    $BIN -set_cover_merge=1 -use_counters=0 -merge_control_file=/tmp/ctl /tmp/merged DIR...
    python3 fuzz/pick_corpus.py /tmp/ctl 160 fuzz/corpus/roundtrip

With -set_cover_merge, libFuzzer writes every input's complete feature list ("FT <index>
<features...>") to the control file; plain -merge=1 lists only features new at that point,
which is useless for ranking.
"""

import heapq
import os
import shutil
import sys


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    control, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    lines = open(control).read().split("\n")
    n_files = int(lines[0])
    files = lines[2 : 2 + n_files]
    features = {}
    for line in lines[2 + n_files :]:
        if line.startswith("FT "):
            parts = line.split()
            features[int(parts[1])] = frozenset(parts[2:])
    everything = set().union(*features.values()) if features else set()

    # Lazy greedy: a stale gain in the heap is only an upper bound; re-check before taking.
    heap = [(-len(f), os.path.getsize(files[i]), i) for i, f in features.items()]
    heapq.heapify(heap)
    covered, picked = set(), []
    while heap and len(picked) < count:
        _, size, i = heapq.heappop(heap)
        gain = len(features[i] - covered)
        if gain == 0:
            continue
        if heap and gain < -heap[0][0]:
            heapq.heappush(heap, (-gain, size, i))
            continue
        covered |= features[i]
        picked.append(i)

    os.makedirs(out, exist_ok=True)
    for i in picked:
        shutil.copy(files[i], out)
    share = 100 * len(covered) / max(1, len(everything))
    print(f"{len(picked)} inputs cover {len(covered)} of {len(everything)} features ({share:.1f}%)")


if __name__ == "__main__":
    main()
