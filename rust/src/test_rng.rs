//! Random inputs for the core's own tests: a xorshift64 generator (Marsaglia, shifts 13,
//! 7, 17), reproducible from its seed, no crate for it. (Some older test modules still
//! carry a copy of their own.)

/// A xorshift64 generator; the seed must not be 0.
pub struct XorShift(pub u64);

impl XorShift {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
