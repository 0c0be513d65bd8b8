#!/bin/bash
# SPDX-License-Identifier: MIT
# Runs libvirtd (and virtlogd) inside a network and mount namespace of their own, so the Vagrant lab touches nothing of the host's network.
#
# sudo vagrant/libvirt-ns.sh up   [--ns NAME]   start the namespace and the daemons
# sudo vagrant/libvirt-ns.sh exec [--ns NAME] CMD...   run CMD in the namespace, LIBVIRT_DEFAULT_URI and VAGRANT_DOTFILE_PATH set
# sudo vagrant/libvirt-ns.sh down [--ns NAME]   destroy every domain and network, stop the daemons, delete the namespace
# sudo vagrant/libvirt-ns.sh uri  [--ns NAME]   print the libvirt URI of the namespaced daemon
#
# NAME defaults to psl-vlab. The daemons see the namespace's own interfaces
# only: the bridges libvirt makes, the dnsmasq it starts and the iptables rules
# it writes all live in that network namespace, and the host's root namespace
# gains no interface, route or rule. They also run in a private mount
# namespace in which /etc/libvirt, /run/libvirt, /var/lib/libvirt,
# /var/log/libvirt and /var/cache/libvirt are directories under
# /var/lib/portslice-vagrant/NAME, so a libvirtd of the host (if any) is
# neither seen nor disturbed. Their configuration: QEMU runs as root without
# cgroups or a security driver (no systemd, no AppArmor here), clients on the
# socket need no polkit. `vagrant` and `virsh` must run in the namespace too
# (`exec`): the VMs' management network is reachable only from there.
# No systemd needed: the daemons are started by hand (-d) and stopped by PID.
set -euo pipefail

cmd=${1:-}
shift || true
NS=psl-vlab
if [[ ${1:-} == --ns ]]; then NS=$2; shift 2; fi
[[ $NS =~ ^[a-z0-9-]{1,15}$ ]] || { echo "libvirt-ns: --ns wants [a-z0-9-], at most 15 characters" >&2; exit 2; }
STATE=/var/lib/portslice-vagrant/$NS
URI="qemu:///system?socket=$STATE/run/libvirt-sock"
[[ $(id -u) == 0 ]] || { echo "libvirt-ns: run as root (network namespaces, libvirtd)" >&2; exit 1; }

log() { printf '== libvirt-ns: %s\n' "$*" >&2; }

# Vagrant's state of the lab's machines lives with the daemon that runs them
# (`down` deletes both), not in vagrant/.vagrant.
in_ns() { ip netns exec "$NS" env LIBVIRT_DEFAULT_URI="$URI" VAGRANT_DOTFILE_PATH="${VAGRANT_DOTFILE_PATH:-$STATE/vagrant}" "$@"; }

# pidof_file FILE: the PID in FILE if that process still runs.
pid_alive() {
	local pid
	[[ -f $1 ]] || return 1
	pid=$(<"$1")
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

configure() {
	rm -rf "$STATE/etc"
	mkdir -p "$STATE"/{etc,run,lib,log,cache}
	cp -a /etc/libvirt/. "$STATE/etc/"
	# No network or domain of the host's configuration comes along.
	rm -rf "$STATE/etc/qemu/networks/"* "$STATE/etc/qemu/"*.xml "$STATE/etc/qemu/autostart" 2>/dev/null || true
	mkdir -p "$STATE/etc/qemu/networks/autostart"
	cat >>"$STATE/etc/qemu.conf" <<'EOF'

# portslice vagrant/libvirt-ns.sh: no systemd, cgroups or AppArmor in this
# namespace; QEMU reads the box's kernel from Vagrant's home as root.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
EOF
	cat >>"$STATE/etc/libvirtd.conf" <<'EOF'

# portslice vagrant/libvirt-ns.sh: root clients on the namespace's own socket.
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
EOF
}

up() {
	if [[ -n $(pid_alive "$STATE/run/libvirtd.pid" || true) ]]; then
		log "libvirtd already runs in $NS"
		return 0
	fi
	[[ -e /run/netns/$NS ]] || ip netns add "$NS"
	ip -n "$NS" link set lo up
	configure
	log "starting virtlogd and libvirtd in network namespace $NS"
	# ip netns exec gives a mount namespace of its own; unshare makes a private
	# one in which libvirt's directories are this namespace's.
	ip netns exec "$NS" unshare --mount --propagation private bash -c '
		set -e
		s=$1
		mkdir -p /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt
		mount --bind "$s/etc" /etc/libvirt
		mount --bind "$s/run" /run/libvirt
		mount --bind "$s/lib" /var/lib/libvirt
		mount --bind "$s/log" /var/log/libvirt
		mount --bind "$s/cache" /var/cache/libvirt
		virtlogd -d -p /run/libvirt/virtlogd.pid
		# Its QEMU guests inherit the lowest priority: the host stays responsive.
		nice -n 19 libvirtd -d -p /run/libvirt/libvirtd.pid
	' bash "$STATE" </dev/null
	for _ in $(seq 1 100); do
		[[ -S $STATE/run/libvirt-sock ]] && in_ns virsh -q version >/dev/null 2>&1 && break
		sleep 0.2
	done
	in_ns virsh -q version >/dev/null || { echo "libvirt-ns: libvirtd did not answer on $STATE/run/libvirt-sock" >&2; exit 1; }
	log "libvirtd answers: $URI"
}

down() {
	if [[ -S $STATE/run/libvirt-sock && -e /run/netns/$NS ]]; then
		local d n
		for d in $(in_ns virsh -q list --all --name 2>/dev/null); do
			in_ns virsh -q destroy "$d" >/dev/null 2>&1 || true
			in_ns virsh -q undefine "$d" --remove-all-storage --nvram >/dev/null 2>&1 ||
				in_ns virsh -q undefine "$d" >/dev/null 2>&1 || true
		done
		for n in $(in_ns virsh -q net-list --all --name 2>/dev/null); do
			in_ns virsh -q net-destroy "$n" >/dev/null 2>&1 || true
			in_ns virsh -q net-undefine "$n" >/dev/null 2>&1 || true
		done
	fi
	local f pid
	for f in libvirtd virtlogd; do
		pid=$(pid_alive "$STATE/run/$f.pid" || true)
		[[ -n $pid ]] && kill "$pid"
	done
	# Whatever is left in the namespace was started by these daemons (QEMU, dnsmasq).
	if [[ -e /run/netns/$NS ]]; then
		for _ in $(seq 1 50); do
			[[ -z $(ip netns pids "$NS" 2>/dev/null) ]] && break
			sleep 0.1
		done
		for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
		ip netns del "$NS"
	fi
	rm -rf "$STATE"
	log "$NS removed"
}

case $cmd in
up) up ;;
down) down ;;
uri) echo "$URI" ;;
exec)
	(($#)) || { echo "libvirt-ns: exec wants a command" >&2; exit 2; }
	[[ -e /run/netns/$NS ]] || { echo "libvirt-ns: no namespace $NS (run up first)" >&2; exit 1; }
	in_ns "$@"
	;;
*) sed -n '3,21p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
