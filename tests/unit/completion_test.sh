#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The installed bash completion offers the commands and options the built programs have, and files after --config.
set -u
build=$1 script=$2 rules=$3
if [[ ! -r /usr/share/bash-completion/bash_completion ]]; then
	echo "SKIP: bash-completion is not installed"
	exit 77
fi
# shellcheck source=/dev/null
source /usr/share/bash-completion/bash_completion
# shellcheck source=/dev/null
source "$script"
PATH="$build/src/ctl:$build/src/daemon:$PATH"

# The completions offered for a command line whose last word is being typed.
offered()
{
	COMP_WORDS=("$@")
	COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
	COMP_LINE="$*"
	COMP_POINT=${#COMP_LINE}
	COMPREPLY=()
	_portslice "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
	printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' ' | sed 's/ $//'
}

failed=0
expect()
{
	local want=$1
	shift
	local got
	got=$(offered "$@")
	if [[ $got != "$want" ]]; then
		echo "FAIL: '$*': offered '$got', expected '$want'"
		failed=1
	else
		echo "ok: '$*' -> $got"
	fi
}

expect "stats status" portslicectl st
expect "set-owner" portslicectl set
expect "--config --help --json --server" portslicectl plan --
expect "--help --json --prometheus" portslicectl stats --
expect "--drain-seconds" portsliced --dr
expect "--apply-once" portsliced --apply
expect "" portslicectl plan --server ''
cd "$rules" || exit 1
expect "three-servers.nft three-servers.toml" portslicectl check --config three-
expect "three-servers.nft three-servers.toml" portsliced --config three
expect "three-servers.nft three-servers.toml" portslicectl --config three-
expect "check" portslicectl --config three-servers.toml che
expect "--config --help --json --server" portslicectl --config three-servers.toml plan --
all=$(offered portslicectl '')
for command in check plan dump owner geofeed status reload set-owner stats --help --version; do
	[[ " $all " == *" $command "* ]] || { echo "FAIL: '$command' missing from '$all'"; failed=1; }
done
exit $failed
