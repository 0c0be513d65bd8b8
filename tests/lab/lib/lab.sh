#!/bin/bash
# SPDX-License-Identifier: MIT
# The namespace lab of DESIGN.md "Lab": builds inet, router, DC bridge, servers, workloads and a private bus per server, and removes exactly that.
#
# As a command:  lab.sh up   --prefix P --id ID [options]   (removes what it made if it fails)
#                lab.sh down --prefix P --id ID
#                lab.sh exec --prefix P --id ID NODE CMD...  (on a server: its own bus and bpffs, see lab_exec)
#                lab.sh steer --prefix P --id ID MODE        (s2 | hash | hash:s1,s2)
#                lab.sh env  --prefix P --id ID               (the lab's facts, KEY=VALUE)
#                lab.sh gc   --prefix P                       (remove labs of P whose owner process is gone)
# As a library:  . lab.sh; LAB_PREFIX=P LAB_ID=ID; lab_up [options]; lab_exec s1 ...; lab_down
#
# up options:
#   --servers N            servers s1..sN at 192.0.2.(10+N), MAC 02:00:00:00:00:(10+N) (default 3, at most 9)
#   --workload S:NAME:PREFIX[:HOSTS[:LO-HI]]
#                          a workload namespace NAME behind server S (repeatable; replaces the default
#                          of one workload wN with 100.64.N.0/24 per server). NAME is also the server's
#                          interface towards it. HOSTS inside addresses from the prefix's second host on;
#                          LO-HI its ip_local_port_range.
#   --steer MODE           how the router picks a server for 198.51.100.0/24: sN (all to one server),
#                          hash (ECMP over all servers, L3 hash of source and destination addresses),
#                          hash:s1,s2 (over those). Default s1.
#   --inet-addrs N         the internet host gets 203.0.113.10 .. 203.0.113.(9+N) (default 4), so a
#                          hashing router spreads flows by source address
#   --bus-policy FILE      bus policy included in every server's private bus (default: the repository's
#                          dbus/org.portslice.Egress1.conf when it exists)
#   --no-bus               no private buses
#   --dc-mtu N             MTU of the DC fabric (default 1600: the forwarder's IPIP adds 20 bytes)
#   --xdp-pass OBJ         attach this XDP program (section "xdp", e.g. the build's
#                          tests/lab/xdp_pass.bpf.o) to the bridge's server ports: veth flushes
#                          XDP_TX frames to a peer at once only when the peer runs XDP
#   --owner PID            the process that owns the lab, for gc (default: the caller)
#
# Nodes and names: namespace "P-ID-NODE" for NODE in inet, rtr, dc, s1..sN and every workload.
# Interfaces: inet eth0 203.0.113.10/24 | rtr eth0 203.0.113.1/24, rtr eth1 192.0.2.1/24 (MAC
# 02:00:00:00:00:01) | dc br0 with ports rtr, s1..sN | sN eth0 192.0.2.(10+N)/24, NAME per workload
# | workload eth0. Files: $TMPDIR/P-ID/ (lab.env, netns, pids, and per server bus/, state/, bpf/).
# Lab-only settings: GRO (and with --xdp-pass a pass program) on the DC ports so XDP_TX on a
# server's veth reaches the bridge, MTU 1600 on the DC fabric, and TX checksum offload off on every
# veth so packets carry full checksums when XDP rewrites them.

LAB_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_REPO=$(cd "$LAB_LIB/../../.." && pwd)
LAB_SHARED=198.51.100.0/24

_lab_err() { echo "lab: $*" >&2; }

_lab_names() {
	[[ -n ${LAB_PREFIX:-} && -n ${LAB_ID:-} ]] || { _lab_err "LAB_PREFIX and LAB_ID must be set"; return 1; }
	[[ $LAB_PREFIX =~ ^[a-z][a-z0-9]{0,11}$ ]] || { _lab_err "prefix '$LAB_PREFIX': lower-case letters and digits, at most 12"; return 1; }
	[[ $LAB_ID =~ ^[A-Za-z0-9]{1,20}$ ]] || { _lab_err "id '$LAB_ID': letters and digits, at most 20"; return 1; }
	LAB_NAME="$LAB_PREFIX-$LAB_ID"
	LAB_DIR="${TMPDIR:-/tmp}/$LAB_NAME"
}

# lab_ns NODE: the network namespace of a node.
lab_ns() { echo "$LAB_NAME-$1"; }

_lab_netns_add() {
	local ns
	ns=$(lab_ns "$1")
	# Recorded before it exists, so a failure right after still removes it.
	echo "$ns" >>"$LAB_DIR/netns"
	ip netns add "$ns"
}

