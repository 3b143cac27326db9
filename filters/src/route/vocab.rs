//! The loaded n-gram vocabulary: bucket → (weight × idf, idf, the bucket's recogniser weights),
//! as an open-addressing table sized by the vocabulary rather than by `2^hash_bits`, so a wide
//! hash (few collisions) costs no memory. One probe sequence per n-gram, no allocation.

/// What the model knows about one vocabulary bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Entry {
    /// The n-gram weight multiplied by the idf.
    pub w_idf: f32,
    pub idf: f32,
    /// The bucket's subject-recogniser weights are `entries[lo..hi]` of the recogniser.
    pub lo: u32,
    pub hi: u32,
}

const EMPTY: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub(crate) struct Vocab {
    mask: usize,
    keys: Vec<u32>,
    entries: Vec<Entry>,
}

impl Vocab {
    /// Builds the table from distinct buckets (each `< 2^24`, so never [`EMPTY`]); load ≤ 1/2.
    /// Buckets come out of a finalised hash, so their low bits index the table directly.
    pub fn new(items: &[(u32, Entry)]) -> Self {
        let cap = (items.len() * 2).next_power_of_two().max(16);
        let mut v = Vocab {
            mask: cap - 1,
            keys: vec![EMPTY; cap],
            entries: vec![Entry { w_idf: 0.0, idf: 0.0, lo: 0, hi: 0 }; cap],
        };
        for &(b, e) in items {
            let mut i = b as usize & v.mask;
            while v.keys[i] != EMPTY && v.keys[i] != b {
                i = (i + 1) & v.mask;
            }
            v.keys[i] = b;
            v.entries[i] = e;
        }
        v
    }

    #[inline]
    pub fn get(&self, bucket: u32) -> Option<&Entry> {
        let mut i = bucket as usize & self.mask;
        loop {
            match self.keys.get(i) {
                Some(&k) if k == bucket => return self.entries.get(i),
                Some(&k) if k != EMPTY => i = (i + 1) & self.mask,
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_key_and_nothing_else() {
        let e = |x: f32| Entry { w_idf: x, idf: 1.0, lo: 0, hi: 0 };
        // Keys that collide on the low bits probe past each other.
        let items: Vec<(u32, Entry)> = (0..100u32).map(|i| (i * 64, e(i as f32))).collect();
        let v = Vocab::new(&items);
        for (b, want) in &items {
            assert_eq!(v.get(*b), Some(want));
        }
        assert_eq!(v.get(1), None);
        assert_eq!(v.get(100 * 64), None);
        assert_eq!(Vocab::new(&[]).get(0), None);
    }
}
