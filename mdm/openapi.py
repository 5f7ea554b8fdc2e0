"""What /openapi.json says of answers FastAPI cannot see for itself: files and pages rather than JSON."""

from typing import Any


def answered_as(*media_types: str, description: str) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=`: its 200 comes in these media types, so clients know what they will get."""
    return {200: {"description": description, "content": {media_type: {} for media_type in media_types}}}
