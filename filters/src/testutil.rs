//! Helpers shared by the crate's unit tests: a deterministic PRNG for fuzzing and random
//! feeding splits (streams must give the same output however their input is cut).

/// Deterministic xorshift64* generator: the same seed gives the same sequence on every run.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator started at `seed` (0, a fixed point of xorshift, is replaced).
    pub(crate) fn new(seed: u64) -> Self {
        Rng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A random byte.
    pub(crate) fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// `len` random bytes.
    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }
}

/// Piece sizes of `1..=max` that add up to at least `len` (the last may run past it).
pub(crate) fn random_sizes(len: usize, rng: &mut Rng, max: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut total = 0;
    while total < len {
        let n = 1 + rng.below(max);
        sizes.push(n);
        total += n;
    }
    sizes
}

/// `bytes` cut into consecutive pieces of `1..=max` bytes (none for empty input).
pub(crate) fn random_splits<'a>(bytes: &'a [u8], rng: &mut Rng, max: usize) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at((1 + rng.below(max)).min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        assert!(xs.iter().all(|&x| x == b.next_u64()));
        assert!(xs.windows(2).all(|w| w[0] != w[1]));
        let mut z = Rng::new(0);
        assert_ne!(z.next_u64(), 0);
        assert!((0..1000).all(|_| a.below(10) < 10));
        assert_eq!(a.below(0), 0);
        let mut seen = [false; 10];
        (0..1000).for_each(|_| seen[a.below(10)] = true);
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn splits_cover_the_input_in_order() {
        let mut rng = Rng::new(1);
        let input: Vec<u8> = (0..=255).collect();
        for max in [1, 2, 64, 1000] {
            let pieces = random_splits(&input, &mut rng, max);
            assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= max));
            assert_eq!(pieces.concat(), input);
            let sizes = random_sizes(input.len(), &mut rng, max);
            assert!(sizes.iter().all(|&n| (1..=max).contains(&n)));
            assert!(sizes.iter().sum::<usize>() >= input.len());
        }
        assert!(random_splits(&[], &mut rng, 8).is_empty());
        assert!(random_sizes(0, &mut rng, 8).is_empty());
    }
}
