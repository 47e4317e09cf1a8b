"""A model of workers under load around the real `SlotBroker`, for counting slot churn.

Each worker is modelled as `pooler.server.pool.Route` behaves toward the supervisor: clients
that wait for a server, idle and busy servers, one slot request outstanding at a time, sheds
done at once on an idle server or on the next one released, lends (`spare` sheds) on a
server left idle LEND_STEPS events. Messages between a worker and the supervisor travel through FIFO channels and are
delivered in whatever order the driver chooses, as are client transactions, logins and
closes. Counted: slots granted (a backend start each), sheds and lends asked, servers
closed for them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from pooler.supervisor.slots import Grant, Shed, SlotBroker

KEY = ("gen1", 0, "db", "user")
LEND_STEPS = 500  # events a server stays idle before it is lent (LEND_IDLE)


@dataclass
class ModelWorker:
    clients: int  # clients that think, then run one transaction, again and again
    thinking: int = 0
    waiters: int = 0
    idle: deque[int] = field(default_factory=deque)  # when each idle server was released
    busy: int = 0  # servers serving a client
    connecting: int = 0  # granted slots whose server logs in
    closing: int = 0  # servers closed, connection not yet lost
    slot_requested: bool = False
    shed_pending: int = 0
    shed_spare: int = 0
    inbox: deque[Grant | Shed] = field(default_factory=deque)  # supervisor -> worker
    outbox: deque[tuple[str, float]] = field(default_factory=deque)  # worker -> supervisor

    def __post_init__(self) -> None:
        self.thinking = self.clients


class SlotModel:
    """Workers, a broker and the channels between them; `step(choice)` runs one event."""

    def __init__(self, clients: list[int], limit: int) -> None:
        self.broker = SlotBroker()
        self.limit = limit
        self.workers = [ModelWorker(n) for n in clients]
        self.clock = 0.0
        self.grants = 0
        self.sheds = 0  # sheds and lends asked
        self.closes = 0  # servers closed for them
        self.served = [0] * len(clients)
        self.steps = 0

    # --- the worker side (as Route) -----------------------------------------------------

    def _want_slot(self, w: ModelWorker) -> None:
        w.shed_spare = 0
        if not w.slot_requested:
            w.slot_requested = True
            self.clock += 1
            w.outbox.append(("acquire", self.clock))

    def _begin(self, w: ModelWorker) -> None:
        w.thinking -= 1
        if w.idle:
            w.idle.pop()
            w.busy += 1
        else:
            w.waiters += 1
            self._want_slot(w)

    def _release(self, index: int, w: ModelWorker) -> None:
        """A client's transaction ended: its server goes back (Route.release)."""
        self.served[index] += 1
        w.thinking += 1
        if w.shed_pending:
            w.shed_pending -= 1
            w.busy -= 1
            self.closes += 1
            w.closing += 1
        elif w.waiters:
            w.waiters -= 1  # handed over, stays busy
        else:
            w.busy -= 1
            w.idle.append(self.steps)

    def _lost(self, w: ModelWorker) -> None:
        """A closed server's connection is gone (Route.forget): its slot goes back."""
        w.closing -= 1
        w.outbox.append(("release", 0.0))
        if w.waiters and not w.idle:
            self._want_slot(w)

    def _on_grant(self, w: ModelWorker) -> None:
        w.slot_requested = False
        if w.waiters:
            w.waiters -= 1
            w.connecting += 1
            if w.waiters:
                self._want_slot(w)
        else:
            w.outbox.append(("release", 0.0))

    def _on_shed(self, w: ModelWorker, spare: bool) -> None:
        if spare:
            w.shed_spare += 1
            self._lend_idle(w)
        elif w.idle:
            w.idle.popleft()
            w.closing += 1
            self.closes += 1
        else:
            w.shed_pending += 1

    def _lendable(self, w: ModelWorker) -> bool:
        return bool(w.shed_spare and w.idle and self.steps - w.idle[0] >= LEND_STEPS)

    def _lend_idle(self, w: ModelWorker) -> None:
        """Route._lend_idle (on a shed, and each second in expire_idle)."""
        while self._lendable(w):
            w.idle.popleft()
            w.shed_spare -= 1
            w.closing += 1
            self.closes += 1

    def _connected(self, w: ModelWorker) -> None:
        w.connecting -= 1
        w.busy += 1

    # --- the supervisor side ------------------------------------------------------------

    def _to_broker(self, index: int, w: ModelWorker) -> None:
        kind, since = w.outbox.popleft()
        if kind == "acquire":
            actions = self.broker.acquire(index, KEY, self.limit, since)
        else:
            actions = self.broker.release(index, KEY)
        for action in actions:
            if isinstance(action, Grant):
                self.grants += 1
            else:
                self.sheds += 1
            self.workers[action.worker].inbox.append(action)

    def _to_worker(self, w: ModelWorker) -> None:
        action = w.inbox.popleft()
        if isinstance(action, Grant):
            self._on_grant(w)
        else:
            self._on_shed(w, action.spare)

    # --- driving --------------------------------------------------------------------------

    def events(self) -> list[tuple[str, int]]:
        """What may happen next."""
        ready: list[tuple[str, int]] = []
        for index, w in enumerate(self.workers):
            if w.thinking:
                ready.append(("begin", index))
            if w.busy:
                ready.append(("end", index))
            if w.connecting:
                ready.append(("connected", index))
            if w.closing:
                ready.append(("lost", index))
            if self._lendable(w):
                ready.append(("lend_idle", index))
            if w.outbox:
                ready.append(("to_broker", index))
            if w.inbox:
                ready.append(("to_worker", index))
        return ready

    def step(self, choice: int) -> None:
        self.steps += 1
        ready = self.events()
        kind, index = ready[choice % len(ready)]
        w = self.workers[index]
        match kind:
            case "begin":
                self._begin(w)
            case "end":
                self._release(index, w)
            case "connected":
                self._connected(w)
            case "lost":
                self._lost(w)
            case "to_broker":
                self._to_broker(index, w)
            case "to_worker":
                self._to_worker(w)
            case "lend_idle":
                self._lend_idle(w)

    def servers(self) -> int:
        """Server connections that exist or are being opened (each holds a slot)."""
        return sum(len(w.idle) + w.busy + w.connecting + w.closing for w in self.workers)
