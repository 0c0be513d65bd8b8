#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Turns a data file's lines (comments left out) into a C++ array of string literals, for a build-time embed.
import sys

source, target, name = sys.argv[1], sys.argv[2], sys.argv[3]
lines = [l.rstrip("\n") for l in open(source, encoding="utf-8") if l.strip() and not l.startswith("#")]
with open(target, "w", encoding="utf-8") as out:
    out.write("// Generated from %s by tools/embed_lines.py: do not edit.\n#include <cstddef>\n" % source.split("/")[-1])
    out.write("namespace portslice::config {\nextern const char *const %s[];\nextern const size_t %sCount;\n" % (name, name))
    out.write("const char *const %s[] = {\n" % name)
    for l in lines:
        out.write('\t"%s",\n' % l.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t"))
    out.write("};\nconst size_t %sCount = %d;\n} // namespace portslice::config\n" % (name, len(lines)))
