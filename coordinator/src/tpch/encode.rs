//! Rows of TPC-H tables as PostgreSQL's COPY text format: tab-separated
//! fields, escaped text, numbers and dates written without allocation.

use std::fmt::{self, Write as _};
use std::sync::OnceLock;
use tpchgen::dates::{MIN_GENERATE_DATE, TOTAL_DATE_RANGE, TPCHDate};
use tpchgen::decimal::TPCHDecimal;
use tpchgen::generators::{Customer, LineItem, Order};

/// Appends `s` escaped for the COPY text format.
pub(super) fn push_escaped(buf: &mut String, s: &str) {
    // A plain index loop: cheap even in unoptimized builds, unlike iterator chains.
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if matches!(bytes[i], b'\\' | b'\t' | b'\n' | b'\r') {
            break;
        }
        i += 1;
    }
    if i == bytes.len() {
        buf.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '\t' => buf.push_str("\\t"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            c => buf.push(c),
        }
    }
}

/// `fmt::Write` adapter that escapes everything written through it (for `Display` text).
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        push_escaped(self.0, s);
        Ok(())
    }
}

// Field writers. Each appends one column followed by `end` (`\t` or `\n`). Numbers and
// dates are rendered by hand into small stack buffers: going through `fmt` for the
// ~10M fields of SF 1 lineitem costs several times more than generating the data.

const TAB: &str = "\t";
const NEWLINE: &str = "\n";

/// A `Display` value as an escaped text field (names, phone numbers, addresses, clerks).
fn text(buf: &mut String, value: impl fmt::Display, end: &str) -> fmt::Result {
    write!(Escaped(buf), "{value}")?;
    buf.push_str(end);
    Ok(())
}

fn str_field(buf: &mut String, value: &str, end: &str) {
    push_escaped(buf, value);
    buf.push_str(end);
}

/// Right-aligned ASCII rendering of a number plus terminator, built back to front.
struct Digits {
    bytes: [u8; 32],
    start: usize,
}

impl Digits {
    fn new(end: &str) -> Self {
        let mut digits = Self {
            bytes: [0; 32],
            start: 32,
        };
        for &b in end.as_bytes().iter().rev() {
            digits.prepend(b);
        }
        digits
    }

    fn prepend(&mut self, b: u8) {
        self.start -= 1;
        self.bytes[self.start] = b;
    }

    fn prepend_number(&mut self, mut n: u64) {
        loop {
            self.prepend(b'0' + (n % 10) as u8);
            n /= 10;
            if n == 0 {
                break;
            }
        }
    }

    fn push_to(&self, buf: &mut String) {
        // Only ASCII digits, '-', '.' and the terminator were written.
        buf.push_str(std::str::from_utf8(&self.bytes[self.start..]).unwrap_or_default());
    }
}

fn int(buf: &mut String, value: i64, end: &str) {
    let mut d = Digits::new(end);
    d.prepend_number(value.unsigned_abs());
    if value < 0 {
        d.prepend(b'-');
    }
    d.push_to(buf);
}

/// A `numeric(15,2)` value; `TPCHDecimal` holds hundredths.
fn decimal(buf: &mut String, value: TPCHDecimal, end: &str) {
    let cents = value.into_inner();
    let abs = cents.unsigned_abs();
    let mut d = Digits::new(end);
    d.prepend(b'0' + (abs % 10) as u8);
    d.prepend(b'0' + (abs / 10 % 10) as u8);
    d.prepend(b'.');
    d.prepend_number(abs / 100);
    if cents < 0 {
        d.prepend(b'-');
    }
    d.push_to(buf);
}

/// A `date` as `YYYY-MM-DD`, from a table of every date the generator can produce.
fn date(buf: &mut String, value: TPCHDate, end: &str) -> fmt::Result {
    static DATES: OnceLock<Vec<String>> = OnceLock::new();
    let dates = DATES.get_or_init(|| {
        (0..TOTAL_DATE_RANGE)
            .map(|offset| TPCHDate::new(MIN_GENERATE_DATE + offset).to_string())
            .collect()
    });
    match usize::try_from(value.into_inner())
        .ok()
        .and_then(|i| dates.get(i))
    {
        Some(s) => buf.push_str(s),
        None => write!(buf, "{value}")?,
    }
    buf.push_str(end);
    Ok(())
}

pub(super) fn write_customer(buf: &mut String, c: &Customer<'_>) -> fmt::Result {
    int(buf, c.c_custkey, TAB);
    text(buf, c.c_name, TAB)?;
    text(buf, &c.c_address, TAB)?;
    int(buf, c.c_nationkey, TAB);
    text(buf, &c.c_phone, TAB)?;
    decimal(buf, c.c_acctbal, TAB);
    str_field(buf, c.c_mktsegment, TAB);
    str_field(buf, c.c_comment, NEWLINE);
    Ok(())
}

pub(super) fn write_order(buf: &mut String, o: &Order<'_>) -> fmt::Result {
    int(buf, o.o_orderkey, TAB);
    int(buf, o.o_custkey, TAB);
    str_field(buf, o.o_orderstatus.as_str(), TAB);
    decimal(buf, o.o_totalprice, TAB);
    date(buf, o.o_orderdate, TAB)?;
    str_field(buf, o.o_orderpriority, TAB);
    text(buf, o.o_clerk, TAB)?;
    int(buf, i64::from(o.o_shippriority), TAB);
    str_field(buf, o.o_comment, NEWLINE);
    Ok(())
}

pub(super) fn write_lineitem(buf: &mut String, l: &LineItem<'_>) -> fmt::Result {
    int(buf, l.l_orderkey, TAB);
    int(buf, l.l_partkey, TAB);
    int(buf, l.l_suppkey, TAB);
    int(buf, i64::from(l.l_linenumber), TAB);
    int(buf, l.l_quantity, TAB);
    decimal(buf, l.l_extendedprice, TAB);
    decimal(buf, l.l_discount, TAB);
    decimal(buf, l.l_tax, TAB);
    str_field(buf, l.l_returnflag, TAB);
    str_field(buf, l.l_linestatus, TAB);
    date(buf, l.l_shipdate, TAB)?;
    date(buf, l.l_commitdate, TAB)?;
    date(buf, l.l_receiptdate, TAB)?;
    str_field(buf, l.l_shipinstruct, TAB);
    str_field(buf, l.l_shipmode, TAB);
    str_field(buf, l.l_comment, NEWLINE);
    Ok(())
}
