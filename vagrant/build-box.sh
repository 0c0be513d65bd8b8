#!/bin/bash
# SPDX-License-Identifier: MIT
# Builds the lab's Debian 12 libvirt box from Debian packages (mmdebstrap, no download at `vagrant up`) and adds it to Vagrant.
#
# sudo vagrant/build-box.sh [--name NAME] [--out DIR] [--force | --if-needed] [--no-add]
#
# The box holds an unpartitioned ext4 root as qcow2 (box.img) plus the
# kernel and initrd it boots directly (vmlinuz, initrd.img: libvirt's direct
# kernel boot, no boot loader), and a Vagrantfile that points the libvirt
# provider at them. Inside: systemd, openssh-server, the vagrant user with
# Vagrant's insecure key and password-less sudo, DHCP on eth0 (the management
# network) only, and every package the lab's provisioning and portslice's
# binaries need, so provisioning installs nothing (the VMs have no route out).
# Packages come from the host's own APT sources, so the guest runs the same
# Debian release and library versions as the host that builds portslice.
#
# Default name: portslice/bookworm-lab (what vagrant/Vagrantfile uses unless
# PSL_BOX says otherwise). Output: DIR/portslice-bookworm-lab.box (default DIR
# /var/lib/portslice-vagrant). Needs root (mmdebstrap's root mode, chown).
# --if-needed does nothing when Vagrant has the box in this script's format
# (BOX_FORMAT below, written into the box), else builds and adds it anew.
set -euo pipefail

NAME=portslice/bookworm-lab
OUT=/var/lib/portslice-vagrant
FORCE=0
ADD=1
IF_NEEDED=0
# What the box's layout is; a box of another format is rebuilt by --if-needed
# (and so by vagrant/test.sh). 2: small initramfs, trimmed modules, zstd qcow2;
# 3: systemd-networkd on the management NIC instead of ifupdown.
BOX_FORMAT=3
while (($#)); do
	case $1 in
	--name) NAME=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	--force) FORCE=1; shift ;;
	--if-needed) IF_NEEDED=1; shift ;;
	--no-add) ADD=0; shift ;;
	*) sed -n '3,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
	esac
done
[[ $(id -u) == 0 ]] || { echo "build-box: run as root (mmdebstrap, file ownership in the image)" >&2; exit 1; }

step() { printf '== build-box: %s\n' "$*" >&2; }

