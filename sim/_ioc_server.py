"""The twin IOC's Channel Access server, restartable for the ``disconnect`` fault.

``supervise`` runs caproto's asyncio server on the IOC's PV database until asked to
stop. When the IOC asks for a disconnection (``SIM:Fault-Disconnect`` = 1 or
``--fault disconnect``) it tears the server down for real -- the TCP listeners and
the UDP search sockets are closed and every client's circuit is closed (the clients
see their channels disconnect and searches go unanswered) -- waits the IOC's
``disconnect_s`` of wall time, then starts a new server on the same port with the
same PV database and engine, the way an IOC reboot with autosave looks to a client.
Clients reconnect on their own (caproto and libca re-search disconnected channels).

A reboot (``ioc.reboot_requested``, set by the ``missing_readback`` and
``string_readback`` faults) is the same for ``ioc.reboot_s``; each server serves
``ioc.served_pvdb()``, so a reboot can come back with a record missing or mis-typed.

Port. The server serves on its one port (``port``, else ``EPICS_CA_SERVER_PORT``) or not at
all: where caproto would try up to 100 random ports when that one is taken (so that the IOC
served where no client searches), a port in use on an interface -- another IOC, or any TCP
listener -- raises ``PortInUse`` (a server coming back after going dark retries it for
``_REBIND_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import caproto as ca
from caproto.asyncio.server import Context, VirtualCircuit
from caproto.asyncio.utils import _TransportWrapper  # noqa: PLC2701 (caproto has no public way to wrap an accepted socket)

if TYPE_CHECKING:  # pragma: no cover
    from sim.ioc import TwinIOC

__all__ = ["PortInUse", "supervise"]

log = logging.getLogger("gainloop.ioc")

#: Wall time (s) between a put to SIM:Fault-Disconnect and the listeners going away,
#: so that the put's own completion reaches the client first.
_DISCONNECT_GRACE_S = 0.2
#: Wall time (s) a server coming back after going dark retries a port still held (its own old listener).
_REBIND_S = 2.0


class PortInUse(OSError):
    """The CA server port is taken on an interface (another IOC, or any TCP listener)."""

    def __init__(self, interface: str, port: int):
        super().__init__(errno.EADDRINUSE, f"port {port} is in use on {interface}")
        self.interface = interface
        self.port = port


def _as_put_notify_reply(command):
    """A failed put-with-completion is answered as EPICS's rsrv does: a WRITE_NOTIFY reply whose
    status is the failure (ECA_PUTFAIL), not the generic CA_PROTO_ERROR caproto sends."""
    if isinstance(command, ca.ErrorResponse):
        request = command.original_request
        if request.command == ca.WriteNotifyRequest.ID:
            return ca.WriteNotifyResponse(
                data_type=request.data_type,
                data_count=max(1, request.data_count),
                status=command.header.parameter2,
                ioid=request.parameter2,
            )
    return command


class _Circuit(VirtualCircuit):
    async def send(self, *commands):
        await super().send(*(_as_put_notify_reply(c) for c in commands))


class _Context(Context):
    """caproto's asyncio server context, on a chosen port, that can be torn down cleanly."""

    CircuitClass = _Circuit

    def __init__(self, pvdb, interfaces: Sequence[str], port: int | None, *, rebind_s: float = 0.0):
        super().__init__(pvdb, list(interfaces))
        if port is not None:
            self.ca_server_port = int(port)
        self._rebind_s = rebind_s
        self._tcp_servers: list[asyncio.AbstractServer] = []

    async def _bind_tcp_sockets_with_consistent_port_number(self, make_socket):
        # caproto's tries 100 random ports after the first: this server binds its port or raises PortInUse
        port = int(self.ca_server_port)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._rebind_s
        while True:
            sockets: dict = {}
            interface = ""
            try:
                for interface in self.interfaces:
                    sockets[interface] = await make_socket(interface, port)
            except OSError as exc:
                for sock in sockets.values():
                    sock.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                if loop.time() >= deadline:
                    raise PortInUse(interface, port) from exc
                await asyncio.sleep(0.05)
            else:
                return port, sockets

    async def server_accept_loop(self, sock):
        # as caproto's, but keeps the asyncio server so that go_dark() can close it
        def _new_client(reader, writer):
            # no Nagle delay: a put's completion and the monitors it triggers go out as small
            # segments, and a client's delayed ACK would hold each exchange back ~40 ms (EPICS's
            # rsrv sets TCP_NODELAY on its circuits too)
            conn = writer.get_extra_info("socket")
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = _TransportWrapper(reader, writer)
            self.server_tasks.create(self.tcp_handler(transport, transport.getpeername()))

        self._tcp_servers.append(await asyncio.start_server(_new_client, sock=sock))

    async def go_dark(self) -> None:
        """Stop accepting clients and close every client's circuit."""
        for server in self._tcp_servers:
            server.close()
        for circuit in list(self.circuits):
            with contextlib.suppress(Exception):
                await circuit._on_disconnect()  # unsubscribes its monitors, closes its socket
            self.circuits.discard(circuit)
        for server in self._tcp_servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)


async def supervise(
    ioc: TwinIOC,
    *,
    interfaces: Sequence[str],
    port: int | None,
    stop: asyncio.Event,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve ``ioc.served_pvdb()`` until ``stop`` is set, going dark whenever the IOC asks
    (disconnection or reboot)."""
    first = True
    while not stop.is_set():
        if ioc.disconnect_requested.is_set():
            log.warning("disconnect fault: PVs gone for %.3g s", ioc.disconnect_s)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), ioc.disconnect_s)
            ioc.disconnect_requested.clear()
            await ioc.disconnect_done()
            if stop.is_set():
                break
        if ioc.reboot_requested.is_set():
            log.warning("reboot: PVs gone for %.3g s; back with %s", ioc.reboot_s, ioc.record_fault_note())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), ioc.reboot_s)
            ioc.reboot_requested.clear()
            if stop.is_set():
                break
        ctx = _Context(ioc.served_pvdb(), interfaces, port, rebind_s=0.0 if first else _REBIND_S)

        async def ready(async_lib, ctx=ctx, first=first):
            log.info("serving %d PVs on %s port %s", len(ctx.pvdb), ",".join(interfaces), ctx.port)
            if on_ready is not None and first:
                on_ready(ctx.port)

        first = False
        run = asyncio.ensure_future(ctx.run(startup_hook=ready))
        stopping = asyncio.ensure_future(stop.wait())
        disconnecting = asyncio.ensure_future(ioc.disconnect_requested.wait())
        rebooting = asyncio.ensure_future(ioc.reboot_requested.wait())
        try:
            await asyncio.wait({run, stopping, disconnecting, rebooting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            disconnecting.cancel()
            rebooting.cancel()
        if run.done():
            run.result()  # the server failed (e.g. cannot bind): raise it
            return
        going_dark = ioc.disconnect_requested.is_set() or ioc.reboot_requested.is_set()
        if going_dark and not stop.is_set():
            await asyncio.sleep(_DISCONNECT_GRACE_S)
        await ctx.go_dark()
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
