//! Small statistics over repeated measurements.

use std::time::Duration;

/// The `q`-quantile (0..=1) of `samples` by nearest rank; zero when empty.
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut s = samples.to_vec();
    s.sort_unstable();
    let rank = ((s.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    s[rank]
}

/// The median of `samples`.
pub fn median(samples: &[Duration]) -> Duration {
    quantile(samples, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quantiles() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&x| Duration::from_millis(x))
                .collect::<Vec<_>>()
        };
        assert_eq!(median(&ms(&[5, 1, 3])), Duration::from_millis(3));
        assert_eq!(
            quantile(&ms(&[1, 2, 3, 4, 100]), 1.0),
            Duration::from_millis(100)
        );
        assert_eq!(
            quantile(&ms(&[1, 2, 3, 4, 100]), 0.0),
            Duration::from_millis(1)
        );
        assert_eq!(median(&[]), Duration::ZERO);
    }
}
