//! A small seeded mutator: what the stable fuzz harness (`cargo test`) and
//! the network fuzzer feed the targets and the broker, derived from valid
//! inputs. libFuzzer does this better with coverage feedback; this one needs
//! no nightly compiler and the same seed gives the same inputs.
//!
//! Mutations are the ones that found bugs in decoders before: flipped bits,
//! lengths and counts overwritten with extreme values (big- and
//! little-endian, fixed and varint), truncation, inserted and deleted
//! ranges, repeated ranges and splices of two inputs.

/// SplitMix64: tiny, seedable and good enough to pick mutations.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: usize) -> usize {
        if bound == 0 {
            return 0;
        }
        (self.next_u64() % bound as u64) as usize
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Values that sit at the edges of Kafka's length and count fields, in the
/// widths they come in: counts, "null" (-1), sign flips, and off-by-ones.
const INTERESTING_I32: &[i32] = &[
    0,
    1,
    -1,
    -2,
    16,
    61,
    127,
    128,
    255,
    256,
    0x3fff,
    0x4000,
    0x7fff,
    0x8000,
    0xffff,
    0x10000,
    0x7fff_ffff,
    i32::MIN,
    0x00ff_ffff,
];

/// Forged unsigned varints: the 5-byte maximum and a few plausible ones.
const VARINTS: &[&[u8]] = &[
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xff, 0xff, 0xff, 0xff, 0x07],
    &[0xfe, 0xff, 0xff, 0xff, 0x0f],
    &[0x81, 0x80, 0x01],
    &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
    &[0x00],
    &[0x01],
];

/// Apply one to four mutations to `input`; `donors` are other valid inputs
/// to splice from (may be empty). The result is at most `len_max` bytes.
pub fn mutate(rng: &mut Rng, input: &[u8], donors: &[Vec<u8>], len_max: usize) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        mutate_once(rng, &mut out, donors);
    }
    out.truncate(len_max);
    out
}

fn mutate_once(rng: &mut Rng, out: &mut Vec<u8>, donors: &[Vec<u8>]) {
    let len = out.len();
    match rng.below(11) {
        0 if len > 0 => {
            let at = rng.below(len);
            out[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            out[at] = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                2 => 0x7f,
                _ => rng.next_u64() as u8,
            };
        }
        2 => overwrite_int(rng, out),
        3 => {
            let varint = VARINTS[rng.below(VARINTS.len())];
            let at = rng.below(len + 1);
            if rng.one_in(2) && at < len {
                out.remove(at);
            }
            let at = at.min(out.len());
            out.splice(at..at, varint.iter().copied());
        }
        4 if len > 0 => out.truncate(rng.below(len)),
        5 => {
            let at = rng.below(len + 1);
            let chunk_len = 1 + rng.below(16);
            let chunk = rng.bytes(chunk_len);
            out.splice(at..at, chunk);
        }
        6 if len > 0 => {
            let from = rng.below(len);
            let to = (from + 1 + rng.below(16)).min(len);
            out.drain(from..to);
        }
        7 if len > 0 => {
            let from = rng.below(len);
            let to = (from + 1 + rng.below(64)).min(len);
            let copy = out[from..to].to_vec();
            let at = rng.below(len + 1);
            out.splice(at..at, copy);
        }
        8 if !donors.is_empty() => {
            let donor = &donors[rng.below(donors.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(donor.len() + 1);
            out.truncate(cut);
            out.extend_from_slice(&donor[from..]);
        }
        9 => {
            let padding = if rng.one_in(2) { 0 } else { 0xff };
            out.resize(len + 1 + rng.below(256), padding);
        }
        _ if len > 0 => {
            // A run of one byte: zeroed or filled space.
            let from = rng.below(len);
            let to = (from + 1 + rng.below(32)).min(len);
            let byte = if rng.one_in(2) {
                0
            } else {
                rng.next_u64() as u8
            };
            out[from..to].fill(byte);
        }
        _ => out.push(rng.next_u64() as u8),
    }
}

/// Overwrite 1, 2, 4 or 8 bytes somewhere with an edge value, either byte
/// order (Kafka is big-endian, Sluice's own files little-endian).
fn overwrite_int(rng: &mut Rng, out: &mut [u8]) {
    let value = i64::from(INTERESTING_I32[rng.below(INTERESTING_I32.len())]);
    let value = if rng.one_in(8) {
        value.wrapping_add(rng.below(3) as i64 - 1)
    } else {
        value
    };
    let width = [1usize, 2, 4, 8][rng.below(4)];
    if out.len() < width {
        return;
    }
    let at = rng.below(out.len() - width + 1);
    let bytes = if rng.one_in(2) {
        value.to_be_bytes()
    } else {
        value.to_le_bytes()
    };
    let field = if rng.one_in(2) {
        &bytes[8 - width..]
    } else {
        &bytes[..width]
    };
    out[at..at + width].copy_from_slice(field);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_inputs_and_lengths_stay_capped() {
        let seeds = vec![b"hello world".to_vec(), vec![0u8; 40]];
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..200)
                .map(|index| mutate(&mut rng, &seeds[index % 2], &seeds, 64))
                .collect::<Vec<_>>()
        };
        let first = run(7);
        assert_eq!(first, run(7));
        assert_ne!(first, run(8));
        assert!(first.iter().all(|input| input.len() <= 64));
        assert!(
            first
                .iter()
                .filter(|input| input.as_slice() != seeds[0])
                .count()
                > 50,
            "most inputs differ from their seed"
        );
    }
}
