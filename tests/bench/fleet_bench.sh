#!/bin/bash
# SPDX-License-Identifier: MIT
# Fleet-mode scale benchmark (docs/performance.md, "Fleet mode at scale"): the generated fleet at N addresses, one etcd member, real daemons applying a dead member's share and a set-owner --fleet.
#
# sudo tests/bench/fleet_bench.sh [--build-dir DIR] [--addresses N] [--daemons K] [--members M] [--rounds R]
#
# The generated fleet of docs/performance.md (31 servers s1..s31, N shared addresses
# of 198.18.0.0/15 with one 2048-port slice each per server, N stateless /28
# sources) with a [fleet] section (lease_seconds 2; return_home_seconds 1, so
# members that start after the first `live` enter it at once). In the namespace lab
# (tests/lab/lib/lab.sh, prefix pslb): one etcd member (etcd1, 192.0.2.100),
# servers s1..sK each running portsliced (the whole table, nft + XDP) and
# portslice-fleetd on its own bus, and portslice-fleetd for the other members
# s(K+1)..sM as etcd members only (they hold a lease and take part in the
# election; they have no daemon to apply to). Defaults: N 10000, K 3, M 31.
#
# Each round kills (SIGKILL) the fleetd of one daemon-less member that is not
# the leader: its one slice of each of the N addresses goes to the survivors
# by rendezvous hashing. It prints, from etcd's deletion of the member key
# (lease expiry) to every real daemon having applied the new `live` (its
# fleetd's status file names the revision applied, written after
# SetSliceOwners returned), and from the kill. Then R moves with
# `portslicectl set-owner ADDRESS SLICE SERVER --fleet` (or `etcdctl put` of the
# owner key when portslicectl has no --fleet), timed from the command's start
# until every real daemon has applied it. Medians over R rounds; targets
# lease + 1 s (3 s) and 1 s. The member key and the status files are polled
# (each etcd poll is an etcdctl run, 20-60 ms here): that is the grain of the
# figures. Everything is removed at the end.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BUILD=$REPO/build
N=10000 K=3 M=31 ROUNDS=3
while (($#)); do
	case $1 in
	--build-dir) BUILD=$(realpath -m "$2"); shift 2 ;;
	--addresses) N=$2; shift 2 ;;
	--daemons) K=$2; shift 2 ;;
	--members) M=$2; shift 2 ;;
	--rounds) ROUNDS=$2; shift 2 ;;
	*) sed -n '3,29p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
	esac
done
[[ $(id -u) == 0 ]] || { echo "fleet_bench: run as root (network namespaces)" >&2; exit 1; }
[[ $N =~ ^[0-9]+$ ]] && ((N >= 1 && N <= 100000)) || { echo "fleet_bench: --addresses wants 1..100000" >&2; exit 2; }
[[ $K =~ ^[1-9]$ ]] || { echo "fleet_bench: --daemons wants 1..9 (lab servers)" >&2; exit 2; }
[[ $M =~ ^[0-9]+$ ]] && ((M >= K + ROUNDS + 1 && M <= 31)) || { echo "fleet_bench: --members wants $((K + ROUNDS + 1))..31" >&2; exit 2; }

PORTSLICED=$BUILD/src/daemon/portsliced
CTL=$BUILD/src/ctl/portslicectl
FLEETD=$BUILD/src/fleet/portslice-fleetd
for b in "$PORTSLICED" "$CTL" "$FLEETD"; do
	[[ -x $b ]] || { echo "fleet_bench: $b is not built" >&2; exit 1; }
done
PREFIX=/portslice/bench
EP=http://192.0.2.100:2379

. "$REPO/tests/lab/lib/lab.sh"
LAB_PREFIX=pslb
LAB_ID=$$
_lab_names
WORK=$(mktemp -d "${TMPDIR:-/tmp}/portslice-fleet-bench.XXXXXX")
trap 'exit 130' INT TERM
trap 'lab_down >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

