"""`tally verify`, `audit`, `explain`, `report` and `review`: the checks register their own options."""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from flows import logs
from flows.logs import UserError


def add_verify(commands) -> None:
    from flows.checks import verify
    verify.register(commands)


def add_audit(commands) -> None:
    from flows.checks import audit
    audit.register(commands)


def add_explain(commands) -> None:
    from flows.checks import explain
    explain.register(commands)


def add_report(commands) -> None:
    from flows.checks import report
    report.register(commands)


def add_review(commands) -> None:
    from flows.checks import review
    review.register(commands)
