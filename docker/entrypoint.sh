#!/bin/sh
# Container entrypoint: check what the container needs, then become meshd (PID 1 keeps its
# signal handlers: SIGTERM = graceful leave, exit 0).
#
# Configuration: /etc/meshd/meshd.toml if mounted, and MESHD_* environment variables (see
# `meshd --help-config`). Node files are expected at /etc/meshd/{ca.pub,node.cert,identity.key}
# unless MESHD_CA_PUBLIC_KEY / MESHD_CERTIFICATE / MESHD_IDENTITY_KEY point elsewhere.
set -eu

case "${1:-}" in
    meshctl) shift; exec /opt/meshd/bin/meshctl "$@" ;;
    -h|--help|--help-config) exec /opt/meshd/bin/meshd "$@" ;;
esac

if [ ! -c /dev/net/tun ]; then
    echo "meshd-entrypoint: /dev/net/tun is missing; run the container with --device /dev/net/tun" >&2
    exit 2
fi
if ! ip link add meshd-captest type dummy 2>/dev/null && ! ip tuntap add mode tun name meshd-captest 2>/dev/null; then
    echo "meshd-entrypoint: no CAP_NET_ADMIN; run the container with --cap-add NET_ADMIN" >&2
    exit 2
fi
ip link del meshd-captest 2>/dev/null || true

exec /opt/meshd/bin/meshd "$@"
