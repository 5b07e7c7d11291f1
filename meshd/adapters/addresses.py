"""This host's underlay addresses, the candidates for the endpoints a node announces."""

from __future__ import annotations

import ipaddress

from meshd.adapters.rtnl import open_iproute

ARPHRD_NONE = 0xFFFE
"""Link type of layer-3 tunnels without a link layer: WireGuard (kernel and wireguard-go's tun),
Tailscale, Nebula, OpenVPN in tun mode."""


async def underlay_addresses(
    exclude_interfaces: set[str], netns: str | None = None
) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """Global and unique-local addresses (with their prefix length, which says which peers are
    on the same link) of interfaces that are up, except `exclude_interfaces`
    (the mesh interface), loopback and tunnels (an endpoint inside another VPN would carry the
    mesh through that VPN's tunnel, and vanish with it; an operator who wants that sets
    `endpoints`); link-local addresses can't be endpoints across links.
    (pyroute2's synchronous IPRoute runs an event loop of its own and cannot be used inside
    ours, hence the async socket.)"""
    out: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
    ipr = open_iproute(netns)
    try:
        links = [m async for m in await ipr.link("dump")]
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links}
        usable = {
            link["index"]
            for link in links
            if link["flags"] & 1 and link["ifi_type"] != ARPHRD_NONE  # IFF_UP
        }
        for msg in [m async for m in await ipr.addr("dump")]:
            if msg["index"] not in usable or names.get(msg["index"]) in exclude_interfaces:
                continue
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if text is None:
                continue
            ip = ipaddress.ip_address(text)
            if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
                continue
            iface = ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}")
            if iface not in out:
                out.append(iface)
    finally:
        ipr.close()
    return out
