"""ISO 20022 bank-to-customer cash management: camt.053, camt.052 and camt.054 into Statements.

One Statement per Stmt (camt.053), Rpt (camt.052) or Ntfctn (camt.054) and currency, versions
001.02 and 001.08. docs/sources.md says which element becomes which field. In short:

- Only booked entries (Sts BOOK) become Entries: pending and information-only entries are not
  in the booked balances, so they are left out and named in the statement's notes.
- The sign comes from CdtDbtInd alone (CRDT +, DBIT -). A reversal (RvslInd true) is booked
  in the direction of its own CdtDbtInd: ISO 20022 says a DBIT reversal undoes a credit, so
  the reversal of a credit is already a debit and is not flipped again.
- Event ids are `<account>:ref:<AcctSvcrRef>`: the bank's own reference for the entry, so the
  same entry in an intraday camt.052, the end-of-day camt.053 or a camt.054 keeps its id.
  Without one, `<account>:ntry:<statement id>:<NtryRef>`, else
  `<account>:pos:<statement id>:<position of the Ntry>`: those hold only within one
  statement, and the positional one changes when entries before it are added or removed.
- A batch entry (several TxDtls) becomes one Entry per TxDtls: its own AcctSvcrRef, else the
  entry's id and `/<position in the batch>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from decimal import Decimal
from functools import partial
from typing import Callable

from lxml import etree

from flows.ingest.statement import Entry, FormatError, Statement
from state.currency import exponent

VERSIONS = ("02", "08")
_NAMESPACE = re.compile(r"urn:iso:std:iso:20022:tech:xsd:(camt\.05[234])\.001\.([0-9]{2})\Z")
_AMOUNT = re.compile(r"[0-9]+(?:\.([0-9]+))?\Z")
_DATE = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})(?:Z|[+-][0-9]{2}:[0-9]{2})?\Z")
_NO_REFERENCE = "NOTPROVIDED"  # what SEPA payers write where they have no end-to-end id


@dataclass(frozen=True)
class _Message:
    message: str  # as in the namespace: "camt.053"
    body: str  # the element under Document
    report: str  # one account's statement, report or notification


_MESSAGES = {
    "camt053": _Message("camt.053", "BkToCstmrStmt", "Stmt"),
    "camt052": _Message("camt.052", "BkToCstmrAcctRpt", "Rpt"),
    "camt054": _Message("camt.054", "BkToCstmrDbtCdtNtfctn", "Ntfctn"),
}
_FORMAT_OF = {message.message: name for name, message in _MESSAGES.items()}


def parse(data: bytes, name: str, format_name: str) -> list[Statement]:
    """The statements of one camt file, or FormatError naming the element that is wrong."""
    message = _MESSAGES[format_name]
    root = _root(data, name)
    xml = _Xml(name, _namespace(root, name, message))
    body = xml.required(root, message.body, "Document")
    statements = []
    for position, report in enumerate(xml.children(body, message.report), 1):
        statements.extend(_report(xml, report, f"{message.report}[{position}]"))
    _refuse_repeated_ids(name, statements)
    return statements


FORMATS: dict[str, Callable[[bytes, str], list[Statement]]] = {
    format_name: partial(parse, format_name=format_name) for format_name in _MESSAGES
}


def _hardened_parser() -> etree.XMLParser:
    # A bank file is untrusted input: no network, no entities, no DTD, no unbounded trees.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           huge_tree=False, remove_comments=True, remove_pis=True)


def _root(data: bytes, name: str) -> etree._Element:
    try:
        root = etree.fromstring(data, _hardened_parser())
    except etree.XMLSyntaxError as error:
        raise FormatError(name, f"line {error.lineno}", f"not well-formed XML ({error.msg})")
    if root.getroottree().docinfo.doctype:
        raise FormatError(name, "line 1", "a DOCTYPE is not allowed in a camt file")
    return root


def _namespace(root: etree._Element, name: str, message: _Message) -> str:
    qname = etree.QName(root)
    if qname.localname != "Document":
        raise FormatError(name, qname.localname, "the root element is not an ISO 20022 Document")
    if qname.namespace is None:
        raise FormatError(name, "Document", "the Document has no namespace, so it names no "
                          "camt message or version")
    found = _NAMESPACE.match(qname.namespace)
    if found is None:
        raise FormatError(name, "Document", f"namespace {qname.namespace!r} is not a "
                          "camt.052, camt.053 or camt.054 message")
    kind, version = found.groups()
    if kind != message.message:
        other = _FORMAT_OF[kind]
        raise FormatError(name, "Document", f"this is a {kind} message, not {message.message}: "
                          f"read it as {other}")
    if version not in VERSIONS:
        raise FormatError(name, "Document", f"namespace {qname.namespace} is not read; "
                          f"versions read: {', '.join('001.' + v for v in VERSIONS)}")
    return qname.namespace


class _Xml:
    """Element lookups in the file's namespace, and FormatErrors carrying the file's name."""

    def __init__(self, name: str, namespace: str):
        self.name, self.namespace = name, namespace

    def _path(self, path: str) -> str:
        return "/".join(f"{{{self.namespace}}}{step}" for step in path.split("/"))

    def find(self, element: etree._Element, path: str) -> etree._Element | None:
        return element.find(self._path(path))

    def children(self, element: etree._Element, path: str) -> list[etree._Element]:
        return element.findall(self._path(path))

    def required(self, element: etree._Element, path: str, where: str) -> etree._Element:
        found = self.find(element, path)
        if found is None:
            raise self.error(where, f"{path} is missing")
        return found

    def text(self, element: etree._Element, path: str) -> str | None:
        found = self.find(element, path)
        text = None if found is None else (found.text or "").strip()
        return text or None

    def required_text(self, element: etree._Element, path: str, where: str) -> str:
        text = self.text(element, path)
        if text is None:
            raise self.error(f"{where}/{path}", "is missing or empty")
        return text

    def error(self, where: str, reason: str) -> FormatError:
        return FormatError(self.name, where, reason)


# -- values ------------------------------------------------------------------------------


def _money(xml: _Xml, element: etree._Element, where: str) -> tuple[Decimal, str]:
    """An unsigned amount with its Ccy attribute, checked against the currency's decimals."""
    currency = element.get("Ccy")
    if currency is None:
        raise xml.error(where, "the amount has no Ccy attribute")
    return _amount(xml, element.text, currency, where), currency


