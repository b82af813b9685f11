"""The agent: one nursery tree that drives the cores over real disks, sockets and processes.

A single core task owns the protocol cores of the node — Raft and the
replicated state machine on servers, the planner and the execution leader
while leading, and the execution worker everywhere — and runs the sans-IO
contract in a loop: wait for input or the earliest deadline, feed the cores,
then carry out their output in order: **persist** (one fsync for everything
the batch asks to store: group commit), **send**, **apply**.  Everything
else — the HTTP API, the RPC port's inboxes, gossip events, executor
processes — talks to the core task through one bounded channel, so no two
tasks ever touch a core at once.  SWIM is the exception: its core is driven
by the gossip endpoint's own task and only read (members, tags) from here.

Leadership is explicit: the planner and the execution leader exist only
while this node leads, and only after its state has applied everything
committed before its term (the barrier).  Losing leadership drops them at
once, so the scheduler can never run on a non-leader.

Servers find each other through gossip: every node publishes Dkron's tags
(``server``, ``rpc_addr``, ``port``, ``expect``...), ``bootstrap-expect``
starts Raft once that many servers agree, and the leader adds alive servers
to Raft and removes the ones that left (``dkron.proto_sansio.servers``).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import heapq
import json
import logging
import math
import os
import pathlib
import random
import signal
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import cbor2
import trio

from dkron import __version__
from dkron.config import AgentConfig, ConfigError, read_token_file
from dkron.io_trio.executors import get_executor
from dkron.io_trio.executors.base import (
    EXECUTOR_NOT_PRESENT,
    NO_EXECUTOR,
    ExecResult,
    OutputRing,
    RunContext,
    final_output,
)
from dkron.io_trio.forward import FORWARD_CODEC, Op, Reply, Request
from dkron.io_trio.http_api import (
    ApiAuth,
    HttpApi,
    KeyringError,
    KeyringOp,
    MemberInfo,
    MemberStatus,
    NotLeaderError,
    Unavailable,
)
from dkron.io_trio.journal import RunJournal
from dkron.io_trio.metrics import AgentGauges, Metrics
from dkron.io_trio.net import (
    DEFAULT_GOSSIP_PORT,
    AddressError,
    Channel,
    GossipEndpoint,
    Incoming,
    RpcEndpoint,
    advertise_addr,
    parse_addr,
    resolve_bind_addr,
)
from dkron.io_trio.notify import Notifier
from dkron.io_trio.processors import run_processors
from dkron.io_trio.storage import RaftStorage, StorageError
from dkron.io_trio.streams import EventHub
from dkron.model import Execution, Job, execution_to_json
from dkron.proto_sansio.codec import decode_message, encode_message
from dkron.proto_sansio.errors import LocalProtocolError, RemoteProtocolError
from dkron.proto_sansio.execution import (
    EXECUTION_CODEC,
    Cancel,
    Dispatch,
    ExecMessage,
    ExecutionConfig,
    ExecutionLeader,
    ExecutionWorker,
    ForgetRun,
    LiveOutput,
    MemberView,
    Output,
    Propose,
    ResultAck,
    RunKey,
    Send,
    StartRun,
    StopRun,
    select_targets,
)
from dkron.proto_sansio.planner import Planner, from_ns, to_ns
from dkron.proto_sansio.raft import (
    AppendLog,
    Entry,
    EntryKind,
    HardState,
    Membership,
    PersistedState,
    PersistRecord,
    RaftConfig,
    RaftNode,
    Role,
    SaveHardState,
    SaveSnapshot,
    Snapshot,
    encode_membership,
)
from dkron.proto_sansio.scheduler import SchedulerConfig
from dkron.proto_sansio.servers import (
    BootstrapDecision,
    ChangeKind,
    ServerInfo,
    bootstrap_decision,
    parse_rpc_addr,
    reconcile_changes,
    server_info,
)
from dkron.proto_sansio.swim import (
    LAN,
    LOCAL,
    WAN,
    EventKind,
    JoinResult,
    LeaveComplete,
    Member,
    MemberEvent,
    SwimAction,
    SwimConfig,
    SwimNode,
    UserEvent,
)
from dkron.proto_sansio.swim import MemberStatus as SwimStatus
from dkron.proto_sansio.swim_wire import Keyring, key_fingerprint
from dkron.state import (
    ApplyResult,
    ClaimSlot,
    ClaimSlots,
    Command,
    DeleteJob,
    ExecutionFinished,
    ExecutionsFinished,
    ExecutionsStarted,
    ExecutionStarted,
    RetryScheduled,
    StateMachine,
    ToggleJob,
    UpsertJob,
    decode_command,
    each_applied,
    encode_command,
)

__all__ = ["Agent", "AgentError", "AgentOptions", "http_listen_addr", "recover_peers", "run"]

log = logging.getLogger("dkron.agent")

SNAPSHOT_EVERY = 10_000
#: Restored records encoded per step between core turns (a few milliseconds).
ENCODE_AHEAD_BATCH = 2_000
RECONCILE_INTERVAL = 1.0
LEAVE_ANSWER_GRACE = 1.0
#: While leaving, how often the agent says how many local executions it waits for.
LEAVE_PROGRESS_EVERY = 5.0
FORWARD_TIMEOUT = 30.0
#: Results of the last entries a forwarded write may still ask for (a follower
#: learns its entry's index from the leader's reply, possibly after applying it).
RECENT_RESULTS = 4096
#: The leader's own batches (claims, starts, results): no API call waits for
#: them, they are most of the log, and each result holds a copy of every job it
#: touched, so keeping 4,096 of them held about 165 MB on a server running
#: 200 jobs a second.
_NOT_AWAITED = (ClaimSlots, ExecutionsStarted, ExecutionsFinished)
#: How much of a running execution's live output ``/v1/busy`` shows (its end)...
BUSY_OUTPUT_BYTES = 4096
#: ...within this much for all of them: the answer to a follower is one RPC
#: frame, whose limit is 16 MiB, however many executions run.
BUSY_OUTPUT_TOTAL = 8 * 1024 * 1024
#: How long ``/v1/busy`` on a follower waits for the leader's output before
#: answering without it.
BUSY_OUTPUT_WAIT = 2.0
#: The leader claims a slot this long before it is due, so that the Raft
#: commit (an fsync) and the dispatch are done when the slot comes: at the
#: due instant only the run journal's fsync and the spawn remain.
#: Output chunks (up to 64 KiB each: a pipe read, an RPC output frame) that
#: may wait in the core's inbox at once.  The inbox counts items: without
#: this, a job printing fast while the core waits for the disk could park
#: 4,096 chunks there, 256 MiB.
OUTPUT_IN_INBOX = 64
CLAIM_LOOKAHEAD = timedelta(milliseconds=100)
#: A worker holds a dispatch that arrives before its slot at most its own
#: lookahead plus this long (a bound against clock skew between the leader
#: and the worker).
EARLY_HOLD_SLACK = timedelta(seconds=1)
#: How long an agent waits for the leader's RPC port before it reports its
#: executions through another server instead (the lease is 10 s).
REPORT_DETOUR_AFTER = 2.0
#: Jobs that start (or stop) matching no node in one turn, and runs lost for
#: one reason in one entry, are logged one per line up to this many, then
#: summed up in one line.
_TARGETLESS_LINES = 5
#: What the leader sends a worker (and a server relays when asked to).
_TO_WORKER = (Dispatch, ResultAck, Cancel)
#: Tags the agent owns; a user tag of one of these names is dropped (Dkron overwrites them).
RESERVED_TAGS = frozenset(
    {
        "role",
        "dc",
        "region",
        "version",
        "server",
        "bootstrap",
        "expect",
        "rpc_addr",
        "port",
        "keyring",
    }
)
#: The user event that carries a keyring operation to every member.
KEYRING_EVENT = "dkron:keyring"
KEYRING_FILE = "keyring.json"
_KEYRING_OPS = {KeyringOp.INSTALL: 1, KeyringOp.USE: 2, KeyringOp.REMOVE: 3}
PROFILES: Mapping[str, SwimConfig] = {"lan": LAN, "wan": WAN, "local": LOCAL}


class AgentError(Exception):
    """A condition that stops the agent with exit status 1 (join failed, bad address...)."""


def _listen_error(
    addr: tuple[str, int], flag: str, group: BaseExceptionGroup[OSError]
) -> AgentError:
    """A port that cannot be bound stops the agent with one line naming the flag
    that chose it, not a traceback (the listeners start in nurseries, so the
    ``OSError`` may arrive in a group)."""
    exc = next(e for e in _leaves(group) if isinstance(e, OSError))
    where = _format_addr(addr[0] or "*", addr[1])
    return AgentError(f"cannot listen on {where} ({flag}): {exc.strerror or exc}")


class AgentOptions(Protocol):
    """The settings the agent reads (``dkron.config.AgentConfig`` provides them)."""

    @property
    def node_name(self) -> str: ...
    @property
    def data_dir(self) -> str: ...
    @property
    def server(self) -> bool: ...
    @property
    def bootstrap_expect(self) -> int: ...
    @property
    def bootstrap(self) -> bool: ...
    @property
    def http_addr(self) -> str: ...
    @property
    def bind_addr(self) -> str: ...
    @property
    def advertise_addr(self) -> str: ...
    @property
    def rpc_port(self) -> int: ...
    @property
    def advertise_rpc_port(self) -> int: ...
    @property
    def join(self) -> tuple[str, ...]: ...
    @property
    def retry_join(self) -> tuple[str, ...]: ...
    @property
    def retry_max(self) -> int: ...
    @property
    def retry_interval(self) -> float: ...
    @property
    def encrypt(self) -> str: ...
    @property
    def profile(self) -> str: ...
    @property
    def serf_reconnect_timeout(self) -> float: ...
    @property
    def tags(self) -> Mapping[str, str]: ...
    @property
    def region(self) -> str: ...
    @property
    def datacenter(self) -> str: ...
    @property
    def raft_multiplier(self) -> int: ...
    @property
    def enable_prometheus(self) -> bool: ...
    @property
    def ui(self) -> bool: ...
    @property
    def https_cert(self) -> str: ...
    @property
    def https_key(self) -> str: ...
    @property
    def rpc_tls_ca(self) -> str: ...
    @property
    def rpc_tls_cert(self) -> str: ...
    @property
    def rpc_tls_key(self) -> str: ...
    @property
    def api_token(self) -> tuple[str, ...]: ...
    @property
    def api_token_file(self) -> str: ...
    @property
    def api_read_token(self) -> tuple[str, ...]: ...
    @property
    def api_read_token_file(self) -> str: ...
    @property
    def basic_auth(self) -> tuple[str, ...]: ...


@dataclasses.dataclass(slots=True)
class _Waiter:
    event: trio.Event
    result: ApplyResult | None = None


@dataclasses.dataclass(slots=True)
class _Flag:
    event: trio.Event
    result: bool = False


@dataclasses.dataclass(slots=True)
class _Call:
    event: trio.Event
    reply: Reply | None = None


def _unreachable(down_for: float) -> bool:
    """Down long enough to go round it; a peer the RPC port does not know yet
    (gossip has not said where it listens) is not unreachable, only unknown."""
    return REPORT_DETOUR_AFTER <= down_for < math.inf


def _wall() -> datetime:
    return datetime.now(UTC)


def http_listen_addr(value: str) -> tuple[str | None, int]:
    """Dkron's ``--http-addr``: ``:8080`` (every interface) or ``host:port``."""
    text = value or ":8080"
    if text.startswith(":"):
        _, port = parse_addr("0.0.0.0" + text, default_port=8080)
        return None, port
    host, port = parse_addr(text, default_port=8080)
    return host, port


