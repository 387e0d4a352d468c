"""The embedded stack: real MongoDB (SecantusDB), Kafka (KRaft), Redis, an SMTP sink and a
development token issuer (Keycloak on request), plus the six service processes, started and
supervised as local processes. ``python -m stack --help``.
"""

from stack.config import ALL, FAULT_PROXY, INFRA, SERVICES, StackConfig
from stack.supervisor import Stack, StackError

__all__ = ["ALL", "FAULT_PROXY", "INFRA", "SERVICES", "Stack", "StackConfig", "StackError"]