# _lab_link NODE_A IF_A NODE_B IF_B [MAC_A]: a veth pair made directly inside the two namespaces.
_lab_link() {
	local mac=()
	[[ -n ${5:-} ]] && mac=(address "$5")
	ip -n "$(lab_ns "$1")" link add "$2" "${mac[@]}" type veth peer name "$4" netns "$(lab_ns "$3")"
	_lab_offload "$1" "$2"
	_lab_offload "$3" "$4"
}

_lab_offload() {
	ip netns exec "$(lab_ns "$1")" ethtool -K "$2" tx off >/dev/null 2>&1 ||
		{ _lab_err "ethtool -K $2 tx off failed in $1 (is ethtool installed?)"; return 1; }
}

_lab_role() {
	local node=$1 role=$2
	shift 2
	ip netns exec "$(lab_ns "$node")" "$LAB_LIB/$role.sh" "$@"
}

# _lab_hops MODE: the server addresses the router steers to.
_lab_hops() {
	local mode=$1 list=() s
	case $mode in
	hash) for ((s = 1; s <= LAB_SERVERS; s++)); do list+=("192.0.2.$((10 + s))"); done ;;
	hash:*)
		local IFS=,
		for s in ${mode#hash:}; do
			[[ $s =~ ^s([1-9])$ ]] && ((BASH_REMATCH[1] <= LAB_SERVERS)) || { _lab_err "steer: unknown server $s"; return 1; }
			list+=("192.0.2.$((10 + BASH_REMATCH[1]))")
		done
		;;
	s[1-9])
		((${mode#s} <= LAB_SERVERS)) || { _lab_err "steer: unknown server $mode"; return 1; }
		list=("192.0.2.$((10 + ${mode#s}))")
		;;
	*) _lab_err "steer mode '$mode': want sN, hash or hash:sA,sB"; return 1 ;;
	esac
	local IFS=,
	echo "${list[*]}"
}

# The private, system-like bus of one server: the system bus's default-deny
# policy plus the project's policy file, on a socket in the lab directory.
_lab_bus_up() {
	local node=$1 dir="$LAB_DIR/$1/bus" pid
	mkdir -p "$dir"
	{
		echo '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"'
		echo ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">'
		echo '<busconfig>'
		echo '  <type>system</type>'
		echo "  <listen>unix:path=$dir/system_bus_socket</listen>"
		echo '  <auth>EXTERNAL</auth>'
		echo '  <policy context="default">'
		echo '    <allow user="*"/>'
		echo '    <deny own="*"/>'
		echo '    <deny send_type="method_call"/>'
		echo '    <allow send_type="signal"/>'
		echo '    <allow send_requested_reply="true" send_type="method_return"/>'
		echo '    <allow send_requested_reply="true" send_type="error"/>'
		echo '    <allow receive_type="method_call"/>'
		echo '    <allow receive_type="method_return"/>'
		echo '    <allow receive_type="error"/>'
		echo '    <allow receive_type="signal"/>'
		echo '    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>'
		echo '    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>'
		echo '    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>'
		echo '    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>'
		echo '  </policy>'
		[[ -n $LAB_BUS_POLICY ]] && echo "  <include>$LAB_BUS_POLICY</include>"
		echo '</busconfig>'
	} >"$dir/bus.conf"
	pid=$(ip netns exec "$(lab_ns "$node")" dbus-daemon --config-file="$dir/bus.conf" --fork --print-pid --nopidfile \
		2>"$dir/bus.log") ||
		{ _lab_err "dbus-daemon for $node did not start"; return 1; }
	echo "$pid" >>"$LAB_DIR/pids"
	echo "unix:path=$dir/system_bus_socket" >"$dir/address"
}

# lab_up [options]: build the lab; on failure remove whatever was made and return 1.
lab_up() {
	_lab_names || return 1
	LAB_SERVERS=3
	local steer=s1 inet_addrs=4 bus=1 owner=$PPID
	LAB_DC_MTU=1600 LAB_XDP_PASS=''
	local workloads=()
	LAB_BUS_POLICY=''
	[[ -f $LAB_REPO/dbus/org.portslice.Egress1.conf ]] && LAB_BUS_POLICY=$LAB_REPO/dbus/org.portslice.Egress1.conf
	while (($#)); do
		case $1 in
		--servers) LAB_SERVERS=$2; shift 2 ;;
		--workload) workloads+=("$2"); shift 2 ;;
		--steer) steer=$2; shift 2 ;;
		--inet-addrs) inet_addrs=$2; shift 2 ;;
		--bus-policy) LAB_BUS_POLICY=$(realpath "$2"); shift 2 ;;
		--no-bus) bus=0; shift ;;
		--dc-mtu) LAB_DC_MTU=$2; shift 2 ;;
		--xdp-pass) LAB_XDP_PASS=$(realpath "$2"); shift 2 ;;
		--owner) owner=$2; shift 2 ;;
		*) _lab_err "up: unknown option $1"; return 1 ;;
		esac
	done
	[[ $LAB_SERVERS =~ ^[1-9]$ ]] || { _lab_err "--servers wants 1..9"; return 1; }
	[[ $inet_addrs =~ ^[0-9]+$ ]] && ((inet_addrs >= 1 && inet_addrs <= 100)) || { _lab_err "--inet-addrs wants 1..100"; return 1; }
	[[ -z $LAB_BUS_POLICY || -f $LAB_BUS_POLICY ]] || { _lab_err "bus policy $LAB_BUS_POLICY not found"; return 1; }
	[[ -z $LAB_XDP_PASS || -f $LAB_XDP_PASS ]] || { _lab_err "XDP object $LAB_XDP_PASS not found"; return 1; }
	[[ $LAB_DC_MTU =~ ^[0-9]+$ ]] && ((LAB_DC_MTU >= 1280 && LAB_DC_MTU <= 9000)) || { _lab_err "--dc-mtu wants 1280..9000"; return 1; }
	if ((!${#workloads[@]})); then
		for ((s = 1; s <= LAB_SERVERS; s++)); do workloads+=("s$s:w$s:100.64.$s.0/24"); done
	fi
	if [[ -e $LAB_DIR ]]; then
		_lab_err "$LAB_DIR exists: lab $LAB_NAME is up already (lab.sh down first)"
		return 1
	fi
	mkdir -p "$LAB_DIR" && chmod 755 "$LAB_DIR" && : >"$LAB_DIR/netns" && : >"$LAB_DIR/pids" && : >"$LAB_DIR/mounts" || return 1
	# A process of its own, so that errexit holds even when our caller tests our status.
	if ! LAB_SERVERS=$LAB_SERVERS LAB_BUS_POLICY=$LAB_BUS_POLICY LAB_DC_MTU=$LAB_DC_MTU LAB_XDP_PASS=$LAB_XDP_PASS bash -eu -o pipefail "$LAB_LIB/lab.sh" _build \
		--prefix "$LAB_PREFIX" --id "$LAB_ID" "$steer" "$inet_addrs" "$bus" "$owner" "${workloads[@]}"; then
		_lab_err "building lab $LAB_NAME failed; removing it"
		lab_down
		return 1
	fi
}

_lab_build() {
	local steer=$1 inet_addrs=$2 bus=$3 owner=$4
	shift 4
	local s node hops
	hops=$(_lab_hops "$steer")
	local wl_names=() wl_servers=() wl_prefixes=() wl_hosts=() wl_ranges=()
	for w in "$@"; do
		IFS=: read -r srv name prefix hosts range <<<"$w"
		[[ $srv =~ ^s([1-9])$ ]] && ((BASH_REMATCH[1] <= LAB_SERVERS)) || { _lab_err "workload $w: unknown server $srv"; return 1; }
		[[ $name =~ ^[a-z][a-z0-9]{0,14}$ && ! $name =~ ^(inet|rtr|dc|s[0-9])$ ]] || { _lab_err "workload $w: bad name $name"; return 1; }
		[[ $prefix == */* ]] || { _lab_err "workload $w: prefix wants A/LEN"; return 1; }
		wl_names+=("$name") wl_servers+=("$srv") wl_prefixes+=("$prefix") wl_hosts+=("${hosts:-1}") wl_ranges+=("${range:-}")
	done

	{
		echo "LAB_PREFIX=$LAB_PREFIX"
		echo "LAB_ID=$LAB_ID"
		echo "LAB_NAME=$LAB_NAME"
		echo "LAB_DIR=$LAB_DIR"
		echo "LAB_OWNER=$owner"
		echo "LAB_SERVERS=$LAB_SERVERS"
		echo "LAB_SHARED=$LAB_SHARED"
		echo "LAB_STEER=$steer"
		echo "LAB_WORKLOADS=\"${*}\""
		echo "LAB_BUS_POLICY=$LAB_BUS_POLICY"
	} >"$LAB_DIR/lab.env"

	for node in inet rtr dc; do _lab_netns_add "$node"; done
	for ((s = 1; s <= LAB_SERVERS; s++)); do _lab_netns_add "s$s"; done
	for name in "${wl_names[@]}"; do _lab_netns_add "$name"; done

	ip -n "$(lab_ns dc)" link set lo up
	ip -n "$(lab_ns dc)" link add br0 mtu "$LAB_DC_MTU" type bridge forward_delay 0 stp_state 0
	ip -n "$(lab_ns dc)" link set br0 up

	_lab_link rtr eth0 inet eth0
	_lab_link rtr eth1 dc rtr 02:00:00:00:00:01
	ip -n "$(lab_ns dc)" link set rtr mtu "$LAB_DC_MTU" master br0 up
	for ((s = 1; s <= LAB_SERVERS; s++)); do
		_lab_link "s$s" eth0 dc "s$s" "02:00:00:00:00:$((10 + s))"
		ip -n "$(lab_ns dc)" link set "s$s" mtu "$LAB_DC_MTU" master br0 up
		ip netns exec "$(lab_ns dc)" ethtool -K "s$s" gro on >/dev/null
		if [[ -n $LAB_XDP_PASS ]]; then
			ip -n "$(lab_ns dc)" link set dev "s$s" xdpdrv obj "$LAB_XDP_PASS" sec xdp
		fi
	done
	for i in "${!wl_names[@]}"; do
		_lab_link "${wl_servers[i]}" "${wl_names[i]}" "${wl_names[i]}" eth0
	done

	local inet_args=(--if eth0 --gw 203.0.113.1)
	for ((i = 0; i < inet_addrs; i++)); do inet_args+=(--addr "203.0.113.$((10 + i))/24"); done
	_lab_role inet inet "${inet_args[@]}"
	_lab_role rtr router --inet-if eth0 --inet-addr 203.0.113.1/24 --dc-if eth1 --dc-addr 192.0.2.1/24 --dc-mtu "$LAB_DC_MTU" \
		--shared "$LAB_SHARED" --servers "$hops"
	for ((s = 1; s <= LAB_SERVERS; s++)); do
		local args=(--uplink eth0 --mtu "$LAB_DC_MTU" --addr "192.0.2.$((10 + s))/24" --gw 192.0.2.1 --shared "$LAB_SHARED")
		for i in "${!wl_names[@]}"; do
			[[ ${wl_servers[i]} == "s$s" ]] && args+=(--workload "${wl_names[i]}=${wl_prefixes[i]}")
		done
		_lab_role "s$s" server "${args[@]}"
		mkdir -p "$LAB_DIR/s$s/state" "$LAB_DIR/s$s/bpf"
		# A bpffs of the server's own: pins of one lab never meet another's.
		echo "$LAB_DIR/s$s/bpf" >>"$LAB_DIR/mounts"
		mount -t bpf bpf "$LAB_DIR/s$s/bpf"
		((bus)) && _lab_bus_up "s$s"
	done
	for i in "${!wl_names[@]}"; do
		local args=(--if eth0 --prefix "${wl_prefixes[i]}" --hosts "${wl_hosts[i]}")
		[[ -n ${wl_ranges[i]} ]] && args+=(--port-range "${wl_ranges[i]}")
		_lab_role "${wl_names[i]}" workload "${args[@]}"
	done
	return 0
}

# lab_down: remove exactly what lab_up made (its namespaces, the processes in
# them, its buses and mounts, its directory). Safe to call twice.
lab_down() {
	_lab_names || return 1
	local namespaces=() pids=() ns pid mnt
	if [[ -f $LAB_DIR/netns ]]; then
		mapfile -t namespaces <"$LAB_DIR/netns"
	fi
	# Also what a lost manifest would miss: only names of exactly this lab.
	while read -r ns _; do
		[[ $ns == "$LAB_NAME-"* ]] && namespaces+=("$ns")
	done < <(ip netns list 2>/dev/null)
	[[ -f $LAB_DIR/pids ]] && mapfile -t pids <"$LAB_DIR/pids"
	for ns in "${namespaces[@]}"; do
		[[ -e /run/netns/$ns ]] || continue
		mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$ns" 2>/dev/null)
	done
	if ((${#pids[@]})); then
		for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			local alive=0
			for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
			((alive)) || break
			sleep 0.1
		done
		for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
	fi
	for ns in "${namespaces[@]}"; do
		[[ -e /run/netns/$ns ]] && ip netns del "$ns" 2>/dev/null
	done
	if [[ -f $LAB_DIR/mounts ]]; then
		while read -r mnt; do
			mountpoint -q "$mnt" 2>/dev/null && umount -l "$mnt"
		done <"$LAB_DIR/mounts"
	fi
	[[ -d $LAB_DIR ]] && rm -rf --one-file-system "$LAB_DIR"
	local left=()
	while read -r ns _; do
		[[ $ns == "$LAB_NAME-"* ]] && left+=("$ns")
	done < <(ip netns list 2>/dev/null)
	if ((${#left[@]})); then
		_lab_err "down: namespaces left behind: ${left[*]}"
		return 1
	fi
	return 0
}

_lab_load() {
	_lab_names || return 1
	[[ -f $LAB_DIR/lab.env ]] || { _lab_err "lab $LAB_NAME is not up"; return 1; }
	# shellcheck disable=SC1091
	. "$LAB_DIR/lab.env"
}

# lab_exec NODE CMD...: run a command inside a node. On a server: its private
# bus is the system bus; LAB_STATE_DIR names its state directory; and its own
# bpffs (LAB_BPF_DIR, mounted by lab_up) is bind-mounted on /sys/fs/bpf of the
# command's mount namespace (ip netns exec makes a private one with a fresh
# /sys), so pins made there outlive the command and never meet another
# server's or the host's.
lab_exec() {
	_lab_load || return 1
	local node=$1
	shift
	local env=() pre=()
	if [[ $node =~ ^s[1-9]$ ]]; then
		env+=("LAB_STATE_DIR=$LAB_DIR/$node/state" "LAB_BPF_DIR=$LAB_DIR/$node/bpf")
		[[ -f $LAB_DIR/$node/bus/address ]] && env+=("DBUS_SYSTEM_BUS_ADDRESS=$(<"$LAB_DIR/$node/bus/address")")
		if mountpoint -q "$LAB_DIR/$node/bpf"; then
			pre=(sh -c 'mount --bind "$0" /sys/fs/bpf && exec "$@"' "$LAB_DIR/$node/bpf")
		fi
	fi
	[[ -e /run/netns/$(lab_ns "$node") ]] || { _lab_err "no node $node in lab $LAB_NAME"; return 1; }
	if [[ ${LAB_EXEC_REPLACE:-0} == 1 ]]; then
		# The caller's pid becomes the command's: it can signal and reap it.
		exec ip netns exec "$(lab_ns "$node")" "${pre[@]}" env "${env[@]}" "$@"
	fi
	ip netns exec "$(lab_ns "$node")" "${pre[@]}" env "${env[@]}" "$@"
}

# lab_steer MODE: change how the router picks servers (failover, drain).
lab_steer() {
	_lab_load || return 1
	local hops
	hops=$(_lab_hops "$1") || return 1
	_lab_role rtr router --steer-only --dc-if eth1 --shared "$LAB_SHARED" --servers "$hops" || return 1
	sed -i "s/^LAB_STEER=.*/LAB_STEER=$1/" "$LAB_DIR/lab.env"
}

# lab_gc: remove the labs of LAB_PREFIX whose owner process has exited.
lab_gc() {
	local env owner id
	for env in "${TMPDIR:-/tmp}/$LAB_PREFIX"-*/lab.env; do
		[[ -f $env ]] || continue
		owner=$(sed -n 's/^LAB_OWNER=//p' "$env")
		id=$(sed -n 's/^LAB_ID=//p' "$env")
		[[ -n $owner ]] && kill -0 "$owner" 2>/dev/null && continue
		echo "lab: removing $LAB_PREFIX-$id (owner $owner is gone)" >&2
		LAB_ID=$id lab_down
	done
}

_lab_main() {
	local cmd=${1:-}
	shift || true
	LAB_PREFIX='' LAB_ID=''
	LAB_SERVERS=${LAB_SERVERS:-3} LAB_BUS_POLICY=${LAB_BUS_POLICY:-}
	LAB_DC_MTU=${LAB_DC_MTU:-1600} LAB_XDP_PASS=${LAB_XDP_PASS:-}
	local rest=()
	while (($#)); do
		case $1 in
		--prefix) LAB_PREFIX=$2; shift 2 ;;
		--id) LAB_ID=$2; shift 2 ;;
		*) rest+=("$1"); shift ;;
		esac
	done
	case $cmd in
	up) lab_up "${rest[@]}" ;;
	_build) _lab_names && _lab_build "${rest[@]}" ;;
	down) lab_down ;;
	exec) LAB_EXEC_REPLACE=1 lab_exec "${rest[@]}" ;;
	steer) lab_steer "${rest[@]}" ;;
	env) _lab_load && cat "$LAB_DIR/lab.env" ;;
	gc) [[ -n $LAB_PREFIX ]] || { _lab_err "gc needs --prefix"; exit 2; }; lab_gc ;;
	*) sed -n '3,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
	esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	_lab_main "$@"
fi