def _format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _load_pem(context: ssl.SSLContext, flags: tuple[str, str], cert: str, key: str) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise AgentError(
            f"{flags[0]}/{flags[1]}: cannot load {cert!r} and {key!r}: {exc}"
        ) from None


def https_context(opts: AgentOptions) -> ssl.SSLContext | None:
    """The API's TLS context from ``--https-cert``/``--https-key``, or None for plain HTTP."""
    if not opts.https_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_pem(context, ("--https-cert", "--https-key"), opts.https_cert, opts.https_key)
    return context


def rpc_tls_contexts(opts: AgentOptions) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
    """Mutual TLS on the RPC port: (server, client) contexts that both demand a CA-signed
    certificate; the client also checks that the server's names the peer dialled."""
    if not opts.rpc_tls_ca:
        return None
    flags = ("--rpc-tls-cert", "--rpc-tls-key")
    contexts = []
    for purpose in (ssl.PROTOCOL_TLS_SERVER, ssl.PROTOCOL_TLS_CLIENT):
        context = ssl.SSLContext(purpose)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=opts.rpc_tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise AgentError(f"--rpc-tls-ca: cannot load {opts.rpc_tls_ca!r}: {exc}") from None
        _load_pem(context, flags, opts.rpc_tls_cert, opts.rpc_tls_key)
        contexts.append(context)
    return contexts[0], contexts[1]


def api_auth(opts: AgentOptions) -> ApiAuth | None:
    """The API's credentials from the flags and token files (read now: they may change)."""
    try:
        tokens = opts.api_token
        if opts.api_token_file:
            tokens += read_token_file(opts.api_token_file)
        read_tokens = opts.api_read_token
        if opts.api_read_token_file:
            read_tokens += read_token_file(opts.api_read_token_file)
    except ConfigError as exc:
        raise AgentError(f"API token file: {exc}") from None
    try:
        auth = ApiAuth(tokens=tokens, read_tokens=read_tokens, basic=opts.basic_auth)
    except ValueError as exc:
        raise AgentError(f"--api-token/--basic-auth: {exc}") from None
    return auth if auth.enabled else None


def load_keyring(path: pathlib.Path, encrypt: str) -> Keyring | None:
    """The persisted keyring, else one seeded from ``--encrypt`` (Serf's keyring file).

    Once a keyring file exists it wins over ``--encrypt``: after a rotation
    the flag names a retired key.
    """
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return Keyring.from_base64(encrypt) if encrypt else None
    except (OSError, ValueError) as exc:
        raise AgentError(f"{path}: cannot read the gossip keyring: {exc}") from None
    if not isinstance(raw, list) or not raw or not all(isinstance(k, str) for k in raw):
        raise AgentError(f"{path}: expected a non-empty JSON list of base64 keys")
    try:
        keyring = Keyring.from_base64(raw[0], raw[1:])
    except (ValueError, LocalProtocolError) as exc:
        raise AgentError(f"{path}: invalid gossip key: {exc}") from None
    if encrypt and Keyring.from_base64(encrypt).primary not in keyring.keys:
        log.warning("--encrypt ignored: %s holds the gossip keys (rotated since)", path)
    return keyring


def _apply_keyring_op(keyring: Keyring, op: KeyringOp, key: bytes) -> None:
    if op is KeyringOp.INSTALL:
        keyring.add_key(key)
    elif op is KeyringOp.USE:
        keyring.add_key(key)  # the event may overtake its install
        keyring.use_key(key)
    else:
        keyring.remove_key(key)


def save_keyring(path: pathlib.Path, keyring: Keyring) -> None:
    """Write the keyring durably: a private temp file, fsync, rename, fsync the directory."""
    text = json.dumps([base64.b64encode(k).decode("ascii") for k in keyring.keys])
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def recover_peers(
    directory: pathlib.Path, persisted: PersistedState
) -> tuple[list[SaveSnapshot], dict[str, tuple[str, int]]] | None:
    """Dkron's ``peers.json`` recovery: force a new Raft configuration after losing quorum.

    Everything in the local log is treated as committed (as HashiCorp Raft's
    ``RecoverCluster`` does), folded into a snapshot at the last index, and
    that snapshot carries the configuration from the file.  Returns the
    record to persist and the peers' RPC addresses, or ``None`` without a
    file.  A malformed file is an :class:`AgentError` naming it.
    """
    path = directory / "peers.json"
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        peers: dict[str, tuple[str, int]] = {}
        if not isinstance(raw, list) or not raw:
            raise ValueError("expected a non-empty list of {id, address} objects")
        for item in raw:
            if not isinstance(item, dict):
                raise ValueError("expected a list of {id, address} objects")
            node_id, address = item.get("id"), item.get("address")
            if not isinstance(node_id, str) or not node_id or not isinstance(address, str):
                raise ValueError(f"entry {item!r} needs a string id and address")
            peers[node_id] = parse_addr(address, default_port=6868)
    except (OSError, ValueError, AddressError) as exc:
        raise AgentError(f"{path}: cannot recover from it: {exc}") from None
    state = StateMachine()
    snap = persisted.snapshot
    if snap is not None and snap.data:
        state.restore(snap.data)
    index, term = (snap.index, snap.term) if snap is not None else (0, 0)
    for entry in persisted.entries:
        if entry.kind is EntryKind.NORMAL:
            state.apply_entry(entry.index, entry.data)
        index, term = entry.index, entry.term
    membership = Membership(frozenset(peers), frozenset())
    return [SaveSnapshot(Snapshot(index, term, membership, state.snapshot()))], peers


