//! The JSON scanner behind [`super::Extractor::extract`]: one pass over the
//! text, checking it as serde_json would and noting where the registered
//! paths' values are (see the module above for why it is our own).

use super::{Captures, Extractor, Found, NameHead};

/// How deep objects and arrays may nest (serde_json's limit).
const MAX_DEPTH: u32 = 128;

/// 10^0 ..= 10^22: the powers of ten a double holds exactly.
const POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Where the first byte that ends plain ASCII string content (`"`, `\\`, a
/// control character, or a byte of a non-ASCII character, which must be
/// checked as UTF-8) is, eight bytes at a time: the usual zero-byte test on
/// the word XORed with each sought byte, a borrow test for bytes under
/// 0x20, and the high bit. A test can also flag a byte after a real hit
/// (borrows carry upwards), never before one, so the lowest flag is the
/// first stop. This halved the cost of strings, most of the text of a
/// typical event.
#[inline]
pub(super) fn string_stop(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let flags = (zero_byte(x ^ (ONES * u64::from(b'"')))
            | zero_byte(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x)
            | x)
            & HIGH;
        if flags != 0 {
            return Some(at + (flags.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = chunks.remainder();
    tail.iter()
        .position(|&b| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b))
        .map(|i| at + i)
}

/// Whether all eight bytes of `w` are ASCII digits: each byte's high
/// nibble is 3, and adding 6 does not carry out of its low nibble.
#[inline]
fn all_digits(w: u64) -> bool {
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const THREES: u64 = 0x3030_3030_3030_3030;
    w & HIGH == THREES && (w.wrapping_add(0x0606_0606_0606_0606) & HIGH) == THREES
}

/// The value of eight ASCII digits read little-endian (the first digit in
/// the lowest byte): pairs, then fours, then the eight, by three
/// multiplications (the method of simdjson's `parse_eight_digits`).
#[inline]
fn eight_digits(w: u64) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    let x = w - 0x3030_3030_3030_3030;
    let x = x.wrapping_mul(10).wrapping_add(x >> 8);
    let hundreds = (x & MASK).wrapping_mul(100 + (1_000_000 << 32));
    let ones = ((x >> 16) & MASK).wrapping_mul(1 + (10_000 << 32));
    hundreds.wrapping_add(ones) >> 32
}

/// One pass over one text. The text is bytes: JSON outside strings is
/// ASCII (any other byte there is a syntax error), and each string is
/// checked as UTF-8 where it has a non-ASCII byte, so a text the scan
/// accepts is UTF-8. (A check of the whole text first was 3.5 % of `cep
/// replay`'s instructions on the peer file, whose events are ASCII.)
pub(super) struct Scan<'t, 'x> {
    ex: &'x Extractor,
    bytes: &'t [u8],
    pos: usize,
    depth: u32,
    out: &'x mut Captures,
}

/// What is wrong with a text; the scanner stops where it found it. (Small
/// and `Copy`, so that every step's result fits in registers.)
#[derive(Clone, Copy, Debug)]
pub(super) struct Bad(&'static str);

/// A scanned string: where its contents are. (Offsets as `usize`: two
/// `u32`s were packed into one register through the stack, and the load
/// stalled waiting for the two stores, 27 % of the scanner's cycles.)
#[derive(Clone, Copy)]
enum Scanned {
    Text(usize, usize),
    Unescaped(usize, usize),
}

impl<'t, 'x> Scan<'t, 'x> {
    pub(super) fn new(ex: &'x Extractor, bytes: &'t [u8], out: &'x mut Captures) -> Scan<'t, 'x> {
        Scan {
            ex,
            bytes,
            pos: 0,
            depth: 0,
            out,
        }
    }
    #[inline]
    pub(super) fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline]
    pub(super) fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// A problem at the current position, worded as serde_json words it.
    #[cold]
    pub(super) fn describe(&self, Bad(what): Bad) -> String {
        let before = &self.bytes[..self.pos.min(self.bytes.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        format!("{what} at line {line} column {column}")
    }

    pub(super) fn end(&mut self) -> Result<(), Bad> {
        self.skip_ws();
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(Bad("trailing characters")),
        }
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), Bad> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(Bad(what))
        }
    }

    /// Scans one value; `node` is the trie node it sits at (`None`: no
    /// registered path goes through it, so it is only checked).
    ///
    /// Inlined into the object and array loops, where most values are
    /// strings and numbers; only a nested object or array calls out (as a
    /// call, the big function's prologue and epilogue ran for every member:
    /// `cep replay` of the peer file 3.2 → 3.35 M events/s, same run).
    #[inline(always)]
    pub(super) fn value(&mut self, node: Option<usize>) -> Result<(), Bad> {
        self.skip_ws();
        let capture = node.and_then(|n| self.ex.nodes[n].capture);
        let start = self.pos as u32;
        let found = match self.peek() {
            Some(b'{' | b'[') => self.composite(node, start)?,
            Some(b'"') => match self.string()? {
                Scanned::Text(a, b) => Found::Str(a as u32, b as u32),
                Scanned::Unescaped(a, b) => Found::Unescaped(a as u32, b as u32),
            },
            Some(b't') => self.literal("true", Found::Bool(true))?,
            Some(b'f') => self.literal("false", Found::Bool(false))?,
            Some(b'n') => self.literal("null", Found::Null)?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            Some(_) => return Err(Bad("expected value")),
            None => return Err(Bad("EOF while parsing a value")),
        };
        if let Some(c) = capture {
            self.out.found[c] = found;
        }
        Ok(())
    }

    /// An object or array (at its opening bracket), scanned through.
    #[inline(never)]
    fn composite(&mut self, node: Option<usize>, start: u32) -> Result<Found, Bad> {
        if self.peek() == Some(b'{') {
            self.nested(|s| s.object(node))?;
        } else {
            self.nested(|s| s.array(node))?;
        }
        Ok(Found::Composite(start, self.pos as u32))
    }

    fn nested(&mut self, scan: impl FnOnce(&mut Self) -> Result<(), Bad>) -> Result<(), Bad> {
        self.depth += 1;
        if self.depth >= MAX_DEPTH {
            return Err(Bad("recursion limit exceeded"));
        }
        scan(self)?;
        self.depth -= 1;
        Ok(())
    }

    fn object(&mut self, node: Option<usize>) -> Result<(), Bad> {
        self.pos += 1; // '{'
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(Bad(match self.peek() {
                    None => "EOF while parsing an object",
                    Some(_) => "key must be a string",
                }));
            }
            let child = match node {
                Some(n) => match self.known_member(n) {
                    Some(c) => Some(c),
                    None => {
                        let name = self.string()?;
                        self.child(n, name)
                    }
                },
                None => {
                    self.string()?;
                    None
                }
            };
            if let Some(c) = child {
                // A repeated name replaces the earlier value, with whatever
                // was captured inside it (the value's own capture is
                // overwritten when it is scanned).
                for &slot in &self.ex.nodes[c].nested {
                    self.out.found[slot] = Found::Absent;
                }
            }
            self.expect(b':', "expected `:`")?;
            self.value(child)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => return Err(Bad("expected `,` or `}`")),
                None => return Err(Bad("EOF while parsing an object")),
            }
        }
    }

    /// At a member name's opening quote: the child of `node` it leads to, if
    /// the name is a registered one written plainly, read past its closing
    /// quote; else `None`, with nothing read. One word compared with each
    /// child's quoted name (see `QuotedName`): a registered name needs no
    /// string scan. (The peer file's captured names were a fifth of the
    /// scanner's work: scanned as strings, then looked up.)
    #[inline]
    fn known_member(&mut self, node: usize) -> Option<usize> {
        let at = self.pos + 1;
        let w = u64::from_le_bytes(self.bytes.get(at..at + 8)?.try_into().unwrap_or_default());
        let node = &self.ex.nodes[node];
        let i = node.quoted.iter().position(|q| q.starts(w))?;
        self.pos = at + node.heads[i].len + 1;
        Some(node.children[i].1)
    }

    /// The child of `node` a member name leads to.
    #[inline]
    fn child(&self, node: usize, name: Scanned) -> Option<usize> {
        let (bytes, a, b) = match name {
            Scanned::Text(a, b) => (self.bytes, a, b),
            Scanned::Unescaped(a, b) => (self.out.unescaped.as_bytes(), a, b),
        };
        let head = NameHead::at(bytes, a, b - a);
        let node = &self.ex.nodes[node];
        let i = if head.len <= 8 {
            node.heads.iter().position(|&h| h == head)?
        } else {
            let name = &bytes[a..b];
            (node.heads.iter().zip(&node.children))
                .position(|(&h, (n, _))| h == head && n.as_bytes() == name)?
        };
        Some(node.children[i].1)
    }

    fn array(&mut self, node: Option<usize>) -> Result<(), Bad> {
        self.pos += 1; // '['
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        let indices = node.map_or(&[][..], |n| &self.ex.nodes[n].indices[..]);
        let mut i = 0usize;
        loop {
            let child = indices.iter().find(|&&(at, _)| at == i).map(|&(_, c)| c);
            self.value(child)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => return Err(Bad("expected `,` or `]`")),
                None => return Err(Bad("EOF while parsing a list")),
            }
            i += 1;
        }
    }

    fn literal(&mut self, word: &'static str, found: Found) -> Result<Found, Bad> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(found)
        } else {
            Err(Bad("expected value"))
        }
    }

    /// Skips decimal digits; returns how many, and their value while it
    /// fits in a `u64` (`None` beyond). One pass, eight digits at a time
    /// while eight are there (a 13-digit epoch-millisecond time is one word
    /// and five bytes); it was two passes of a byte each.
    #[inline(always)]
    fn digits(&mut self) -> (usize, Option<u64>) {
        let rest = &self.bytes[self.pos..];
        let mut n = 0;
        // Wrapping: exact for up to 19 digits, and discarded beyond.
        let mut value = 0u64;
        while let Some(word) = rest.get(n..n + 8) {
            let w = u64::from_le_bytes(word.try_into().unwrap_or_default());
            if !all_digits(w) {
                break;
            }
            value = value
                .wrapping_mul(100_000_000)
                .wrapping_add(eight_digits(w));
            n += 8;
        }
        while let Some(d) = rest.get(n).filter(|b| b.is_ascii_digit()) {
            value = value.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            n += 1;
        }
        self.pos += n;
        // 19 digits always fit; more are left to the full parse.
        (n, (n <= 19).then_some(value))
    }

    #[inline(always)]
    fn number(&mut self) -> Result<Found, Bad> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let (_, int_value) = match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                (1, Some(0))
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Bad("invalid number")),
        };
        let mut fraction = None;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            let (n, value) = self.digits();
            if n == 0 {
                return Err(Bad("invalid number"));
            }
            fraction = Some((n, value));
        }
        let mut exponent = false;
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits().0 == 0 {
                return Err(Bad("invalid number"));
            }
            exponent = true;
        }
        match (int_value, fraction, exponent) {
            // An integer: as serde_json reads it, `-0` being the float −0.0.
            (Some(0), None, false) if negative => return Ok(Found::Float(-0.0)),
            (Some(v), None, false) if v <= i64::MAX as u64 => {
                let v = v as i64;
                return Ok(Found::Int(if negative { -v } else { v }));
            }
            (Some(v), None, false) if negative && v == 1 << 63 => return Ok(Found::Int(i64::MIN)),
            // A short decimal (`12.75`): both the digits and the power of
            // ten are exact doubles, so one division is correctly rounded
            // (Clinger's fast path), which is what a full parse gives.
            (Some(i), Some((n, Some(f))), false) if n <= 19 => {
                // 10^n from the table, exact as a `u64` up to 10^19 (longer
                // fractions take the full parse below).
                let scale = POWERS_OF_TEN[n] as u64;
                let digits = i.checked_mul(scale).and_then(|m| m.checked_add(f));
                if let Some(m) = digits.filter(|&m| m < 1 << 53) {
                    let x = m as f64 / POWERS_OF_TEN[n];
                    return Ok(Found::Float(if negative { -x } else { x }));
                }
            }
            _ => {}
        }
        let digits = std::str::from_utf8(&self.bytes[start..self.pos]);
        match digits.map(str::parse::<f64>) {
            Ok(Ok(f)) if f.is_finite() => Ok(Found::Float(f)),
            _ => Err(Bad("number out of range")),
        }
    }

    /// Scans a string (at its opening quote): checks it and says where its
    /// contents are. Escapes are decoded into the captures' buffer.
    ///
    /// Inlined: returned through memory, its result was read back before
    /// the store had landed (a store-forwarding stall on every string, a
    /// quarter of the scanner's cycles).
    #[inline(always)]
    fn string(&mut self) -> Result<Scanned, Bad> {
        self.pos += 1; // '"'
        let start = self.pos;
        let rest = &self.bytes[start..];
        let stop = string_stop(rest).unwrap_or(rest.len());
        self.pos += stop;
        // The byte that stopped the scan, read once: nearly always the
        // closing quote.
        if rest.get(stop) == Some(&b'"') {
            self.pos += 1;
            return Ok(Scanned::Text(start, self.pos - 1));
        }
        self.string_rest(start)
    }

    /// The rest of a string the fast scan stopped in (not at its closing
    /// quote): non-ASCII text, an escape, or an error.
    #[cold]
    #[inline(never)]
    fn string_rest(&mut self, start: usize) -> Result<Scanned, Bad> {
        if self.peek().is_some_and(|b| b >= 0x80) {
            self.non_ascii(start)?;
        }
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                Ok(Scanned::Text(start, self.pos - 1))
            }
            Some(b'\\') => self.escaped_string(start),
            Some(_) => Err(Bad(
                "control character (\\u0000-\\u001F) found while parsing a string",
            )),
            None => Err(Bad("EOF while parsing a string")),
        }
    }

    /// Past the rest of a string's plain content, from a non-ASCII byte,
    /// checking that the content from `start` is UTF-8.
    #[cold]
    #[inline(never)]
    fn non_ascii(&mut self, start: usize) -> Result<(), Bad> {
        while let Some(b) = self.peek() {
            if b == b'"' || b == b'\\' || b < 0x20 {
                break;
            }
            self.pos += 1;
        }
        self.text(start, self.pos).map(|_| ())
    }

    /// The bytes `a..b` as text: a piece of string content, checked as
    /// UTF-8.
    fn text(&self, a: usize, b: usize) -> Result<&'t str, Bad> {
        std::str::from_utf8(&self.bytes[a..b]).map_err(|_| Bad("invalid unicode code point"))
    }

    /// The rest of a string that has escapes, from its first backslash.
    fn escaped_string(&mut self, start: usize) -> Result<Scanned, Bad> {
        let from = self.out.unescaped.len();
        let plain = self.text(start, self.pos)?;
        self.out.unescaped.push_str(plain);
        loop {
            let run = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            let plain = self.text(run, self.pos)?;
            self.out.unescaped.push_str(plain);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    let to = self.out.unescaped.len();
                    return Ok(Scanned::Unescaped(from, to));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self.escape()?;
                    self.out.unescaped.push(c);
                }
                Some(_) => {
                    return Err(Bad(
                        "control character (\\u0000-\\u001F) found while parsing a string",
                    ))
                }
                None => return Err(Bad("EOF while parsing a string")),
            }
        }
    }

    /// One escape, after its backslash.
    fn escape(&mut self) -> Result<char, Bad> {
        let c = self.peek().ok_or(Bad("EOF while parsing a string"))?;
        self.pos += 1;
        Ok(match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => return self.unicode_escape(),
            _ => return Err(Bad("invalid escape")),
        })
    }

    /// `\uXXXX`, a surrogate pair taking two of them.
    fn unicode_escape(&mut self) -> Result<char, Bad> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    return Err(Bad("lone leading surrogate in hex escape"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(Bad("lone leading surrogate in hex escape"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(Bad("lone trailing surrogate in hex escape")),
            c => c,
        };
        char::from_u32(code).ok_or(Bad("invalid unicode code point"))
    }

    fn hex4(&mut self) -> Result<u32, Bad> {
        let digits = self.bytes.get(self.pos..self.pos + 4);
        let value = digits
            .filter(|d| d.iter().all(u8::is_ascii_hexdigit))
            .and_then(|d| u32::from_str_radix(std::str::from_utf8(d).ok()?, 16).ok());
        match value {
            Some(v) => {
                self.pos += 4;
                Ok(v)
            }
            None => Err(Bad("invalid escape")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn eight_bytes_are_digits_exactly_when_all_are(bytes in any::<[u8; 8]>(), digits in 0u64..100_000_000) {
            let w = u64::from_le_bytes(bytes);
            prop_assert_eq!(all_digits(w), bytes.iter().all(u8::is_ascii_digit));
            let text = format!("{digits:08}");
            let w = u64::from_le_bytes(text.as_bytes().try_into().unwrap());
            prop_assert!(all_digits(w));
            prop_assert_eq!(eight_digits(w), digits);
        }
    }
}
