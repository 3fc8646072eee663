"""The Kubernetes API for ``pgx controller`` and ``pgx runs``: where it is (in-cluster or
kubeconfig), and its answers as plain dicts (:func:`plain`).

In a pod, the ServiceAccount's token and CA (``load_incluster_config``); elsewhere the kubeconfig
(``$KUBECONFIG``, else ``~/.kube/config``) and its current context, as ``kubectl`` reads it. Either
configures the ``kubernetes`` client's default, so a plain ``client.ApiClient()`` talks to it.
"""

from __future__ import annotations

from typing import Any

from kubernetes import config

from pgx_core.errors import UsageError

_CONFIG: Any = config
# The namespace of a pod's ServiceAccount, mounted next to its token.
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DEFAULT_NAMESPACE = "default"


def load_config(command: str) -> str:
    """Configure the client: in-cluster, else the kubeconfig; returns the namespace it names.

    That namespace is the pod's own in a cluster, else the current context's, else ``default``:
    where ``kubectl`` would look. ``command`` (``pgx runs``) starts the one-line
    :class:`~pgx_core.errors.UsageError` raised when there is neither.
    """
    try:
        _CONFIG.load_incluster_config()
    except _CONFIG.ConfigException:
        try:
            _CONFIG.load_kube_config()
        except (_CONFIG.ConfigException, OSError) as exc:
            raise UsageError(
                f"{command}: no Kubernetes configuration: not running in a cluster (no service account "
                "token) and no usable kubeconfig (set KUBECONFIG or write ~/.kube/config)"
            ) from exc
        _, current = _CONFIG.list_kube_config_contexts()
        return str(((current or {}).get("context") or {}).get("namespace") or DEFAULT_NAMESPACE)
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as fh:
            return fh.read().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


def plain(api: Any, obj: Any) -> dict[str, Any]:
    """An answer of the client (a typed model, or already a dict) as the plain JSON-like dict the
    API server sent: pgx reads objects by their wire names, whatever kind they are."""
    out: dict[str, Any] = api.sanitize_for_serialization(obj)
    return out
