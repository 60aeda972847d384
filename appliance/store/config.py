"""``[store]``: the local SQLite store, the gateway's source of truth."""

from __future__ import annotations

from pydantic import Field

from appliance.core.sqlite_pages import PageSize
from appliance.settings import Section, StatePath
from appliance.store.verdicts import DEFAULT_CAUSES


class StoreConfig(Section):
    path: StatePath = Field("appliance.db", description="relative to data_dir")
    retention_days: float = Field(7.0, gt=0, le=3660)
    max_readings: int = Field(5_000_000, ge=1000, le=10_000_000_000)
    max_dead_letters: int = Field(100_000, ge=100, le=100_000_000, description="rows, enforced on every write")
    dead_letter_collapse_s: float = Field(60.0, ge=0, le=86400.0,
                                          description="an identical refusal within this is counted, not stored again")
    commit_linger_ms: float = Field(1000.0, ge=0, le=2000.0,
                                    description="a small batch waits up to this long for more before its commit "
                                                "(group commit: fewer commits, fewer bytes written; acks wait "
                                                "as long; 0: commit at once)")
    commit_linger_items: int = Field(2000, ge=1, le=100_000,
                                     description="queued records (a message is its readings and its ack) that end "
                                                 "the wait at once")
    commit_linger_gap_ms: float = Field(50.0, ge=0, le=2000.0,
                                        description="the wait also ends when arrivals pause for four of their usual "
                                                    "intervals (at least 5 ms, at most this): a broker waiting for "
                                                    "our acks at its in-flight limit, or a burst over; 0: never")
    checkpoint_pages: int = Field(4000, ge=100, le=1_000_000,
                                  description="WAL pages between checkpoints (SQLite's wal_autocheckpoint): a page "
                                              "rewritten by many commits reaches the database file once per "
                                              "checkpoint")
    page_size: PageSize = Field(
        1024, description="bytes per SQLite page: a commit writes each page it touches whole; an existing "
                          "store with other pages is rewritten once when the appliance starts")
    verdict_causes: tuple[str, ...] = Field(DEFAULT_CAUSES, min_length=1, max_length=50,
                                            description="the causes a technician may give with a 'fault' verdict")
    max_in_flight: int = Field(20_000, ge=10, le=10_000_000, description="readings accepted but not yet on disk")
