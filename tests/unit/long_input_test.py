#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# The contract: error messages quote the caller's input at most 200
# characters long. Each case gives portslicectl a 5000-character argument (or
# a config file with a 5000-character value) and asserts the exit code it has
# for that mistake, that the input is cut to at most 200 characters in what it
# prints, and that the cut is marked with the input's length.
import os
import re
import subprocess
import sys
import tempfile

build, source = sys.argv[1], sys.argv[2]
ctl = os.path.join(build, 'src', 'ctl', 'portslicectl')
fixture = os.path.join(source, 'tests', 'fixtures', 'service.toml')
long = 'x' * 5000
failures = []


def run(name, args, code, env=None):
	result = subprocess.run([ctl] + args, capture_output=True, text=True, env=env, timeout=30)
	text = result.stdout + result.stderr
	longest = max((len(m) for m in re.findall(r'x+', text)), default=0)
	if result.returncode != code:
		failures.append(f'{name}: exit {result.returncode}, expected {code}: {text[:300]!r}')
	elif longest > 200:
		failures.append(f'{name}: quotes {longest} characters of the input: {text[:300]!r}')
	elif '(5' not in text or 'bytes)' not in text:
		failures.append(f'{name}: no mark of the cut (its length): {text[:300]!r}')
	else:
		print(f'ok: {name}: exit {code}, at most {longest} characters quoted')


# No daemon: these are refused before the bus is asked (exit 2, usage).
nobus = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS='unix:path=/nonexistent/bus')
run('owner ADDRESS:PORT (online)', ['owner', long], 2, nobus)
run('owner ADDRESS:PORT (offline)', ['owner', long, '--config', fixture], 2)
run('owner --at', ['owner', '198.51.100.1:2000', '--at', long], 2, nobus)
run('history --since', ['history', '--since', long], 2, nobus)
run('set-owner SLICE', ['set-owner', '198.51.100.1', long, 's1'], 2, nobus)
run('check --config PATH', ['check', '--config', '/tmp/' + long], 1)
run('--config PATH before the command', ['--config', '/tmp/' + long, 'plan'], 1)
run('owner --config PATH', ['owner', '198.51.100.1:2000', '--config', '/tmp/' + long], 1)
run('plan --server', ['plan', '--config', fixture, '--server', long], 1)

# Values of the config file, quoted in its diagnostics (check, check --json).
with open(fixture) as f:
	text = f.read()
with tempfile.TemporaryDirectory() as tmp:
	cases = {
		'address': text.replace('address = "198.51.100.1"', f'address = "{long}"', 1),
		'data centre': text.replace('datacenter = "lab1"', f'datacenter = "{long}"', 1),
		'unknown key': text.replace('[server]\n', f'[server]\n{long} = 1\n', 1),
		'source name': text.replace('name = "warp', f'name = "{long}', 1),
	}
	for name, body in cases.items():
		assert body != text, name
		path = os.path.join(tmp, 'long.toml')
		with open(path, 'w') as f:
			f.write(body)
		run(f'check: config {name}', ['check', '--config', path], 1)
		run(f'check --json: config {name}', ['check', '--json', '--config', path], 1)

for f in failures:
	print('FAIL: ' + f)
sys.exit(1 if failures else 0)
