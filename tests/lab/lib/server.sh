#!/bin/bash
# SPDX-License-Identifier: MIT
# Role "server": one portslice server of the lab: uplink on the DC network, workloads on their own interfaces.
#
# server.sh --uplink IF --addr A/LEN --gw ROUTER --shared PREFIX [--mtu N] [--workload IF=PREFIX]... [--route PREFIX]...
#
# The workload side of each --workload interface is configured by workload.sh;
# here the server gets the prefix's first host address on it. Return traffic
# for the shared range that nobody translates is dropped here (blackhole), so a
# packet for a slice this server does not own is never bounced to the router.
# --mtu: the DC fabric's MTU; the forwarder's IPIP adds 20 bytes to answers of
# full size, so the fabric between servers carries at least 1520.
set -euo pipefail
. "$(dirname "$0")/common.sh"

uplink='' addr='' gw='' shared='' mtu=''
workloads=() routes=()
while (($#)); do
	case $1 in
	--uplink) uplink=$2; shift 2 ;;
	--addr) addr=$2; shift 2 ;;
	--gw) gw=$2; shift 2 ;;
	--shared) shared=$2; shift 2 ;;
	--mtu) mtu=$2; shift 2 ;;
	--workload) workloads+=("$2"); shift 2 ;;
	--route) routes+=("$2"); shift 2 ;;
	*) lab_die "unknown argument $1" ;;
	esac
done
[[ -n $uplink && -n $addr && -n $gw && -n $shared ]] || lab_die "need --uplink, --addr, --gw and --shared"
((${#routes[@]})) || routes=(203.0.113.0/24)
lab_require_node
for a in "$addr" "$gw" "$shared" "${routes[@]}"; do lab_check_addr "$a"; done

ip link set lo up
[[ -n $mtu ]] && ip link set "$uplink" mtu "$mtu"
ip link set "$uplink" up
ip addr replace "$addr" dev "$uplink"
for r in "${routes[@]}"; do
	ip route replace "$r" via "$gw" dev "$uplink"
done
ip route replace blackhole "$shared"
lab_sysctl net.ipv4.ip_forward 1
# IPIP from a peer forwarder and answers routed by mark arrive on interfaces
# that a strict reverse-path check would refuse.
lab_sysctl net.ipv4.conf.all.rp_filter 0
lab_sysctl net.ipv4.conf.default.rp_filter 0
lab_sysctl "net.ipv4.conf.$uplink.rp_filter" 0

for w in "${workloads[@]}"; do
	ifname=${w%%=*}
	prefix=${w#*=}
	[[ -n $ifname && $prefix == */* ]] || lab_die "--workload wants IF=PREFIX, got $w"
	lab_check_addr "$prefix"
	ip link set "$ifname" up
	ip addr replace "$(lab_host "$prefix" 1)/${prefix#*/}" dev "$ifname"
	lab_sysctl "net.ipv4.conf.$ifname.rp_filter" 0
done
