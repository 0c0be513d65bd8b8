# SPDX-License-Identifier: MIT
# Shared helpers of the lab's role scripts: argument checks and the address guard that keeps lab traffic in lab ranges.
# Sourced, never executed. The role scripts run inside one node (a network
# namespace of the namespace lab, or a Vagrant VM) and configure only it.

lab_die() {
	echo "${0##*/}: error: $*" >&2
	exit 1
}

# The only ranges the lab may use: documentation ranges and the shared range.
lab_check_addr() {
	local a=${1%/*}
	case $a in
	192.0.2.* | 198.51.100.* | 203.0.113.*) return 0 ;;
	100.*)
		local second=${a#100.}
		second=${second%%.*}
		((second >= 64 && second <= 127)) && return 0
		;;
	esac
	lab_die "address $1 is outside the lab ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 100.64.0.0/10)"
}

# Role scripts configure the node they run in. In the namespace lab that must
# be a named network namespace, never the host's own; a Vagrant VM says so with
# LAB_NODE_IS_VM=1 (the VM is the node).
lab_require_node() {
	if [[ ${LAB_NODE_IS_VM:-0} == 1 ]]; then
		return 0
	fi
	local here
	here=$(ip netns identify "$$" 2>/dev/null || true)
	[[ -n $here ]] || lab_die "refusing to run outside a named network namespace (set LAB_NODE_IS_VM=1 inside a lab VM)"
}

lab_sysctl() {
	sysctl -q -w "$1=$2" >/dev/null
}

# The n-th host address of an IPv4 prefix: lab_host 100.64.1.0/24 2 -> 100.64.1.2
lab_host() {
	local net=${1%/*} n=$2
	local IFS=.
	# shellcheck disable=SC2086
	set -- $net
	local v=$((($1 << 24) + ($2 << 16) + ($3 << 8) + $4 + n))
	echo "$(((v >> 24) & 255)).$(((v >> 16) & 255)).$(((v >> 8) & 255)).$((v & 255))"
}
