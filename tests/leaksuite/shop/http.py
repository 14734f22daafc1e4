"""Calls to the user service over HTTP with requests and httpx."""

from __future__ import annotations

from typing import Any

import httpx
import requests

_shared: requests.Session | None = None


def _session() -> requests.Session:
    global _shared
    if _shared is None:
        _shared = requests.Session()
    return _shared


def fetch_user(base: str, user_id: int) -> dict[str, Any]:
    """One shared session for every request (keep-alive, one pooled connection)."""
    return _session().get(f"{base}/users/{user_id}", timeout=5).json()  # type: ignore[no-any-return]


def fetch_user_own_session(base: str, user_id: int) -> dict[str, Any]:
    """A session per call, closed on the way out."""
    with requests.Session() as session:
        return session.get(f"{base}/users/{user_id}", timeout=5).json()  # type: ignore[no-any-return]


def fetch_user_httpx(base: str, user_id: int) -> dict[str, Any]:
    with httpx.Client(base_url=base, timeout=5) as client:
        return client.get(f"/users/{user_id}").json()  # type: ignore[no-any-return]


_tenant_sessions: list[requests.Session] = []


def fetch_user_for_tenant(base: str, user_id: int) -> dict[str, Any]:
    """A session per call, kept "for the tenant" in a module list and never closed."""
    session = requests.Session()  # LEAK: session_kept_in_module_list
    _tenant_sessions.append(session)
    return session.get(f"{base}/users/{user_id}", timeout=5).json()  # type: ignore[no-any-return]
