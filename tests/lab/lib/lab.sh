#!/bin/bash
# SPDX-License-Identifier: MIT
# The namespace lab of docs/architecture.md "The lab": builds inet, router, DC bridge, servers, workloads and a private bus per server, and removes exactly that.
#
# As a command:  lab.sh up   --prefix P --id ID [options]   (removes what it made if it fails)
#                lab.sh down --prefix P --id ID
#                lab.sh exec --prefix P --id ID NODE CMD...  (on a server: its own bus and bpffs, see lab_exec)
#                lab.sh steer --prefix P --id ID MODE        (s2 | hash | hash:s1,s2)
#                lab.sh env  --prefix P --id ID               (the lab's facts, KEY=VALUE)
#                lab.sh etcd --prefix P --id ID start|stop|kill K | endpoints | leader | wait [SECONDS]
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
#   --etcd N               an etcd cluster of N members (1..3; default none): nodes etcd1..etcdN at
#                          192.0.2.(99+K) on the DC bridge, client URL http://192.0.2.(99+K):2379, data in
#                          the lab directory; up waits until every member is healthy. `lab.sh etcd`
#                          stops (SIGTERM), kills (SIGKILL) and restarts members on their own data.
#
# Nodes and names: namespace "P-ID-NODE" for NODE in inet, rtr, dc, s1..sN, etcd1..etcdN and every workload.
# Interfaces: inet eth0 203.0.113.10/24 | rtr eth0 203.0.113.1/24, rtr eth1 192.0.2.1/24 (MAC
# 02:00:00:00:00:01) | dc br0 with ports rtr, s1..sN | sN eth0 192.0.2.(10+N)/24, NAME per workload
# | workload eth0 | etcdK eth0 192.0.2.(99+K)/24. Files: $TMPDIR/P-ID/ (lab.env, netns, pids, per
# server bus/, state/, bpf/, per etcd member etcdK/ with data/, etcd.log, pid).
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
	local steer=s1 inet_addrs=4 bus=1 owner=$PPID etcd=0
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
		--etcd) etcd=$2; shift 2 ;;
		*) _lab_err "up: unknown option $1"; return 1 ;;
		esac
	done
	[[ $LAB_SERVERS =~ ^[1-9]$ ]] || { _lab_err "--servers wants 1..9"; return 1; }
	[[ $inet_addrs =~ ^[0-9]+$ ]] && ((inet_addrs >= 1 && inet_addrs <= 100)) || { _lab_err "--inet-addrs wants 1..100"; return 1; }
	[[ -z $LAB_BUS_POLICY || -f $LAB_BUS_POLICY ]] || { _lab_err "bus policy $LAB_BUS_POLICY not found"; return 1; }
	[[ -z $LAB_XDP_PASS || -f $LAB_XDP_PASS ]] || { _lab_err "XDP object $LAB_XDP_PASS not found"; return 1; }
	[[ $LAB_DC_MTU =~ ^[0-9]+$ ]] && ((LAB_DC_MTU >= 1280 && LAB_DC_MTU <= 9000)) || { _lab_err "--dc-mtu wants 1280..9000"; return 1; }
	[[ $etcd =~ ^[0-3]$ ]] || { _lab_err "--etcd wants 0..3"; return 1; }
	if ((etcd)) && ! command -v etcd >/dev/null; then
		_lab_err "--etcd: no etcd binary (Debian: apt-get install etcd-server etcd-client, see .ci/install-deps)"
		return 1
	fi
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
		--prefix "$LAB_PREFIX" --id "$LAB_ID" "$steer" "$inet_addrs" "$bus" "$owner" "$etcd" "${workloads[@]}"; then
		_lab_err "building lab $LAB_NAME failed; removing it"
		lab_down
		return 1
	fi
	if ((etcd)) && ! lab_etcd wait 30; then
		_lab_err "the etcd cluster of lab $LAB_NAME did not become healthy; removing the lab"
		local k
		for ((k = 1; k <= etcd; k++)); do
			[[ -f $LAB_DIR/etcd$k/etcd.log ]] && { echo "--- etcd$k:"; tail -n 20 "$LAB_DIR/etcd$k/etcd.log"; } >&2
		done
		lab_down
		return 1
	fi
}

_lab_build() {
	local steer=$1 inet_addrs=$2 bus=$3 owner=$4 etcd=$5
	shift 5
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
		echo "LAB_ETCD=$etcd"
		local eps=() k
		for ((k = 1; k <= etcd; k++)); do eps+=("http://192.0.2.$((99 + k)):2379"); done
		echo "LAB_ETCD_ENDPOINTS=$(
			IFS=,
			echo "${eps[*]}"
		)"
	} >"$LAB_DIR/lab.env"

	for node in inet rtr dc; do _lab_netns_add "$node"; done
	for ((s = 1; s <= LAB_SERVERS; s++)); do _lab_netns_add "s$s"; done
	for name in "${wl_names[@]}"; do _lab_netns_add "$name"; done
	for ((s = 1; s <= etcd; s++)); do _lab_netns_add "etcd$s"; done

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
	for ((s = 1; s <= etcd; s++)); do
		_lab_link "etcd$s" eth0 dc "etcd$s"
		ip -n "$(lab_ns dc)" link set "etcd$s" mtu "$LAB_DC_MTU" master br0 up
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
	for ((s = 1; s <= etcd; s++)); do
		_lab_role "etcd$s" etcd --if eth0 --addr "192.0.2.$((99 + s))/24" --mtu "$LAB_DC_MTU"
		mkdir -p "$LAB_DIR/etcd$s/data"
		chmod 700 "$LAB_DIR/etcd$s/data"
	done
	for ((s = 1; s <= etcd; s++)); do LAB_ETCD=$etcd _lab_etcd_start "$s"; done
	return 0
}