class Agent:
    """One node.  ``run`` starts everything and returns when the node stops."""

    def __init__(
        self,
        opts: AgentOptions,
        *,
        rng: random.Random | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.opts = opts
        self.notifier = notifier
        self.metrics = Metrics(self._gauges) if opts.enable_prometheus else None
        self.name = opts.node_name
        self.rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        mult = max(1, opts.raft_multiplier)
        self.raft_config = RaftConfig(election_timeout=1.0 * mult, heartbeat_interval=0.1 * mult)
        self.exec_config = ExecutionConfig()
        self.user_tags = dict(opts.tags)
        self.tags: dict[str, str] = {}
        self.state = StateMachine()
        self.node: RaftNode | None = None
        self.storage: RaftStorage | None = None
        self.planner: Planner | None = None
        self.exec_leader: ExecutionLeader | None = None
        self.worker: ExecutionWorker | None = None
        self.swim: SwimNode | None = None
        self.gossip: GossipEndpoint | None = None
        self.rpc: RpcEndpoint | None = None
        self.keyring: Keyring | None = None
        self._keyring_lock = trio.Lock()
        self.journal = RunJournal(pathlib.Path(opts.data_dir) / "runs")
        self.paused = False
        self.http_port: int | None = None
        self.gossip_addr: tuple[str, int] | None = None
        self.rpc_addr: tuple[str, int] | None = None
        self.stopping = False
        self._barrier: int | None = None
        self._waiters: dict[int, _Waiter] = {}
        self._recent: OrderedDict[int, ApplyResult] = OrderedDict()
        #: the last entry applied to ``state`` (Raft's own counter runs ahead while we persist)
        self.applied_index = 0
        self._applied = trio.Event()
        self._output_changed = trio.Event()
        #: the journal's fsyncs never wait behind executor spawns for a worker thread
        self._disk = trio.CapacityLimiter(1)
        self.events = EventHub()
        self._last_leader: str | None = None
        self._runs: dict[RunKey, trio.CancelScope] = {}
        #: dispatches that arrived before their slot: (release wall ns, seq, src, msg)
        self._early: list[tuple[int, int, str, Dispatch]] = []
        self._relaying: set[str] = set()  # workers the leader reaches through another server
        self._targetless: set[str] = set()  # jobs logged as matching no node (on the leader)
        self._early_seq = 0
        self.claim_lookahead = CLAIM_LOOKAHEAD
        self._turn = 0  # the core loop's turns, for what is read once per turn
        self._views: tuple[int, list[MemberView]] = (-1, [])
        self._calls: dict[int, _Call] = {}
        self._call_ids = 0
        self._next_reconcile = 0.0
        self._bootstrap_pending = opts.server and opts.bootstrap_expect > 1
        self._bootstrap_busy = False
        self._pending_bootstrap: list[PersistRecord] = []
        self._joined = trio.Event()
        self._join_contacted = 0
        self._left = trio.Event()
        self._idle = trio.Event()
        self._send_in: trio.MemorySendChannel[tuple[str, Any]]
        self._recv_in: trio.MemoryReceiveChannel[tuple[str, Any]]
        self._send_in, self._recv_in = trio.open_memory_channel(4096)
        # Execution messages this node sends itself (leader and worker in one
        # process). The core task produces them and is the channel's only
        # reader, so they cannot wait for room in it: they queue here, as many
        # as the runs the core has in hand, and go first in its next turn.
        self._local: deque[tuple[str, Any]] = deque()
        # Taken before an output chunk enters the inbox, given back when the
        # core has handled it; a producer waits meanwhile (the executor's pipe
        # fills, the RPC output inbox drops frames).
        self._output_room = trio.Semaphore(OUTPUT_IN_INBOX)
        self._nursery: trio.Nursery | None = None

    # -- tags and members -------------------------------------------------------------

    def _make_tags(self, user: Mapping[str, str]) -> dict[str, str]:
        """Dkron's gossip tags (§4.6); the reserved ones always win over user tags."""
        assert self.rpc_addr is not None
        tags = {k: v for k, v in user.items() if k not in RESERVED_TAGS}
        tags.update(
            role="dkron",
            dc=self.opts.datacenter,
            region=self.opts.region,
            version=__version__,
            rpc_addr=_format_addr(*self.rpc_addr),
            port=str(self.rpc_addr[1]),
        )
        if self.keyring is not None:
            tags["keyring"] = ",".join(self.keyring.fingerprints())
        if self.opts.server:
            tags["server"] = "true"
            if self.opts.bootstrap or self.opts.bootstrap_expect == 1:
                tags["bootstrap"] = "1"
            elif self.opts.bootstrap_expect > 1:
                tags["expect"] = str(self.opts.bootstrap_expect)
        return tags

    def members(self) -> list[Member]:
        return [] if self.swim is None else self.swim.members()

    def _gauges(self) -> AgentGauges:
        node, swim = self.node, self.swim
        by_status: dict[str, int] = {}
        for m in self.members():
            key = m.status.name.lower()
            by_status[key] = by_status.get(key, 0) + 1
        return AgentGauges(
            raft_term=0 if node is None else node.term,
            raft_commit_index=0 if node is None else node.commit_index,
            raft_applied_index=self.applied_index,
            raft_last_index=0 if node is None else node.last_index,
            raft_is_leader=self.is_leader(),
            raft_voters=0 if node is None else len(node.membership.voters),
            members_by_status=by_status,
            swim_health_score=0 if swim is None else swim.awareness,
            swim_counters={} if swim is None else dict(swim.counters),
            rpc_counters={} if self.rpc is None else dict(self.rpc.counters),
            rpc_peers_down=0 if self.rpc is None else self.rpc.peers_down(),
            rpc_clock_offset_max=0.0 if self.rpc is None else self.rpc.max_clock_offset(),
            running_executions=len(self.state.running_executions()),
            jobs=self.state.job_count(),
            event_subscribers=self.events.subscribers,
        )

    def servers(self) -> list[ServerInfo]:
        return [s for m in self.members() if (s := server_info(m)) is not None]

    def _set_rpc_peer(self, member: Member) -> None:
        if self.rpc is None or member.name == self.name:
            return
        addr = parse_rpc_addr(member.tags, member.addr)
        if addr is not None:
            self.rpc.set_peer(member.name, addr)

    def reload_tags(self, tags: Mapping[str, str]) -> None:
        """SIGHUP: publish new user tags (the reserved ones are kept) with a new incarnation."""
        self.user_tags = dict(tags)
        self.tags = self._make_tags(self.user_tags)
        if self.swim is not None and self.gossip is not None and not self.swim.stopped:
            self.swim.set_tags(self.tags, trio.current_time())
            self.gossip.poke()

    # -- life cycle -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED) -> None:
        opts = self.opts
        data = pathlib.Path(opts.data_dir)
        try:
            bind = resolve_bind_addr(opts.bind_addr, default_port=DEFAULT_GOSSIP_PORT)
            advertise_addr(bind, opts.advertise_addr or None)  # fail before touching disk
        except AddressError as exc:
            raise AgentError(f"--bind-addr/--advertise-addr: {exc}") from None
        try:
            peers_from_file: dict[str, tuple[str, int]] = {}
            try:
                await trio.to_thread.run_sync(lambda: data.mkdir(parents=True, exist_ok=True))
                if opts.server:
                    peers_from_file = await self._open_raft(data / "raft")
                interrupted = await trio.to_thread.run_sync(self.journal.load)
            except OSError as exc:
                # Missing, read-only, full: one line naming the flag, not a traceback.
                raise AgentError(f"--data-dir {opts.data_dir}: {exc}") from None
            self.worker = ExecutionWorker(
                self.name,
                self.exec_config,
                now=trio.current_time(),
                wall_ns=to_ns(_wall()),
                interrupted=interrupted,
            )
            keyring_path = data / KEYRING_FILE
            self.keyring = await trio.to_thread.run_sync(load_keyring, keyring_path, opts.encrypt)
            if self.keyring is not None and not await trio.to_thread.run_sync(keyring_path.exists):
                await trio.to_thread.run_sync(save_keyring, keyring_path, self.keyring)
            try:
                self.gossip = await GossipEndpoint.open(bind)
            except* OSError as group:
                raise _listen_error(bind, "--bind-addr", group) from None
            try:
                await self._serve(bind, peers_from_file, task_status)
            finally:
                await self.gossip.aclose()
        finally:
            if self.storage is not None:
                with trio.CancelScope(shield=True):
                    await self.storage.aclose()

    async def _serve(
        self,
        bind: tuple[str, int],
        peers_from_file: Mapping[str, tuple[str, int]],
        task_status: trio.TaskStatus[Agent],
    ) -> None:
        opts = self.opts
        gossip = self.gossip
        assert gossip is not None
        # Port 0 binds a free port: advertise the one the socket got.
        adv = advertise_addr((bind[0], gossip.addr[1]), opts.advertise_addr or None)
        self.gossip_addr = adv
        tls = await trio.to_thread.run_sync(rpc_tls_contexts, opts)
        https = await trio.to_thread.run_sync(https_context, opts)
        auth = await trio.to_thread.run_sync(api_auth, opts)
        self.rpc = RpcEndpoint(
            self.name,
            rng=random.Random(self.rng.getrandbits(64)),
            server_ssl=None if tls is None else tls[0],
            client_ssl=None if tls is None else tls[1],
        )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                listen = await nursery.start(self.rpc.run, (bind[0], opts.rpc_port))
            except* OSError as group:
                raise _listen_error((bind[0], opts.rpc_port), "--rpc-port", group) from None
            self.rpc_addr = (adv[0], opts.advertise_rpc_port or listen[1])
            for peer, addr in peers_from_file.items():
                if peer != self.name:
                    self.rpc.set_peer(peer, addr)
            self.tags = self._make_tags(self.user_tags)
            self.swim = SwimNode(
                self.name,
                self._swim_config(),
                rng=random.Random(self.rng.getrandbits(64)),
                now=trio.current_time(),
                addr=adv[0],
                port=adv[1],
                tags=self.tags,
                keyring=self.keyring,
                incarnation=time.time_ns() // 1_000_000,
            )
            await nursery.start(functools.partial(gossip.run, self.swim, on_event=self._on_swim))
            for channel in Channel:
                nursery.start_soon(self._pump, channel)
            await nursery.start(self._core_loop)
            nursery.start_soon(self._encode_ahead)
            if opts.server:
                host, http_port = http_listen_addr(opts.http_addr)
                backend = _Backend(self)
                api = HttpApi(
                    backend, metrics=self.metrics, ui=self.opts.ui, auth=auth, keyring=backend
                )
                serve_api = functools.partial(api.serve, ssl_context=https)
                try:
                    listeners = await nursery.start(serve_api, host or None, http_port)
                except* OSError as group:
                    raise _listen_error((host or "", http_port), "--http-addr", group) from None
                self.http_port = listeners[0].socket.getsockname()[1]
                log.info("node %s serving the API on port %s", self.name, self.http_port)
            await self._join(opts.join, retry=False)
            nursery.start_soon(self._stay_joined)
            log.info(
                "node %s gossiping on %s, RPC on %s",
                self.name,
                _format_addr(*adv),
                _format_addr(*self.rpc_addr),
            )
            task_status.started(self)

    def _swim_config(self) -> SwimConfig:
        base = PROFILES.get(self.opts.profile, LAN)
        return dataclasses.replace(base, reconnect_timeout=self.opts.serf_reconnect_timeout)

    async def _open_raft(self, directory: pathlib.Path) -> dict[str, tuple[str, int]]:
        opts = self.opts
        initial = (
            PersistedState.bootstrap([self.name])
            if opts.bootstrap or opts.bootstrap_expect == 1
            else PersistedState.empty()
        )
        self.storage, persisted = await RaftStorage.open(directory, initial=initial)
        recovered = await trio.to_thread.run_sync(recover_peers, directory, persisted)
        peers: dict[str, tuple[str, int]] = {}
        if recovered is not None:
            records, peers = recovered
            await self.storage.persist(records)
            await self.storage.aclose()
            await trio.to_thread.run_sync((directory / "peers.json").unlink)
            self.storage, persisted = await RaftStorage.open(directory)
            log.warning("recovered the Raft configuration from peers.json: %s", sorted(peers))
        if persisted.snapshot is not None and persisted.snapshot.data:
            self.state.restore(persisted.snapshot.data)
        if persisted.snapshot is not None:
            self.applied_index = persisted.snapshot.index
        if persisted.snapshot is not None or persisted.entries:
            self._bootstrap_pending = False
        self.node = RaftNode(
            self.name, self.raft_config, rng=self.rng, now=trio.current_time(), persisted=persisted
        )
        # Entries past the snapshot are re-applied as the node learns they are committed.
        return peers

    async def _join(self, addresses: Sequence[str], *, retry: bool) -> bool:
        """Push-pull with the given seeds; True when at least one answered.

        As in Dkron, a ``--join`` that fails only logs a warning: the agent
        runs on alone, and members that start later can join it (servers
        started together must not die for having started first).  Only an
        exhausted ``--retry-join`` stops the agent.
        """
        swim, gossip = self.swim, self.gossip
        assert swim is not None and gossip is not None
        flag = "--retry-join" if retry else "--join"
        seeds: list[tuple[str, int]] = []
        for text in addresses:
            try:
                seeds.extend(await _resolve(text))
            except (OSError, AddressError) as exc:
                log.warning("%s %r: cannot resolve it: %s", flag, text, exc)
        seeds = [s for s in seeds if s != self.gossip_addr]
        if not seeds:
            return not addresses
        self._joined = trio.Event()
        swim.join(seeds, trio.current_time())
        gossip.poke()
        await self._joined.wait()
        if self._join_contacted == 0:
            log.warning("%s: no seed answered (%s)", flag, ", ".join(addresses))
            return False
        log.info("joined through %d of %d seeds", self._join_contacted, len(seeds))
        return True

    async def _retry_join(self) -> None:
        """Dkron's ``--retry-join``: try until a seed answers, ``retry_max`` times (0: forever)."""
        attempt = 0
        while True:
            attempt += 1
            if await self._join(self.opts.retry_join, retry=True):
                return
            if self.opts.retry_max and attempt >= self.opts.retry_max:
                raise AgentError(f"--retry-join: no seed answered after {attempt} attempts")
            await trio.sleep(self.opts.retry_interval)

    async def _stay_joined(self) -> None:
        """After ``--retry-join``, join the seeds again whenever no server is alive.

        Gossip never reconnects to members that left gracefully, so once every
        server has restarted (an upgrade, a single-server cluster's restart)
        the other agents would stay cut off for good and every run would find
        no target; Serf leaves them so until they are restarted.  An agent
        that sees no other server alive at one of its ``--retry-interval``
        checks tries its ``--join`` and ``--retry-join`` seeds again, at each
        check, until it sees one.
        """
        opts = self.opts
        if opts.retry_join:
            await self._retry_join()
        seeds = (*opts.join, *opts.retry_join)
        if not seeds:
            return
        cut_off = False
        while True:
            await trio.sleep(opts.retry_interval)
            if self.stopping:
                return
            if not self._cut_off():
                cut_off = False
                continue
            if not cut_off:
                log.warning(
                    "no other server is alive: joining the seeds again every %gs (%s)",
                    opts.retry_interval,
                    ", ".join(seeds),
                )
                cut_off = True
            await self._join(seeds, retry=True)

    def _cut_off(self) -> bool:
        """No other server alive, unless this is the cluster's only server."""
        alive = any(s.name != self.name and s.status is SwimStatus.ALIVE for s in self.servers())
        if alive:
            return False
        node = self.node
        return node is None or bool(node.membership.voters - {self.name})

    def _on_swim(self, action: SwimAction) -> None:
        """Gossip's events: called from the gossip task, handed to the core task."""
        if isinstance(action, JoinResult):
            self._join_contacted = action.contacted
            self._joined.set()
        elif isinstance(action, LeaveComplete):
            self._left.set()
        elif isinstance(action, UserEvent) and action.name == KEYRING_EVENT:
            if self._nursery is not None:
                self._nursery.start_soon(self._keyring_event, action.payload)
        elif isinstance(action, MemberEvent):
            if action.kind in (EventKind.JOIN, EventKind.UPDATE):
                self._set_rpc_peer(action.member)
            elif action.kind in (EventKind.LEAVE, EventKind.REAP) and self.rpc is not None:
                # Gone on purpose: nothing more to send it, and no reason to
                # keep dialling (and reporting) a port that was closed on purpose.
                self.rpc.remove_peer(action.member.name)
            try:
                self._send_in.send_nowait(("member", action))
            except trio.WouldBlock:
                log.warning("core busy: member event %s dropped", action.kind.value)

    async def _pump(self, channel: Channel) -> None:
        assert self.rpc is not None
        inbox = self.rpc.inbox(channel)
        async for item in inbox:
            if channel is Channel.REQUEST:
                self._on_request(item)
            elif channel is Channel.OUTPUT:
                await self._send_output(("in", item))
            else:
                await self._send_in.send(("in", item))

    async def _send_output(self, item: tuple[str, Any]) -> None:
        """Into the inbox once there is room for one more output chunk."""
        await self._output_room.acquire()
        try:
            await self._send_in.send(item)
        except BaseException:
            self._output_room.release()
            raise

    # -- the gossip keyring -----------------------------------------------------------

    def keyring_status(self) -> dict[str, object]:
        """Each local key with how many alive members hold it and use it as primary.

        Members publish their keys' fingerprints in the ``keyring`` tag (primary
        first); keys only others hold are counted under ``other_keys`` by fingerprint.
        """
        alive = [m for m in self.members() if m.status is SwimStatus.ALIVE]
        keyring = self.keyring
        if keyring is None:
            return {"encrypted": False, "num_nodes": len(alive), "keys": {}, "primary_keys": {}}
        names = {key_fingerprint(k): base64.b64encode(k).decode("ascii") for k in keyring.keys}
        keys = dict.fromkeys(names.values(), 0)
        primary = dict.fromkeys(names.values(), 0)
        other: dict[str, int] = {}
        for member in alive:
            held = [f for f in member.tags.get("keyring", "").split(",") if f]
            for i, fp in enumerate(held):
                if fp not in names:
                    other[fp] = other.get(fp, 0) + 1
                    continue
                keys[names[fp]] += 1
                if i == 0:
                    primary[names[fp]] += 1
        status: dict[str, object] = {
            "encrypted": True,
            "num_nodes": len(alive),
            "keys": keys,
            "primary_keys": {k: n for k, n in primary.items() if n},
        }
        if other:
            status["other_keys"] = other
        return status

    async def keyring_op(self, op: KeyringOp, key: bytes) -> int:
        """Apply here, then announce to every member as a user event (sealed with the
        current keyring, so only members holding a key can read it)."""
        keyring, swim, gossip = self.keyring, self.swim, self.gossip
        if keyring is None or swim is None or gossip is None:
            raise KeyringError("gossip encryption is not enabled (start the agents with --encrypt)")
        if op is KeyringOp.REMOVE and key == keyring.primary:
            raise KeyringError("cannot remove the primary key: use another key first")
        if op is KeyringOp.USE and key not in keyring.keys:
            raise KeyringError("the key is not installed: install it first")
        payload = bytes((_KEYRING_OPS[op],)) + key
        try:
            swim.send_user_event(KEYRING_EVENT, payload, trio.current_time())
        except LocalProtocolError as exc:
            raise KeyringError(f"cannot announce the operation: {exc}") from None
        gossip.poke()
        await self._keyring_event(payload)
        return sum(1 for m in swim.members() if m.status is SwimStatus.ALIVE)

    async def _keyring_event(self, payload: bytes) -> None:
        """Apply one announced keyring operation (idempotent): persist it, then use and
        publish it, so the keys a member advertises are the keys it restarts with."""
        keyring = self.keyring
        codes = {v: k for k, v in _KEYRING_OPS.items()}
        if keyring is None or not payload or payload[0] not in codes:
            return
        op, key = codes[payload[0]], payload[1:]
        async with self._keyring_lock:
            staged = Keyring(keyring.primary, keyring.keys[1:])
            try:
                _apply_keyring_op(staged, op, key)
            except LocalProtocolError as exc:
                log.warning(
                    "gossip keyring %s of %s refused: %s", op.value, key_fingerprint(key), exc
                )
                return
            if staged.keys == keyring.keys:  # a repeat, e.g. our own event coming back
                return
            path = pathlib.Path(self.opts.data_dir) / KEYRING_FILE
            await trio.to_thread.run_sync(save_keyring, path, staged)
            # Only this method changes the keyring and it holds the lock: this repeats
            # the staged change exactly.
            _apply_keyring_op(keyring, op, key)
            self.reload_tags(self.user_tags)
        log.info("gossip keyring: %s %s", op.value, key_fingerprint(key))

    async def leave(self) -> None:
        """Graceful leave (SIGTERM, ``dkron leave``): announce it, let local runs finish."""
        if self.stopping:
            return
        self.stopping = True
        swim, gossip = self.swim, self.gossip
        if swim is not None and gossip is not None and not swim.stopped:
            others = [
                m for m in swim.members() if m.name != self.name and m.status is SwimStatus.ALIVE
            ]
            swim.leave(trio.current_time())
            gossip.poke()
            if others:  # alone, there is nobody to tell
                with trio.move_on_after(swim.config.leave_broadcast_timeout + 2.0):
                    await self._left.wait()
        # Dkron waits for the local executions without a bound; their results
        # then need a leader to commit them, which gets a bound.
        worker = self.worker
        said = -math.inf
        while worker is not None and worker.running():
            # The core wakes this loop on every turn: say it every few seconds.
            if trio.current_time() - said >= LEAVE_PROGRESS_EVERY:
                said = trio.current_time()
                log.info("waiting for %d local executions", len(worker.running()))
            await self._idle_wait()
        with trio.move_on_after(10.0):
            while worker is not None and worker.outstanding_results():
                await self._idle_wait()

    async def _idle_wait(self) -> None:
        self._idle = trio.Event()
        with trio.move_on_after(1.0):
            await self._idle.wait()

    # -- the core task ----------------------------------------------------------------

    async def _core_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await self._flush()
        while True:
            items: list[tuple[str, Any]] = []
            if self._local:
                items.extend(self._local)
                self._local.clear()
                await trio.lowlevel.checkpoint()
            else:
                with trio.move_on_at(self._deadline()):
                    items.append(await self._recv_in.receive())
            while len(items) < 4096:  # take everything queued: one persist for all of it
                try:
                    items.append(self._recv_in.receive_nowait())
                except trio.WouldBlock:
                    break
            now = trio.current_time()
            self._turn += 1
            proposals: list[tuple[Command, _Waiter]] = []
            for it in items:
                if it[0] == "propose":
                    proposals.append(it[1])
                else:
                    self._handle(it, now)
            if proposals:
                self._propose_many(proposals, now)
            self._tick(now)
            await self._flush()
            self._idle.set()

    async def _encode_ahead(self) -> None:
        """Encode restored records for the next snapshot a batch at a time, between
        the core's turns (a restore at start-up or from the leader's snapshot)."""
        while True:
            if self.state.encode_ahead(ENCODE_AHEAD_BATCH):
                await trio.lowlevel.checkpoint()
            else:
                await trio.sleep(1.0)

    def _deadline(self) -> float:
        times = [trio.current_time() + RECONCILE_INTERVAL]
        if self.node is not None and (t := self.node.next_deadline()) is not None:
            times.append(t)
        if self.worker is not None and (t := self.worker.next_deadline()) is not None:
            times.append(t)
        if self.exec_leader is not None and (t := self.exec_leader.next_deadline()) is not None:
            times.append(t)
        if self.planner is not None and (w := self.planner.next_deadline()) is not None:
            times.append(trio.current_time() + max(0.0, (w - _wall()).total_seconds()))
        if self._early:
            wait_ns = self._early[0][0] - to_ns(_wall())
            times.append(trio.current_time() + max(0, wait_ns) / 1e9)
        return min(times) if times else math.inf

    def _handle(self, item: tuple[str, Any], now: float) -> None:
        kind, payload = item
        node = self.node
        worker = self.worker
        assert worker is not None
        if kind == "in":
            if payload.channel is Channel.OUTPUT:
                self._output_room.release()
            self._receive(payload, now)
        elif kind == "member":
            self._on_member(payload, now)
        elif kind == "exec":
            self._deliver_exec(self.name, payload, now)
        elif kind == "output":
            self._output_room.release()
            key, chunk = payload
            worker.output(key, chunk, now)
        elif kind == "finished":
            key, success, output = payload
            self._runs.pop(key, None)
            worker.finished(key, success=success, output=output, wall_ns=to_ns(_wall()), now=now)
        elif kind == "remove_peer":
            peer, flag = payload
            try:
                if node is None:
                    raise LocalProtocolError("not a server")
                node.remove(peer, now)
                flag.result = True
            except LocalProtocolError as exc:  # not leading, or a change is in progress
                log.warning("cannot remove %s: %s", peer, exc)
            flag.event.set()
        elif kind == "cancel":
            key, flag = payload
            lead = self.exec_leader
            flag.result = lead is not None and lead.cancel(key, now, to_ns(_wall()))
            flag.event.set()
        elif kind == "bootstrap":
            self._bootstrap(payload, now)

    def _propose_many(self, proposals: list[tuple[Command, _Waiter]], now: float) -> None:
        """Every write queued since the last turn becomes one batch of log entries."""
        node = self.node
        try:
            if node is None:
                raise LocalProtocolError("not a server")
            last = node.propose_batch([encode_command(cmd) for cmd, _ in proposals], now)
        except LocalProtocolError:
            for _, waiter in proposals:
                waiter.event.set()
            return
        first = last - len(proposals) + 1
        for index, (_, waiter) in enumerate(proposals, first):
            self._waiters[index] = waiter

    def _receive(self, item: Incoming, now: float) -> None:
        try:
            if item.channel is Channel.RAFT:
                if self.node is not None:
                    self.node.receive(decode_message(item.body), src=item.peer, now=now)
                return
            msg = EXECUTION_CODEC.decode(item.body)
        except RemoteProtocolError as exc:
            log.warning("dropping a malformed %s message from %s: %s", item.channel, item.peer, exc)
            return
        if isinstance(msg, ExecMessage):
            self._deliver_exec(item.peer, msg, now)

    def _relay_for(self, worker: str) -> str:
        """Where the leader sends a worker's messages: the worker itself, or,
        while its RPC port cannot be reached, another server that can reach it
        (which passes them on).  A route broken between the leader and one
        worker only then costs no dispatch."""
        rpc = self.rpc
        if rpc is None or worker == self.name or not _unreachable(rpc.down_for(worker)):
            if worker in self._relaying:
                self._relaying.discard(worker)
                log.info("sending to %s directly again", worker)
            return worker
        relays = self._reachable_servers(besides=worker)
        if not relays:
            return worker
        if worker not in self._relaying:
            self._relaying.add(worker)
            log.warning("cannot reach %s's RPC port: sending to it through %s", worker, relays[0])
        rpc.counters["sent_through_relay"] += 1
        return relays[0]

    def _reachable_servers(self, *, besides: str) -> list[str]:
        """Live servers other than this node and ``besides`` whose RPC connection
        from here is up: the ones to go round a broken route through."""
        rpc = self.rpc
        if rpc is None:
            return []
        return sorted(
            s.name
            for s in self.servers()
            if s.status is SwimStatus.ALIVE
            and s.name not in (self.name, besides)
            and rpc.down_for(s.name) == 0.0
        )

    def _ahead_of(self, peer: str) -> int:
        """How far this node's wall clock runs ahead of ``peer``'s (ns; 0 for itself)."""
        return 0 if self.rpc is None or peer == self.name else self.rpc.clock_offset(peer)

    def _deliver_exec(self, src: str, msg: ExecMessage, now: float) -> None:
        assert self.worker is not None
        if isinstance(msg, _TO_WORKER) and msg.key.node != self.name:
            # Relayed by a leader that cannot reach that worker: pass it on (once),
            # a dispatch's start-by time moved onto this node's clock, which is
            # the one the worker measures its own against.
            if self.node is not None and msg.key.node != src:
                if self.rpc is not None:
                    self.rpc.counters["relayed"] += 1
                if isinstance(msg, Dispatch):
                    msg = dataclasses.replace(msg, start_by=msg.start_by + self._ahead_of(src))
                self._send_exec(msg.key.node, msg)
            return
        wall_ns = to_ns(_wall())
        if isinstance(msg, Dispatch) and (msg.scheduled_time or 0) > wall_ns:
            # Claimed ahead (CLAIM_LOOKAHEAD): the run starts at its slot, not
            # before.  Until then the worker has not seen it — nothing is in the
            # run journal — so a crash meanwhile leaves a claimed, never-started
            # slot that the next leader dispatches again, as without lookahead.
            assert msg.scheduled_time is not None
            bound = (self.claim_lookahead + EARLY_HOLD_SLACK) // timedelta(microseconds=1) * 1000
            release = min(msg.scheduled_time, wall_ns + bound)
            self._early_seq += 1
            heapq.heappush(self._early, (release, self._early_seq, src, msg))
            return
        if isinstance(msg, Cancel) and self._early:
            # A cancel must not be overtaken by the dispatch it follows.
            held = [e for e in self._early if e[3].key != msg.key]
            if len(held) != len(self._early):
                heapq.heapify(held)
                self._early = held
        if isinstance(msg, _TO_WORKER):
            self.worker.receive(
                msg, src=src, now=now, wall_ns=wall_ns, ahead_ns=self._ahead_of(src)
            )
        elif self.exec_leader is not None:
            self.exec_leader.receive(msg, src=src, now=now, wall_ns=wall_ns)
        else:
            # Not leading: pass worker reports on to the leader, as Dkron's servers do.
            leader = None if self.node is None else self.node.leader_id
            if leader is not None and leader not in (self.name, src):
                self._send_exec(leader, msg)

    def _on_member(self, event: MemberEvent, now: float) -> None:
        log.info("member %s: %s", event.member.name, event.kind.value)
        m = event.member
        if self.metrics is not None:
            self.metrics.member_events.labels(event.kind.value.replace("-", "_")).inc()
        self.events.publish(
            {
                "type": "member",
                "event": event.kind.value,
                "member": {"name": m.name, "addr": m.addr, "status": int(m.status)},
            }
        )
        lead = self.exec_leader
        if lead is not None:
            if event.kind is EventKind.FAILED:
                lead.member_failed(m.name, now, to_ns(_wall()))
            elif event.kind in (EventKind.LEAVE, EventKind.REAP):
                lead.member_gone(m.name)
            elif event.kind is EventKind.JOIN:
                lead.member_alive(m.name)
        self._next_reconcile = now  # react now, not at the next interval
        self._maybe_bootstrap()

    def _tick(self, now: float) -> None:
        assert self.worker is not None
        node = self.node
        if node is not None:
            node.handle_timer(now)
        self._follow_leader(now)
        if self._early:
            self._release_early(now)
        self.worker.handle_timer(now)
        if self.exec_leader is not None:
            self.exec_leader.handle_timer(now, to_ns(_wall()))
        if self.planner is not None:
            for cmd in self.planner.tick(_wall()):
                self._propose_quietly(cmd, now)
            if self.planner.targetless or self._targetless:
                self._report_targetless(
                    self.planner.targetless, self.planner.scheduler.config.late_grace
                )
        if now >= self._next_reconcile:
            self._next_reconcile = now + RECONCILE_INTERVAL
            self._reconcile(now)
            self._maybe_bootstrap()

    def _report_targetless(self, targetless: Mapping[str, int], grace: timedelta) -> None:
        """Say when a job starts and stops finding a node to run on.

        Dkron's leader logs "no target nodes found" for every such run; here
        the slots wait for a node and are then counted missed as
        ``no_target``, so one line when it starts and one when it ends.  When
        a whole pool of workers goes, every job that ran on it starts at once:
        more than a few are summed up in one line.
        """
        started = sorted(targetless.keys() - self._targetless)
        ended = sorted(n for n in self._targetless - targetless.keys() if self.state.get_job(n))
        self._targetless = set(targetless)
        then = f"their runs wait for one (slots older than {grace.total_seconds():g} s are "
        then += "counted missed: no_target)"
        if len(started) > _TARGETLESS_LINES:
            log.warning(
                "%d jobs (%s, ...): no alive node in region %s matches their tags; %s",
                len(started),
                ", ".join(started[:_TARGETLESS_LINES]),
                self.opts.region,
                then,
            )
        else:
            for name in started:
                job = self.state.get_job(name)
                log.warning(
                    "job %s: no alive node in region %s matches its tags %s; %s",
                    name,
                    self.opts.region,
                    json.dumps({} if job is None else job.tags or {}, sort_keys=True),
                    then.replace("their", "its", 1),
                )
        if len(ended) > _TARGETLESS_LINES:
            shown = ", ".join(ended[:_TARGETLESS_LINES])
            log.info("%d jobs (%s, ...): a node matches their tags again", len(ended), shown)
        else:
            for name in ended:
                log.info("job %s: a node matches its tags again", name)

    def _release_early(self, now: float) -> None:
        """Hand the dispatches whose slot has come to the worker (all due ones at once:
        their starts share one journal write)."""
        worker = self.worker
        assert worker is not None
        wall_ns = to_ns(_wall())
        early = self._early
        while early and early[0][0] <= wall_ns:
            _, _, src, msg = heapq.heappop(early)
            worker.receive(msg, src=src, now=now, wall_ns=wall_ns, ahead_ns=self._ahead_of(src))

    def _follow_leader(self, now: float) -> None:
        """Where the worker reports: the Raft leader, else any live server (it forwards).

        A server knows the leader from Raft, an agent from its dispatches.
        When this node cannot reach that server's RPC port for
        REPORT_DETOUR_AFTER while others answer (a firewall or a partition
        between the two only, which gossip does not see), it reports through
        one of those: a long run's heartbeats keep its lease, and its result
        still gets committed.
        """
        worker = self.worker
        assert worker is not None
        hint = None if self.node is None else self.node.leader_id
        if hint is None:
            alive = sorted(s.name for s in self.servers() if s.status is SwimStatus.ALIVE)
            if worker.dispatcher in alive:
                hint = worker.dispatcher
            elif worker.leader in alive:
                hint = worker.leader
            else:
                hint = alive[0] if alive else None
        rpc = self.rpc
        if hint is not None and hint != self.name and rpc is not None:
            if _unreachable(rpc.down_for(hint)):
                reachable = self._reachable_servers(besides=hint)
                if worker.leader in reachable or not reachable:
                    return  # keep the detour (or what there is)
                log.warning(
                    "cannot reach %s's RPC port: reporting executions through %s",
                    hint,
                    reachable[0],
                )
                hint = reachable[0]
            elif self.node is None and worker.leader is not None and hint != worker.leader:
                log.info("reporting executions to %s", hint)
        if hint is not None and hint != worker.leader:
            worker.set_leader(hint, now)

    def _reconcile(self, now: float) -> None:
        """The leader's reconcile loop: at most one Raft configuration change at a time."""
        node = self.node
        if node is None or node.role is not Role.LEADER or self.planner is None:
            return
        changes = reconcile_changes(
            self.servers(), node.membership, leader=self.name, region=self.opts.region
        )
        for change in changes:
            try:
                if change.kind is ChangeKind.ADD_LEARNER:
                    node.add_learner(change.node, now)
                elif change.kind is ChangeKind.PROMOTE:
                    node.promote(change.node, now)
                else:
                    node.remove(change.node, now)
            except LocalProtocolError as exc:
                log.debug("reconcile: %s %s not now: %s", change.kind.value, change.node, exc)
                continue
            log.info("reconcile: %s %s", change.kind.value, change.node)
            return

    def _maybe_bootstrap(self) -> None:
        """``bootstrap-expect``: once enough servers agree, ask them, then start Raft."""
        if not self._bootstrap_pending or self._bootstrap_busy or self._nursery is None:
            return
        decision, names, why = bootstrap_decision(
            self.servers(), me=self.name, expect=self.opts.bootstrap_expect, region=self.opts.region
        )
        if decision is BootstrapDecision.CONFLICT:
            log.error("not bootstrapping: %s", why)
            return
        if decision is BootstrapDecision.READY:
            self._bootstrap_busy = True
            self._nursery.start_soon(self._ask_before_bootstrap, names)

    async def _ask_before_bootstrap(self, names: tuple[str, ...]) -> None:
        """Dkron asks every candidate for its Raft configuration before bootstrapping."""
        try:
            for peer in names:
                if peer == self.name:
                    continue
                reply = await self._call(peer, Op.RAFT_CONFIG, b"", wait=5.0)
                if reply is None or not reply.ok:
                    log.info("bootstrap: %s did not answer; will ask again", peer)
                    return
                if cbor2.loads(reply.body):
                    log.info("bootstrap: %s already has a configuration; waiting to be added", peer)
                    self._bootstrap_pending = False
                    return
            await self._send_in.send(("bootstrap", names))
        finally:
            self._bootstrap_busy = False

    def _bootstrap(self, names: tuple[str, ...], now: float) -> None:
        """Start Raft with ``names`` as voters: the configuration is entry 1 of the log.

        As in HashiCorp Raft, the first configuration is an ordinary log
        entry (term 1, index 1), not a snapshot: every server bootstrapping
        the same set writes the same entry, and a server that was told not
        to bootstrap (a peer already had a configuration) receives it by
        replication and so learns that it votes.
        """
        node = self.node
        if node is None or not self._bootstrap_pending:
            return
        self._bootstrap_pending = False
        if node.membership.members or node.last_index > 0 or node.snapshot is not None:
            return  # a leader reached us meanwhile
        entry = Entry(
            1, 1, EntryKind.CONFIG, encode_membership(Membership(frozenset(names), frozenset()))
        )
        term = max(node.term, 1)
        hard = HardState(term, node.voted_for if term == node.term else None, 0)
        self._pending_bootstrap = [SaveHardState(hard), AppendLog((entry,))]
        self.node = RaftNode(
            self.name,
            self.raft_config,
            rng=self.rng,
            now=now,
            persisted=PersistedState(hard, None, (entry,)),
        )
        log.info("bootstrapping Raft with %s", ", ".join(names))

    def _propose_quietly(self, cmd: Command, now: float) -> None:
        assert self.node is not None
        try:
            self.node.propose(encode_command(cmd), now)
        except LocalProtocolError:
            self._lose_leadership()

    async def _flush(self) -> None:
        for _ in range(1000):
            node = self.node
            progressed = False
            if self._pending_bootstrap and self.storage is not None:
                records, self._pending_bootstrap = self._pending_bootstrap, []
                await self._persist(records)
            while node is not None and node.has_ready():
                progressed = True
                ready = node.drain()
                if ready.persist:
                    await self._persist(ready.persist)
                for dst, msg in ready.messages:
                    self._send_raft(dst, msg)
                if ready.restore is not None:
                    self.state = StateMachine()
                    if ready.restore.data:
                        self.state.restore(ready.restore.data)
                    self.applied_index = ready.restore.index
                for entry in ready.committed:
                    self._apply(entry.index, entry.kind, entry.data)
                self._follow_leadership()
                # Wake whoever waits for an applied index or for leadership to settle
                # (the planner appears only after the barrier, a no-op, is applied).
                self._applied.set()
                self._applied = trio.Event()
                if node.leader_id != self._last_leader:
                    self._last_leader = node.leader_id
                    if self.metrics is not None:
                        self.metrics.leader_changes.inc()
                    self.events.publish({"type": "leader", "leader": node.leader_id})
                node = self.node
            starts, forgets = self._carry_out()
            if starts or forgets:
                progressed = True
                # The journal is on disk before any executor starts (fsync off the loop).
                try:
                    await trio.to_thread.run_sync(
                        self._journal_batch, starts, forgets, limiter=self._disk
                    )
                except OSError as exc:
                    raise AgentError(
                        _disk_error("the run journal", self.journal.path, exc)
                    ) from exc
                for start in starts:
                    self._start(start.job, start.execution)
            if not progressed:
                return
        log.warning("the core kept producing output; yielding")

    async def _persist(self, records: Sequence[PersistRecord]) -> None:
        """Raft records made durable. A disk that refuses (full, read-only, failing)
        stops the node with one line: the store refuses every later write anyway."""
        assert self.storage is not None
        try:
            await self.storage.persist(records)
        except (OSError, StorageError) as exc:
            raise AgentError(_disk_error("the Raft log", self.storage.sync.directory, exc)) from exc

    def _send_raft(self, dst: str, msg: Any) -> None:
        if self.rpc is not None:
            self.rpc.send(dst, Channel.RAFT, encode_message(msg))

    def _send_exec(self, dst: str, msg: ExecMessage) -> None:
        if dst == self.name:
            # Messages are immutable: the local peer gets the object itself.
            self._local.append(("exec", msg))
            return
        rpc = self.rpc
        if rpc is None:
            return
        body = EXECUTION_CODEC.encode(msg)
        bulk = isinstance(msg, Output) and len(body) <= rpc.config.max_bulk_frame
        rpc.send(dst, Channel.OUTPUT if bulk else Channel.EXECUTION, body)

    def _apply(self, index: int, kind: EntryKind, data: bytes) -> None:
        waiter = self._waiters.pop(index, None)
        if kind != EntryKind.NORMAL:
            self.applied_index = index
            if waiter is not None:
                waiter.event.set()
            return
        cmd, result = self.state.apply_entry(index, data)
        self.applied_index = index
        if not isinstance(cmd, _NOT_AWAITED):
            self._recent[index] = result
            while len(self._recent) > RECENT_RESULTS:
                self._recent.popitem(last=False)
        if waiter is not None:
            waiter.result = result
            waiter.event.set()
        if cmd is None:
            return
        self._publish(cmd, result)
        wall = _wall()  # one reading for everything that follows this entry
        if self.metrics is not None:
            self.metrics.observe_apply(cmd, result, to_ns(wall))
        now = trio.current_time()
        if self.planner is not None:
            self.planner.observe(cmd, result, wall)
        if self.exec_leader is not None:
            self.exec_leader.observe(cmd, result, self.state, now, wall_ns=to_ns(wall))
            if self.notifier is not None:
                self._notify(cmd, result)
            if isinstance(cmd, ExecutionFinished | ExecutionsFinished):
                self._log_lost(cmd, result)
        node = self.node
        if node is not None and index - node.snapshot_index >= SNAPSHOT_EVERY:
            node.compact(index, self.state.snapshot())

    def _publish(self, cmd: Command, result: ApplyResult) -> None:
        """Cluster events for ``/v1/events``, from the entries every server applies."""
        hub = self.events
        if isinstance(cmd, ExecutionFinished | ExecutionsFinished):
            self._wake_output()
        if not hub.subscribers:
            return
        for single, part in each_applied(cmd, result):
            if not part.ok:
                continue
            if isinstance(single, UpsertJob):
                hub.publish({"type": "job", "action": "updated", "job": single.job.name})
            elif isinstance(single, ToggleJob):
                hub.publish({"type": "job", "action": "updated", "job": single.name})
            elif isinstance(single, DeleteJob):
                hub.publish({"type": "job", "action": "deleted", "job": single.name})
            elif isinstance(single, ExecutionStarted | ExecutionFinished):
                if part.reason == "duplicate":
                    continue
                ex = single.execution
                action = "started" if isinstance(single, ExecutionStarted) else "finished"
                hub.publish(
                    {
                        "type": "execution",
                        "action": action,
                        "job": ex.job_name,
                        "execution": execution_to_json(ex, list_view=False),
                    }
                )

    def _log_lost(self, cmd: Command, result: ApplyResult) -> None:
        """One line on the leader for each run committed as lost, with its reason.

        A lost run is one nobody saw end (its worker died, went silent, or
        never reported starting it); operators look for those in the log,
        where Dkron logs its broken execution streams.  A worker that dies
        with hundreds of runs loses them in one entry: more than a few with
        the same reason are summed up in one line.
        """
        by_reason: dict[str, list[Execution]] = {}
        for single, part in each_applied(cmd, result):
            if (
                isinstance(single, ExecutionFinished)
                and single.execution.status == "lost"
                and part.ok
                and part.reason != "duplicate"
            ):
                ex = single.execution
                by_reason.setdefault(ex.output.partition("\n")[0], []).append(ex)
        for reason, lost in by_reason.items():
            if len(lost) > _TARGETLESS_LINES:
                names = ", ".join(sorted({ex.job_name for ex in lost})[:_TARGETLESS_LINES])
                log.warning("%d runs (jobs %s, ...) %s", len(lost), names, reason)
                continue
            for ex in lost:
                log.warning(
                    "job %s: execution %s (attempt %d on %s) %s",
                    ex.job_name,
                    ex.id,
                    ex.attempt,
                    ex.node_name,
                    reason,
                )

    def _notify(self, cmd: Command, result: ApplyResult) -> None:
        """The leader's notifications: at each start, and after each final attempt.

        A new leader re-applies nothing, so each committed start or result is
        notified once by the node leading when it commits; a leader that
        crashes between commit and send loses that notification (documented
        in docs/notifications.md).
        """
        notifier, nursery = self.notifier, self._nursery
        if notifier is None or nursery is None:
            return
        for single, part in each_applied(cmd, result):
            if not part.ok or part.reason == "duplicate":
                continue
            if isinstance(single, ExecutionStarted) and notifier.wants_pre:
                ex = single.execution
                job = self.state.get_job(ex.job_name)
                if job is not None:
                    nursery.start_soon(
                        functools.partial(notifier.pre, job, ex, reporting_node=self.name)
                    )
            elif isinstance(single, ExecutionFinished) and notifier.wants_post:
                ex = single.execution
                job = self.state.get_job(ex.job_name)
                if job is None or any(isinstance(e, RetryScheduled) for e in part.events):
                    continue  # not the final attempt: a retry follows
                group = [e for e in self.state.executions(ex.job_name) if e.group == ex.group]
                nursery.start_soon(
                    functools.partial(notifier.post, job, ex, group, reporting_node=self.name)
                )

    def _follow_leadership(self) -> None:
        node = self.node
        assert node is not None
        if node.role is not Role.LEADER:
            if self.planner is not None or self.exec_leader is not None:
                self._lose_leadership()
            return
        if self._barrier is None:
            self._barrier = node.last_index
        if self.planner is None and node.applied_index >= self._barrier:
            now = trio.current_time()
            self.planner = Planner(
                self.state,
                term=node.term,
                wall=_wall(),
                select_targets=self._select,
                config=SchedulerConfig(lookahead=self.claim_lookahead),
            )
            gone = (m.name for m in self.members() if m.status is not SwimStatus.ALIVE)
            self.exec_leader = ExecutionLeader(
                self.name, node.term, self.exec_config, now=now, gone=gone
            )
            self.exec_leader.load(self.state, now, wall_ns=to_ns(_wall()))
            self._next_reconcile = now
            log.info("node %s leads term %d", self.name, node.term)

    def _lose_leadership(self) -> None:
        if self.planner is not None:
            log.info("node %s no longer leads", self.name)
        self.planner = None
        self.exec_leader = None
        self._barrier = None
        self._targetless = set()
        # Proposals in flight may still commit under the next leader, but
        # nothing here will learn their results: their callers are told now.
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.event.set()

    def _journal_batch(self, starts: list[StartRun], forgets: list[RunKey]) -> None:
        """One write and one fsync for every start of the batch (forgets ride along)."""
        self.journal.add_many(start.execution for start in starts)
        self.journal.forget_many(forgets)

    def _carry_out(self) -> tuple[list[StartRun], list[RunKey]]:
        """Carry out the worker's and the execution leader's actions.

        Returns the runs to start and the journal entries to drop: those need
        the disk, which the caller reaches off the event loop.
        """
        starts: list[StartRun] = []
        forgets: list[RunKey] = []
        now = trio.current_time()
        assert self.worker is not None
        actions: list[Any] = list(self.worker.drain())
        if self.exec_leader is not None:
            actions.extend(self.exec_leader.drain())
        for a in actions:
            if isinstance(a, Send):
                dst = a.dst
                if isinstance(a.msg, _TO_WORKER):
                    dst = self._relay_for(dst)
                self._send_exec(dst, a.msg)
            elif isinstance(a, Propose):
                if self.node is not None:
                    self._propose_quietly(a.command, now)
            elif isinstance(a, StartRun):
                starts.append(a)
            elif isinstance(a, StopRun):
                scope = self._runs.get(a.key)
                if scope is not None:
                    scope.cancel()
            elif isinstance(a, ForgetRun):
                forgets.append(a.key)
            elif isinstance(a, LiveOutput):
                self._wake_output()
        return starts, forgets

    def _wake_output(self) -> None:
        self._output_changed.set()
        self._output_changed = trio.Event()

    def _select(self, job: Job) -> tuple[str, ...]:
        # The planner asks once per claim, hundreds of times in one turn when
        # many jobs share a second: the members are read once per turn.
        if self._views[0] != self._turn:
            views = [
                MemberView(name=m.name, alive=m.status is SwimStatus.ALIVE, tags=m.tags)
                for m in self.members()
            ]
            self._views = (self._turn, views)
        return select_targets(job.tags, self._views[1], region=self.opts.region, rng=self.rng)

    # -- executors ---------------------------------------------------------------------

    def _start(self, job: Job, ex: Execution) -> None:
        assert self._nursery is not None
        key = RunKey(ex.job_name, ex.group, ex.node_name, ex.attempt)
        scope = trio.CancelScope()
        self._runs[key] = scope
        self._nursery.start_soon(self._execute, job, ex, key, scope)

    async def _execute(self, job: Job, ex: Execution, key: RunKey, scope: trio.CancelScope) -> None:
        executor = get_executor(job.executor)
        success, output = False, ""
        # What the run printed so far: an executor that is cancelled raises
        # instead of returning its output, and an operator who stops a hung
        # run needs to see how far it got.
        produced = OutputRing()
        with scope:
            if not job.executor:
                output = NO_EXECUTOR
            elif executor is None:
                output = EXECUTOR_NOT_PRESENT
            else:
                ctx = RunContext(
                    job_name=job.name,
                    execution_id=ex.id,
                    scheduled_time=None
                    if ex.scheduled_time is None
                    else from_ns(ex.scheduled_time),
                    attempt=max(1, ex.attempt),
                    trigger=ex.trigger or "manual",
                    node_name=self.name,
                )

                async def sink(chunk: bytes) -> None:
                    produced.write(chunk)
                    await self._send_output(("output", (key, chunk)))

                result = await executor.run(job.executor_config or {}, ctx, sink)
                success = result.success
                output = final_output(result).decode("utf-8", errors="replace")
                if job.processors:
                    # On the node that ran the job, before the result is reported.
                    done = dataclasses.replace(
                        ex,
                        finished_at=max(to_ns(_wall()), ex.started_at),
                        success=success,
                        output=output,
                    )
                    processed = await run_processors(job, done, node_name=self.name)
                    output = processed.output
        if scope.cancelled_caught and not output:
            # Dkron's worker rule, as for any failure: the reason, then the output.
            cancelled = ExecResult.failed("cancelled", produced.getvalue())
            output = final_output(cancelled).decode("utf-8", errors="replace")
        await self._send_in.send(("finished", (key, success, output)))

    # -- requests between servers -------------------------------------------------------

    async def _call(
        self,
        peer: str,
        op: Op,
        body: bytes,
        *,
        wait: float,
        still_wanted: Callable[[], bool] | None = None,
    ) -> Reply | None:
        """One request to ``peer`` on the RPC port; None when it did not answer in time,
        or as soon as ``still_wanted`` says the answer no longer matters."""
        rpc = self.rpc
        if rpc is None:
            return None
        self._call_ids += 1
        call_id = self._call_ids
        call = _Call(trio.Event())
        self._calls[call_id] = call
        try:
            if not rpc.send(
                peer, Channel.REQUEST, FORWARD_CODEC.encode(Request(call_id, op, body))
            ):
                return None
            with trio.move_on_after(wait):
                while not call.event.is_set():
                    with trio.move_on_after(0.25):
                        await call.event.wait()
                    if still_wanted is not None and not still_wanted():
                        break
            return call.reply
        finally:
            del self._calls[call_id]

    def _on_request(self, item: Incoming) -> None:
        try:
            msg = FORWARD_CODEC.decode(item.body)
        except RemoteProtocolError as exc:
            log.warning("dropping a malformed request from %s: %s", item.peer, exc)
            return
        if isinstance(msg, Reply):
            call = self._calls.get(msg.id)
            if call is not None:
                call.reply = msg
                call.event.set()
        elif isinstance(msg, Request) and self._nursery is not None:
            self._nursery.start_soon(self._serve_request, item.peer, msg)

    async def _serve_request(self, peer: str, req: Request) -> None:
        node = self.node
        ok, error, index, body = True, "", 0, b""
        try:
            if req.op is Op.RAFT_CONFIG:
                members = () if node is None else sorted(node.membership.members)
                body = cbor2.dumps(list(members))
            elif req.op is Op.PROPOSE:
                cmd = decode_command(req.body)
                index = (await self._propose_local(cmd)).index
            elif req.op is Op.CANCEL:
                job, group, target, attempt = cbor2.loads(req.body)
                done = await self._cancel_local(RunKey(job, group, target, attempt))
                body = cbor2.dumps(done)
            elif req.op is Op.REMOVE_PEER:
                body = cbor2.dumps(await self._remove_peer_local(req.body.decode()))
            elif req.op is Op.LIVE_OUTPUT:
                job, group, target, attempt, seq, wait = cbor2.loads(req.body)
                key = RunKey(job, group, target, attempt)
                chunks = await self.live_output_local(key, int(seq), float(wait))
                body = cbor2.dumps([[n, d] for n, d in chunks])
            elif req.op is Op.RECENT_OUTPUT:
                keys = [
                    RunKey(str(j), int(g), str(n), int(a)) for j, g, n, a in cbor2.loads(req.body)
                ]
                body = cbor2.dumps(self.recent_output_local(keys))
        except (NotLeaderError, Unavailable) as exc:
            ok, error = False, str(exc)
        except (ValueError, TypeError, RemoteProtocolError, cbor2.CBORError) as exc:
            ok, error = False, f"bad request: {exc}"
        leader = None if node is None else node.leader_id
        if self.rpc is not None:
            reply = Reply(req.id, ok, error, index, body, leader)
            self.rpc.send(peer, Channel.REQUEST, FORWARD_CODEC.encode(reply))

    def _leader_or_raise(self) -> str:
        node = self.node
        if node is None:
            raise NotLeaderError("this node is not a server")
        if node.leader_id is None:
            raise NotLeaderError("no leader is elected at the moment")
        return node.leader_id

    def is_leader(self) -> bool:
        return self.node is not None and self.node.role is Role.LEADER and self.planner is not None

    async def _leading_soon(self) -> bool:
        node = self.node
        return node is not None and node.leader_id == self.name and await self._settle_leadership()

    async def _settle_leadership(self) -> bool:
        """A new leader answers writes only once its barrier is applied: wait for it.

        True when this node now leads with its state caught up; False when it
        does not lead (any more).
        """
        with trio.move_on_after(FORWARD_TIMEOUT):
            while (node := self.node) is not None and node.role is Role.LEADER:
                if self.planner is not None:
                    return True
                await self._applied.wait()
        return False

    async def _forward(self, op: Op, body: bytes) -> Reply:
        leader = self._leader_or_raise()
        if leader == self.name:
            raise NotLeaderError("leadership is being established", leader=leader)
        if self.rpc is not None and _unreachable(self.rpc.down_for(leader)):
            # Raft may still reach this server the other way; the write would
            # only wait FORWARD_TIMEOUT for an answer that cannot come.
            raise Unavailable(
                f"this server ({self.name}) cannot reach the leader {leader}'s RPC port; "
                "send the request to another server"
            )
        node = self.node
        reply = await self._call(
            leader,
            op,
            body,
            wait=FORWARD_TIMEOUT,
            # A leader that lost its role (or crashed) will not answer: stop waiting.
            still_wanted=lambda: node is not None and node.leader_id == leader,
        )
        if reply is None:
            raise Unavailable(f"the leader {leader} did not answer")
        if not reply.ok:
            raise NotLeaderError(reply.error, leader=reply.leader)
        return reply

    # -- requests from the API ----------------------------------------------------------

    async def propose(self, cmd: Command) -> ApplyResult:
        """Commit ``cmd``: here when leading, else through the leader; the local result."""
        if self.is_leader() or await self._leading_soon():
            return await self._propose_local(cmd)
        reply = await self._forward(Op.PROPOSE, encode_command(cmd))
        return await self._result_at(reply.index)

    async def _result_at(self, index: int) -> ApplyResult:
        """Wait until this replica applied ``index``; its own (identical) result."""
        with trio.move_on_after(FORWARD_TIMEOUT):
            while self.applied_index < index:
                await self._applied.wait()
        result = self._recent.get(index)
        if result is None:
            raise Unavailable(f"entry {index} committed but not yet applied here")
        return result

    async def _propose_local(self, cmd: Command) -> ApplyResult:
        if not self.is_leader():
            node = self.node
            raise NotLeaderError(
                "this node is not the leader", leader=None if node is None else node.leader_id
            )
        waiter = _Waiter(trio.Event())
        started = trio.current_time()
        await self._send_in.send(("propose", (cmd, waiter)))
        with trio.move_on_after(FORWARD_TIMEOUT):
            await waiter.event.wait()
        if self.metrics is not None and waiter.result is not None:
            self.metrics.apply_latency.observe(trio.current_time() - started)
        if waiter.result is None:
            raise NotLeaderError("leadership was lost before the command committed")
        return waiter.result

    async def remove_peer(self, peer: str) -> bool:
        """Remove a server from the Raft configuration (one change at a time)."""
        if self.is_leader() or await self._leading_soon():
            return await self._remove_peer_local(peer)
        reply = await self._forward(Op.REMOVE_PEER, peer.encode())
        return bool(cbor2.loads(reply.body))

    async def _remove_peer_local(self, peer: str) -> bool:
        node = self.node
        if node is None or node.role is not Role.LEADER:
            raise NotLeaderError("this node is not the leader")
        if peer not in node.membership.members:
            return False
        flag = _Flag(trio.Event())
        await self._send_in.send(("remove_peer", (peer, flag)))
        await flag.event.wait()
        return flag.result

    async def cancel(self, key: RunKey) -> bool:
        if self.is_leader() or await self._leading_soon():
            return await self._cancel_local(key)
        body = cbor2.dumps([key.job, key.group, key.node, key.attempt])
        reply = await self._forward(Op.CANCEL, body)
        return bool(cbor2.loads(reply.body))

    async def output_after(
        self, job: str, execution_id: str, seq: int, wait: float
    ) -> tuple[list[tuple[int, bytes]], Execution | None]:
        """For the output websocket: chunks after ``seq`` (here when leading, else from
        the leader) and, once committed here, the final execution."""
        ex = self.state.get_execution(job, execution_id)
        if ex is None:
            return [], None
        if ex.finished_at is not None:
            return [], ex
        key = RunKey(job, ex.group, ex.node_name, ex.attempt)
        try:
            if self.is_leader():
                chunks = await self.live_output_local(key, seq, wait)
            else:
                body = cbor2.dumps([job, ex.group, ex.node_name, ex.attempt, seq, wait])
                reply = await self._forward(Op.LIVE_OUTPUT, body)
                chunks = [(int(n), bytes(d)) for n, d in cbor2.loads(reply.body)]
        except (NotLeaderError, Unavailable) as exc:
            log.debug("live output of %s not available now: %s", execution_id, exc)
            await trio.sleep(0.5)  # a leader change: ask again shortly
            chunks = []
        final = self.state.get_execution(job, execution_id)
        if final is None or final.finished_at is None:
            final = None
            if not chunks:  # ended at the leader, result not applied here yet
                await trio.sleep(0.05)
        return chunks, final

    async def live_output_local(
        self, key: RunKey, seq: int, wait: float
    ) -> list[tuple[int, bytes]]:
        """The leader's buffered chunks after ``seq``, waiting up to ``wait`` for a new one."""
        with trio.move_on_after(min(wait, 10.0)):
            while True:
                lead = self.exec_leader
                if lead is None:
                    raise NotLeaderError("this node is not the leader")
                chunks = [c for c in lead.live_output(key) if c[0] > seq]
                if chunks or not lead.is_running(key):
                    return chunks
                await self._output_changed.wait()
        return []

    async def recent_output(self, keys: Sequence[RunKey]) -> list[bytes]:
        """For ``/v1/busy``: the end of each run's live output, from the leader's buffer."""
        if not keys:
            return []
        if self.is_leader():
            return self.recent_output_local(keys)
        body = cbor2.dumps([[k.job, k.group, k.node, k.attempt] for k in keys])
        reply = await self._forward(Op.RECENT_OUTPUT, body)
        tails = cbor2.loads(reply.body)
        if not isinstance(tails, list) or len(tails) != len(keys):
            raise Unavailable("the leader answered a different number of outputs")
        return [bytes(t) for t in tails]

    def recent_output_local(self, keys: Sequence[RunKey]) -> list[bytes]:
        lead = self.exec_leader
        if lead is None or not self.is_leader():
            raise NotLeaderError("this node is not the leader")
        limit = busy_output_limit(len(keys))
        return [_tail(lead.live_output(key), limit) for key in keys]

    async def _cancel_local(self, key: RunKey) -> bool:
        if not self.is_leader():
            raise NotLeaderError("this node is not the leader")
        flag = _Flag(trio.Event())
        await self._send_in.send(("cancel", (key, flag)))
        await flag.event.wait()
        return flag.result


def busy_output_limit(running: int) -> int:
    """How much of each running execution's output ``/v1/busy`` shows."""
    return min(BUSY_OUTPUT_BYTES, BUSY_OUTPUT_TOTAL // max(1, running))


def _tail(chunks: Sequence[tuple[int, bytes]], limit: int) -> bytes:
    """The last ``limit`` bytes of ``chunks``, joining only the chunks it needs."""
    if limit <= 0:
        return b""
    parts: list[bytes] = []
    size = 0
    for _, data in reversed(chunks):
        parts.append(data)
        size += len(data)
        if size >= limit:
            break
    return b"".join(reversed(parts))[-limit:] if parts else b""


async def _resolve(text: str) -> list[tuple[str, int]]:
    """A ``--join`` address: ``host``, ``host:port``, IP literals or DNS names."""
    value = text.strip()
    host, port = value, DEFAULT_GOSSIP_PORT
    if value.startswith("["):
        return [parse_addr(value, default_port=DEFAULT_GOSSIP_PORT)]
    if value.count(":") == 1:
        host, port_text = value.split(":")
        if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            raise AddressError(f"invalid port in {text!r}")
        port = int(port_text)
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    out: list[tuple[str, int]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (trio.socket.AF_INET, trio.socket.AF_INET6):
            addr = (str(sockaddr[0]), int(sockaddr[1]))
            if addr not in out:
                out.append(addr)
    return out


class _Backend:
    """The HTTP API's view of the agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    @property
    def state(self) -> StateMachine:
        return self.agent.state

    @property
    def node_name(self) -> str:
        return self.agent.name

    @property
    def paused(self) -> bool:
        return self.agent.paused

    async def set_paused(self, paused: bool) -> None:
        self.agent.paused = paused

    @staticmethod
    def _info(m: Member) -> MemberInfo:
        return MemberInfo(
            name=m.name,
            addr=m.addr,
            port=m.port,
            tags=dict(m.tags),
            status=MemberStatus(int(m.status)),
        )

    def leader(self) -> MemberInfo | None:
        node = self.agent.node
        if node is None or node.leader_id is None or self.agent.swim is None:
            return None
        member = self.agent.swim.member(node.leader_id)
        return None if member is None else self._info(member)

    def is_leader(self) -> bool:
        return self.agent.is_leader()

    def members(self) -> list[MemberInfo]:
        return [self._info(m) for m in sorted(self.agent.members(), key=lambda m: m.name)]

    def status(self) -> dict[str, object]:
        swim = self.agent.swim
        serf = dict(swim.stats()) if swim is not None else {}
        return {
            "agent": {"name": self.agent.name, "version": __version__},
            "serf": serf,
            "tags": dict(self.agent.tags),
        }

    async def busy(self) -> list[Execution]:
        """The running records with the end of their live output, as Dkron's busy list
        carries the latest chunk; the records come from this replica, the output from
        the leader, and a leader that cannot answer costs the output, not the list."""
        running = self.agent.state.running_executions()
        keys = [RunKey(e.job_name, e.group, e.node_name, e.attempt) for e in running]
        tails: list[bytes] | None = None
        with trio.move_on_after(BUSY_OUTPUT_WAIT):
            try:
                tails = await self.agent.recent_output(keys)
            except (NotLeaderError, Unavailable) as exc:
                log.debug("busy: live output not available now: %s", exc)
        if tails is None:
            return running
        return [
            dataclasses.replace(e, output=t.decode("utf-8", errors="replace")) if t else e
            for e, t in zip(running, tails, strict=True)
        ]

    def now(self) -> datetime:
        return _wall()

    async def propose(self, cmd: Command) -> ApplyResult:
        return await self.agent.propose(cmd)

    async def run_job(self, name: str) -> Execution | None:
        job = self.agent.state.get_job(name)
        node = self.agent.node
        if job is None or node is None:
            return None
        targets = self.agent._select(job)
        if not targets:
            return None
        now_ns = to_ns(_wall())
        claim = ClaimSlot(name, now_ns, node.term, "manual", now_ns, targets, 1)
        result = await self.agent.propose(claim)
        if not result.ok:
            return None
        return Execution(name, now_ns, targets[0], group=now_ns, attempt=1, trigger="manual")

    async def cancel(self, job: str, execution_id: str) -> bool:
        ex = self.agent.state.get_execution(job, execution_id)
        if ex is None or not ex.running:
            return False
        return await self.agent.cancel(RunKey(job, ex.group, ex.node_name, ex.attempt))

    async def leave(self) -> dict[str, object]:
        """Leave first (as Dkron's handler does), answer, and only then stop the node."""
        agent = self.agent
        peers: dict[str, object] = {m.name: m.addr for m in agent.members()}
        await agent.leave()
        if agent._nursery is not None:
            agent._nursery.start_soon(_stop_after_answering, agent)
        return peers

    def raft_peers(self) -> list[dict[str, object]]:
        node = self.agent.node
        if node is None:
            return []
        members = node.membership
        rpc = self.agent.rpc
        addrs = {} if rpc is None else rpc.peers()
        if self.agent.rpc_addr is not None:
            addrs[self.agent.name] = self.agent.rpc_addr
        return [
            {
                "id": peer,
                "node": peer,
                "address": _format_addr(*addrs[peer]) if peer in addrs else "",
                "leader": peer == node.leader_id,
                "voter": peer in members.voters,
            }
            for peer in sorted(members.members)
        ]

    async def remove_peer(self, peer_id: str) -> bool:
        return await self.agent.remove_peer(peer_id)

    def keyring_status(self) -> dict[str, object]:
        return self.agent.keyring_status()

    async def keyring_op(self, op: KeyringOp, key: bytes) -> int:
        return await self.agent.keyring_op(op, key)

    @property
    def events(self) -> EventHub:
        return self.agent.events

    async def output_after(
        self, job: str, execution_id: str, seq: int, wait: float
    ) -> tuple[list[tuple[int, bytes]], Execution | None]:
        return await self.agent.output_after(job, execution_id, seq, wait)


async def _stop_after_answering(agent: Agent) -> None:
    """The answer to ``POST /v1/leave`` is on its way once the handler returned; give
    the connection a moment to carry it before the node's sockets close."""
    await trio.sleep(LEAVE_ANSWER_GRACE)
    if agent._nursery is not None:
        agent._nursery.cancel_scope.cancel()


async def _leave_and_stop(agent: Agent) -> None:
    await agent.leave()
    if agent._nursery is not None:
        agent._nursery.cancel_scope.cancel()


async def run(opts: AgentOptions, reload: Callable[[], AgentOptions] | None = None) -> int:
    """Run an agent until SIGINT/SIGTERM (graceful leave) or ``dkron leave``; the exit status.

    SIGHUP re-reads the configuration through ``reload`` (by default the
    arguments and directory ``dkron.config.load_config`` recorded) and
    publishes the new tags.
    """
    if reload is None:
        reload = _default_reload(opts)
    notifier = Notifier.from_config(opts) if isinstance(opts, AgentConfig) else None
    agent = Agent(opts, notifier=notifier)
    failed: list[AgentError] = []
    try:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:

                async def watch() -> None:
                    async for signum in sigs:
                        if signum == signal.SIGHUP:
                            _reload_tags(agent, reload)
                            continue
                        log.info("received signal %s: leaving", signal.Signals(signum).name)
                        if not agent.stopping:
                            nursery.start_soon(_leave_and_stop, agent)

                nursery.start_soon(watch)
                await agent.run()
                nursery.cancel_scope.cancel()
    except* AgentError as group:
        # The error may sit in a nursery inside the agent's: take every leaf.
        failed.extend(e for e in _leaves(group) if isinstance(e, AgentError))
    for exc in failed:
        log.error("%s", exc)
    return 1 if failed else 0


def _disk_error(what: str, where: object, exc: BaseException) -> str:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return (
        f"cannot write {what} in {where}: {reason}; stopping "
        "(a restart recovers everything up to the last complete write)"
    )


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _default_reload(opts: AgentOptions) -> Callable[[], AgentOptions] | None:
    argv = getattr(opts, "argv", None)
    if argv is None:
        return None
    from dkron.config import load_config

    cwd = getattr(opts, "cwd", "") or os.getcwd()
    return lambda: load_config(argv, os.environ, cwd=cwd)


def _reload_tags(agent: Agent, reload: Callable[[], AgentOptions] | None) -> None:
    if reload is None:
        log.warning("SIGHUP: no configuration source to reload")
        return
    try:
        agent.reload_tags(reload().tags)
    except (ValueError, OSError, LocalProtocolError) as exc:
        log.error("SIGHUP: configuration not reloaded: %s", exc)
        return
    log.info("SIGHUP: configuration reloaded, tags published")