def _amount(xml: _Xml, text: str | None, currency: str, where: str) -> Decimal:
    places = exponent(currency)
    if places is None:
        raise xml.error(where, f"unknown currency {currency!r}")
    text = (text or "").strip()
    found = _AMOUNT.match(text)
    if found is None:
        raise xml.error(where, f"amount {text!r} is not an unsigned decimal number")
    if len(found.group(1) or "") > places:
        raise xml.error(where, f"amount {text} has {len(found.group(1))} decimals; "
                        f"{currency} allows {places}")
    return Decimal(text)


def _signed(xml: _Xml, amount: Decimal, indicator: str | None, where: str) -> Decimal:
    if indicator == "CRDT":
        return amount
    if indicator == "DBIT":
        return -amount
    raise xml.error(f"{where}/CdtDbtInd", f"{indicator!r} is neither CRDT nor DBIT")


def _when(xml: _Xml, element: etree._Element, where: str, notes: list[str]) -> date | datetime:
    """A DateAndDateTime choice: a date, or an aware UTC datetime.

    A time without a UTC offset is the bank's local time, which the file does not name:
    it is read as its date, and the statement's notes say so."""
    text = xml.text(element, "Dt")
    if text is not None:
        return _date(xml, text, f"{where}/Dt")
    text = xml.required_text(element, "DtTm", where)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise xml.error(f"{where}/DtTm", f"{text!r} is not an ISO date and time")
    if moment.tzinfo is None:
        note = "times without a UTC offset are read as their dates"
        if note not in notes:
            notes.append(note)
        return moment.date()
    return moment.astimezone(timezone.utc)


