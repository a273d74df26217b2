#!/usr/bin/env bash
# deploy.sh SOURCE [ROOT] [UNIT]: a capistrano/fabric-style deploy onto a sockherd service.
#
#   1. copy SOURCE into ROOT/releases/<UTC timestamp> (a real deploy uploads or rsyncs here);
#   2. flip ROOT/current to it atomically (symlink to a temporary name, then rename);
#   3. `systemctl reload UNIT`: it blocks until the new generation serves, and fails (the old
#      generation still serving) when the new release does not start;
#   4. on failure: point `current` back at the previous release, so a later restart does not
#      start the broken one, and exit non-zero: the deploy failed, loudly;
#   5. on success: keep the KEEP newest releases (default 5), delete older ones. Deleting the
#      release the old generation ran from is safe: every generation is pinned to its release.
#
# ROOT defaults to /srv/app and UNIT to app, as in units/.
set -euo pipefail

src=${1:?usage: deploy.sh SOURCE [ROOT] [UNIT]}
root=${2:-/srv/app}
unit=${3:-app}
keep=${KEEP:-5}

release=$(date -u +%Y%m%d%H%M%S%N)
mkdir -p "$root/releases"
cp -a "$src/." "$root/releases/.$release.tmp"
mv "$root/releases/.$release.tmp" "$root/releases/$release"

previous=$(readlink "$root/current" 2>/dev/null || true)
flip() {
  ln -sfn "$1" "$root/.current.new"
  mv -T "$root/.current.new" "$root/current"
}
flip "releases/$release"

if ! systemctl reload "$unit"; then
  echo "deploy.sh: reload of $unit failed: the previous release keeps serving;" \
       "current points back at ${previous:-nothing}; see: journalctl -u $unit SOCKHERD_EVENT=rollback" >&2
  if [ -n "$previous" ]; then flip "$previous"; fi
  exit 1
fi
echo "deploy.sh: $unit serves release $release"

# Prune: the newest $keep releases stay, and never the one current points to.
current=$(basename "$(readlink "$root/current")")
ls -1 "$root/releases" | grep -v '^\.' | sort -r | tail -n +"$((keep + 1))" | while read -r old; do
  if [ "$old" != "$current" ]; then rm -rf "${root:?}/releases/$old"; fi
done
