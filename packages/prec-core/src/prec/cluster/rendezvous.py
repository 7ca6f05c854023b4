"""Joining a job's process group within a bounded time.

torch's ``env://`` rendezvous waits for the store at ``MASTER_ADDR:MASTER_PORT`` for the whole collective timeout
(30 minutes by default), and a client that reaches a port held by another program waits for an answer forever.
prec builds the ``TCPStore`` itself instead: rank 0 hosts it (or torchrun's agent does) and every rank must have
joined within the *rendezvous timeout* (:data:`DEFAULT_RENDEZVOUS_TIMEOUT_S`, ``DDPStrategy(rendezvous_timeout=)``
or ``PREC_RENDEZVOUS_TIMEOUT=<seconds>``), or it raises :class:`RendezvousError`. Collectives afterwards keep the
strategy's own ``timeout``.
"""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from prec.errors import ConfigurationError

#: Seconds every rank gets to reach the others at the start of a job.
DEFAULT_RENDEZVOUS_TIMEOUT_S = 300.0
_GRACE_S = 5.0  # on top of the store's own timeout, for a client stuck in the handshake


class RendezvousError(ConfigurationError):
    """A process could not join its job's process group (port taken, address wrong, another rank missing)."""


def rendezvous_timeout(value: float | timedelta | None = None) -> float:
    """The rendezvous timeout in seconds: ``value``, else ``PREC_RENDEZVOUS_TIMEOUT``, else the default."""
    if value is None:
        text = os.environ.get("PREC_RENDEZVOUS_TIMEOUT")
        if not text:
            return DEFAULT_RENDEZVOUS_TIMEOUT_S
        try:
            value = float(text)
        except ValueError:
            raise ConfigurationError(f"PREC_RENDEZVOUS_TIMEOUT={text!r} must be a number of seconds.") from None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds > 0:
        raise ConfigurationError(f"rendezvous_timeout={value!r} must be a positive number of seconds.")
    return seconds


def join_store(address: str, port: int, rank: int, world_size: int, timeout_s: float) -> dist.TCPStore:
    """The job's store, hosted here on rank 0 (unless torchrun's agent hosts it), joined by every rank within
    ``timeout_s`` seconds; a :class:`RendezvousError` naming the address and the likely cause otherwise."""
    hosts = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    outcome: dict[str, Any] = {}

    def connect() -> None:
        try:
            outcome["store"] = dist.TCPStore(
                address,
                port,
                world_size,
                hosts,
                timeout=timedelta(seconds=timeout_s),
                wait_for_workers=True,  # every rank waits for all of them, bounded by the same timeout
            )
        except BaseException as error:  # noqa: BLE001 - handed to the calling thread
            outcome["error"] = error

    # A client whose connection a foreign program accepts waits in the handshake forever, whatever the store's
    # timeout says: it runs in a daemon thread, abandoned after the deadline (the process then exits normally).
    thread = threading.Thread(target=connect, name="prec-rendezvous", daemon=True)
    thread.start()
    thread.join(timeout_s + _GRACE_S)
    if "store" in outcome:
        return outcome["store"]
    error = outcome.get("error")
    where = f"{address}:{port}"
    if error is not None and "EADDRINUSE" in str(error):
        raise RendezvousError(
            f"rank {rank} cannot host the job's rendezvous on {where}: port {port} is already in use by another"
            " program. Set MASTER_PORT to a free port (or stop the program holding it); the other ranks stop"
            f" within the rendezvous timeout ({timeout_s:.0f} s)."
        ) from error
    role = "wait for the other ranks at" if hosts else "reach the job's rendezvous at"
    cause = (
        "something answers there, but not a torch.distributed store: is another program using that port?"
        if error is None
        else f"torch said: {_first_line(error)}"
    )
    raise RendezvousError(
        f"rank {rank} of {world_size} could not {role} {where} within the rendezvous timeout of {timeout_s:.0f} s;"
        f" {cause} Check that rank 0 started (its own error says why if it failed), that MASTER_ADDR and"
        " MASTER_PORT are the same on every node, and that every rank was started. Raise the limit with"
        " PREC_RENDEZVOUS_TIMEOUT=<seconds> when nodes start far apart."
    ) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".strip()
