//! The byte-level reader and writer behind every encoding in this crate. Lengths are checked
//! against both a caller's limit and the bytes actually left before anything is allocated, so
//! no input can make a decoder allocate more than the input it was handed.

use crate::error::DecodeError;

#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// LEB128, as automerge and protobuf write lengths.
    pub(crate) fn varint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(byte);
                return;
            }
            self.buf.push(byte | 0x80);
        }
    }

    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// A length-prefixed byte string.
    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        self.varint(bytes.len() as u64);
        self.raw(bytes);
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated { what });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let slice = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.u8(what)?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && bits > 1 {
                return Err(DecodeError::Invalid {
                    what,
                    reason: "varint overflows 64 bits".into(),
                });
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                // One value, one encoding: a trailing zero group is an overlong form.
                if byte == 0 && i > 0 {
                    return Err(DecodeError::Invalid {
                        what,
                        reason: "varint is not in its shortest form".into(),
                    });
                }
                return Ok(value);
            }
        }
        Err(DecodeError::Invalid {
            what,
            reason: "varint longer than 10 bytes".into(),
        })
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub(crate) fn bytes(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.varint(what)?;
        if len > max as u64 {
            return Err(DecodeError::TooLong { what, len, max });
        }
        // `len <= max <= usize::MAX`, so the cast is exact.
        self.take(len as usize, what)
    }

    pub(crate) fn str(&mut self, max: usize, what: &'static str) -> Result<&'a str, DecodeError> {
        let bytes = self.bytes(max, what)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::Invalid {
            what,
            reason: "not UTF-8".into(),
        })
    }

    /// A count of following items, each at least `min_item_bytes` long: rejected before any
    /// allocation when the rest of the input could not hold that many.
    pub(crate) fn count(
        &mut self,
        max: usize,
        min_item_bytes: usize,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        let n = self.varint(what)?;
        if n > max as u64 {
            return Err(DecodeError::TooLong { what, len: n, max });
        }
        let n = n as usize;
        if n.saturating_mul(min_item_bytes.max(1)) > self.buf.len() {
            return Err(DecodeError::Truncated { what });
        }
        Ok(n)
    }

    pub(crate) fn finish(self, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Invalid {
                what,
                reason: format!("{} trailing bytes", self.buf.len()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_reject_overlong() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut w = Writer::default();
            w.varint(v);
            let bytes = w.finish();
            let mut r = Reader::new(&bytes);
            assert_eq!(r.varint("v").unwrap(), v);
            r.finish("v").unwrap();
        }
        assert!(Reader::new(&[0xff; 11]).varint("v").is_err());
        assert!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
                .varint("v")
                .is_err()
        );
        assert!(Reader::new(&[0x80]).varint("v").is_err());
        // Overlong forms of 0 and 1 (found by the fuzzer: they broke decode/encode round trips).
        assert!(Reader::new(&[0x80, 0x00]).varint("v").is_err());
        assert!(Reader::new(&[0x81, 0x80, 0x00]).varint("v").is_err());
    }

    #[test]
    fn lengths_are_checked_against_limit_and_input() {
        let mut w = Writer::default();
        w.bytes(b"hello");
        let bytes = w.finish();
        assert!(Reader::new(&bytes).bytes(4, "s").is_err());
        assert_eq!(Reader::new(&bytes).bytes(5, "s").unwrap(), b"hello");
        assert!(Reader::new(&bytes[..4]).bytes(5, "s").is_err());
        // A count promising more items than bytes left fails before allocating.
        let mut w = Writer::default();
        w.varint(1_000_000);
        assert!(Reader::new(&w.finish()).count(usize::MAX, 64, "n").is_err());
    }
}