# _lab_etcd_start K: start member K on its data directory (a new cluster the
# first time; on a restart etcd ignores the initial-cluster flags and rejoins).
_lab_etcd_start() {
	local k=$1 dir="$LAB_DIR/etcd$1" cluster=() j pid
	[[ $k =~ ^[1-9]$ ]] && ((k <= LAB_ETCD)) || { _lab_err "etcd: no member $k (the lab has $LAB_ETCD)"; return 1; }
	if [[ -f $dir/pid ]] && kill -0 "$(<"$dir/pid")" 2>/dev/null; then
		_lab_err "etcd: member $k is running already"
		return 1
	fi
	for ((j = 1; j <= LAB_ETCD; j++)); do cluster+=("etcd$j=http://192.0.2.$((99 + j)):2380"); done
	local ip="192.0.2.$((99 + k))"
	# setsid: the member outlives the shell that started it; lab_down kills it
	# (it is listed in pids and lives in the lab's namespace).
	(
		IFS=,
		exec setsid ip netns exec "$(lab_ns "etcd$k")" env -i PATH="$PATH" etcd \
			--name "etcd$k" --data-dir "$dir/data" \
			--listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$ip:2379" \
			--listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
			--initial-cluster "${cluster[*]}" --initial-cluster-state new \
			--initial-cluster-token "$LAB_NAME" \
			--logger zap --log-outputs stderr </dev/null >>"$dir/etcd.log" 2>&1
	) &
	pid=$!
	echo "$pid" >"$dir/pid"
	echo "$pid" >>"$LAB_DIR/pids"
}

# _lab_etcd_stop K SIGNAL: stop member K and wait until it is gone (SIGKILL after 5 s).
_lab_etcd_stop() {
	local k=$1 sig=$2 dir="$LAB_DIR/etcd$1" pid
	[[ $k =~ ^[1-9]$ ]] && ((k <= LAB_ETCD)) || { _lab_err "etcd: no member $k (the lab has $LAB_ETCD)"; return 1; }
	[[ -f $dir/pid ]] || return 0
	pid=$(<"$dir/pid")
	kill "-$sig" "$pid" 2>/dev/null || { rm -f "$dir/pid"; return 0; }
	for _ in $(seq 1 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null
	rm -f "$dir/pid"
	return 0
}

# _lab_etcd_ctl ARGS...: etcdctl against every member, run from the first
# server's namespace (or the first member's when the lab has no server).
_lab_etcd_ctl() {
	local node=s1
	[[ -e /run/netns/$(lab_ns s1) ]] || node=etcd1
	ip netns exec "$(lab_ns "$node")" env -i PATH="$PATH" ETCDCTL_API=3 etcdctl \
		--endpoints "$LAB_ETCD_ENDPOINTS" --dial-timeout 1s --command-timeout 2s "$@"
}

# lab_etcd start|stop|kill K | endpoints | leader | wait [SECONDS]
lab_etcd() {
	_lab_load || return 1
	((LAB_ETCD > 0)) || { _lab_err "lab $LAB_NAME has no etcd cluster (up --etcd N)"; return 1; }
	local cmd=${1:-}
	shift || true
	case $cmd in
	start) _lab_etcd_start "$@" ;;
	stop) _lab_etcd_stop "$1" TERM ;;
	kill) _lab_etcd_stop "$1" KILL ;;
	endpoints) echo "$LAB_ETCD_ENDPOINTS" ;;
	leader)
		# The member whose own id is the leader id it reports: etcd1..etcdN.
		_lab_etcd_ctl endpoint status -w json 2>/dev/null |
			jq -r '.[] | select(.Status.header.member_id == .Status.leader) | .Endpoint' |
			sed -n 's|^http://192\.0\.2\.\([0-9]*\):2379$|\1|p' | head -1 |
			while read -r last; do echo "etcd$((last - 99))"; done
		;;
	wait)
		local deadline=$((SECONDS + ${1:-30}))
		while ((SECONDS < deadline)); do
			_lab_etcd_ctl endpoint health >/dev/null 2>&1 && return 0
			sleep 0.2
		done
		_lab_etcd_ctl endpoint health >&2
		return 1
		;;
	*) _lab_err "etcd: want start|stop|kill K, endpoints, leader or wait [SECONDS]"; return 1 ;;
	esac
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
	LAB_ETCD=0 LAB_ETCD_ENDPOINTS=''
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
	etcd) lab_etcd "${rest[@]}" ;;
	gc) [[ -n $LAB_PREFIX ]] || { _lab_err "gc needs --prefix"; exit 2; }; lab_gc ;;
	*) sed -n '3,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
	esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	_lab_main "$@"
fi