# gen SERVER: the generated fleet as SERVER sees it, with its [fleet] section.
gen() {
	awk -v n="$N" -v me="$1" -v ep="$EP" -v prefix="$PREFIX" 'BEGIN {
		printf "[server]\nname = \"%s\"\nuplink = \"eth0\"\n\n[defaults]\nport_range = \"1024-65535\"\nslice_size = 2048\n\n", me
		printf "[fleet]\netcd = [\"%s\"]\nprefix = \"%s\"\nlease_seconds = 2\nreturn_home_seconds = 1\n\n", ep, prefix
		printf "[[datacenters]]\nname = \"dc1\"\ngateway = \"192.0.2.1\"\n\n"
		for (s = 1; s <= 31; s++)
			printf "[[servers]]\nname = \"s%d\"\naddress = \"192.0.2.%d\"\ndatacenter = \"dc1\"\n\n", s, 10 + s
		slices = "{ "
		for (s = 1; s <= 31; s++) slices = slices (s > 1 ? ", " : "") "s" s " = " (s - 1)
		slices = slices " }"
		for (i = 0; i < n; i++)
			printf "[[addresses]]\naddress = \"198.%d.%d.%d\"\ndatacenter = \"dc1\"\ntags = { id = \"a%d\" }\nslices = %s\n\n",
				18 + int(i / 65536), int(i / 256) % 256, i % 256, i, slices
		for (i = 0; i < n; i++) {
			v = i * 16
			printf "[[sources]]\nname = \"src%d\"\nmatch = { saddr = \"100.%d.%d.%d/28\" }\nwant = { id = \"a%d\" }\nnat = \"stateless\"\nblock = 128\n\n",
				i, 64 + int(v / 65536), int(v / 256) % 256, v % 256, i
		}
	}'
}

echo "fleet_bench: N=$N addresses, $M members (s1..s$K with portsliced), 1 etcd member, lease 2 s" >&2
lab_up --servers "$K" --etcd 1 >/dev/null
for ((s = 1; s <= M; s++)); do gen "s$s" >"$WORK/s$s.toml"; done
"$CTL" check --config "$WORK/s1.toml" >/dev/null

# The real servers: portsliced with the whole table, then fleetd on the same bus.
for ((s = 1; s <= K; s++)); do
	cp "$WORK/s$s.toml" "$LAB_DIR/s$s/portslice.toml"
	t0=$EPOCHREALTIME
	lab_exec "s$s" "$PORTSLICED" --config "$LAB_DIR/s$s/portslice.toml" --state-dir "$LAB_DIR/s$s/state" \
		>"$WORK/s$s.portsliced.log" 2>&1 &
	for _ in $(seq 1 1200); do
		lab_exec "s$s" "$CTL" status >/dev/null 2>&1 && break
		sleep 0.1
	done
	lab_exec "s$s" "$CTL" status >/dev/null || { tail "$WORK/s$s.portsliced.log" >&2; exit 1; }
	echo "fleet_bench: s$s portsliced applied in $(awk -v a="$EPOCHREALTIME" -v b="$t0" 'BEGIN { printf "%.1f", a - b }') s" >&2
done
declare -A FLEETD_PID
for ((s = 1; s <= M; s++)); do
	if ((s <= K)); then
		LAB_EXEC_REPLACE=1 lab_exec "s$s" "$FLEETD" --config "$LAB_DIR/s$s/portslice.toml" --status-file "$WORK/s$s.status" \
			--drain-seconds 0 >"$WORK/s$s.fleetd.log" 2>&1 &
	else
		# A member without a daemon: in s1's namespace, on a bus that is not there.
		LAB_EXEC_REPLACE=1 lab_exec s1 env DBUS_SYSTEM_BUS_ADDRESS="unix:path=$WORK/no-bus" "$FLEETD" --config "$WORK/s$s.toml" \
			--status-file "$WORK/s$s.status" >"$WORK/s$s.fleetd.log" 2>&1 &
	fi
	FLEETD_PID[s$s]=$!
done

ectl() { lab_exec s1 etcdctl --endpoints "$EP" --command-timeout 5s "$@"; }
live_count() {
	local n
	n=$(ectl get --print-value-only "$PREFIX/live" 2>/dev/null | jq '.servers | length' 2>/dev/null) || true
	echo "${n:-0}"
}
live_rev() { ectl get "$PREFIX/live" -w json | jq '.kvs[0].mod_revision'; }
applied() { jq -r '.applied_revision // 0' "$WORK/$1.status" 2>/dev/null || echo 0; }

