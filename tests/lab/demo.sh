#!/bin/bash
# SPDX-License-Identifier: MIT
# The README's demo: three portslice servers in network namespaces, real TCP and UDP from every workload, a slice moved under traffic, a report.
#
# sudo tests/lab/demo.sh [--build-dir DIR] [--flows N] [--no-move] [--drain-seconds N] [--no-fleet] [--report FILE]
#
# Installs missing Debian packages (.ci/install-deps), builds what it runs,
# builds the lab of docs/architecture.md (tests/lab/lib/lab.sh) with a router that
# hashes return traffic over the three servers by address (as anycast/ECMP
# does: it never looks at ports), runs portsliced on every server, sends N TCP
# and N UDP flows from every workload to the internet host, then moves slice 0
# of 198.51.100.1 from s1 to s2 with `portslicectl set-owner` while more flows
# run, and prints: what each workload left with as seen by the internet host,
# how many flows succeeded, which server's XDP forwarder passed or forwarded
# the return traffic, leak-guard drops, and s1's `nft list table inet
# portslice`. The old owner drains the moved slice (portsliced --drain-seconds,
# default 60; 0 shows the move without a drain). Then fleet mode (phase 3,
# skipped with --no-fleet or when the build has no portslice-fleetd): a
# three-member etcd cluster started by the demo, portslice-fleetd beside every
# portsliced, long-lived flows on s1 and s2, s3 killed (daemons SIGKILL, uplink
# down); it prints when each of s3's slices was taken over and by whom, and
# whether any flow of s1 or s2 broke. Everything is removed at the end, also
# on error or Ctrl-C.
# Exit 0 when every check of the report holds ("RESULT: PASS").
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BUILD=$REPO/build
FLOWS=40
MOVE=1
REPORT=''
DRAIN=60
FLEET=1
while (($#)); do
	case $1 in
	--build-dir) BUILD=$(realpath -m "$2"); shift 2 ;;
	--flows) FLOWS=$2; shift 2 ;;
	--no-move) MOVE=0; shift ;;
	--drain-seconds) DRAIN=$2; shift 2 ;;
	--no-fleet) FLEET=0; shift ;;
	--report) REPORT=$(realpath -m "$2"); shift 2 ;;
	*) sed -n '3,26p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
	esac
done
[[ $FLOWS =~ ^[0-9]+$ ]] && ((FLOWS >= 1 && FLOWS <= 1000)) || { echo "demo: --flows wants 1..1000" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "demo: run as root (it builds network namespaces; nothing outside them is touched)" >&2; exit 1; }

step() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
started=$SECONDS

# --- dependencies and build ---------------------------------------------------
for tool in ip nft ethtool dbus-daemon jq bpftool meson ninja ping conntrack; do
	if ! command -v "$tool" >/dev/null; then
		step "installing Debian packages (.ci/install-deps)"
		"$REPO/.ci/install-deps"
		break
	fi
done
if [[ ! -f $BUILD/build.ninja ]]; then
	step "configuring $BUILD"
	meson setup "$BUILD" "$REPO" >/dev/null
fi
step "building portsliced, portslicectl, labtraffic"
ninja -C "$BUILD" -j2 src/daemon/portsliced src/ctl/portslicectl tests/lab/labtraffic >/dev/null
ninja -C "$BUILD" -j2 tests/lab/xdp_pass.bpf.o >/dev/null 2>&1 || true # built only with XDP support
XDP_PASS=()
[[ -f $BUILD/tests/lab/xdp_pass.bpf.o ]] && XDP_PASS=(--xdp-pass "$BUILD/tests/lab/xdp_pass.bpf.o")
PORTSLICED=$BUILD/src/daemon/portsliced
CTL=$BUILD/src/ctl/portslicectl
TRAFFIC=$BUILD/tests/lab/labtraffic
FLEETD=$BUILD/src/fleet/portslice-fleetd
if ((FLEET)); then
	ninja -C "$BUILD" -j2 src/fleet/portslice-fleetd >/dev/null 2>&1 || true # built only with D-Bus support
	if [[ ! -x $FLEETD ]] || ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
		echo "demo: no portslice-fleetd in this build or no etcd (Debian etcd-server, etcd-client): no fleet phase" >&2
		FLEET=0
	fi
