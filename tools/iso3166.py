#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Derives data/iso3166.txt (country codes, names, subdivision codes) from Debian's iso-codes JSON files.
import json
import subprocess
import sys
from collections import defaultdict

base = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/iso-codes/json"
version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "iso-codes"], capture_output=True, text=True).stdout
countries = json.load(open(base + "/iso_3166-1.json"))["3166-1"]
subdivisions = json.load(open(base + "/iso_3166-2.json"))["3166-2"]
by_country = defaultdict(list)
for s in subdivisions:
    by_country[s["code"].split("-")[0]].append(s["code"])
print("# ISO 3166-1 alpha-2 codes with their names, and the ISO 3166-2 subdivision codes of each country.")
print("# Source: Debian package iso-codes %s (%s/iso_3166-1.json, iso_3166-2.json)," % (version, base))
print("# which follows the ISO 3166 Maintenance Agency's lists. Generated 2026-11-29 by tools/iso3166.py.")
print("# One country a line: CODE<TAB>NAME<TAB>SUBDIVISION SUBDIVISION ...")
for c in sorted(countries, key=lambda c: c["alpha_2"]):
    code = c["alpha_2"]
    print("%s\t%s\t%s" % (code, c["name"], " ".join(sorted(by_country.get(code, [])))))
