#!/usr/bin/env python3
"""Prints the import graph of triage-gateway's top-level modules and the cycles in it (issue 21).

A module's edges are the `crate::<module>` paths its code names (in `use` lines and inline, in
grouped `use crate::{a, b::C}` too; comments and string literals are skipped), with a submodule's
files (src/evals/*.rs) counted as their top-level module and names that lib.rs re-exports
(`crate::AppState`) mapped to the module that defines them.

    python3 scripts/module-cycles.py            # the report; exits 0
    python3 scripts/module-cycles.py --enforce  # exits 1 if any cycle is left
    python3 scripts/module-cycles.py --self-test  # the parser on a made-up crate

scripts/test.sh runs it with --enforce.
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SRC = os.path.join(ROOT, "crates", "triage-gateway", "src")

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def strip_comments_and_strings(text):
    """Blanks out comments, string literals and char literals, keeping everything else."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            close = '"' + m.group(1)
            j = text.find(close, i + len(m.group(0)))
            i = n if j < 0 else j + len(close)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'":
            m = re.match(r"'(\\.|\\u\{[0-9a-fA-F]+\}|[^\\'])'", text[i:])
            if m:
                i += len(m.group(0))
                out.append("' '")
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def top_module(path, src_dir):
    rel = os.path.relpath(path, src_dir)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def group_heads(code, start):
    """The first path segment of each item of a `{...}` group starting at code[start] == '{'."""
    heads, depth, i, expect = [], 0, start, True
    while i < len(code):
        c = code[i]
        if c == "{":
            depth += 1
            if depth == 1:
                expect = True
        elif c == "}":
            depth -= 1
            if depth == 0:
                break
        elif c == "," and depth == 1:
            expect = True
        elif depth == 1 and expect:
            m = IDENT.match(code, i)
            if m:
                heads.append(m.group(0))
                expect = False
                i = m.end()
                continue
        i += 1
    return heads


def crate_heads(code):
    for m in re.finditer(r"\bcrate\s*::\s*", code):
        rest = m.end()
        if rest < len(code) and code[rest] == "{":
            yield from group_heads(code, rest)
        else:
            ident = IDENT.match(code, rest)
            if ident:
                yield ident.group(0)


def graph_of(src_dir):
    """{module: set of modules it imports} for the crate whose sources are in `src_dir`."""
    files = []
    for dirpath, _, names in os.walk(src_dir):
        files += [os.path.join(dirpath, f) for f in names if f.endswith(".rs")]
    lib = os.path.join(src_dir, "lib.rs")
    lib_code = strip_comments_and_strings(open(lib).read())
    modules = set(re.findall(r"\bmod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;", lib_code))
    # Names lib.rs re-exports: `pub use state::{AppState, SharedState};`
    reexports = {}
    for m in re.finditer(r"\bpub\s+use\s+([A-Za-z_][A-Za-z0-9_]*)\s*::\s*(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)", lib_code):
        for name in IDENT.findall(m.group(2)):
            if name != "as":
                reexports[name] = m.group(1)
    graph = {m: set() for m in modules}
    for path in sorted(files):
        if path == lib:
            continue
        src = top_module(path, src_dir)
        if src not in graph:
            continue
        code = strip_comments_and_strings(open(path).read())
        for head in crate_heads(code):
            dst = head if head in modules else reexports.get(head)
            if dst and dst != src:
                graph[src].add(dst)
    return graph


def cycles_of(graph):
    """The strongly connected components of more than one module, each sorted."""
    # Tarjan's strongly connected components.
    index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sccs


def self_test():
    """The parser on a made-up crate: comments, strings and doc links are no imports; grouped
    imports, re-exported names and submodule files are."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        os.mkdir(os.path.join(d, "c"))
        files = {
            "lib.rs": "pub mod a;\npub mod b;\npub mod c;\npub mod d;\npub use d::{Thing, Other as O};\n",
            "a.rs": "use crate::{b::X, c};\n// crate::d\nconst S: &str = \"crate::d\";\n/// [`crate::d`]\nfn f<'a>(x: &'a str) -> char { '\"' }\n",
            "b.rs": "fn g() { crate::c::inner::h(); }\n",
            "c/mod.rs": "pub mod inner;\n",
            "c/inner.rs": "use super::*;\npub fn h() -> crate::Thing { todo!() }\n",
            "d.rs": "/* crate::a */ pub struct Thing; pub struct Other; fn k() { let _ = r#\"crate::a\"#; }\n",
        }
        for name, text in files.items():
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        g = graph_of(d)
        want = {"a": {"b", "c"}, "b": {"c"}, "c": {"d"}, "d": set()}
        assert g == want, g
        assert cycles_of(g) == [], cycles_of(g)
        with open(os.path.join(d, "d.rs"), "a") as f:
            f.write("use crate::a;\n")
        assert cycles_of(graph_of(d)) == [["a", "b", "c", "d"]], cycles_of(graph_of(d))
    print("self-test passed")
    return 0


def main():
    if "--self-test" in sys.argv[1:]:
        return self_test()
    enforce = "--enforce" in sys.argv[1:]
    graph = graph_of(SRC)
    sccs = cycles_of(graph)
    in_cycle = {m for c in sccs for m in c}
    print("triage-gateway module imports (crate:: paths), * = in a cycle:")
    for m in sorted(graph):
        mark = "*" if m in in_cycle else " "
        print(f" {mark} {m:<11} -> {', '.join(sorted(graph[m])) or '(nothing)'}")
    back = sorted((a, b) for c in sccs for a in c for b in graph[a] if b in c)
    if not sccs:
        print("no import cycle")
        return 0
    for c in sccs:
        print(f"cycle: {len(c)} modules import each other: {', '.join(c)}")
    print(f"{len(in_cycle)} of {len(graph)} modules in cycles; {len(back)} edges inside cycles:")
    print("  " + ", ".join(f"{a}->{b}" for a, b in back))
    return 1 if enforce else 0


if __name__ == "__main__":
    sys.exit(main())
