//! The set of rows a walk has seen.

/// Which rows a walk has seen: one epoch tag per row, so starting a new walk is one
/// increment instead of clearing `n` flags (hnswlib's visited-list pool).
#[derive(Default)]
pub struct Visited {
    marks: Vec<u32>,
    epoch: u32,
}

impl Visited {
    /// Forgets every row, for a graph of `n` rows.
    pub fn reset(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.iter_mut().for_each(|v| *v = 0);
            self.epoch = 1;
        }
    }

    /// Marks `row` visited; returns false if it already was.
    #[inline(always)]
    pub fn insert(&mut self, row: u32) -> bool {
        self.marker().insert(row)
    }

    /// This walk's marks with the table and epoch held in locals: a loop marking rows through
    /// it does not reload them from `self` after every store (3 loads per link, callgrind).
    #[inline(always)]
    pub fn marker(&mut self) -> Marker<'_> {
        Marker {
            marks: &mut self.marks,
            epoch: self.epoch,
        }
    }
}

/// See [`Visited::marker`].
pub struct Marker<'a> {
    marks: &'a mut [u32],
    epoch: u32,
}

impl Marker<'_> {
    /// Marks `row` visited; returns false if it already was.
    #[inline(always)]
    pub fn insert(&mut self, row: u32) -> bool {
        let slot = &mut self.marks[row as usize];
        if *slot == self.epoch {
            false
        } else {
            *slot = self.epoch;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_forgets_every_row_even_when_the_epoch_wraps() {
        let mut v = Visited::default();
        v.reset(4);
        assert!(v.insert(2));
        assert!(!v.insert(2));
        v.reset(4);
        assert!(v.insert(2));
        v.epoch = u32::MAX; // the next reset wraps to 0 and must clear the marks
        v.marks[1] = 1;
        v.reset(4);
        assert!(v.insert(1) && v.insert(2));
    }
}
