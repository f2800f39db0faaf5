#!/usr/bin/env python3
"""Reads callgrind output files and prints the text sections (`.text.<symbol>`) of every
function of BINARY that ran, in order of first appearance: the section ordering file that
bench/text-order.sh writes to link/text-order.txt.

usage: text-order.py BINARY CALLGRIND_OUT...
"""
import os
import re
import sys

binary = os.path.realpath(sys.argv[1])
seen = {}
name_re = re.compile(r"^\((\d+)\)(?: (.*))?$")
for path in sys.argv[2:]:
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
for sym in seen:
    print(".text." + sym)