def _date(xml: _Xml, text: str, where: str) -> date:
    found = _DATE.match(text)
    try:
        return date.fromisoformat(found.group(1)) if found else date.fromisoformat(text)
    except ValueError:
        raise xml.error(where, f"{text!r} is not an ISO date")


def _words(texts: list[str]) -> str | None:
    joined = " ".join(" ".join(texts).split())
    return joined or None


# -- one statement, report or notification -----------------------------------------------


@dataclass
class _Report:
    """What every entry of one Stmt/Rpt/Ntfctn shares."""

    xml: _Xml
    id: str
    account: str
    where: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Read:
    """One Ntry as read: its signed amount, and the Entries it becomes (none unless booked)."""

    status: str
    currency: str
    amount: Decimal
    entries: tuple[Entry, ...]


def _report(xml: _Xml, element: etree._Element, where: str) -> list[Statement]:
    report = _Report(xml, xml.required_text(element, "Id", where),
                     _account(xml, element, where), where)
    balances = _balances(report, element)
    reads = [_entry(report, ntry, f"{where}/Ntry[{position}]", position)
             for position, ntry in enumerate(xml.children(element, "Ntry"), 1)]
    _note_skipped(report, reads)
    currencies = sorted({read.currency for read in reads if read.entries} | set(balances))
    if not currencies:
        currencies = [c for c in [xml.text(element, "Acct/Ccy")] if c and exponent(c) is not None]
    if len(currencies) > 1:
        # TxsSummry's figures carry no currency: they cannot be split between statements.
        summarised = xml.find(element, "TxsSummry") is not None
        unchecked = "; TxsSummry is not checked" if summarised else ""
        report.notes.append(f"entries in {len(currencies)} currencies ({', '.join(currencies)}): "
                            f"one statement per currency, each with its own balances{unchecked}")
    declared = _declared(report, element, currencies[0], reads) if len(currencies) == 1 else {}
    return [_statement(report, currency, reads, balances.get(currency, {}), declared,
                       several=len(currencies) > 1)
            for currency in currencies]


def _statement(report: _Report, currency: str, reads: list[_Read],
               balances: dict[str, tuple[Decimal, date]], declared: dict[str, int | Decimal],
               several: bool) -> Statement:
    entries = tuple(entry for read in reads if read.currency == currency for entry in read.entries)
    opening = balances.get("OPBD") or balances.get("PRCD")
    closing = balances.get("CLBD")
    notes = list(report.notes)
    if several and opening is None and closing is None:
        notes.append(f"the file states no {currency} balance: these entries are not checked "
                     "against balances")
    return Statement(
        id=f"{report.id}/{currency}" if several else report.id,
        account=report.account, currency=currency, entries=entries, where=report.where,
        opening=opening[0] if opening else None,
        closing=closing[0] if closing else None,
        closing_date=closing[1] if closing else None,
        declared_count=declared.get("count"), declared_total=declared.get("total"),
        notes=tuple(notes))


def _account(xml: _Xml, element: etree._Element, where: str) -> str:
    account = xml.required(element, "Acct/Id", where)
    found = xml.text(account, "IBAN") or xml.text(account, "Othr/Id")
    if found is None:
        raise xml.error(f"{where}/Acct/Id", "has neither IBAN nor Othr/Id")
    return found


def _balances(report: _Report, element: etree._Element) -> dict[str, dict[str, tuple]]:
    """currency -> balance type (OPBD, PRCD, CLBD, ...) -> (signed amount, date)."""
    xml, found = report.xml, {}
    for position, balance in enumerate(xml.children(element, "Bal"), 1):
        where = f"{report.where}/Bal[{position}]"
        code = xml.text(balance, "Tp/CdOrPrtry/Cd")
        if code is None:
            continue  # a proprietary balance type: nothing we can check against
        amount, currency = _money(xml, xml.required(balance, "Amt", where), f"{where}/Amt")
        signed = _signed(xml, amount, xml.text(balance, "CdtDbtInd"), where)
        on = _when(xml, xml.required(balance, "Dt", where), f"{where}/Dt", report.notes)
        of_currency = found.setdefault(currency, {})
        if code in of_currency:
            raise xml.error(where, f"a second {code} balance in {currency}")
        of_currency[code] = (signed, on.date() if isinstance(on, datetime) else on)
    return found