if ((IF_NEEDED)); then
	have=$(cat "${VAGRANT_HOME:-$HOME/.vagrant.d}/boxes/${NAME//\//-VAGRANTSLASH-}"/*/libvirt/format 2>/dev/null || true)
	if [[ $have == "$BOX_FORMAT" ]]; then
		step "Vagrant has $NAME in format $BOX_FORMAT"
		exit 0
	fi
	step "Vagrant has no $NAME in format $BOX_FORMAT${have:+ (it has format $have)}: building it"
	FORCE=1
fi

# Tools on the host (Debian packages; .ci/install-deps lists them too).
need=(mmdebstrap:mmdebstrap mkfs.ext4:e2fsprogs qemu-img:qemu-utils)
missing=()
for n in "${need[@]}"; do command -v "${n%%:*}" >/dev/null || missing+=("${n#*:}"); done
if ((${#missing[@]})); then
	step "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
fi

file=$OUT/${NAME//\//-}.box
mkdir -p "$OUT"
if [[ -f $file && $FORCE == 0 ]]; then
	step "$file exists (--force rebuilds it)"
else
	WORK=$(mktemp -d "$OUT/build.XXXXXX")
	trap 'rm -rf "$WORK"' EXIT
	root=$WORK/root
	box=$WORK/box
	mkdir -p "$box"

	packages=(
		# boot, login, management network
		linux-image-amd64 systemd-sysv udev dbus openssh-server sudo
		iproute2 procps kmod rsync ca-certificates less
		# the lab's role scripts (tests/lab/lib) and the demo's checks
		nftables conntrack ethtool iputils-ping tcpdump jq bpftool xdp-tools
		# what portsliced, portslicectl and labtraffic link (built on the host)
		libtomlplusplus3 libnftnl11 libmnl0 libnetfilter-conntrack3 libbpf1 libelf1 zlib1g
		libsdbus-c++1 libsystemd0 libstdc++6 libcurl4
	)
	step "mmdebstrap bookworm (${#packages[@]} packages and their dependencies)"
	# The host's deb822 sources (same mirror and security suite as the host).
	sources=()
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources; do
		[[ -f $f ]] && grep -qs 'debian' "$f" && sources+=("$f")
	done
	t0=$SECONDS
	local_pkgs=$(IFS=,; echo "${packages[*]}")
	# A small initramfs, configured before the kernel is installed so that it
	# is built once: only what mounts the root file system (virtio_pci,
	# virtio_blk, ext4) instead of MODULES=most. Under software emulation
	# unpacking Debian's default one (36 MB zstd, 130 MB inside) and its udev
	# coldplug took one guest 92 s to its login prompt, against 20 s with this
	# one (docs/performance.md).
	overlay=$WORK/overlay
	mkdir -p "$overlay/etc/initramfs-tools/conf.d" "$overlay/etc/initramfs-tools/hooks"
	printf 'MODULES=list\nCOMPRESS=gzip\n' >"$overlay/etc/initramfs-tools/conf.d/portslice-lab.conf"
	cat >"$overlay/etc/initramfs-tools/hooks/portslice-lab" <<'HOOK'
#!/bin/sh
# portslice lab box (vagrant/build-box.sh): the modules that mount the virtio root disk.
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
for m in virtio_pci virtio_blk ext4; do
	force_load "$m"
done
HOOK
	chmod 755 "$overlay/etc/initramfs-tools/hooks/portslice-lab"
	mmdebstrap --quiet --variant=apt --include="$local_pkgs" \
		--setup-hook="sync-in $overlay /" \
		--customize-hook='chroot "$1" useradd -m -s /bin/bash -G sudo vagrant' \
		--customize-hook='echo vagrant:vagrant | chroot "$1" chpasswd' \
		bookworm "$root" "${sources[@]}"
	step "mmdebstrap took $((SECONDS - t0)) s"

	# The vagrant user: Vagrant's insecure key (Vagrant swaps it for a key of its
	# own at the first `vagrant up`) and sudo without a password.
	key=$(find /usr/share/rubygems-integration /usr/share/vagrant /opt/vagrant -name vagrant.pub -path '*keys*' 2>/dev/null | head -1 || true)
	[[ -n $key ]] || { echo "build-box: Vagrant's insecure public key (keys/vagrant.pub) not found: is vagrant installed?" >&2; exit 1; }
	install -d -m 700 "$root/home/vagrant/.ssh"
	install -m 600 "$key" "$root/home/vagrant/.ssh/authorized_keys"
	chroot "$root" chown -R vagrant:vagrant /home/vagrant/.ssh
	echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$root/etc/sudoers.d/vagrant"
	chmod 440 "$root/etc/sudoers.d/vagrant"
	# sshd: no DNS look-ups (no resolver on the isolated networks), fast logins.
	echo 'UseDNS no' >"$root/etc/ssh/sshd_config.d/vagrant.conf"

	# Root file system and the management NIC: eth0 (net.ifnames=0 on the kernel
	# command line), DHCP from libvirt's dnsmasq by systemd-networkd (as soon as
	# the NIC appears; ifupdown's networking.service waited for udev to settle:
	# 24 s of a boot with five guests on two cores). The lab NICs match no
	# .network file, so networkd leaves them alone: vagrant/provision.sh
	# renames and configures them.
	echo '/dev/vda / ext4 defaults,noatime 0 1' >"$root/etc/fstab"
	mkdir -p "$root/etc/systemd/network"
	cat >"$root/etc/systemd/network/10-mgmt.network" <<'EOF'
[Match]
Name=eth0

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
	chroot "$root" systemctl enable --quiet systemd-networkd.service
	ln -sf /dev/null "$root/etc/systemd/system/systemd-networkd-wait-online.service"
	echo psl-box >"$root/etc/hostname"
	printf '127.0.0.1 localhost\n127.0.1.1 psl-box\n' >"$root/etc/hosts"
	: >"$root/etc/resolv.conf"
	# Boot time under software emulation: no timers or jobs that only cost CPU here.
	for u in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer e2scrub_reap.service \
		fstrim.timer logrotate.timer dpkg-db-backup.timer systemd-timesyncd.service \
		systemd-pstore.service modprobe@drm.service modprobe@fuse.service modprobe@efi_pstore.service; do
		ln -sf /dev/null "$root/etc/systemd/system/$u"
	done
	# ssh host keys are made at build time; each box copy shares them (a lab box).
	# What the box holds, so vagrant/test.sh can tell whether it still has every
	# library the host's build links (a new dependency means a new box).
	chroot "$root" dpkg-query -W -f '${Package}\n' | sort >"$box/packages.txt"
	echo "$BOX_FORMAT" >"$box/format"
	# Kernel modules for hardware a libvirt guest does not have (GPUs, sound,
	# media, Wi-Fi and Ethernet cards, USB, SCSI, InfiniBand...): 230 of the
	# image's 640 MB. What the lab uses stays: virtio, veth, netfilter, bpf, ipip.
	modules=$(echo "$root"/usr/lib/modules/*/kernel)
	for d in sound drivers/gpu drivers/media drivers/net/wireless drivers/net/ethernet drivers/infiniband \
		drivers/usb drivers/scsi drivers/iio drivers/staging drivers/comedi drivers/isdn drivers/mtd \
		drivers/target drivers/video drivers/hwmon drivers/bluetooth drivers/nfc drivers/net/can \
		drivers/net/wwan drivers/net/usb net/bluetooth net/mac80211 net/wireless; do
		rm -rf "${modules:?}/$d"
	done
	chroot "$root" depmod -a "$(basename "$(dirname "$modules")")"
	chroot "$root" apt-get clean
	rm -rf "$root/var/lib/apt/lists/"* "$root/usr/share/doc/"* "$root/usr/share/man/"* "$root/usr/share/locale/"*

	kernel=$(readlink -f "$root/vmlinuz")
	initrd=$(readlink -f "$root/initrd.img")
	[[ -f $kernel && -f $initrd ]] || { echo "build-box: no kernel or initrd in the image" >&2; exit 1; }
	cp "$kernel" "$box/vmlinuz"
	cp "$initrd" "$box/initrd.img"
	chmod 644 "$box/vmlinuz" "$box/initrd.img"

	step "ext4 image"
	used_mb=$(du -sm "$root" | cut -f1)
	size_mb=$((used_mb + 1536)) # room for the project's binaries, logs and captures
	mkfs.ext4 -q -L psl-root -d "$root" "$WORK/root.raw" "${size_mb}M"
	# zstd clusters: 5 times faster to write than zlib's, as small.
	qemu-img convert -c -O qcow2 -o compression_type=zstd "$WORK/root.raw" "$box/box.img"
	rm -f "$WORK/root.raw"
	virtual=$(( (size_mb + 1023) / 1024 ))

	cat >"$box/metadata.json" <<EOF
{"provider": "libvirt", "format": "qcow2", "virtual_size": $virtual}
EOF
	# The box's own Vagrantfile: direct kernel boot from the files beside it.
	cat >"$box/Vagrantfile" <<'EOF'
# SPDX-License-Identifier: MIT
# The portslice lab box (vagrant/build-box.sh): direct kernel boot of the Debian kernel shipped beside this file.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.kernel = File.join(__dir__, "vmlinuz")
    libvirt.initrd = File.join(__dir__, "initrd.img")
    libvirt.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0 biosdevname=0 quiet"
    libvirt.disk_bus = "virtio"
  end
end
EOF
	step "packing $file"
	# Not compressed again: the qcow2 clusters are.
	tar -C "$box" -cf "$file.tmp" metadata.json Vagrantfile box.img vmlinuz initrd.img packages.txt format
	mv "$file.tmp" "$file"
	ls -l "$file" >&2
fi

if ((ADD)); then
	step "vagrant box add $NAME"
	vagrant box add --force --provider libvirt --name "$NAME" "$file" >&2
fi
step "took $SECONDS s"
echo "$file"
