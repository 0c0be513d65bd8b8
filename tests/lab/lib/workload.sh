#!/bin/bash
# SPDX-License-Identifier: MIT
# Role "workload": one source behind a server: inside addresses of its prefix, default route via the server.
#
# workload.sh --if IF --prefix PREFIX [--hosts N] [--port-range LO-HI]
#
# The server holds the prefix's first host; the workload takes the next N
# (default 1): 100.64.1.0/24 -> 100.64.1.2, .3, ... --port-range sets the
# namespace's ip_local_port_range, how a stateless source's inside host keeps
# to its block.
set -euo pipefail
. "$(dirname "$0")/common.sh"

ifname='' prefix='' hosts=1 port_range=''
while (($#)); do
	case $1 in
	--if) ifname=$2; shift 2 ;;
	--prefix) prefix=$2; shift 2 ;;
	--hosts) hosts=$2; shift 2 ;;
	--port-range) port_range=$2; shift 2 ;;
	*) lab_die "unknown argument $1" ;;
	esac
done
[[ -n $ifname && $prefix == */* ]] || lab_die "need --if and --prefix A/LEN"
[[ $hosts =~ ^[0-9]+$ ]] && ((hosts >= 1 && hosts <= 250)) || lab_die "--hosts wants 1..250"
lab_require_node
lab_check_addr "$prefix"

ip link set lo up
ip link set "$ifname" up
for ((i = 0; i < hosts; i++)); do
	ip addr replace "$(lab_host "$prefix" $((2 + i)))/${prefix#*/}" dev "$ifname"
done
ip route replace default via "$(lab_host "$prefix" 1)" dev "$ifname"
if [[ -n $port_range ]]; then
	lab_sysctl net.ipv4.ip_local_port_range "${port_range/-/ }"
fi
