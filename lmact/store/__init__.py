"""The run store: every run, episode and step, and the model-call cache.

`RunStore` keeps them in one SQLite file (`sqlite`), laid out and migrated by `schema`;
`PostgresStore` (`postgres`) in a database that workers on many hosts share; `open_store`
opens either from a path or a postgresql:// URL (`location`);
what any store shares (its errors, the run record, claims, how a regime's facts are kept)
is in `base`. The store knows no regime: a unit is a `lmact.records.UnitKey`, and what only
one regime records is a JSON object it keeps without reading.
"""

from lmact.store.base import (
    CLAIM_LEASE_S,
    DEFAULT_STORE,
    MAX_EPISODES,
    Claim,
    ClaimLostError,
    RunRecord,
    StoreError,
    UnitEnd,
    UnitResult,
    UnitSums,
    claim_alive,
    process_identity,
)
from lmact.store.location import (
    STORE_VARIABLE,
    StoreLocation,
    StoreUrl,
    open_played_store,
    open_store,
    store_location,
)
from lmact.store.reader import StoredSteps
from lmact.store.schema import APPLICATION_ID, SCHEMA_VERSION
from lmact.store.sqlite import OPEN_TIMEOUT_S, RunStore

__all__ = [
    "APPLICATION_ID",
    "CLAIM_LEASE_S",
    "DEFAULT_STORE",
    "MAX_EPISODES",
    "OPEN_TIMEOUT_S",
    "SCHEMA_VERSION",
    "STORE_VARIABLE",
    "Claim",
    "ClaimLostError",
    "RunRecord",
    "RunStore",
    "StoreError",
    "StoreLocation",
    "StoreUrl",
    "StoredSteps",
    "UnitEnd",
    "UnitResult",
    "UnitSums",
    "claim_alive",
    "open_played_store",
    "open_store",
    "process_identity",
    "store_location",
]
