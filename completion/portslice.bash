# SPDX-License-Identifier: MIT
# bash completion of portslicectl and portsliced, read from their --help at completion time so that it never drifts from the parser.

# Commands (at the top level) and options of a program or one of its commands.
_portslice_words()
{
	"$@" --help 2>/dev/null | awk '
		/^Subcommands:/ { commands = 1; next }
		/^[^ ]/ { commands = 0 }
		commands && /^  [a-z]/ { print $1 }
		/^  -/ { n = split($1, names, ","); for (i = 1; i <= n; i++) print names[i] }'
}

# The name of the value an option takes (FILE, DIR, ...), empty for a flag.
_portslice_value_of()
{
	local option=$1
	shift
	"$@" --help 2>/dev/null | awk -v option="$option" '
		/^  -/ { n = split($1, names, ","); for (i = 1; i <= n; i++) if (names[i] == option && $2 ~ /^[A-Z]/) print $2 }'
}

_portslice()
{
	local cur prev words cword
	_init_completion -s || return

	local program=${words[0]} command= i
	if [[ $program == *portslicectl ]]; then
		for ((i = 1; i < cword; i++)); do
			if [[ ${words[i]} == -* ]]; then
				# The value of an option before the command (--config FILE) is not the command.
				[[ ${words[i]} != *=* && -n $(_portslice_value_of "${words[i]}" "$program") ]] && ((i++))
				continue
			fi
			command=${words[i]}
			break
		done
	fi
	local -a scope=("$program")
	[[ -n $command ]] && scope+=("$command")

	if [[ $prev == --* ]]; then
		case $(_portslice_value_of "$prev" "${scope[@]}") in
		FILE) _filedir; return ;;
		DIR) _filedir -d; return ;;
		"") ;;
		*) return ;; # a name or number: nothing to offer
		esac
	fi
	if [[ $cur == -* || -z $command ]]; then
		COMPREPLY=($(compgen -W "$(_portslice_words "${scope[@]}")" -- "$cur"))
	fi
}
complete -F _portslice portslicectl portsliced
