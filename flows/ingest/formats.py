"""Every format `tally ingest` reads, by its name on the command line."""

from __future__ import annotations

from typing import Callable

from flows.ingest import adyen, bai2, camt, mt940, stripe
from flows.ingest.statement import Statement

Parser = Callable[[bytes, str], list[Statement]]

FORMATS: dict[str, Parser] = {**camt.FORMATS, **mt940.FORMATS, **bai2.FORMATS,
                              **adyen.FORMATS, **stripe.FORMATS}
