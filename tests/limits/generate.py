#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Writes corpus.txt: the base fleet with one or two values changed, at and around every limit the config or the kernel has (run once; the output is kept).
import random

BASE = '''[server]
name = "s1"
uplink = "up0"

[defaults]
port_range = "1024-9215"
slice_size = 2048

[conntrack]
max = 65536
buckets = 16384
tcp_timeout_established = 3600
tcp_timeout_time_wait = 60
udp_timeout = 40
udp_timeout_stream = 150

[[datacenters]]
name = "lab1"
gateway = "192.0.2.1"

[[datacenters]]
name = "lab2"
gateway = "192.0.2.2"

[[servers]]
name = "s1"
address = "192.0.2.11"
datacenter = "lab1"

[[servers]]
name = "s2"
address = "192.0.2.12"
datacenter = "lab1"
mac = "02:00:00:00:00:12"

[[servers]]
name = "s4"
address = "192.0.2.14"
datacenter = "lab2"

[[addresses]]
address = "198.51.100.1"
datacenter = "lab1"
tags = { country = "GB" }
slices = { s1 = [0, 2], s2 = [1, 3] }

[[addresses]]
address = "198.51.100.9"
datacenter = "lab2"
tags = { country = "GB" }
slices = { s4 = [0, 1, 2, 3] }

[[addresses]]
address = "198.51.100.2"
datacenter = "lab1"
tags = { country = "FR" }
port_range = "2048-10239"
slice_size = 4096
slices = { s1 = 0, s2 = 1 }

[[sources]]
name = "warp-gb"
match = { saddr = "100.64.1.0/24", mark = 7, uid = 1000, cgroup = 5 }
want = { country = "GB" }
zone = 10
weight = 2

[[sources]]
name = "via-veth"
match = { iifname = "up1", saddr = "100.64.2.0/24" }
want = { country = "FR" }
zone = 11

[[sources]]
name = "stateless-gb"
match = { saddr = "100.64.9.0/28" }
want = { country = "GB" }
nat = "stateless"
block = 64
'''

