"""The verdict loop's services for a test module of its own: each service's environment on the
module's databases and consumer groups, and the groups started at the end of every topic they
read, so only the module's orders reach them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from services.email.settings import EmailSettings
from services.inventory.settings import InventorySettings
from services.order.verdicts.settings import VerdictSettings
from stack.observe import position_groups_at_end

# In start order: each service's consumers exist before the producers of what they read.
LOOP_SERVICES: Final = ("order", "relay", "inventory", "inventory-relay", "order-verdicts", "email")
# The topics each consumer service subscribes to, as it builds them from its settings.
TOPICS_READ: Final[Mapping[str, tuple[str, ...]]] = {
    "inventory": (InventorySettings().topic, InventorySettings().cancelled_topic),
    "email": (
        EmailSettings().reserved_topic,
        EmailSettings().rejected_topic,
        EmailSettings().cancelled_topic,
    ),
    "order-verdicts": (
        VerdictSettings().topic,
        VerdictSettings().rejected_topic,
        VerdictSettings().released_topic,
    ),
}


@dataclass(frozen=True)
class Loop:
    """One module's loop: ``run`` names its consumer groups and transactional ids."""

    run: str
    orders_database: str
    inventory_database: str

    @property
    def groups(self) -> dict[str, str]:
        """consumer service -> its group in this module."""
        return {service: f"{self.run}-{service}" for service in TOPICS_READ}

    @property
    def group_topics(self) -> dict[str, tuple[str, ...]]:
        """group -> the topics it reads (what the console's CONSOLE_GROUP_TOPICS takes)."""
        return {group: TOPICS_READ[service] for service, group in self.groups.items()}

    def envs(self, common: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
        """Each service of :data:`LOOP_SERVICES`: its environment (``common`` added to each)."""
        groups = self.groups
        own = {
            "order": {"ORDER_DATABASE": self.orders_database},
            "relay": {
                "RELAY_DATABASE": self.orders_database,
                "RELAY_TRANSACTIONAL_ID": f"{self.run}-relay",
            },
            "inventory": {
                "INVENTORY_DATABASE": self.inventory_database,
                "INVENTORY_GROUP_ID": groups["inventory"],
            },
            # Each outbox has relays of its own, with a transactional id of their own.
            "inventory-relay": {
                "RELAY_DATABASE": self.inventory_database,
                "RELAY_TRANSACTIONAL_ID": f"{self.run}-inventory-relay",
            },
            "order-verdicts": {
                "ORDER_VERDICTS_DATABASE": self.orders_database,
                "ORDER_VERDICTS_GROUP_ID": groups["order-verdicts"],
            },
            "email": {"EMAIL_GROUP_ID": groups["email"]},
        }
        return {name: {**(common or {}), **own[name]} for name in LOOP_SERVICES}

    async def start_groups_at_the_end(self, bootstrap: str) -> None:
        """Commit the end of every topic each group reads (records of other modules stay)."""
        for group, topics in self.group_topics.items():
            for topic in topics:
                await position_groups_at_end(bootstrap, [group], topic)
