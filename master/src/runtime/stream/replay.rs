//! The items a streamed pipeline was fed and has not yet returned: the
//! master holds them so that a stream restarted after losing a stage's
//! agent can feed them again. Pure bookkeeping, no I/O.

use skelpi_proto::Array;
use std::collections::VecDeque;
use std::rc::Rc;

/// Items fed and not yet returned, in input order, bounded by a window.
#[derive(Debug)]
pub(super) struct Replay {
    /// Item `done + k` is `held[k]`.
    held: VecDeque<Rc<Array>>,
    /// Results handed on so far: every index below this one is finished.
    done: u64,
    /// Bytes of the held items' elements.
    bytes: usize,
    /// At most this many items are held…
    max_items: usize,
    /// …and at most this many bytes, except that one item always fits.
    max_bytes: usize,
    /// The window filled up and has not yet drained to half.
    full: bool,
}

/// A result whose index is not the next one due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OutOfOrder {
    /// The index that came.
    pub got: u64,
    /// The index that was due.
    pub due: u64,
}

impl Replay {
    /// An empty window of at most `max_items` items and `max_bytes` bytes.
    pub fn new(max_items: usize, max_bytes: usize) -> Replay {
        Replay {
            held: VecDeque::new(),
            done: 0,
            bytes: 0,
            max_items: max_items.max(1),
            max_bytes,
            full: false,
        }
    }

    /// Whether another input may be drawn and fed: yes until the window is
    /// full, then no until it has drained to half — so a waiting feed
    /// wakes once per half window, not once per result.
    pub fn has_room(&mut self) -> bool {
        self.full = !self.resumes()
            || self.held.len() >= self.max_items
            || self.bytes >= self.max_bytes && !self.held.is_empty();
        !self.full
    }

    /// Whether a feed waiting for room may go on.
    pub fn resumes(&self) -> bool {
        !self.full
            || self.held.is_empty()
            || (self.held.len() <= self.max_items / 2 && self.bytes <= self.max_bytes / 2)
    }

    /// Holds a newly drawn input; returns its index and a handle to send.
    pub fn push(&mut self, input: Array) -> (u64, Rc<Array>) {
        let index = self.drawn();
        self.bytes += size_of_val(input.data.as_slice());
        let input = Rc::new(input);
        self.held.push_back(input.clone());
        (index, input)
    }

    /// The held input of `index`, if it is held (fed, not yet returned).
    pub fn get(&self, index: u64) -> Option<Rc<Array>> {
        let k = usize::try_from(index.checked_sub(self.done)?).ok()?;
        self.held.get(k).cloned()
    }

    /// Takes the result of `index`: it must be the next one due. Its input
    /// is no longer held.
    pub fn accept(&mut self, index: u64) -> Result<(), OutOfOrder> {
        if index != self.done || self.held.is_empty() {
            return Err(OutOfOrder {
                got: index,
                due: self.done,
            });
        }
        if let Some(input) = self.held.pop_front() {
            self.bytes -= size_of_val(input.data.as_slice());
        }
        self.done += 1;
        Ok(())
    }

    /// Results handed on: the index of the first unfinished item.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Inputs drawn so far (finished or held): the next new input's index.
    pub fn drawn(&self) -> u64 {
        self.done + self.held.len() as u64
    }

    /// Items held.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(x: f64, n: usize) -> Array {
        Array::list(vec![x; n])
    }

    #[test]
    fn holds_what_was_fed_until_its_result_comes_back_in_order() {
        let mut r = Replay::new(3, usize::MAX);
        assert_eq!(r.push(item(0.0, 1)).0, 0);
        assert_eq!(r.push(item(1.0, 1)).0, 1);
        assert_eq!(r.get(1).map(|a| a.data[0]), Some(1.0));
        assert_eq!(r.get(2), None);
        assert_eq!(r.accept(1), Err(OutOfOrder { got: 1, due: 0 }));
        assert_eq!(r.accept(0), Ok(()));
        assert_eq!(r.get(0), None, "a returned item is not held");
        assert_eq!((r.done(), r.drawn(), r.held()), (1, 2, 1));
        assert_eq!(r.accept(1), Ok(()));
        assert_eq!(r.accept(2), Err(OutOfOrder { got: 2, due: 2 }));
        assert_eq!(r.push(item(2.0, 1)).0, 2, "indices go on");
    }

    #[test]
    fn the_window_bounds_items_and_bytes_but_always_takes_one() {
        let mut r = Replay::new(4, 1000);
        for k in 0..4 {
            assert!(r.has_room(), "item {k}");
            r.push(item(0.0, 1));
        }
        assert!(!r.has_room(), "four items fill a window of four");
        r.accept(0).unwrap();
        assert!(
            !r.resumes() && !r.has_room(),
            "not before it drains to half"
        );
        r.accept(1).unwrap();
        assert!(r.resumes() && r.has_room(), "half full: the feed goes on");
        r.push(item(0.0, 1));
        assert!(r.has_room(), "and fills it again");
        let mut r = Replay::new(10, 100);
        r.push(item(0.0, 1000));
        assert!(!r.has_room(), "8000 bytes exceed 100");
        r.accept(0).unwrap();
        assert!(r.has_room(), "an empty window takes any item");
        assert_eq!(r.bytes, 0);
    }
}
