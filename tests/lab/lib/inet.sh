#!/bin/bash
# SPDX-License-Identifier: MIT
# Role "inet": the internet host of the lab, where test servers listen; reaches the lab through the router.
#
# inet.sh --if IF --addr A/LEN [--addr A/LEN]... --gw ROUTER [--route PREFIX]...
# Extra addresses let a router that hashes by source address spread flows.
set -euo pipefail
. "$(dirname "$0")/common.sh"

ifname='' gw=''
addrs=() routes=()
while (($#)); do
	case $1 in
	--if) ifname=$2; shift 2 ;;
	--addr) addrs+=("$2"); shift 2 ;;
	--gw) gw=$2; shift 2 ;;
	--route) routes+=("$2"); shift 2 ;;
	*) lab_die "unknown argument $1" ;;
	esac
done
[[ -n $ifname && -n $gw && ${#addrs[@]} -gt 0 ]] || lab_die "need --if, --gw and at least one --addr"
((${#routes[@]})) || routes=(198.51.100.0/24 192.0.2.0/24)
lab_require_node
for a in "${addrs[@]}" "$gw" "${routes[@]}"; do lab_check_addr "$a"; done

ip link set lo up
ip link set "$ifname" up
for a in "${addrs[@]}"; do
	ip addr replace "$a" dev "$ifname"
done
for r in "${routes[@]}"; do
	ip route replace "$r" via "$gw" dev "$ifname"
done
