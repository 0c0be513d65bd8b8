#!/bin/bash
# SPDX-License-Identifier: MIT
# Role "etcd": one member node of the lab's etcd cluster, on the data-centre network (the etcd process itself is started by lab.sh).
#
# etcd.sh --if IF --addr A/LEN [--mtu N]
# The member listens on A (client port 2379, peer port 2380); it needs no
# route beyond the data-centre network, where the servers and its peers are.
set -euo pipefail
. "$(dirname "$0")/common.sh"

ifname='' addr='' mtu=''
while (($#)); do
	case $1 in
	--if) ifname=$2; shift 2 ;;
	--addr) addr=$2; shift 2 ;;
	--mtu) mtu=$2; shift 2 ;;
	*) lab_die "unknown argument $1" ;;
	esac
done
[[ -n $ifname && -n $addr ]] || lab_die "need --if and --addr"
lab_require_node
lab_check_addr "$addr"

ip link set lo up
[[ -n $mtu ]] && ip link set "$ifname" mtu "$mtu"
ip link set "$ifname" up
ip addr replace "$addr" dev "$ifname"
