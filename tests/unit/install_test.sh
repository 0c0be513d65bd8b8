#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# `meson install` puts the unit, bus policy, activation file, sysusers.d entry, man pages, completion and example config where the system reads them, for the configured prefix and for another one.
set -u
source_root=$1 build=$2
command -v jq >/dev/null || { echo "SKIP: jq is not installed"; exit 77; }

failed=0
# The install destinations of a configured build directory, one per line.
destinations()
{
	meson introspect --installed "$1" | jq -r '.[]'
}

expect_installed()
{
	local list=$1 path=$2
	if grep -qxF "$path" <<<"$list"; then
		echo "ok: $path"
	else
		echo "FAIL: $path is not installed; the plan is:"
		sed 's/^/  /' <<<"$list"
		failed=1
	fi
}

check()
{
	local dir=$1 prefix=$2 list
	list=$(destinations "$dir")
	local unitdir sysusersdir
	unitdir=$(pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null || echo /lib/systemd/system)
	sysusersdir=$(pkg-config --variable=sysusersdir systemd 2>/dev/null || echo /usr/lib/sysusers.d)
	expect_installed "$list" "$unitdir/portsliced.service"
	expect_installed "$list" "$sysusersdir/portslice.conf"
	expect_installed "$list" /usr/share/dbus-1/system.d/org.portslice.Egress1.conf
	expect_installed "$list" /usr/share/dbus-1/system-services/org.portslice.Egress1.service
	expect_installed "$list" "$prefix/sbin/portsliced"
	expect_installed "$list" "$prefix/sbin/portslicectl"
	expect_installed "$list" "$prefix/share/man/man8/portsliced.8"
	expect_installed "$list" "$prefix/share/man/man8/portslicectl.8"
	expect_installed "$list" /usr/share/bash-completion/completions/portslicectl
	local etc=$prefix/etc
	[[ $prefix == /usr ]] && etc=/etc
	expect_installed "$list" "$etc/portslice/portslice.toml.example"
}

check "$build" "$(meson introspect --buildoptions "$build" | jq -r '.[] | select(.name == "prefix") | .value')"

# Another prefix: the programs move, what systemd and dbus read does not.
other=$(mktemp -d)
trap 'rm -rf "$other"' EXIT
if meson setup "$other" "$source_root" --prefix=/opt/portslice -Dtests=disabled >"$other.log" 2>&1; then
	check "$other" /opt/portslice
else
	cat "$other.log"
	failed=1
fi
rm -f "$other.log"
exit $failed
