#!/usr/bin/env python3
"""Reads callgrind output files and prints the text sections (`.text.<symbol>`) of every
function of BINARY that ran: the section ordering file that bench/text-order.sh writes to
link/text-order.txt.

bench/text-order.sh cuts each process's run into phases with callgrind dumps: `cg.PID.1`
holds start-up, `cg.PID.2` the load, `cg.PID.3` the quiet seconds after it and `cg.PID` (the
dump at exit) the shutdown. Functions are placed quiet first, then load, start-up and exit,
each by the first of those phases it ran in and in order of first appearance within it:
what an idle proxy runs sits together, and code that runs only at start-up or exit apart.

usage: text-order.py BINARY CALLGRIND_OUT...
"""
import os
import re
import sys


def rank(path):
    """Placement order by file name: quiet (`cg.PID.3`) 0, load (`.2`) 1, start-up (`.1`) 2,
    exit (`cg.PID`) 3."""
    m = re.search(r"cg\.\d+\.(\d+)$", os.path.basename(path))
    return {"3": 0, "2": 1, "1": 2}.get(m.group(1), 3) if m else 3


binary = os.path.realpath(sys.argv[1])

seen = {}
name_re = re.compile(r"^\((\d+)\)(?: (.*))?$")
for path in sorted(sys.argv[2:], key=rank):
    objs, fns = {}, {}
    ob = None
    with open(path, errors="replace") as f:
        for line in f:
            key, _, val = line.rstrip("\n").partition("=")
            if key not in ("ob", "cob", "fn", "cfn"):
                continue
            m = name_re.match(val)
            if not m:
                continue
            ident, name = m.groups()
            # Names are given once per id (by whichever line first mentions it); only
            # `fn=` blocks (a function with cost of its own) count as having run.
            if key in ("ob", "cob"):
                if name:
                    objs[ident] = os.path.realpath(name) if name.startswith("/") else name
                if key == "ob":
                    ob = objs.get(ident)
                continue
            if name:
                fns[ident] = name
            sym = fns.get(ident)
            if key == "fn" and sym and ob == binary:
                seen.setdefault(sym, None)
# Files are read in placement order, so first appearance orders the phases too.
for sym in seen:
    print(".text." + sym)
