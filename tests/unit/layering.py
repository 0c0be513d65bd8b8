#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The module layering, checked on the compiler commands meson wrote.

For every object of every module in src/, and every module N, the test asks
the compiler itself (g++ -E with the object's own flags) whether
#include "N/<header>" is found and usable. Across a module's objects, what it
can include must be exactly what docs/architecture.md's module table says it
may use (and, through them, what those use): a module that sees more, or
less, fails the test.

usage: layering.py BUILD_DIR SOURCE_DIR
"""
import json
import os
import shlex
import subprocess
import sys

# Each module and the modules it may use directly (docs/architecture.md).
USES = {
    'common': [],
    'config': ['common'],
    'plan': ['config'],
    'nft': ['plan'],
    'conntrack': ['plan'],
    'xdp': ['plan'],
    'journal': ['plan'],
    'service': ['journal'],
    'dbus': ['service'],
    'daemon': ['nft', 'conntrack', 'xdp', 'dbus'],
    'fleet': ['config'],
    'ctl': ['nft', 'journal', 'dbus', 'fleet'],
}


def closure(module):
    seen = {module}
    todo = [module]
    while todo:
        for used in USES[todo.pop()]:
            if used not in seen:
                seen.add(used)
                todo.append(used)
    return seen


def probe_header(source_dir, module):
    """The module's smallest header: one that exists, to include by name."""
    headers = [f for f in os.listdir(os.path.join(source_dir, 'src', module)) if f.endswith('.h')]
    return min(headers, key=lambda f: os.path.getsize(os.path.join(source_dir, 'src', module, f)))


def flags_of(entry):
    """The compile command without its input, output and dependency-file arguments."""
    args = shlex.split(entry['command'])
    out = []
    skip = False
    for a in args[1:]:
        if skip:
            skip = False
            continue
        if a in ('-o', '-MQ', '-MF', '-MT'):
            skip = True
            continue
        if a in ('-c', '-MD', '-MMD') or a == entry['file']:
            continue
        out.append(a)
    return args[0], tuple(out)


def main():
    build_dir, source_dir = sys.argv[1], sys.argv[2]
    with open(os.path.join(build_dir, 'compile_commands.json')) as f:
        entries = json.load(f)
    probes = {m: probe_header(source_dir, m) for m in USES}

    # Distinct flag sets per module (objects of one library share theirs).
    flag_sets = {}
    for e in entries:
        path = os.path.normpath(os.path.join(e['directory'], e['file']))
        rel = os.path.relpath(path, os.path.join(source_dir, 'src'))
        module = rel.split(os.sep)[0]
        if module in USES and path.endswith('.cpp'):
            flag_sets.setdefault(module, {}).setdefault(flags_of(e), rel)

    failures = []
    for module, sets in sorted(flag_sets.items()):
        allowed = closure(module)
        seen_union = set()
        for (compiler, flags), example in sets.items():
            for other, header in probes.items():
                include = f'{other}/{header}'
                run = subprocess.run([compiler, *flags, '-fdiagnostics-color=never', '-E', '-x', 'c++', '-',
                                      '-o', os.devnull],
                                     input=f'#include "{include}"\n', capture_output=True, text=True,
                                     cwd=build_dir)
                missing = f'{include}: No such file or directory' in run.stderr
                if run.returncode != 0 and not missing:
                    # Found, but a header it includes is not (daemon's
                    # applier library does not use the service that
                    # serve.h needs): not usable from here either.
                    if 'No such file or directory' in run.stderr:
                        continue
                    failures.append(f'{example}: #include "{include}" failed for another reason:\n{run.stderr}')
                    continue
                if not missing:
                    seen_union.add(other)
                    if other not in allowed:
                        failures.append(f'{example} (module {module}) can include {include}, '
                                        f'but {module} may use only {sorted(allowed - {module})}')
        for other in sorted(allowed - seen_union):
            failures.append(f'module {module} cannot include {other}/{probes[other]}, '
                            f'which docs/architecture.md lets it use')
        print(f'{module}: sees {", ".join(sorted(seen_union))} ({len(sets)} flag sets)')

    for f in failures:
        print('FAIL: ' + f)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
