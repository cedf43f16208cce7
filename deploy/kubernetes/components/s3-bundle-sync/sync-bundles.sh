#!/bin/sh
# EXAMPLE: copy bundles from object storage into /bundles, each one atomically.
#   sync-bundles.sh once   copy what is there, point /bundles/current at the newest, exit
#   sync-bundles.sh loop   then copy new bundles every $SYNC_INTERVAL_S seconds, forever
# A bundle is downloaded into /bundles/.staging-NAME (the server's --watch-dir skips
# dot-folders) and renamed into place when complete, so the server never sees half a
# bundle. Bundle folder names should sort by age (`irec export`'s default version,
# UTC time + hash, does). Old bundles are kept: prune them if the emptyDir fills up.
set -eu

: "${BUNDLE_SOURCE:?set BUNDLE_SOURCE, e.g. s3://my-bucket/irec/bundles}"
DEST="${BUNDLE_DIR:-/bundles}"
INTERVAL="${SYNC_INTERVAL_S:-60}"

copy_new_bundles() {
    for name in $(aws s3 ls "$BUNDLE_SOURCE/" | awk '$1 == "PRE" { sub("/$", "", $2); print $2 }'); do
        [ -e "$DEST/$name" ] && continue
        echo "copying bundle $name"
        aws s3 sync --only-show-errors "$BUNDLE_SOURCE/$name" "$DEST/.staging-$name"
        mv "$DEST/.staging-$name" "$DEST/$name"
    done
}

case "${1:-once}" in
    once)
        copy_new_bundles
        newest=$(ls "$DEST" | grep -vx current | sort | tail -n 1)
        if [ -z "$newest" ]; then
            echo "no bundle under $BUNDLE_SOURCE" >&2
            exit 1
        fi
        ln -sfn "$newest" "$DEST/current"
        echo "current -> $newest"
        ;;
    loop)
        while true; do
            sleep "$INTERVAL"
            copy_new_bundles || echo "bundle copy failed; retrying in ${INTERVAL}s" >&2
        done
        ;;
    *)
        echo "usage: $0 once|loop" >&2
        exit 2
        ;;
esac