fi
# Fleet mode: the lab's three etcd members (lab.sh --etcd 3) and a short lease.
FLEET_ARGS=()
ETCD_UP=()
if ((FLEET)); then
	FLEET_ARGS=(--etcd http://192.0.2.100:2379,http://192.0.2.101:2379,http://192.0.2.102:2379 --lease-seconds 2)
	ETCD_UP=(--etcd 3)
fi

# --- the lab ------------------------------------------------------------------
. "$HERE/lib/lab.sh"
LAB_PREFIX=demo
LAB_ID=$$
_lab_names
WORK=$(mktemp -d "${TMPDIR:-/tmp}/portslice-demo.XXXXXX")
trap 'exit 130' INT TERM
trap 'step "removing the lab"; lab_down || true; rm -rf "$WORK"' EXIT
SERVERS=(s1 s2 s3)
MOVED_ADDR=198.51.100.1 MOVED_SLICE=0 MOVED_FROM=s1 MOVED_TO=s2
# The workloads whose in-flight flows the move can touch: warp-gb1 on s1 (held
# ports of the slice) and warp-gb2 on s2 (starts using it).
export DEMO_MOVED_WORKLOADS="w1 w2"

for s in "${SERVERS[@]}"; do
	"$HERE/lib/fleet.sh" --server "$s" "${FLEET_ARGS[@]}" >"$WORK/$s.toml"
	"$HERE/lib/fleet.sh" --server "$s" --move "$MOVED_ADDR:$MOVED_SLICE:$MOVED_TO" >"$WORK/$s.moved.toml"
	"$CTL" check --config "$WORK/$s.toml" >/dev/null
done

# owners FILE-SUFFIX: "ADDRESS LO-HI SERVER" for every server's ports.
owners() {
	for s in "${SERVERS[@]}"; do
		"$CTL" plan --json --config "$WORK/$s$1.toml" |
			jq -r --arg s "$s" '.addresses[] | .address as $a | .my_ports[] | "\($a) \(.first)-\(.last) \($s)"'
	done
}
owners '' >"$WORK/owners.before"
owners .moved >"$WORK/owners.after"

# Workloads: wK (conntrack, 100.64.K.2) and vK (stateless, 100.64.(10+K).2,
# whose namespace keeps to the block the plan gives that inside address).
workloads=()
declare -A SERVER_OF SOURCE_OF
for k in 1 2 3; do
	block=$("$CTL" plan --json --config "$WORK/s$k.toml" |
		jq -r --arg i "100.64.$((10 + k)).2" '.sources[] | .assignments[] | select(.inside.first == $i and .inside.last == $i) | "\(.ports.first)-\(.ports.last)"')
	workloads+=(--workload "s$k:w$k:100.64.$k.0/24" --workload "s$k:v$k:100.64.$((10 + k)).0/28:1:$block")
	SERVER_OF[w$k]=s$k SOURCE_OF[w$k]=warp-gb$k
	SERVER_OF[v$k]=s$k SOURCE_OF[v$k]=corp-us$k
done
WORKLOADS=(w1 v1 w2 v2 w3 v3)
export DEMO_WORKLOADS="${WORKLOADS[*]}"
for w in "${WORKLOADS[@]}"; do export "SERVER_$w=${SERVER_OF[$w]}" "SOURCE_$w=${SOURCE_OF[$w]}"; done

step "building the lab: inet, rtr (ECMP by address over s1 s2 s3), dc bridge, 3 servers, 6 workloads"
lab_up --steer hash --inet-addrs 4 "${XDP_PASS[@]}" "${ETCD_UP[@]}" "${workloads[@]}"

# --- portsliced on every server ---------------------------------------------------
ONLINE=1
for s in "${SERVERS[@]}"; do
	cp "$WORK/$s.toml" "$LAB_DIR/$s/portslice.toml"
	# LAB_EXEC_REPLACE: the job's pid is the daemon's own, so phase 3 can kill it.
	LAB_EXEC_REPLACE=1 lab_exec "$s" "$PORTSLICED" --config "$LAB_DIR/$s/portslice.toml" --state-dir "$LAB_DIR/$s/state" \
		--drain-seconds "$DRAIN" >"$WORK/$s.portsliced.log" 2>&1 &
	echo $! >"$WORK/$s.pid"
done
step "starting portsliced on s1 s2 s3"
for s in "${SERVERS[@]}"; do
	ready=0
	for _ in $(seq 1 100); do
		if lab_exec "$s" "$CTL" status >"$WORK/$s.status" 2>&1; then
			ready=1
			break
		fi
		kill -0 "$(<"$WORK/$s.pid")" 2>/dev/null || break
		sleep 0.1
	done
	if ((!ready)); then
		# A portsliced without the D-Bus service: apply once instead (no slice move then).
		ONLINE=0
		lab_exec "$s" "$PORTSLICED" --config "$LAB_DIR/$s/portslice.toml" --apply-once \
			>>"$WORK/$s.portsliced.log" 2>&1 ||
			{ cat "$WORK/$s.portsliced.log" >&2; echo "demo: portsliced failed on $s" >&2; exit 1; }
	fi
done
((ONLINE)) || { MOVE=0; echo "demo: portsliced has no D-Bus service in this build: applied once, no slice move" >&2; }

# --- traffic ----------------------------------------------------------------------
lab_exec inet "$TRAFFIC" serve --port 7000 --seconds 110 >"$WORK/inet.log" 2>&1 &
for _ in $(seq 1 50); do grep -q listening "$WORK/inet.log" 2>/dev/null && break; sleep 0.05; done
TARGETS=203.0.113.10:7000,203.0.113.11:7000,203.0.113.12:7000,203.0.113.13:7000

step "phase 1: $FLOWS TCP + $FLOWS UDP flows from each of ${WORKLOADS[*]} to 203.0.113.10-13"
pids=()
for w in "${WORKLOADS[@]}"; do
	lab_exec "$w" "$TRAFFIC" send --to "$TARGETS" --tcp "$FLOWS" --udp "$FLOWS" --parallel 4 --timeout-ms 2000 \
		>"$WORK/$w.phase1" 2>&1 &
	pids+=($!)
done
wait "${pids[@]}" || true

if ((MOVE)); then
	step "phase 2: moving slice $MOVED_SLICE of $MOVED_ADDR from $MOVED_FROM to $MOVED_TO while flows run"
	pids=()
	for w in "${WORKLOADS[@]}"; do
		lab_exec "$w" "$TRAFFIC" send --to "$TARGETS" --tcp 40 --udp 40 --parallel 2 --gap-ms 25 --timeout-ms 2000 \
			>"$WORK/$w.phase2" 2>&1 &
		pids+=($!)
	done
	sleep 0.4
	# The server that loses the slice first (no two servers ever translate into
	# one port), the new owner last (its first flows' answers may land on any
	# server, whose forwarder must already know the new owner).
	for s in "$MOVED_FROM" s3 "$MOVED_TO"; do
		lab_exec "$s" "$CTL" set-owner "$MOVED_ADDR" "$MOVED_SLICE" "$MOVED_TO" >"$WORK/$s.setowner" 2>&1 ||
			{ cat "$WORK/$s.setowner" >&2; echo "demo: set-owner failed on $s" >&2; exit 1; }
	done
	# The old owner keeps the slice's live flows: one drain_zone element each.
	lab_exec "$MOVED_FROM" nft -j list map inet portslice drain_zone |
		jq '[.nftables[] | .map? | select(. != null) | (.elem // []) | length] | add // 0' >"$WORK/draining"
	wait "${pids[@]}" || true
fi

# --- phase 3: fleet mode ---------------------------------------------------------------
# claims SERVER: "ADDRESS/SLICE" per line, the slices the server's daemon translates into now.
claims() {
	lab_exec "$1" busctl --system --json=short --timeout=2 call org.portslice.Egress1 /org/portslice/Egress1 \
		org.portslice.Egress1 Plan 2>/dev/null |
		jq -r '.data[0] | fromjson | .addresses[] | .address as $a | .my_slices[] | "\($a)/\(.)"'
}
now() { echo "$EPOCHREALTIME"; }
FLEET_PREFIX=/portslice/lab1
DEAD=s3
FLEET_HOLDERS=(w1 v1 w2 v2)
if ((FLEET && ONLINE)); then
	step "phase 3: fleet mode: etcd (3 members), portslice-fleetd on s1 s2 s3; long-lived flows on s1 and s2; $DEAD is killed"
	if ((MOVE)); then
		# Phase 2's local move, written for the whole fleet: fleet mode keeps it.
		lab_exec s1 etcdctl --endpoints http://192.0.2.100:2379 put "$FLEET_PREFIX/owners/$MOVED_ADDR/$MOVED_SLICE" \
			"{\"owner\": \"$MOVED_TO\", \"previous\": \"\", \"until\": 0}" >/dev/null
	fi
	for s in "${SERVERS[@]}"; do
		LAB_EXEC_REPLACE=1 lab_exec "$s" "$FLEETD" --config "$LAB_DIR/$s/portslice.toml" --status-file "$LAB_DIR/$s/fleetd.json" \
			--drain-seconds 5 >"$WORK/$s.fleetd.log" 2>&1 &
		echo $! >"$WORK/$s.fleetd.pid"
	done
	live=''
	for _ in $(seq 1 100); do
		live=$(lab_exec s1 etcdctl --endpoints http://192.0.2.100:2379 get --print-value-only "$FLEET_PREFIX/live" 2>/dev/null |
			jq -r '.servers | join(" ")' 2>/dev/null) || true
		[[ $live == "s1 s2 s3" ]] && break
		sleep 0.2
	done
	echo "$live" >"$WORK/fleet.live"
	claims "$DEAD" >"$WORK/fleet.dead.slices"
	lab_exec inet python3 "$HERE/lib/hold.py" serve --port 7300 --seconds 90 >"$WORK/inet.hold.log" 2>&1 &
	sleep 0.3
	pids=()
	for w in "${FLEET_HOLDERS[@]}"; do
		lab_exec "$w" python3 "$HERE/lib/hold.py" hold --to "${TARGETS//7000/7300}" --tcp 4 --udp 4 \
			--interval-ms 200 --timeout-ms 4000 --seconds 60 --stop "$WORK/hold.stop" >"$WORK/$w.hold" 2>&1 &
		pids+=($!)
	done
	for w in "${FLEET_HOLDERS[@]}"; do
		for _ in $(seq 1 50); do grep -q '^ready' "$WORK/$w.hold" 2>/dev/null && break; sleep 0.1; done
	done
	sleep 0.5
	# The kill: daemons first (a dead server claims nothing), then its uplink; the router withdraws it.
	CUT=$(now)
	kill -KILL "$(<"$WORK/$DEAD.fleetd.pid")" "$(<"$WORK/$DEAD.pid")" 2>/dev/null || true
	lab_exec "$DEAD" ip link set eth0 down
	lab_steer hash:s1,s2
	# Poll the survivors' claims until they hold every slice of the dead server.
	: >"$WORK/fleet.taken"
	declare -A TAKEN_AT=() TAKEN_BY=()
	deadline=$((SECONDS + 15))
	while ((SECONDS < deadline)) && ((${#TAKEN_AT[@]} < $(wc -l <"$WORK/fleet.dead.slices"))); do
		for s in s1 s2; do
			t=$(now)
			while read -r slice; do
				if grep -qx "$slice" "$WORK/fleet.dead.slices" && [[ -z ${TAKEN_AT[$slice]:-} ]]; then
					TAKEN_AT[$slice]=$(awk -v a="$t" -v b="$CUT" 'BEGIN { printf "%.2f", a - b }')
					TAKEN_BY[$slice]=$s
				fi
			done < <(claims "$s")
		done
		sleep 0.1
	done
	for slice in $(sort "$WORK/fleet.dead.slices"); do
		echo "$slice ${TAKEN_BY[$slice]:--} ${TAKEN_AT[$slice]:--}" >>"$WORK/fleet.taken"
	done
	# New flows of the survivors' workloads, after the takeover.
	for w in w1 w2; do
		lab_exec "$w" "$TRAFFIC" send --to "$TARGETS" --tcp 20 --udp 20 --parallel 4 --timeout-ms 2000 \
			--from "100.64.${w#w}.2" >"$WORK/$w.phase3" 2>&1 || true
	done
	touch "$WORK/hold.stop"
	wait "${pids[@]}" || true
fi

# --- counters -------------------------------------------------------------------------
# guard_drops SERVER: packets dropped by the leak guard (all guard_* counters).
guard_drops() {
	lab_exec "$1" nft -j list counters table inet portslice |
		jq '[.nftables[] | .counter? | select(. != null) | select(.name | startswith("guard_")) | .packets] | add // 0'
}

# xdp_verdicts SERVER: "pass_own forward decap second_hop" packets, summed over CPUs, from the
# forwarder's pinned per-verdict counters (enum fwd_verdict: 1 pass own, 2 forward, 5 decap,
# 3 second hop: the new owner has no state for the flow and sends it on to the draining old owner).
xdp_verdicts() {
	local map
	map=$(lab_exec "$1" sh -c 'ls -d /sys/fs/bpf/portslice/*counters* 2>/dev/null | head -1')
	[[ -n $map ]] || { echo "- - - -"; return; }
	lab_exec "$1" bpftool -j map dump pinned "$map" | jq -r '
		[.[] | (.formatted // .) | {key: (.key | tostring | tonumber? // 0),
			packets: ([.values[] | .value.packets // 0] | add)}] as $v
		| def n(k): ([$v[] | select(.key == k) | .packets] | add // 0);
		"\(n(1)) \(n(2)) \(n(5)) \(n(3))"'
}

# --- report ---------------------------------------------------------------------------
step "collecting"
: >"$WORK/flows"
for w in "${WORKLOADS[@]}"; do
	for phase in 1 2; do
		[[ -f $WORK/$w.phase$phase ]] || continue
		grep -v '^summary' "$WORK/$w.phase$phase" | sed "s/^/$w ${SERVER_OF[$w]} $phase /" >>"$WORK/flows"
	done
done
declare -A GUARD XDP
for s in "${SERVERS[@]}"; do
	GUARD[$s]=$(guard_drops "$s")
	XDP[$s]=$(xdp_verdicts "$s")
done
lab_exec s1 nft list table inet portslice >"$WORK/s1.nft"

{
	echo "portslice lab demo: 3 servers, router hashing 198.51.100.0/24 over them by address (ports unseen)"
	echo
	echo "phase 1: each workload to 203.0.113.10-13:7000, as seen by the internet host"
	printf '%-8s %-6s %-9s %-9s %-13s %-12s %-13s %-7s %-7s\n' workload server source NAT "shared addr" "ports seen" "in own slices" "TCP ok" "UDP ok"
	# awk: owners tables (before, after the move), then the flow lines
	# "WORKLOAD SERVER PHASE PROTO OUTCOME [ADDR:PORT]".
	awk -v want_flows="$FLOWS" '
		FILENAME == ARGV[1] || FILENAME == ARGV[2] {
			split($2, r, "-"); n++; oa[n] = $1; lo[n] = r[1]; hi[n] = r[2]; os[n] = $3
			ow[n] = (FILENAME == ARGV[1]) ? "before" : "after"; next
		}
		function owned(addr, port, server, phase,   i) {
			for (i = 1; i <= n; i++)
				if (oa[i] == addr && os[i] == server && port >= lo[i] && port <= hi[i] &&
				    (ow[i] == "before" || phase == 2))
					return 1
			return 0
		}
		$3 == 1 {
			w = $1; srv[w] = $2; tot[w, $4]++
			if ($5 == "ok") {
				ok[w, $4]++; split($6, ap, ":"); port = ap[2] + 0
				addrs[w] = (index(addrs[w], ap[1]) ? addrs[w] : addrs[w] (addrs[w] ? "," : "") ap[1])
				if (!(w in minp) || port < minp[w]) minp[w] = port
				if (!(w in maxp) || port > maxp[w]) maxp[w] = port
				if (owned(ap[1], port, $2, 1)) inside[w]++; else outside[w]++
			}
		}
		$3 == 2 {
			t2++
			if ($5 == "ok") {
				split($6, ap, ":"); if (owned(ap[1], ap[2] + 0, $2, 2)) ok2++; else wrong2++
				split(ap[1], oct, "."); key = "." oct[4] " slice " int((ap[2] - 10000) / 1000)
				if (!((w2key = $1 SUBSEP key) in used)) keys[$1] = keys[$1] (keys[$1] ? SUBSEP : "") key
				used[w2key]++
			}
			else if ($5 == "refused") ref2++
			else if ($5 == "timeout") { to2++; tow[$1 " " $4]++; if (index(" " ENVIRON["DEMO_MOVED_WORKLOADS"] " ", " " $1 " ") == 0) elsewhere2++ }
			else err2++
		}
		END {
			nw = split(ENVIRON["DEMO_WORKLOADS"], order, " ")
			for (i = 1; i <= nw; i++) {
				w = order[i]
				printf "%-8s %-6s %-9s %-9s %-13s %-12s %-13s %-7s %-7s\n", w, ENVIRON["SERVER_" w], ENVIRON["SOURCE_" w],
					(substr(w, 1, 1) == "v" ? "stateless" : "conntrack"), addrs[w] ? addrs[w] : "-",
					(w in minp) ? minp[w] "-" maxp[w] : "-", (outside[w] ? "NO (" outside[w] " outside)" : (inside[w] ? "yes" : "-")),
					ok[w, "tcp"] + 0 "/" tot[w, "tcp"] + 0, ok[w, "udp"] + 0 "/" tot[w, "udp"] + 0
				all += tot[w, "tcp"] + tot[w, "udp"]; good += ok[w, "tcp"] + ok[w, "udp"]; bad += outside[w]
			}
			printf "check: phase 1 flows completed: %d/%d\n", good, all
			printf "check: phase 1 ports outside their server'"'"'s slices: %d\n", bad
			if (t2) {
				print "\nphase 2: the same while the slice moves; answered flows per shared address (.1, .2) and slice"
				for (i = 1; i <= nw; i++) {
					w = order[i]; line = ""
					nk = split(keys[w], ks, SUBSEP)
					for (k = 1; k <= nk; k++) line = line sprintf("  %s: %d", ks[k], used[w SUBSEP ks[k]])
					printf "%-8s %-6s%s\n", w, ENVIRON["SERVER_" w], line
				}
				printf "check: flows during the slice move: %d: completed %d, cleanly refused %d, timed out %d, errors %d, answered outside their server'"'"'s slices %d\n", t2, ok2, ref2 + 0, to2 + 0, err2 + 0, wrong2 + 0
				line = ""
				for (w in tow) line = line " " w " " tow[w]
				printf "check: timed out during the move, by workload:%s\n", line ? line : " none"
				printf "check: timed out during the move outside the moved slice'"'"'s workloads (%s): %d\n", ENVIRON["DEMO_MOVED_WORKLOADS"], elsewhere2 + 0
			}
			# The old owner drains the moved slice (set-owner names it previous):
			# flows in flight on it complete, none may time out.
			ok_all = (all == 6 * 2 * want_flows && good == all && bad == 0 && err2 + wrong2 + elsewhere2 == 0 &&
				  to2 == 0 && (!t2 || ok2 > 0))
			print (ok_all ? "flows: PASS" : "flows: FAIL")
		}' "$WORK/owners.before" "$WORK/owners.after" "$WORK/flows"
	if ((MOVE)); then
		echo
		echo "slice move: $MOVED_ADDR slice $MOVED_SLICE (ports $((10000 + MOVED_SLICE * 1000))-$((10999 + MOVED_SLICE * 1000))) $MOVED_FROM -> $MOVED_TO with portslicectl set-owner on $MOVED_FROM, s3, $MOVED_TO (in that order) during phase 2"
		for s in "${SERVERS[@]}"; do printf '  %s: %s\n' "$s" "$(tr '\n' ' ' <"$WORK/$s.setowner")"; done
		echo "  $MOVED_FROM drains the slice: $(<"$WORK/draining") flows in flight kept (drain_zone elements right after the move)"
	fi
	echo
	echo "return traffic at each server's XDP forwarder (packets): passed (own slice) / forwarded to the owner / received from a peer / second hop to a draining old owner"
	fwd_total=0
	for s in "${SERVERS[@]}"; do
		read -r own fwd decap second <<<"${XDP[$s]}"
		printf '  %s: passed %s, forwarded %s, received %s, second hop %s\n' "$s" "$own" "$fwd" "$decap" "$second"
		[[ $fwd =~ ^[0-9]+$ ]] && fwd_total=$((fwd_total + fwd))
	done
	echo "check: return packets forwarded between servers: $fwd_total"
	if ((FLEET && ONLINE)); then
		echo
		echo "phase 3, fleet mode: etcd cluster of 3 (192.0.2.100-102), portslice-fleetd beside each portsliced, lease 2 s; live before: [$(<"$WORK/fleet.live")]"
		echo "  $DEAD killed (portsliced and portslice-fleetd SIGKILL, uplink down, router withdraws it) at +0.00 s; its slices:"
		taken=0 total=0 late=0
		while read -r slice by at; do
			total=$((total + 1))
			lo=$((10000 + ${slice#*/} * 1000))
			if [[ $by == - ]]; then
				echo "  ${slice%/*} slice ${slice#*/} (ports $lo-$((lo + 999))): NOT taken over within 15 s"
			else
				taken=$((taken + 1))
				awk -v t="$at" 'BEGIN { exit !(t <= 3.0) }' || late=$((late + 1))
				echo "  ${slice%/*} slice ${slice#*/} (ports $lo-$((lo + 999))): taken over by $by at +$at s"
			fi
		done <"$WORK/fleet.taken"
		echo "check: fleet slices of $DEAD taken over: $taken/$total, later than lease + 1 s (3.0 s): $late"
		ok3=0 all3=0 inherited=0
		for w in w1 w2; do
			while read -r proto outcome seen; do
				[[ $proto == summary ]] && continue
				all3=$((all3 + 1))
				[[ $outcome == ok ]] || continue
				ok3=$((ok3 + 1))
				port=${seen#*:} addr=${seen%:*}
				grep -qx "$addr/$(((port - 10000) / 1000))" "$WORK/fleet.dead.slices" && inherited=$((inherited + 1))
			done <"$WORK/$w.phase3"
		done
		echo "check: fleet new flows of w1 w2 after the takeover: $ok3/$all3 completed, $inherited in $DEAD's former slices"
		held=0 broke=0
		for w in "${FLEET_HOLDERS[@]}"; do
			line=$(grep '^summary' "$WORK/$w.hold" || echo "summary held 0 broken 8")
			read -r _ _ h _ b _ <<<"$line"
			held=$((held + h)) broke=$((broke + b))
			grep '^broken' "$WORK/$w.hold" | sed "s/^/  $w: /" || true
		done
		echo "check: fleet long-lived flows of s1 and s2 (${FLEET_HOLDERS[*]}) broken: $broke of $((held + broke))"
	fi
	echo
	guard_total=0
	for s in "${SERVERS[@]}"; do guard_total=$((guard_total + ${GUARD[$s]:-0})); done
	echo "check: leak-guard drops: $guard_total (s1 ${GUARD[s1]}, s2 ${GUARD[s2]}, s3 ${GUARD[s3]})"
	echo
	echo "nft list table inet portslice on s1:"
	sed 's/^/  /' "$WORK/s1.nft"
	echo
	echo "elapsed: $((SECONDS - started)) s"
} >"$WORK/report"

pass=1
grep -q '^flows: PASS$' "$WORK/report" || pass=0
grep -q '^check: leak-guard drops: 0 ' "$WORK/report" || pass=0
grep -q '^check: return packets forwarded between servers: [1-9]' "$WORK/report" || pass=0
if ((FLEET && ONLINE)); then
	grep -Eq '^check: fleet slices of s3 taken over: ([0-9]+)/\1, later than lease \+ 1 s \(3.0 s\): 0$' "$WORK/report" || pass=0
	grep -Eq '^check: fleet new flows of w1 w2 after the takeover: ([0-9]+)/\1 completed' "$WORK/report" || pass=0
	grep -Eq '^check: fleet long-lived flows of s1 and s2 \(.*\) broken: 0 of [1-9]' "$WORK/report" || pass=0
fi
if ((pass)); then echo "RESULT: PASS" >>"$WORK/report"; else echo "RESULT: FAIL" >>"$WORK/report"; fi
cat "$WORK/report"
[[ -n $REPORT ]] && cp "$WORK/report" "$REPORT"
((pass))
