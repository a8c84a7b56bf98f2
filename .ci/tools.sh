#!/usr/bin/env bash
# Installs the tools CI needs beyond cargo and pip into .ci/.tools/ (git-ignored), each pinned
# by version and sha256. Idempotent: a tool already there at its pinned version is left alone.
#
# promtool (`promtool check rules` / `promtool test rules` on charts/quiver/alerts/): from
# Debian's `prometheus` package, downloaded with apt-get (not installed: the server is not
# needed) and unpacked with dpkg -x. Bumping it: set the version apt-cache policy prometheus
# shows and the sha256sum of the .deb apt-get download gets.
set -euo pipefail
cd "$(dirname "$0")"
TOOLS="$PWD/.tools"
mkdir -p "$TOOLS/bin"

PROMETHEUS_DEB_VERSION="2.42.0+ds-5+b6"
PROMETHEUS_DEB_SHA256="3b0e0255b059a7696bd4a139a4a4eb24d71df067936a61ece5093559cbc7991c"

install_promtool() {
    local bin="$TOOLS/bin/promtool" stamp="$TOOLS/promtool.version"
    if [[ -x $bin && "$(cat "$stamp" 2>/dev/null)" == "$PROMETHEUS_DEB_VERSION" ]]; then
        return
    fi
    local work
    work="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" RETURN
    local apt=(apt-get -qq -o APT::Sandbox::User=root)
    if ! (cd "$work" && "${apt[@]}" download "prometheus=$PROMETHEUS_DEB_VERSION") 2>/dev/null; then
        # A fresh machine may have no package lists yet.
        "${apt[@]}" update
        (cd "$work" && "${apt[@]}" download "prometheus=$PROMETHEUS_DEB_VERSION") || {
            echo "tools.sh: cannot download prometheus=$PROMETHEUS_DEB_VERSION (gone from the archive? bump the pin)" >&2
            return 1
        }
    fi
    local deb
    deb="$(ls "$work"/prometheus_*.deb)"
    echo "$PROMETHEUS_DEB_SHA256  $deb" | sha256sum --check --quiet || {
        echo "tools.sh: $deb does not have the pinned sha256 $PROMETHEUS_DEB_SHA256" >&2
        return 1
    }
    dpkg-deb -x "$deb" "$work/x"
    install -m 0755 "$work/x/usr/bin/promtool" "$bin"
    echo "$PROMETHEUS_DEB_VERSION" >"$stamp"
}

install_promtool
"$TOOLS/bin/promtool" --version 2>&1 | head -1