def _note_skipped(report: _Report, reads: list[_Read]) -> None:
    skipped = sorted({read.status for read in reads if read.status != "BOOK"})
    for status in skipped:
        count = sum(1 for read in reads if read.status == status)
        noun = "entry" if count == 1 else "entries"
        report.notes.append(f"{count} {noun} with status {status} left out: "
                            "only booked entries are read")


def _declared(report: _Report, element: etree._Element, currency: str,
              reads: list[_Read]) -> dict[str, int | Decimal]:
    """TxsSummry/TtlNtries, restated for the Entries read.

    The file counts and sums every Ntry; the Statement holds booked entries only, one per
    transaction of a batch. So the declared count gains what splitting batches added and
    loses what was left out, and the declared net loses the amounts left out: any difference
    the file has between its summary and its entries is kept, and gaps() reports it."""
    xml = report.xml
    totals = xml.find(element, "TxsSummry/TtlNtries")
    if totals is None:
        return {}
    where = f"{report.where}/TxsSummry/TtlNtries"
    declared = {}
    count = xml.text(totals, "NbOfNtries")
    if count is not None:
        if not re.fullmatch(r"[0-9]+", count):
            raise xml.error(f"{where}/NbOfNtries", f"{count!r} is not a number")
        kept = sum(len(read.entries) for read in reads)
        declared["count"] = int(count) - len(reads) + kept
    net = _declared_net(xml, totals, currency, where)
    if net is not None:
        declared["total"] = net - sum((r.amount for r in reads if not r.entries), Decimal(0))
    return declared


def _declared_net(xml: _Xml, totals: etree._Element, currency: str, where: str) -> Decimal | None:
    # 001.02 states TtlNetNtryAmt and CdtDbtInd side by side; 001.08 nests them in TtlNetNtry.
    holder, path = totals, "TtlNetNtryAmt"
    nested = xml.find(totals, "TtlNetNtry")
    if nested is not None:
        holder, path = nested, "Amt"
    text = xml.text(holder, path)
    if text is None:
        return None
    amount = _amount(xml, text, currency, f"{where}/{path}")
    return _signed(xml, amount, xml.text(holder, "CdtDbtInd"), where)


# -- entries -----------------------------------------------------------------------------


def _entry(report: _Report, ntry: etree._Element, where: str, position: int) -> _Read:
    xml = report.xml
    amount, currency = _money(xml, xml.required(ntry, "Amt", where), f"{where}/Amt")
    signed = _signed(xml, amount, xml.text(ntry, "CdtDbtInd"), where)
    _check_reversal(xml, ntry, where)
    status = _status(xml, ntry, where)
    if status != "BOOK":
        return _Read(status, currency, signed, ())
    base = Entry(
        event_id=_entry_id(report, ntry, position), account=report.account, currency=currency,
        amount=signed, where=where,
        booked=_when(xml, xml.required(ntry, "BookgDt", where), f"{where}/BookgDt", report.notes),
        value=_value_date(report, ntry, where))
    details = [(f"{where}/NtryDtls[{i}]/TxDtls[{j}]", tx)
               for i, dtls in enumerate(xml.children(ntry, "NtryDtls"), 1)
               for j, tx in enumerate(xml.children(dtls, "TxDtls"), 1)]
    if len(details) <= 1:
        reference = _reference(xml, details[0][1]) if details else None
        entry = replace(base, reference=reference or _words([xml.text(ntry, "AddtlNtryInf") or ""]))
        return _Read(status, currency, signed, (entry,))
    return _Read(status, currency, signed, _batch(report, ntry, base, details))


def _value_date(report: _Report, ntry: etree._Element, where: str) -> date | datetime | None:
    element = report.xml.find(ntry, "ValDt")
    return None if element is None else _when(report.xml, element, f"{where}/ValDt", report.notes)


