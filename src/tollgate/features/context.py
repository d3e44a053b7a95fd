"""What the gateway learns about one data-plane request while serving it.

`DataPlane` creates one `RequestContext` per request and hands it down with the request; each
feature fills in its part (the credential source, whether ZDR applied, the cache status, the
retry step, usage and cost). The log record is built from it when the response is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from tollgate.log_output import CURRENT_REQUEST
from tollgate.store._util import ordered_id
from tollgate.store.holds import Settlement

if TYPE_CHECKING:
    from tollgate.features.custom_cost import CustomCost
    from tollgate.store.models import GatewayRecord

CredentialSource = Literal["unified", "byok", "stored"]


@dataclass(slots=True)
class RequestContext:
    account_id: str
    gateway_id: str
    # The log id, sent as `cf-aig-log-id` on every response, also for refused requests.
    log_id: str = field(default_factory=ordered_id)
    started: float = field(default_factory=time.monotonic)
    provider: str | None = None
    model: str | None = None
    credential_source: CredentialSource | None = None
    zdr: bool = False
    cached: bool = False
    step: int | None = None  # the Universal step that answered
    path: str | None = None  # that step's provider path (else the log takes the route's)
    event_id: str | None = None
    metadata: dict[str, str | int | float | bool] = field(default_factory=dict)
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_nanos: int | None = None
    cost_estimated: bool = False
    custom_cost: bool = False
    # The request's `cf-aig-custom-cost` price (features/custom_cost.py), for the meter.
    custom_rates: CustomCost | None = None
    # The gateway, once the caller is authorized for it (pipeline.resolve_gateway's callers set
    # it): the log is written into this gateway, under its collect_logs and log_management.
    gateway: GatewayRecord | None = None

    def __post_init__(self) -> None:
        # From here on, every line the process logs while serving this request carries its id
        # (tollgate/log_output.py): the context is made in the request's own task.
        CURRENT_REQUEST.set(self)

    def record_usage(self, tokens_in: int, tokens_out: int, settlement: Settlement) -> None:
        """What the meter settled: the log shows the tokens and cost that were charged."""
        self.tokens_in, self.tokens_out = tokens_in, tokens_out
        self.cost_nanos = settlement.charged_nanos
        self.cost_estimated = settlement.estimated

    def record_observed(self, tokens_in: int, tokens_out: int, cost_nanos: int) -> None:
        """A request nothing was held for (the client's own key pays): the log shows its tokens
        and what the catalog prices them at; nothing was charged."""
        self.tokens_in, self.tokens_out = tokens_in, tokens_out
        self.cost_nanos = cost_nanos
        self.cost_estimated = False

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)
