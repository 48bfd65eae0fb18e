//! Median and range over rounds, and ratios taken round by round so that drift cancels.

/// Median, minimum and maximum of a figure over rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    pub fn of_series(series: &[(u32, f64)]) -> Option<Self> {
        Self::of(series.iter().map(|(_, v)| *v))
    }
}

/// The `p`-th percentile (0-100) by nearest rank: a value that was measured.
pub fn percentile(values: impl IntoIterator<Item = f64>, p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// `a / b` for every round both have (each series holds one value per round at most; the
/// first wins otherwise).
pub fn paired_ratios(a: &[(u32, f64)], b: &[(u32, f64)]) -> Vec<f64> {
    a.iter()
        .filter_map(|(round, x)| {
            let (_, y) = b.iter().find(|(r, _)| r == round)?;
            (*y != 0.0).then(|| x / y)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Summary::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Summary::of([4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
        assert_eq!(Summary::of([f64::NAN]), None);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(v.clone(), 50.0), Some(50.0));
        assert_eq!(percentile(v.clone(), 99.0), Some(99.0));
        assert_eq!(percentile(v, 100.0), Some(100.0));
        assert_eq!(percentile([3.0, 1.0, 2.0], 90.0), Some(3.0));
        assert_eq!(percentile([7.0], 0.0), Some(7.0));
        assert_eq!(percentile([], 50.0), None);
    }

    #[test]
    fn ratios_pair_rounds_so_that_drift_cancels() {
        // The machine slows down by half in round 2; the ratio stays 2.
        let a = [(1, 200.0), (2, 100.0), (3, 210.0)];
        let b = [(1, 100.0), (2, 50.0)];
        assert_eq!(paired_ratios(&a, &b), vec![2.0, 2.0]);
    }
}
