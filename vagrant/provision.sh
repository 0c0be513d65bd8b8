#!/bin/bash
# SPDX-License-Identifier: MIT
# Provisions one lab VM by its role with the same per-role scripts as the namespace lab (tests/lab/lib/).
#
# provision.sh inet
# provision.sh router --steer sN|hash   (which servers get the shared range's return traffic)
# provision.sh server N                 (sN: 192.0.2.(10+N), workloads wN and vN in namespaces, build, config)
#
# PSL_STAGE (server): a directory of the synced tree holding portslice as
# `meson install --destdir` left it on the host; copied to / instead of
# building here.
#
# Interfaces are found by the MACs the Vagrantfile gives them and renamed so
# the configuration does not depend on the box's naming: inet0 (inet side),
# dc0 (data centre side). Idempotent: run again after a reboot (the
# Vagrantfile does, run: "always").
set -euo pipefail
REPO=${PSL_REPO:-/portslice}
LIB=$REPO/tests/lab/lib
export LAB_NODE_IS_VM=1
export DEBIAN_FRONTEND=noninteractive

role=${1:?role}
shift

packages=(iproute2 nftables conntrack ethtool iputils-ping tcpdump dbus)
build_packages=(meson ninja-build g++ pkg-config libtomlplusplus-dev libgtest-dev libgmock-dev
	libbenchmark-dev libnftnl-dev libmnl-dev libnetfilter-conntrack-dev libbpf-dev clang llvm bpftool
	libsdbus-c++-dev libsdbus-c++-bin libsystemd-dev scdoc)

install() {
	local missing=()
	for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
	((${#missing[@]})) || return 0
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# rename_by_mac MAC NAME: the lab interface of this VM, under a stable name.
rename_by_mac() {
	local mac=$1 name=$2 dev
	[[ -e /sys/class/net/$name ]] && return 0
	dev=$(ip -o link | awk -v m="$mac" 'tolower($0) ~ "link/ether " m { sub(/:$/, "", $2); sub(/@.*/, "", $2); print $2; exit }')
	[[ -n $dev ]] || { echo "provision: no interface with MAC $mac" >&2; exit 1; }
	ip link set "$dev" down
	ip link set "$dev" name "$name"
}

# workload NAME PREFIX [HOSTS]: a namespace behind this server, as in the namespace lab.
workload() {
	local name=$1 prefix=$2 hosts=${3:-1}
	if [[ ! -e /run/netns/$name ]]; then
		ip netns add "$name"
		ip link add "$name" type veth peer name eth0 netns "$name"
	fi
	ip netns exec "$name" "$LIB/workload.sh" --if eth0 --prefix "$prefix" --hosts "$hosts"
}

# The VM's name (provision.sh sets it, not Vagrant: Vagrant's Debian
# hostname step also restarts every interface, 80 s under software emulation).
if [[ -n ${PSL_HOSTNAME:-} && $(hostname) != "$PSL_HOSTNAME" ]]; then
	echo "$PSL_HOSTNAME" >/etc/hostname
	hostname "$PSL_HOSTNAME"
	sed -i "/^127\.0\.1\.1[[:space:]]/d" /etc/hosts
	echo "127.0.1.1 $PSL_HOSTNAME" >>/etc/hosts
fi

install "${packages[@]}"
case $role in
inet)
	# The lab's traffic tool (vagrant/test.sh serves answers from here).
	if [[ -n ${PSL_STAGE:-} && -x $REPO/$PSL_STAGE/usr/local/bin/labtraffic ]]; then
		cp "$REPO/$PSL_STAGE/usr/local/bin/labtraffic" /usr/local/bin/
	fi
	rename_by_mac 02:00:00:00:01:10 inet0
	"$LIB/inet.sh" --if inet0 --gw 203.0.113.1 \
		--addr 203.0.113.10/24 --addr 203.0.113.11/24 --addr 203.0.113.12/24 --addr 203.0.113.13/24
	;;
router)
	steer=s1
	[[ ${1:-} == --steer ]] && steer=$2
	case $steer in
	hash) hops=192.0.2.11,192.0.2.12,192.0.2.13 ;;
	s[1-3]) hops=192.0.2.$((10 + ${steer#s})) ;;
	*) echo "provision: --steer wants s1..s3 or hash" >&2; exit 1 ;;
	esac
	rename_by_mac 02:00:00:00:01:01 inet0
	rename_by_mac 02:00:00:00:00:01 dc0
	"$LIB/router.sh" --inet-if inet0 --inet-addr 203.0.113.1/24 --dc-if dc0 --dc-addr 192.0.2.1/24 --dc-mtu 1600 \
		--shared 198.51.100.0/24 --servers "$hops"
	;;
server)
	n=${1:?server number}
	rename_by_mac "02:00:00:00:00:$((10 + n))" dc0
	workload "w$n" "100.64.$n.0/24"
	workload "v$n" "100.64.$((10 + n)).0/28" 4
	"$LIB/server.sh" --uplink dc0 --mtu 1600 --addr "192.0.2.$((10 + n))/24" --gw 192.0.2.1 --shared 198.51.100.0/24 \
		--workload "w$n=100.64.$n.0/24" --workload "v$n=100.64.$((10 + n)).0/28"
	if [[ -n ${PSL_STAGE:-} ]]; then
		# Built once on the host (same Debian release) and installed there into
		# a staging directory (meson install --destdir): copied as it is.
		[[ -x $REPO/$PSL_STAGE/usr/sbin/portsliced ]] || { echo "provision: no usr/sbin/portsliced in $REPO/$PSL_STAGE" >&2; exit 1; }
		tar -C "$REPO/$PSL_STAGE" -cf - . | tar -C / -xf - --keep-directory-symlink --no-same-owner
	else
		install "${build_packages[@]}"
		# Build out of the synced tree, so `meson test -C /var/tmp/portslice-build --suite lab` runs here.
		if [[ ! -d /var/tmp/portslice-build ]]; then
			meson setup /var/tmp/portslice-build "$REPO" --prefix=/usr --sysconfdir=/etc
		fi
		ninja -C /var/tmp/portslice-build -j2
		# Installed as an operator would (docs/operations.md): binaries, unit, bus policy, man pages.
		meson install -C /var/tmp/portslice-build --quiet
	fi
	mkdir -p /etc/portslice
	"$LIB/fleet.sh" --server "s$n" --uplink dc0 >/etc/portslice/portslice.toml
	# vN is a stateless source: its first inside address keeps to the port
	# block the plan gives it (as in tests/lab/demo.sh), else the leak guard
	# drops what it sends from other ports.
	block=$(portslicectl plan --json --config /etc/portslice/portslice.toml |
		jq -r --arg i "100.64.$((10 + n)).2" '.sources[] | .assignments[]? | select(.inside.first == $i and .inside.last == $i) | "\(.ports.first)-\(.ports.last)"')
	[[ $block =~ ^[0-9]+-[0-9]+$ ]] || { echo "provision: no port block for 100.64.$((10 + n)).2 in the plan" >&2; exit 1; }
	ip netns exec "v$n" sysctl -qw net.ipv4.ip_local_port_range="${block/-/ }"
	getent group portslice >/dev/null || groupadd --system portslice
	if systemctl cat portsliced.service >/dev/null 2>&1; then
		systemctl daemon-reload
		systemctl reload dbus
		systemctl enable portsliced
		systemctl restart portsliced
	else
		portsliced --config /etc/portslice/portslice.toml --apply-once
	fi
	;;
*)
	echo "provision: unknown role $role (inet, router, server)" >&2
	exit 1
	;;
esac
echo "provision: $role ${*} done"
