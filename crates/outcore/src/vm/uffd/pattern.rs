//! Which blocks to read ahead after a fault: the access pattern of one region's faults.
//!
//! Only faults are seen, not every access: once blocks are read ahead, a pass over the
//! region faults only on the blocks after them. So a forward pass faults every
//! `READ_AHEAD + 1` blocks, a backward one every `READ_AHEAD + 1` blocks down, and a strided
//! one (every k-th block: a column of row-major tiles, every k-th record) first every k
//! blocks, then every `(READ_AHEAD + 1) × k` once its blocks are read ahead.

use super::budget::READ_AHEAD;

/// The faults of one region so far.
#[derive(Debug, Default)]
pub(super) struct AccessPattern {
    /// The block of the last fault (`None`: none yet).
    last: Option<u64>,
    /// The distance from the fault before it to the last fault, in blocks.
    last_delta: i64,
    /// The stride being read ahead (0: none): blocks apart.
    stride: i64,
}

impl AccessPattern {
    /// Records a fault on `block`; the distance, in blocks, between the blocks to read
    /// ahead (`block + step`, `block + 2 × step`, ... [`READ_AHEAD`] of them), or 0 for
    /// none.
    ///
    /// * The first fault of a region reads ahead forwards (most passes start at the start).
    /// * A fault at most `READ_AHEAD + 1` blocks after or before the last: sequential,
    ///   forwards or backwards.
    /// * A fault at the same distance from the last as the last from the one before, or at
    ///   the distance the current stride's read-ahead leaves: strided.
    /// * Anything else: random, no read-ahead.
    pub fn fault(&mut self, block: u64) -> i64 {
        let near = READ_AHEAD as i64 + 1;
        let step = match self.last {
            None => 1,
            Some(last) => {
                let delta = (block as i64).wrapping_sub(last as i64);
                let step = if (1..=near).contains(&delta) {
                    1
                } else if (-near..=-1).contains(&delta) {
                    -1
                } else if self.stride != 0 && (delta == self.stride || delta == near * self.stride)
                {
                    self.stride
                } else if delta == self.last_delta && delta != 0 {
                    delta
                } else {
                    0
                };
                self.last_delta = delta;
                step
            }
        };
        self.last = Some(block);
        self.stride = step;
        step
    }

    /// The blocks to read ahead after a fault on `block` with `step` (from
    /// [`AccessPattern::fault`]): those that exist (`< blocks`).
    pub fn ahead(block: u64, step: i64, blocks: u64) -> impl Iterator<Item = u64> {
        (1..=READ_AHEAD as i64)
            .take_while(move |_| step != 0)
            .filter_map(move |k| block.checked_add_signed(k.checked_mul(step)?))
            .filter(move |&b| b < blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The read-ahead steps after each fault of `blocks`.
    fn steps(blocks: &[u64]) -> Vec<i64> {
        let mut p = AccessPattern::default();
        blocks.iter().map(|&b| p.fault(b)).collect()
    }

    #[test]
    fn forward_and_backward_passes_read_ahead() {
        // A forward pass faults every READ_AHEAD + 1 blocks once reading ahead.
        assert_eq!(steps(&[0, 3, 6, 9]), [1, 1, 1, 1]);
        assert_eq!(steps(&[40, 39, 36, 33]), [1, -1, -1, -1]);
    }

    #[test]
    fn a_stride_is_read_ahead_once_seen_twice() {
        // Every 10th block: random after one jump, strided after the second, and still
        // strided when the read-ahead makes the faults 30 blocks apart.
        assert_eq!(steps(&[5, 15, 25, 55, 85]), [1, 0, 10, 10, 10]);
        // Downwards.
        assert_eq!(steps(&[100, 90, 80, 50]), [1, 0, -10, -10]);
    }

    #[test]
    fn random_faults_read_nothing_ahead() {
        assert_eq!(steps(&[7, 100, 12, 64, 3000]), [1, 0, 0, 0, 0]);
        // A stride broken off stops reading ahead.
        assert_eq!(steps(&[0, 10, 20, 23000]), [1, 0, 10, 0]);
    }

    #[test]
    fn read_ahead_stays_inside_the_region() {
        let ahead = |b, s, n| AccessPattern::ahead(b, s, n).collect::<Vec<_>>();
        assert_eq!(ahead(5, 1, 100), [6, 7]);
        assert_eq!(ahead(5, 10, 20), [15]);
        assert_eq!(ahead(15, -10, 100), [5]);
        assert_eq!(ahead(1, -1, 100), [0]);
        assert_eq!(ahead(5, 0, 100), Vec::<u64>::new());
    }
}
