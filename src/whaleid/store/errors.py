"""The store's refusals, typed so that the web answers each with its own status (409, 404)."""

from __future__ import annotations

from whaleid.errors import UserError


class ConflictError(UserError):
    """Someone else decided on this photo first (or the row is in another state than the request expects)."""


class NotFound(UserError):
    """The photo, individual, decision, encounter, model, user or job asked for is not in the catalog."""
