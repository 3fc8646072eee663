"""Leader election on a ``coordination.k8s.io/v1`` Lease: one replica of pgx controller acts.

The holder renews ``renewTime`` every third of ``leaseDurationSeconds``; another replica takes the
Lease only once it has expired, with an optimistic-concurrency replace (the ``resourceVersion``
it read), so two replicas never both hold it. A stopping holder gives it up at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pgx_core.k8s.kubeconfig import plain
from pgx_core.k8s.kubetime import micro, now, parse_time

log = logging.getLogger("pgx.controller")


@dataclass
class LeaderLease:
    """The Lease ``name`` in ``namespace``, held as ``identity``."""

    api: client.ApiClient
    namespace: str
    name: str
    identity: str
    duration_seconds: int = 15
    coordination: Any = field(init=False)

    def __post_init__(self) -> None:
        self.coordination = client.CoordinationV1Api(self.api)

    def acquire(self) -> bool:
        """Take or renew the Lease; True when this controller holds it now."""
        at = now()
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration_seconds,
            "renewTime": micro(at),
        }
        try:
            lease = plain(self.api, self.coordination.read_namespaced_lease(self.name, self.namespace))
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {**spec, "acquireTime": micro(at), "leaseTransitions": 0},
            }
            try:
                self.coordination.create_namespaced_lease(self.namespace, body)
            except ApiException as exc2:
                if exc2.status == 409:
                    return False
                raise
            return True
        current = lease.get("spec") or {}
        holder = current.get("holderIdentity")
        renewed = parse_time(current.get("renewTime"))
        duration = int(current.get("leaseDurationSeconds") or self.duration_seconds)
        expired = renewed is None or (at - renewed).total_seconds() > duration
        if holder and holder != self.identity and not expired:
            return False
        new_spec = {**current, **spec}
        if new_spec.get("acquireTime"):  # MicroTime: RFC 3339 with exactly six fraction digits
            acquired = parse_time(new_spec["acquireTime"])
            new_spec["acquireTime"] = micro(acquired) if acquired else None
        if holder != self.identity:
            new_spec["acquireTime"] = micro(at)
            new_spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
        lease["spec"] = new_spec
        try:
            self.coordination.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:  # someone else renewed or took it in between
                return False
            raise
        return True

    def release(self) -> None:
        """Give up the Lease (if held) so another controller takes over at once."""
        try:
            lease = plain(self.api, self.coordination.read_namespaced_lease(self.name, self.namespace))
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"]["holderIdentity"] = None
            lease["spec"]["renewTime"] = None
            self.coordination.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            log.warning("could not release lease %s: %s", self.name, exc.reason)
