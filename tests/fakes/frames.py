"""What every vendor's wire format is built from: a frame of bytes, stable ids, token estimates, compact JSON."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass
class Frame:
    data: bytes
    delta: bool = False  # counts towards `Reply.fault_after`


def ident(seed: str, length: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    digest = hashlib.sha256(seed.encode()).digest() * 4
    return "".join(alphabet[b % len(alphabet)] for b in digest[:length])


def tokens(value: str | bytes) -> int:
    return max(1, len(value) // 4)


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def json_pieces(value: dict[str, Any], pieces: int = 3) -> list[str]:
    encoded = compact(value)
    size = max(1, -(-len(encoded) // pieces))
    return [encoded[i:i + size] for i in range(0, len(encoded), size)]