def _check_reversal(xml: _Xml, ntry: etree._Element, where: str) -> None:
    """RvslInd is read but changes nothing: the entry's CdtDbtInd already books the reversal."""
    text = xml.text(ntry, "RvslInd")
    if text not in (None, "true", "false", "1", "0"):
        raise xml.error(f"{where}/RvslInd", f"{text!r} is not true or false")


def _status(xml: _Xml, ntry: etree._Element, where: str) -> str:
    # 001.02 writes the code as the text of Sts; 001.08 as Sts/Cd (or Sts/Prtry).
    status = xml.required(ntry, "Sts", where)
    code = xml.text(status, "Cd") or xml.text(status, "Prtry") or (status.text or "").strip()
    if not code:
        raise xml.error(f"{where}/Sts", "is empty")
    return code


def _entry_id(report: _Report, ntry: etree._Element, position: int) -> str:
    """The bank's reference for the entry; the statement's own references only without one."""
    reference = report.xml.text(ntry, "AcctSvcrRef")
    if reference is not None:
        return f"{report.account}:ref:{reference}"
    entry_reference = report.xml.text(ntry, "NtryRef")
    if entry_reference is not None:
        return f"{report.account}:ntry:{report.id}:{entry_reference}"
    return f"{report.account}:pos:{report.id}:{position}"


def _reference(xml: _Xml, tx: etree._Element) -> str | None:
    """What the payer wrote: unstructured remittance, else creditor references, else EndToEndId."""
    unstructured = [e.text or "" for e in xml.children(tx, "RmtInf/Ustrd")]
    structured = [e.text or "" for e in xml.children(tx, "RmtInf/Strd/CdtrRefInf/Ref")]
    end_to_end = xml.text(tx, "Refs/EndToEndId")
    if end_to_end == _NO_REFERENCE:
        end_to_end = None
    return _words(unstructured) or _words(structured) or end_to_end


def _batch(report: _Report, ntry: etree._Element, base: Entry,
           details: list[tuple[str, etree._Element]]) -> tuple[Entry, ...]:
    """One Entry per transaction of a batch entry; their amounts must make the entry's."""
    xml = report.xml
    entry_reference = xml.text(ntry, "AcctSvcrRef")
    indicator = xml.text(ntry, "CdtDbtInd")
    entries = []
    for position, (where, tx) in enumerate(details, 1):
        own = xml.text(tx, "Refs/AcctSvcrRef")
        event_id = (f"{report.account}:ref:{own}" if own and own != entry_reference
                    else f"{base.event_id}/{position}")
        entries.append(replace(base, event_id=event_id, where=where,
                                amount=_batch_amount(xml, tx, base, indicator, where),
                                reference=_reference(xml, tx)))
    total = sum((entry.amount for entry in entries), Decimal(0))
    if total != base.amount:
        raise xml.error(base.where, f"its {len(entries)} transactions sum to {total}, "
                        f"but the entry is {base.amount}")
    return tuple(entries)


def _batch_amount(xml: _Xml, tx: etree._Element, base: Entry, indicator: str | None,
                  where: str) -> Decimal:
    # 001.08 states the transaction's amount as Amt; both versions as AmtDtls/TxAmt/Amt.
    for path in ("Amt", "AmtDtls/TxAmt/Amt"):
        element = xml.find(tx, path)
        if element is not None:
            amount, currency = _money(xml, element, f"{where}/{path}")
            if currency != base.currency:
                raise xml.error(f"{where}/{path}", f"in {currency}, but the entry is in "
                                f"{base.currency}")
            return _signed(xml, amount, xml.text(tx, "CdtDbtInd") or indicator, where)
    raise xml.error(where, "a transaction of a batch entry has no amount "
                    "(Amt or AmtDtls/TxAmt/Amt)")


def _refuse_repeated_ids(name: str, statements: list[Statement]) -> None:
    seen: dict[str, str] = {}
    for entry in (entry for statement in statements for entry in statement.entries):
        if entry.event_id in seen:
            raise FormatError(name, entry.where, f"event id {entry.event_id!r} is also "
                              f"{seen[entry.event_id]}'s: the file gives nothing that tells "
                              "them apart")
        seen[entry.event_id] = entry.where
