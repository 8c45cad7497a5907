"""Bank files for the end-to-end ingest tests: one statement of credits, in each format.

Each renderer writes a statement of one account and currency whose balances and control
totals add up (opening 0), following the format's specification; the format parsers'
own tests cover the formats' corners, these only carry credits into the flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal


@dataclass(frozen=True)
class Credit:
    bank_ref: str  # the bank's own reference for the entry
    amount: Decimal
    text: str  # what the bank shows: where a payout's reference appears


def _total(credits: list[Credit]) -> Decimal:
    return sum((c.amount for c in credits), Decimal(0))


def camt(message: str, version: str, iban: str, currency: str, day: date,
         credits: list[Credit]) -> bytes:
    """camt.053 (Stmt), camt.052 (Rpt) or camt.054 (Ntfctn) of booked credits."""
    root, block = {"053": ("BkToCstmrStmt", "Stmt"), "052": ("BkToCstmrAcctRpt", "Rpt"),
                   "054": ("BkToCstmrDbtCdtNtfctn", "Ntfctn")}[message]
    status = "<Sts>BOOK</Sts>" if version == "02" else "<Sts><Cd>BOOK</Cd></Sts>"
    entries = "".join(
        f'<Ntry><Amt Ccy="{currency}">{c.amount:f}</Amt><CdtDbtInd>CRDT</CdtDbtInd>{status}'
        f"<BookgDt><Dt>{day}</Dt></BookgDt><ValDt><Dt>{day}</Dt></ValDt>"
        f"<AcctSvcrRef>{c.bank_ref}</AcctSvcrRef><NtryDtls><TxDtls><RmtInf><Ustrd>{c.text}</Ustrd>"
        f"</RmtInf></TxDtls></NtryDtls></Ntry>" for c in credits)
    balances = "" if message != "053" else "".join(
        f'<Bal><Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp><Amt Ccy="{currency}">{amount:f}</Amt>'
        f"<CdtDbtInd>CRDT</CdtDbtInd><Dt><Dt>{day}</Dt></Dt></Bal>"
        for code, amount in (("OPBD", Decimal("0.00")), ("CLBD", _total(credits))))
    return (f'<?xml version="1.0" encoding="UTF-8"?><Document '
            f'xmlns="urn:iso:std:iso:20022:tech:xsd:camt.{message}.001.{version}"><{root}>'
            f"<GrpHdr><MsgId>M-{day}</MsgId><CreDtTm>{day}T22:00:00Z</CreDtTm></GrpHdr>"
            f"<{block}><Id>{block}-{iban}-{day}-{currency}</Id><CreDtTm>{day}T22:00:00Z</CreDtTm>"
            f"<Acct><Id><IBAN>{iban}</IBAN></Id><Ccy>{currency}</Ccy></Acct>"
            f"{balances}{entries}</{block}></{root}></Document>").encode()


def mt940(account: str, currency: str, day: date, credits: list[Credit]) -> bytes:
    """An MT940 message: :60F: 0, a :61: and :86: per credit, :62F: their sum."""
    yymmdd, mmdd = day.strftime("%y%m%d"), day.strftime("%m%d")

    def swift(amount: Decimal) -> str:
        return f"{amount:.2f}".replace(".", ",")

    lines = [":20:STMT" + day.strftime("%Y%m%d"), f":25:{account}", ":28C:1/1",
             f":60F:C{yymmdd}{currency}0,00"]
    for c in credits:
        lines += [f":61:{yymmdd}{mmdd}C{swift(c.amount)}NTRFNONREF//{c.bank_ref}", f":86:{c.text}"]
    lines += [f":62F:C{yymmdd}{currency}{swift(_total(credits))}", "-"]
    return ("\r\n".join(lines) + "\r\n").encode()


def bai2(account: str, currency: str, day: date, credits: list[Credit]) -> bytes:
    """A BAI2 file of one group and one account: opening (010) 0, closing (015) the sum,
    a 16 record per credit (type 165, a preauthorized ACH credit), trailers with totals."""
    cents = [int(c.amount * 100) for c in credits]
    yymmdd = day.strftime("%y%m%d")
    closing = sum(cents)
    account_records = [f"03,{account},{currency},010,0,,,015,{closing},,/"]
    account_records += [f"16,165,{amount},Z,{c.bank_ref},,{c.text}/" for c, amount in zip(credits, cents)]
    account_total = closing + closing  # the 49 total sums every amount of the account's records
    account_records.append(f"49,{account_total},{len(account_records) + 1}/")
    group = [f"02,TALLY,BANKID,1,{yymmdd},2300,{currency},2/", *account_records,
             f"98,{account_total},1,{len(account_records) + 2}/"]
    records = [f"01,BANKID,TALLY,{yymmdd},2300,{day:%d}01,,,2/", *group,
               f"99,{account_total},1,{len(group) + 2}/"]
    return ("\n".join(records) + "\n").encode()
