#!/usr/bin/env python3
"""Where an idle connection's bytes go: heaptrack's peak-memory stacks of a server holding N
connections, grouped by the first frames that are not the allocator's own, per connection.
The total includes what the server holds whatever its connections (small beside N of them).

    breakdown.py STACKS N [DEPTH]

STACKS is `heaptrack_print --print-flamegraph STACKS --flamegraph-cost-type peak`'s output
(one stack per line, frames separated by `;`, the bytes last). Frames are demangled with
c++filt (binutils knows Rust's v0 mangling)."""
import collections
import re
import subprocess
import sys

# Frames that only say "memory was allocated": the allocator, std, core, and the buffer
# types' own growth. The first frame after them names who asked.
PLUMBING = re.compile(
    r"^<?(alloc|core|std)::|^__rust|^_?_?rdl|^(malloc|calloc|realloc|aligned)"
    r"|^<?bytes::|^hashbrown::raw::|^_*rustc::"
)


# What heaptrack leaves of Rust's legacy mangling.
ESCAPES = {"$LT$": "<", "$GT$": ">", "$u20$": " ", "$C$": ",", "$RF$": "&", "$BP$": "*",
           "$u7b$": "{", "$u7d$": "}", "$u5b$": "[", "$u5d$": "]", "$LP$": "(", "$RP$": ")",
           "..": "::"}


def legacy(name):
    for escape, char in ESCAPES.items():
        name = name.replace(escape, char)
    return name[1:] if name.startswith("_<") else name


def main():
    path, count = sys.argv[1], int(sys.argv[2])
    depth = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    stacks = []
    for line in open(path):
        frames, _, cost = line.rstrip("\n").rpartition(" ")
        # heaptrack ends every frame with `;`: the last piece is empty.
        frames = [re.sub(r" \([^)]*\)$", "", f) for f in frames.split(";") if f]
        stacks.append((frames, int(cost)))
    names = sorted({f for frames, _ in stacks for f in frames})
    demangled = subprocess.run(
        ["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True
    ).stdout.splitlines()
    readable = {
        name: legacy(d)
        for name, d in zip(names, demangled)
    }
    readable = {
        name: re.sub(r"::h[0-9a-f]{16}$", "", re.sub(r"\[[0-9a-f]{16}\]", "", d))
        for name, d in readable.items()
    }
    sites = collections.Counter()
    for frames, cost in stacks:
        callers = [readable[f] for f in reversed(frames) if not PLUMBING.match(readable[f])]
        sites[" <- ".join(c[:100] for c in callers[:depth])] += cost
    total = sum(sites.values())
    print(f"{total / count:8.0f} B per connection in all ({total} B over {count})")
    for site, cost in sites.most_common():
        if cost / count < 4:
            break
        print(f"{cost / count:8.0f}  {site}")


if __name__ == "__main__":
    main()
