"""Node-to-node networking: the RPC port and the gossip sockets.

The pieces live in :mod:`dkron.io_trio.addr` (addresses, backoff),
:mod:`dkron.io_trio.framed` (framed TCP helpers), :mod:`dkron.io_trio.rpc`
(the RPC endpoint) and :mod:`dkron.io_trio.gossip` (the SWIM endpoint); this
module is their one import point for the agent.
"""

from __future__ import annotations

from dkron.io_trio.addr import (
    DEFAULT_GOSSIP_PORT,
    DEFAULT_RPC_PORT,
    AddressError,
    advertise_addr,
    backoff_delay,
    local_ipv4_addresses,
    parse_addr,
    private_ipv4,
    resolve_bind_addr,
)
from dkron.io_trio.gossip import GossipEndpoint
from dkron.io_trio.rpc import (
    HELLO_CODEC,
    PROTOCOL_VERSION,
    Channel,
    ClockedHello,
    Hello,
    Inbox,
    Incoming,
    RpcConfig,
    RpcEndpoint,
)

__all__ = [
    "DEFAULT_GOSSIP_PORT",
    "DEFAULT_RPC_PORT",
    "HELLO_CODEC",
    "PROTOCOL_VERSION",
    "AddressError",
    "Channel",
    "ClockedHello",
    "GossipEndpoint",
    "Hello",
    "Inbox",
    "Incoming",
    "RpcConfig",
    "RpcEndpoint",
    "advertise_addr",
    "backoff_delay",
    "local_ipv4_addresses",
    "parse_addr",
    "private_ipv4",
    "resolve_bind_addr",
]