# wait_applied REV: prints the moment (EPOCHREALTIME) the last real daemon had applied REV.
wait_applied() {
	local rev=$1 s done=() last=0 deadline=$((SECONDS + 60))
	while ((SECONDS < deadline)); do
		local all=1
		for ((s = 1; s <= K; s++)); do
			[[ -n ${done[s]:-} ]] && continue
			if (($(applied "s$s") >= rev)); then done[s]=$EPOCHREALTIME; last=${done[s]}; else all=0; fi
		done
		((all)) && { echo "$last"; return 0; }
		sleep 0.02
	done
	echo "fleet_bench: daemons did not apply revision $rev within 60 s" >&2
	return 1
}

for _ in $(seq 1 600); do (($(live_count) == M)) && break; sleep 0.2; done
(($(live_count) == M)) || { echo "fleet_bench: live never held all $M members" >&2; tail -n 5 "$WORK"/s1.fleetd.log >&2; exit 1; }
wait_applied "$(live_rev)" >/dev/null
echo "fleet_bench: live holds all $M members; every daemon applied it" >&2

sec() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
: >"$WORK/failover" >"$WORK/fromkill" >"$WORK/setowner"
victim=$M
for ((r = 1; r <= ROUNDS; r++)); do
	leader=$(ectl get --print-value-only "$PREFIX/leader")
	[[ s$victim == "$leader" ]] && victim=$((victim - 1))
	before=$(live_rev)
	tkill=$EPOCHREALTIME
	kill -KILL "${FLEETD_PID[s$victim]}"
	# The lease expires: etcd deletes the member key (polled).
	texpire=''
	for _ in $(seq 1 500); do
		if [[ $(ectl get "$PREFIX/members/s$victim" -w json | jq '.count // 0') == 0 ]]; then
			texpire=$EPOCHREALTIME
			break
		fi
	done
	[[ -n $texpire ]] || { echo "fleet_bench: the key of s$victim never expired" >&2; exit 1; }
	# The leader writes the new live.
	for _ in $(seq 1 500); do (($(live_rev) > before)) && break; sleep 0.02; done
	rev=$(live_rev)
	tapplied=$(wait_applied "$rev")
	echo "$(sec "$tapplied" "$texpire")" >>"$WORK/failover"
	echo "$(sec "$tapplied" "$tkill")" >>"$WORK/fromkill"
	echo "round $r: s$victim killed; lease expired $(sec "$texpire" "$tkill") s later; every daemon applied live (revision $rev) $(sec "$tapplied" "$texpire") s after the expiry, $(sec "$tapplied" "$tkill") s after the kill"
	victim=$((victim - 1))

	# set-owner --fleet: slice 0 of an address (s1's) to s2.
	addr="198.18.$((r / 256)).$((r % 256))"
	before=$(ectl get "$PREFIX" --prefix --keys-only -w json | jq '.header.revision')
	t0=$EPOCHREALTIME
	if "$CTL" set-owner --help 2>&1 | grep -q -- --fleet; then
		lab_exec s1 "$CTL" set-owner "$addr" 0 s2 --fleet --config "$LAB_DIR/s1/portslice.toml" >/dev/null
	else
		ectl put "$PREFIX/owners/$addr/0" '{"owner": "s2", "previous": "s1", "until": 0}' >/dev/null
	fi
	rev=$(ectl get "$PREFIX/owners/$addr/0" -w json | jq '.kvs[0].mod_revision')
	((rev > before)) || { echo "fleet_bench: the owner key was not written" >&2; exit 1; }
	tapplied=$(wait_applied "$rev")
	echo "$(sec "$tapplied" "$t0")" >>"$WORK/setowner"
	echo "round $r: set-owner $addr 0 s2 --fleet applied on every daemon $(sec "$tapplied" "$t0") s after the command started"
done
echo "summary: N=$N, $M members, $K real daemons, $ROUNDS rounds: failover (lease expiry -> all applied) median $(median <"$WORK/failover") s, from the kill median $(median <"$WORK/fromkill") s (target lease + 1 = 3 s); set-owner --fleet median $(median <"$WORK/setowner") s (target 1 s)"
for ((s = 1; s <= K; s++)); do
	grep -h 'slice(s) moved' "$WORK/s$s.fleetd.log" | tail -n 2 | sed "s/^/  s$s fleetd: /"
done