# (site name, the text in BASE, a template with {} for the value, values)
INTS = ['0', '1', '-1', '2147483647', '2147483648', '4294967295', '4294967296', '"60"', '1.5']
TIMEOUTS = ['30', '2147483', '2147484', '8589934', '8589935', '999999999']
SITES = [
    ('tcp_timeout_established', 'tcp_timeout_established = 3600', 'tcp_timeout_established = {}', INTS + TIMEOUTS),
    ('tcp_timeout_time_wait', 'tcp_timeout_time_wait = 60', 'tcp_timeout_time_wait = {}', INTS + TIMEOUTS),
    ('udp_timeout', 'udp_timeout = 40', 'udp_timeout = {}', INTS + TIMEOUTS),
    ('udp_timeout_stream', 'udp_timeout_stream = 150', 'udp_timeout_stream = {}', INTS + TIMEOUTS),
    ('max', 'max = 65536', 'max = {}', INTS + ['262144', '268435455']),
    ('buckets', 'buckets = 16384', 'buckets = {}', INTS + ['268435455', '268435456']),
    ('zone', 'zone = 10', 'zone = {}', ['0', '1', '11', '65535', '65536', '-1', '"10"']),
    ('mark', 'mark = 7', 'mark = {}', ['0', '1', '4294967295', '4294967296', '-1', '"7"']),
    ('uid', 'uid = 1000', 'uid = {}', ['0', '1', '4294967294', '4294967295', '4294967296', '-1']),
    ('cgroup', 'cgroup = 5', 'cgroup = {}', ['0', '1', '4294967295', '4294967296', '-1']),
    ('weight', 'weight = 2', 'weight = {}', ['0', '1', '1000000', '1000001', '-1']),
    ('block', 'block = 64', 'block = {}', ['0', '1', '2', '64', '2048', '4096', '8192', '65535', '65536']),
    ('defaults slice_size', 'slice_size = 2048\n\n[conntrack]', 'slice_size = {}\n\n[conntrack]',
     ['0', '1', '512', '4096', '8192', '8193', '65535', '65536']),
    ('address slice_size', 'slice_size = 4096\n', 'slice_size = {}\n', ['0', '1', '1024', '8192', '8193', '65536']),
    ('defaults port_range', 'port_range = "1024-9215"', 'port_range = "{}"',
     ['0-65535', '1-8192', '1024-65535', '65535-65535', '1024-1023', '1024-65536', '58344-65535', 'abc', '1024',
      '01024-9215', '1024-9215-1']),
    ('address port_range', 'port_range = "2048-10239"', 'port_range = "{}"',
     ['1-4096', '2048-6143', '61440-65535', '65535-65535', '2048-2047', '2048-70000', '-2048']),
    ('iifname', 'iifname = "up1"', 'iifname = "{}"',
     ['lo', 'up2', 'x' * 14, 'x' * 15, 'x' * 16, '', '.', '..', 'a/b', 'a:b', 'a b', 'ümlaut']),
    ('uplink', 'uplink = "up0"', 'uplink = "{}"', ['up0', 'y' * 16, '', 'a b']),
    ('saddr', 'saddr = "100.64.1.0/24"', 'saddr = "{}"',
     ['100.64.1.0/0', '100.64.1.0/1', '100.64.1.0/31', '100.64.1.7/32', '100.64.1.0/33', '100.64.1.1/24',
      '300.64.1.0/24', '100.64.1.0', '100.64.1.0/-1', '0.0.0.0/0']),
    ('mac', 'mac = "02:00:00:00:00:12"', 'mac = "{}"',
     ['ff:ff:ff:ff:ff:ff', '00:00:00:00:00:00', '02:00:00:00:00', '02:00:00:00:00:12:34', '02-00-00-00-00-12',
      'zz:00:00:00:00:12', '02:00:00:00:00:1']),
    ('gateway', 'gateway = "192.0.2.2"', 'gateway = "{}"',
     ['0.0.0.0', '255.255.255.255', '192.0.2.256', '192.0.2', '192.0.2.12', '198.51.100.9']),
    ('server address', 'address = "192.0.2.12"', 'address = "{}"',
     ['0.0.0.0', '255.255.255.255', '192.0.2.11', '192.0.2.1', '1.2.3', '203.0.113.12']),
    ('shared address', 'address = "198.51.100.2"', 'address = "{}"',
     ['0.0.0.0', '255.255.255.255', '224.0.0.1', '198.51.100.1', '198.51.100.256', '203.0.113.1']),
    ('source name', 'name = "warp-gb"', 'name = "{}"',
     ['w', 'w' * 64, 'w' * 65, 'w' * 240, 'a b', 'a"b', 'a\\nb', 'via-veth', '']),
    ('server name', 'name = "s1"\nuplink', 'name = "{}"\nuplink', ['s2', 's9', '']),
    ('other server name', 'name = "s4"', 'name = "{}"',
     ['s' * 64, 's' * 65, 's' * 180, 's' * 200, 's' * 300, 'a b', 'a\\nb', '']),
    ('self name long', None, None, ['s' * 64, 's' * 65, 's' * 180, 's' * 200, 's' * 300]),
    ('datacenter name', 'name = "lab2"', 'name = "{}"', ['l' * 64, 'l' * 300, '', 'lab1']),
    ('tags', 'tags = { country = "FR" }', 'tags = {}',
     ['{ country = "FR", x = "' + 'v' * 300 + '" }', '{}', '{ country = 1 }', '"FR"']),
    ('slices', 'slices = { s1 = [0, 2], s2 = [1, 3] }', 'slices = {}',
     ['{ s1 = [0, 1, 2, 3] }', '{ s1 = 0 }', '{ s1 = 4 }', '{ s1 = -1 }', '{ s1 = [0, 0] }', '{ s1 = 0, s2 = 0 }',
      '{ s9 = 0 }', '{ s1 = 65536 }', '{}']),
    ('nat', 'nat = "stateless"', 'nat = {}', ['"conntrack"', '"stateful"', '1']),
]


def rename_self(text, name):
    return text.replace('name = "s1"', 'name = "%s"' % name).replace('s1 = ', '%s = ' % name)


def rename_s4(text, name):
    return text.replace('name = "s4"', 'name = "%s"' % name).replace('s4 = ', '"%s" = ' % name)


def mutate(text, site, value):
    name, find, template, _ = site
    if name == 'self name long':
        return rename_self(text, value)
    if name == 'other server name':
        return rename_s4(text, value)
    assert find in text, find
    return text.replace(find, template.format(value), 1)


def main():
    entries = [('base', BASE)]
    for site in SITES:
        for value in site[3]:
            entries.append(('%s = %s' % (site[0], value[:40].replace('\n', ' ')), mutate(BASE, site, value)))
    # Pairs: two sites changed at once, so that interplay (block and slice
    # size, port ranges) and the first of two errors are covered.
    rng = random.Random(10)
    for _ in range(60):
        a, b = rng.sample(SITES, 2)
        va, vb = rng.choice(a[3]), rng.choice(b[3])
        text = mutate(BASE, a, va)
        try:
            text = mutate(text, b, vb)
        except AssertionError:
            continue
        entries.append(('%s = %s; %s = %s' % (a[0], va[:40], b[0], vb[:40]), text))
    with open('corpus.txt', 'w') as out:
        out.write('# SPDX-License-Identifier: MIT\n')
        out.write('# Written by generate.py: %d configs, each after a "#### name" line.\n' % len(entries))
        for name, text in entries:
            out.write('#### %s\n%s' % (name.replace('\n', ' '), text))


main()
