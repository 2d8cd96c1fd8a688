#!/bin/sh
# Make podman run pasta-net where it would run pasta.
#
#   install.sh [PASTA_NET]            for the current user: ~/.local/libexec/pasta-net/pasta
#                                     -> PASTA_NET, plus a containers.conf drop-in naming it
#   install.sh --system [PASTA_NET]   for everyone (as root): /usr/local/libexec/podman/pasta,
#                                     first in podman's default search list, no config needed
#   install.sh --uninstall [--system] remove what the matching install added
#
# PASTA_NET defaults to the pasta-net found on PATH. podman only checks that a file named
# "pasta" exists in helper_binaries_dir; pasta-net behaves as pasta when called so.
set -eu

usage() {
	sed -n '2,10s/^# \{0,1\}//p' "$0" >&2
	exit 2
}

system=no
action=install
while [ $# -gt 0 ]; do
	case "$1" in
	--system) system=yes ;;
	--uninstall) action=uninstall ;;
	-h | --help) usage ;;
	-*) echo "install.sh: unknown option $1" >&2; usage ;;
	*) break ;;
	esac
	shift
done
[ $# -le 1 ] || usage

if [ "$system" = yes ]; then
	dir=/usr/local/libexec/podman
	conf=
else
	: "${HOME:?HOME is not set}"
	dir="$HOME/.local/libexec/pasta-net"
	conf="${XDG_CONFIG_HOME:-$HOME/.config}/containers/containers.conf.d/50-pasta-net.conf"
fi

if [ "$action" = uninstall ]; then
	# Only our own symlink: never a real pasta someone installed there.
	if [ -L "$dir/pasta" ] && readlink "$dir/pasta" | grep -q 'pasta-net'; then
		rm -f "$dir/pasta"
	fi
	if [ -n "$conf" ]; then rm -f "$conf"; fi
	exit 0
fi

target="${1:-$(command -v pasta-net || true)}"
if [ -z "$target" ]; then
	echo "install.sh: pasta-net is not on PATH; give its path (python3 -m pip install . first)" >&2
	exit 1
fi
case "$target" in
/*) ;;
*) target="$(cd "$(dirname "$target")" && pwd)/$(basename "$target")" ;;
esac
if [ ! -x "$target" ]; then
	echo "install.sh: $target is not executable" >&2
	exit 1
fi
if [ -e "$dir/pasta" ] && [ ! -L "$dir/pasta" ]; then
	echo "install.sh: $dir/pasta exists and is not a symlink; not replacing it" >&2
	exit 1
fi

mkdir -p "$dir"
ln -sfn "$target" "$dir/pasta"
if [ -n "$conf" ]; then
	mkdir -p "$(dirname "$conf")"
	here="$(cd "$(dirname "$0")" && pwd)"
	sed "s|@PASTA_DIR@|$dir|" "$here/containers.conf" >"$conf"
fi

echo "pasta -> $target in $dir${conf:+; podman configuration in $conf}"
"$dir/pasta" --version | head -n 1
