"""Who is erased: a person named by keyed hashes under every key of the keyring, never an id.

``PersonRef`` is all that crosses XCom, the run's conf and the logs: the Synap page's
"Erase a user" form makes its token in the API server, so no id in clear reaches
Airflow's metadata (``identity/keys.py`` makes the hashes).
"""

from __future__ import annotations

from dataclasses import dataclass

from synap_backfill.identity.keys import Keyring, normalise


@dataclass(frozen=True)
class KeyHashes:
    """The person under one key: the user id's hash, the pair's (a customer was given), and the
    user id in any case (what finds an id typed in the wrong case)."""

    key_id: str
    user: str
    pair: str | None
    folded: str


@dataclass(frozen=True)
class PersonRef:
    """Who is erased, as hashes under every key of the keyring; never an id in clear."""

    hashes: tuple[KeyHashes, ...]

    @classmethod
    def of(cls, keyring: Keyring, user_id: str, customer_id: str | None = None) -> "PersonRef":
        customer = customer_id if customer_id and normalise(customer_id) else None
        return cls(tuple(KeyHashes(k.id, k.user(user_id), k.pair(customer, user_id)
                                   if customer else None, k.folded(user_id))
                         for k in keyring.keys))

    def token(self) -> str:
        """``<key id>:<user>:<pair or ->:<folded>`` per key, joined by ``;``: the ``person``
        param the Synap page's Erase form triggers ``synap_erase`` with."""
        return ";".join(f"{h.key_id}:{h.user}:{h.pair or '-'}:{h.folded}" for h in self.hashes)

    @classmethod
    def from_token(cls, token: str) -> "PersonRef":
        hashes = []
        for part in token.strip().split(";"):
            fields = part.split(":")
            if len(fields) != 4 or not all(fields):
                raise ValueError("is not a person token (as the Synap page's Erase form makes)")
            key_id, user, pair, folded = fields
            hashes.append(KeyHashes(key_id, user, None if pair == "-" else pair, folded))
        return cls(tuple(hashes))

    @property
    def customer_given(self) -> bool:
        return self.hashes[0].pair is not None

    @property
    def users(self) -> list[str]:
        return [h.user for h in self.hashes]

    @property
    def pairs(self) -> list[str]:
        return [h.pair for h in self.hashes if h.pair]

    @property
    def who(self) -> str:
        """How logs name the person: a prefix of a hash."""
        first = self.hashes[0]
        return f"person {(first.pair or first.user)[:12]}…"
