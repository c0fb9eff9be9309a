"""`mailblast suppress add|remove|list|export`: the shared suppression list by hand."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import datetime
from typing import TextIO

from rich.console import Console

from mailblast import display
from mailblast.campaign.suppress import address_key, parse_field
from mailblast.campaign.suppression_db import Entry, SuppressionStore
from mailblast.errors import InputError

EXPORT_HEADER = ("email", "reason", "source", "campaign", "date")


def _addresses(texts: Sequence[str]) -> list[str]:
    found = []
    for text in texts:
        address = parse_field(text)
        if address is None:
            raise InputError(f"{text!r} is not an address", "give addresses such as ann@example.com")
        found.append(address)
    return found


def run_add(texts: Sequence[str], reason: str, console: Console) -> int:
    addresses = _addresses(texts)
    with SuppressionStore() as store:
        for address in addresses:
            if store.add(address_key(address), address, reason or "added by hand", "manual"):
                console.print(f"suppressed {address}", soft_wrap=True)
            else:
                entry = store.entry(address_key(address))
                assert entry is not None
                console.print(f"{address} was already suppressed ({describe(entry)})", soft_wrap=True)
        console.print(f"the shared list: {store.path} ({len(store):,} address(es))", soft_wrap=True)
    return 0


def run_remove(texts: Sequence[str], console: Console) -> int:
    addresses = _addresses(texts)
    missing = 0
    with SuppressionStore() as store:
        for address in addresses:
            if store.remove(address_key(address)):
                console.print(f"removed {address}: it will be mailed again", soft_wrap=True)
            else:
                missing += 1
                display.print_warning(console, f"{address} is not on the shared list")
    return 1 if missing else 0


def run_list(console: Console) -> int:
    store = SuppressionStore.existing()
    if store is None:
        console.print("the shared suppression list is empty", soft_wrap=True)
        return 0
    with store:
        for entry in store.entries():
            console.print(f"{entry.address}  {describe(entry)}", soft_wrap=True)
        console.print(f"{len(store):,} address(es) in {store.path}", soft_wrap=True)
    return 0


def run_export(out: TextIO) -> int:
    """The list as a CSV with an email column: itself a suppression file for --suppress."""
    writer = csv.writer(out)
    writer.writerow(EXPORT_HEADER)
    store = SuppressionStore.existing()
    if store is None:
        return 0
    with store:
        for e in store.entries():
            writer.writerow(
                [
                    display_safe(e.address),
                    display_safe(e.reason),
                    e.source,
                    e.campaign or "",
                    _date(e.added_at),
                ]
            )
    return 0


def describe(entry: Entry) -> str:
    campaign = f", campaign {entry.campaign}" if entry.campaign else ""
    return f"{entry.source}, {_date(entry.added_at)}{campaign}: {entry.reason}"


def display_safe(text: str) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _date(at: float) -> str:
    return datetime.fromtimestamp(at).astimezone().strftime("%Y-%m-%d %H:%M")
