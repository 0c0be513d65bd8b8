#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds the Debian packages with dpkg-buildpackage, runs lintian (no error allowed), unpacks both into a throwaway root and checks where their files land.
set -u
source_root=$1
for tool in dpkg-buildpackage dh lintian; do
	command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed (dpkg-dev, debhelper, lintian)"; exit 77; }
done
version=$(sed -n '1s/.*(\(.*\)).*/\1/p' "$source_root/debian/changelog")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tree=$work/portslice-${version%-*}
mkdir -p "$tree"
# The tracked files only: a build directory inside the source must not end up in the package.
if git -C "$source_root" rev-parse >/dev/null 2>&1; then
	git -C "$source_root" ls-files -z --cached --others --exclude-standard |
		(cd "$source_root" && xargs -0 cp --parents -t "$tree" 2>/dev/null)
else
	cp -r "$source_root"/. "$tree"
fi
rm -rf "$tree"/build*
echo "building the packages of portslice $version"
# ccache when there is one: the package's objects are those of any build of the same tree.
if command -v ccache >/dev/null; then
	export CC="ccache gcc" CXX="ccache g++"
fi
if ! (cd "$tree" && CCACHE_BASEDIR=$work dpkg-buildpackage -b -us -uc -j"$(nproc)") >"$work/build.log" 2>&1; then
	tail -50 "$work/build.log"
	echo "FAIL: dpkg-buildpackage"
	exit 1
fi
failed=0
changes=$(ls "$work"/portslice_*.changes)
lintian --tag-display-limit 0 "$changes" >"$work/lintian.log" 2>&1
cat "$work/lintian.log"
if grep -q '^E: ' "$work/lintian.log"; then
	echo "FAIL: lintian reports errors"
	failed=1
fi

root=$work/root
mkdir -p "$root"
expect()
{
	local package=$1 path=$2
	if [[ -e $root/$package/$path || -L $root/$package/$path ]]; then
		echo "ok: $package: $path"
	else
		echo "FAIL: $package has no $path; it has:"
		(cd "$root/$package" && find . -type f -o -type l | sort | sed 's/^/  /')
		failed=1
	fi
}
for deb in "$work"/portslice_*.deb "$work"/portslice-fleet_*.deb; do
	package=$(dpkg-deb -f "$deb" Package)
	dpkg-deb -x "$deb" "$root/$package"
done
for path in usr/sbin/portsliced usr/sbin/portslicectl lib/systemd/system/portsliced.service \
	usr/share/dbus-1/system.d/org.portslice.Egress1.conf \
	usr/share/dbus-1/system-services/org.portslice.Egress1.service \
	usr/share/dbus-1/interfaces/org.portslice.Egress1.xml usr/lib/sysusers.d/portslice.conf \
	usr/share/man/man8/portsliced.8.gz usr/share/man/man8/portslicectl.8.gz \
	usr/share/bash-completion/completions/portslicectl etc/portslice/portslice.toml.example; do
	expect portslice "$path"
done
for path in usr/sbin/portslice-fleetd lib/systemd/system/portslice-fleetd.service usr/share/man/man8/portslice-fleetd.8.gz; do
	expect portslice-fleet "$path"
done
# The daemon in the package runs: its --version is the changelog's upstream version.
got=$("$root/portslice/usr/sbin/portsliced" --version)
if [[ $got != "portsliced ${version%-*}" ]]; then
	echo "FAIL: the packaged portsliced says '$got'"
	failed=1
fi
exit $failed
