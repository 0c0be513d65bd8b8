#!/bin/bash
# SPDX-License-Identifier: MIT
# Role "rtr": the data centre's router; sends return traffic for the shared range to a server without looking at ports, as anycast does.
#
# router.sh --inet-if IF --inet-addr A/LEN --dc-if IF --dc-addr A/LEN [--dc-mtu N] --shared PREFIX --servers ADDR[,ADDR...]
# router.sh --steer-only --dc-if IF --shared PREFIX --servers ADDR[,ADDR...]
#
# One server address: all traffic for the shared range goes to it. Several:
# an ECMP route hashed on source and destination address only (multipath hash
# policy 0, L3), so a flow's packets stick to one server whatever its ports.
# --steer-only changes just that route (failover: withdraw a dead server).
set -euo pipefail
. "$(dirname "$0")/common.sh"

inet_if='' inet_addr='' dc_if='' dc_addr='' dc_mtu='' shared='' servers='' steer_only=0
while (($#)); do
	case $1 in
	--inet-if) inet_if=$2; shift 2 ;;
	--inet-addr) inet_addr=$2; shift 2 ;;
	--dc-if) dc_if=$2; shift 2 ;;
	--dc-addr) dc_addr=$2; shift 2 ;;
	--dc-mtu) dc_mtu=$2; shift 2 ;;
	--shared) shared=$2; shift 2 ;;
	--servers) servers=$2; shift 2 ;;
	--steer-only) steer_only=1; shift ;;
	*) lab_die "unknown argument $1" ;;
	esac
done
[[ -n $dc_if && -n $shared && -n $servers ]] || lab_die "need --dc-if, --shared and --servers"
lab_require_node
IFS=, read -r -a hops <<<"$servers"
for a in "$shared" "${hops[@]}"; do lab_check_addr "$a"; done

if ((!steer_only)); then
	[[ -n $inet_if && -n $inet_addr && -n $dc_addr ]] || lab_die "need --inet-if, --inet-addr and --dc-addr"
	lab_check_addr "$inet_addr"
	lab_check_addr "$dc_addr"
	ip link set lo up
	ip link set "$inet_if" up
	[[ -n $dc_mtu ]] && ip link set "$dc_if" mtu "$dc_mtu"
	ip link set "$dc_if" up
	ip addr replace "$inet_addr" dev "$inet_if"
	ip addr replace "$dc_addr" dev "$dc_if"
	lab_sysctl net.ipv4.ip_forward 1
	lab_sysctl net.ipv4.fib_multipath_hash_policy 0
	# A fixed hash seed where the kernel has one: the same flow picks the same
	# server in every run, so lab results repeat.
	if [[ -e /proc/sys/net/ipv4/fib_multipath_hash_seed ]]; then
		lab_sysctl net.ipv4.fib_multipath_hash_seed 20260101
	fi
	lab_sysctl net.ipv4.conf.all.rp_filter 0
	lab_sysctl net.ipv4.conf.default.rp_filter 0
fi

if ((${#hops[@]} == 1)); then
	ip route replace "$shared" via "${hops[0]}" dev "$dc_if"
else
	nexthops=()
	for h in "${hops[@]}"; do
		nexthops+=(nexthop via "$h" dev "$dc_if" weight 1)
	done
	ip route replace "$shared" "${nexthops[@]}"
fi
# Stale neighbour entries must not hide a steering change: flush the route cache.
ip route flush cache 2>/dev/null || true
