//! The streaming detector: one [`SeriesDetector`] per series, fed one record at a time, with a
//! few KiB of state that serializes (serde) and restores to the same subsequent scores.
//!
//! Per record (the measured effect of each stage is in the crate docs):
//! 1. **Shape novelty at two time scales.** Scale 1 is the series itself; scale 12 keeps means
//!    of 12-record blocks. At each scale the newest `lag` values form a shape, and its distance
//!    to the nearest earlier shape among the last `history` (RMS per value, in units of the
//!    series' span) is the raw score: spikes, level shifts, dropouts and changed rhythms all
//!    make the recent shape unlike anything seen.
//! 2. **Range novelty.** A value beyond the range seen so far (by `novelty_margin` of the span)
//!    gets raw score `novelty_score`.
//! 3. **Seasonal novelty.** Block scales also compare their newest shape with the one a day
//!    earlier (`season_ms`, converted to blocks with the observed sampling interval), which
//!    catches a missing daily peak that is no novel shape in itself.
//! 4. **Peak normalization.** Each raw score is divided by the decayed peak of the earlier raw
//!    scores of its kind (time constant `peak_window` records), halved: 0.5 means "as novel
//!    as the most novel thing lately". This makes series of any noise level comparable, so one
//!    threshold serves all. The reported score is the largest of the kinds.
//! 5. **Alarm suppression.** After a score at or above the threshold, scores are damped for
//!    `suppress` records: one alarm per event.

use serde::{Deserialize, Serialize};

/// Default [`DetectorConfig::peak_floor`].
const PEAK_FLOOR: f64 = 0.02;

/// The one parameter set of the detector. `Default` is the set measured on NAB (crate docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// Time scales in records: each keeps means of blocks of that many records and compares
    /// shapes of them. Scale 1 is the series itself and gives [`Detection::expected`].
    pub scales: Vec<u32>,
    /// Values (block means) per shape.
    pub lag: usize,
    /// Earlier shapes searched for the nearest, per scale.
    pub history: usize,
    /// Nearest shapes whose distances are averaged into the raw score.
    pub neighbours: usize,
    /// Records before any non-zero score is reported.
    pub warmup: u64,
    /// Record count by which scores reach full weight; from `warmup` on they ramp up linearly,
    /// so the first judgements, made on little history, are conservative.
    pub settle: u64,
    /// A value further than this share of the span beyond the range seen so far is novel.
    pub novelty_margin: f64,
    /// Raw score of a novel value (shape distances are in units of the span, mostly below 0.1).
    pub novelty_score: f64,
    /// Time constant, in records, of the decay of the peak raw score.
    pub peak_window: f64,
    /// Least peak a raw score is compared with, in units of the span. A series that repeated
    /// itself exactly so far (a constant, a clean cycle: common among live metrics) has a peak
    /// of 0; without a floor its first departure, however large, would have nothing to be
    /// compared with and score 0.
    pub peak_floor: f64,
    /// Blocks a scale has seen before it scores (its early distances are from little history).
    pub peak_start: u64,
    /// Season length in ms (0: off). Only used when a season is 2 to `history` blocks long.
    pub season_ms: i64,
    /// Weight of the seasonal score against the shape score.
    pub season_weight: f64,
    /// Records during which scores are damped after a score at or above the threshold.
    pub suppress: u32,
    /// Factor applied to scores while damped.
    pub suppress_factor: f64,
    /// Score at or above which a record is an anomaly ([`DetectorConfig::threshold`]).
    pub report_threshold: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            scales: vec![1, 12],
            lag: 8,
            history: 400,
            neighbours: 1,
            warmup: 30,
            settle: 60,
            novelty_margin: 0.03,
            novelty_score: 1.0,
            peak_window: 5000.0,
            peak_floor: PEAK_FLOOR,
            peak_start: 20,
            season_ms: 86_400_000,
            season_weight: 0.7,
            suppress: 100,
            suppress_factor: 0.5,
            // The exhaustive NAB sweep over the 58 files puts the optimum of the standard
            // profile at 0.512555; at 0.5125 the standard score is the same (72.52).
            report_threshold: 0.5125,
        }
    }
}

impl DetectorConfig {
    /// The score at or above which a record is reported as an anomaly: the NAB-optimal
    /// threshold of the default configuration (0.5125), where the score exceeds the decayed
    /// peak of earlier raw scores by 2.5 %.
    #[must_use]
    pub fn threshold(&self) -> f64 {
        self.report_threshold
    }
}

/// What the detector says about one record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    /// Anomaly score in `0..=1`; at or above [`DetectorConfig::threshold`] it is an anomaly.
    pub score: f64,
    /// The value the detector expected for this record: the successor of the shape nearest to
    /// the previous one, or the last value when it had no basis yet.
    pub expected: f64,
    /// True while the detector has seen too few records to judge (the score is then 0).
    pub warming_up: bool,
}

/// Shape memory and peaks of one time scale.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Scale {
    /// Records per block.
    scale: u32,
    /// Block means minus the detector's anchor, oldest first; the last `history + lag` count.
    values: Vec<f32>,
    /// Sum and count of the block being filled.
    #[serde(with = "exact")]
    block_sum: f64,
    block_len: u32,
    /// Blocks completed.
    blocks: u64,
    /// Decayed peak of the shape distance.
    #[serde(with = "exact")]
    peak: f64,
    /// Seasonal distances computed, and their decayed peak.
    season_blocks: u64,
    #[serde(with = "exact")]
    season_peak: f64,
}

/// What a completed block yields: its score and the next value expected (relative).
struct BlockOutcome {
    score: f64,
    next: Option<f64>,
}

impl Scale {
    fn new(scale: u32) -> Self {
        Self {
            scale,
            values: Vec::new(),
            block_sum: 0.0,
            block_len: 0,
            blocks: 0,
            peak: 0.0,
            season_blocks: 0,
            season_peak: 0.0,
        }
    }

    /// Adds one value (relative to the anchor); scores when it completes a block.
    fn push(
        &mut self,
        relative: f64,
        record: &RecordContext,
        config: &DetectorConfig,
    ) -> Option<BlockOutcome> {
        self.block_sum += relative;
        self.block_len += 1;
        if self.block_len < self.scale {
            return None;
        }
        let mean = self.block_sum / f64::from(self.block_len);
        self.block_sum = 0.0;
        self.block_len = 0;
        let keep = config.history + config.lag;
        if self.values.len() >= keep + keep / 4 {
            self.values.drain(..self.values.len() + 1 - keep);
        }
        #[expect(clippy::cast_possible_truncation, reason = "stored as f32 on purpose")]
        self.values.push(mean as f32);
        self.blocks += 1;
        let window = &self.values[self.values.len().saturating_sub(keep)..];

        let (distance, next) = nearest_shape(window, config.lag, config.neighbours);
        let mut raw = distance / record.span;
        if self.scale == 1 && record.excess > 0.0 {
            raw = raw.max(config.novelty_score);
        }
        let decay = (-f64::from(self.scale) / config.peak_window).exp();
        let mut score = 0.0;
        if self.blocks >= config.peak_start {
            score = ratio_score(raw, self.peak, config.peak_floor);
            self.peak = (self.peak * decay).max(raw);
        }
        let period = (self.scale > 1)
            .then(|| record.season_blocks(self.scale, config))
            .flatten();
        if let Some(d) = period.and_then(|p| seasonal_distance(window, p, config.lag)) {
            let raw = d / record.span;
            self.season_blocks += 1;
            if self.season_blocks >= config.peak_start {
                score = score.max(
                    config.season_weight * ratio_score(raw, self.season_peak, config.peak_floor),
                );
                self.season_peak = (self.season_peak * decay).max(raw);
            }
        }
        Some(BlockOutcome { score, next })
    }
}

/// Half the ratio of a raw score to the decayed peak of earlier ones (0 without a peak).
fn ratio_score(raw: f64, peak: f64, floor: f64) -> f64 {
    let peak = peak.max(floor);
    if peak > 0.0 { 0.5 * raw / peak } else { 0.0 }
}

/// What the scales need to know about the record being scored.
struct RecordContext {
    /// Scale of the series (never zero).
    span: f64,
    /// How far the value lies beyond the range seen so far, in spans (0: within).
    excess: f64,
    /// Smoothed interval between records, ms (0 when unknown).
    interval_ms: f64,
}

impl RecordContext {
    /// Blocks per season at `scale`, if the season fits the history.
    fn season_blocks(&self, scale: u32, config: &DetectorConfig) -> Option<usize> {
        if config.season_ms <= 0 || self.interval_ms <= 0.0 {
            return None;
        }
        let blocks = (config.season_ms as f64 / (self.interval_ms * f64::from(scale))).round();
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "checked range"
        )]
        (blocks >= 2.0 && blocks <= config.history as f64).then_some(blocks as usize)
    }
}

/// Mean Euclidean distance (RMS per value) of the newest shape in `window` to its `k` nearest
/// earlier shapes that do not overlap it, and the value that followed the nearest one.
fn nearest_shape(window: &[f32], lag: usize, k: usize) -> (f64, Option<f64>) {
    let n = window.len();
    if n < 2 * lag + 1 {
        return (0.0, None);
    }
    let current = &window[n - lag..];
    let mut best = [f32::INFINITY; MAX_NEIGHBOURS];
    let k = k.clamp(1, MAX_NEIGHBOURS);
    let mut next = None;
    // Earlier shapes end at `end` with `end + lag < n - 1`: no overlap, and a successor.
    for end in (lag - 1)..(n - lag - 1) {
        let past = &window[end + 1 - lag..=end];
        let d: f32 = past
            .iter()
            .zip(current)
            .map(|(a, b)| (a - b) * (a - b))
            .sum();
        if d < best[k - 1] {
            let mut i = k - 1;
            while i > 0 && best[i - 1] > d {
                best[i] = best[i - 1];
                i -= 1;
            }
            best[i] = d;
            if i == 0 {
                next = Some(f64::from(window[end + 1]));
            }
        }
    }
    let found = best[..k].iter().filter(|d| d.is_finite());
    let (sum, count) = found.fold((0.0, 0.0), |(s, c), &d| (s + f64::from(d).sqrt(), c + 1.0));
    if count == 0.0 {
        return (0.0, None);
    }
    (sum / count / (lag as f64).sqrt(), next)
}

/// Upper bound of [`DetectorConfig::neighbours`].
const MAX_NEIGHBOURS: usize = 16;

/// RMS distance between the newest `lag` values and those `period` earlier (best of
/// `period - 1 ..= period + 1`, for jitter), if the window reaches back that far.
fn seasonal_distance(window: &[f32], period: usize, lag: usize) -> Option<f64> {
    let n = window.len();
    if period < 2 || n < period + 1 + lag {
        return None;
    }
    let current = &window[n - lag..];
    let best = (period - 1..=period + 1)
        .map(|p| {
            let past = &window[n - lag - p..n - p];
            past.iter()
                .zip(current)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
        })
        .fold(f32::INFINITY, f32::min);
    Some(f64::from(best).sqrt() / (lag as f64).sqrt())
}

/// Per-series state. Serializable: restore it and the following scores are identical
/// (floating-point fields are written as exact decimal strings).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeriesDetector {
    config: DetectorConfig,
    /// Offset subtracted before values are stored as `f32` (the range minimum or first value).
    #[serde(with = "exact_opt")]
    anchor: Option<f64>,
    /// Range given at creation (NAB's inputMin/inputMax).
    #[serde(with = "exact_opt")]
    given_lo: Option<f64>,
    #[serde(with = "exact_opt")]
    given_hi: Option<f64>,
    /// Smallest and largest value seen (meaningful once `observations > 0`).
    #[serde(with = "exact")]
    seen_lo: f64,
    #[serde(with = "exact")]
    seen_hi: f64,
    /// One shape memory per time scale.
    scales: Vec<Scale>,
    /// Records accepted.
    observations: u64,
    /// Records left with damped scores.
    suppress_left: u32,
    /// Prediction for the next record.
    #[serde(with = "exact_opt")]
    next_expected: Option<f64>,
    /// Timestamp of the last record, and the smoothed interval between records (ms).
    last_ts: Option<i64>,
    #[serde(with = "exact")]
    interval_ms: f64,
}

impl SeriesDetector {
    /// A fresh detector. `range` is the series' known minimum and maximum (NAB passes them);
    /// live series pass `None` and the range seen so far is used.
    #[must_use]
    pub fn new(config: &DetectorConfig, range: Option<(f64, f64)>) -> Self {
        let range = range.filter(|(lo, hi)| lo.is_finite() && hi.is_finite() && lo <= hi);
        let mut config = config.clone();
        config.lag = config.lag.clamp(1, 64);
        config.neighbours = config.neighbours.clamp(1, MAX_NEIGHBOURS);
        config.history = config.history.clamp(config.neighbours, 10_000);
        config.scales.retain(|&s| s > 0);
        config.scales.dedup();
        if config.scales.is_empty() {
            config.scales.push(1);
        }
        config.settle = config.settle.max(config.warmup);
        if config.peak_window.is_nan() || config.peak_window <= 0.0 {
            config.peak_window = DetectorConfig::default().peak_window;
        }
        Self {
            anchor: range.map(|r| r.0),
            given_lo: range.map(|r| r.0),
            given_hi: range.map(|r| r.1),
            seen_lo: 0.0,
            seen_hi: 0.0,
            scales: config.scales.iter().map(|&s| Scale::new(s)).collect(),
            observations: 0,
            suppress_left: 0,
            next_expected: None,
            last_ts: None,
            interval_ms: 0.0,
            config,
        }
    }

    /// Records accepted so far (non-finite values are not counted).
    #[must_use]
    pub fn observations(&self) -> u64 {
        self.observations
    }

    /// Approximate memory held by this detector, in bytes (struct plus heap buffers).
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        let scales: usize = self
            .scales
            .iter()
            .map(|s| std::mem::size_of::<Scale>() + s.values.capacity() * 4)
            .sum();
        std::mem::size_of::<Self>() + scales + self.config.scales.capacity() * 4
    }

    /// The configuration this detector runs with (after clamping to sane bounds).
    #[must_use]
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Takes one record and scores it against the past only. Never panics: a non-finite
    /// value scores 0 and leaves the state as it was. Timestamps only set the sampling
    /// interval (for the seasonal comparison); gaps and disorder are tolerated.
    pub fn update(&mut self, ts_ms: i64, value: f64) -> Detection {
        let expected = self.next_expected;
        if !value.is_finite() {
            return Detection {
                score: 0.0,
                expected: expected.unwrap_or(0.0),
                warming_up: self.warming_up(),
            };
        }
        let anchor = *self.anchor.get_or_insert(value);
        let span = self.span(value);
        // How far beyond the range seen so far, in spans (0 when within the margin). Before
        // `settle` records the range is still being learnt and nothing is novel.
        let excess = if self.observations < self.config.settle {
            0.0
        } else {
            let beyond = (value - self.seen_hi).max(self.seen_lo - value);
            if beyond > self.config.novelty_margin * span {
                beyond / span
            } else {
                0.0
            }
        };
        if self.observations == 0 {
            (self.seen_lo, self.seen_hi) = (value, value);
        }
        self.seen_lo = self.seen_lo.min(value);
        self.seen_hi = self.seen_hi.max(value);
        self.observations += 1;
        self.track_interval(ts_ms);

        let record = RecordContext {
            span,
            excess,
            interval_ms: self.interval_ms,
        };
        let mut score: f64 = 0.0;
        for scale in &mut self.scales {
            if let Some(outcome) = scale.push(value - anchor, &record, &self.config) {
                score = score.max(outcome.score);
                if scale.scale == 1 {
                    self.next_expected = Some(outcome.next.map_or(value, |n| n + anchor));
                }
            }
        }
        let warming_up = self.warming_up();
        if warming_up || !score.is_finite() {
            score = 0.0;
        } else if self.observations < self.config.settle {
            let ramp = self.config.settle - self.config.warmup;
            score *= (self.observations - self.config.warmup) as f64 / ramp as f64;
        }
        if self.suppress_left > 0 {
            self.suppress_left -= 1;
            score *= self.config.suppress_factor;
        } else if score >= self.config.report_threshold {
            self.suppress_left = self.config.suppress;
        }
        Detection {
            score: score.clamp(0.0, 1.0),
            expected: expected.unwrap_or(value),
            warming_up,
        }
    }

    fn warming_up(&self) -> bool {
        self.observations < self.config.warmup
    }

    fn track_interval(&mut self, ts_ms: i64) {
        if let Some(last) = self.last_ts {
            let delta = ts_ms.saturating_sub(last) as f64;
            if delta > 0.0 {
                self.interval_ms = if self.interval_ms > 0.0 {
                    0.95 * self.interval_ms + 0.05 * delta
                } else {
                    delta
                };
            }
        }
        self.last_ts = Some(ts_ms);
    }

    /// Scale of the series: the given range, else the range seen so far; never zero.
    fn span(&self, value: f64) -> f64 {
        let (lo, hi) = match (self.given_lo, self.given_hi) {
            (Some(lo), Some(hi)) => (lo, hi),
            _ if self.observations == 0 => (value, value),
            _ => (self.seen_lo.min(value), self.seen_hi.max(value)),
        };
        let span = hi - lo;
        if span > 0.0 && span.is_finite() {
            span
        } else {
            value.abs().max(1.0)
        }
    }
}

/// `f64` as an exact decimal string (Rust's shortest round-trip form; `NaN` and `inf` too):
/// serde_json's default float parsing can be one ulp off, and the state must restore exactly.
mod exact {
    use serde::{Deserialize as _, Deserializer, Serializer};

    #[expect(
        clippy::trivially_copy_pass_by_ref,
        reason = "serde's `with` signature"
    )]
    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{value:?}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// [`exact`] for optional values (`null` when absent).
mod exact_opt {
    use serde::{Deserialize as _, Deserializer, Serializer};

    #[expect(clippy::ref_option, reason = "serde's `with` signature")]
    pub fn serialize<S: Serializer>(value: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => serializer.collect_str(&format_args!("{v:?}")),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<f64>, D::Error> {
        Option::<std::borrow::Cow<'de, str>>::deserialize(deserializer)?
            .map(|text| text.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A noisy daily-ish pattern sampled every 5 s, deterministic.
    fn series(n: usize) -> Vec<(i64, f64)> {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|i| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let noise = (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                let t = i as f64;
                (i as i64 * 5000, 50.0 + 10.0 * (t / 2.0).sin() + 2.0 * noise)
            })
            .collect()
    }

    #[test]
    fn state_round_trips_through_json_to_identical_scores() {
        let data = series(3000);
        let mut detector = SeriesDetector::new(&DetectorConfig::default(), None);
        for &(ts, v) in &data[..1700] {
            detector.update(ts, v);
        }
        let json = serde_json::to_string(&detector).expect("serializes");
        let mut restored: SeriesDetector = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(restored.observations(), 1700);
        for &(ts, v) in &data[1700..] {
            let a = detector.update(ts, v);
            let b = restored.update(ts, v);
            assert_eq!(a.score.to_bits(), b.score.to_bits());
            assert_eq!(a.expected.to_bits(), b.expected.to_bits());
        }
        assert!(
            json.len() < 16 * 1024,
            "state is {} bytes of JSON",
            json.len()
        );
    }

    #[test]
    fn non_finite_values_score_zero_and_leave_the_state_alone() {
        let mut detector = SeriesDetector::new(&DetectorConfig::default(), Some((0.0, 100.0)));
        for &(ts, v) in &series(200) {
            detector.update(ts, v);
        }
        let before = serde_json::to_string(&detector).expect("serializes");
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let d = detector.update(1_000_000, bad);
            assert_eq!(d.score, 0.0);
            assert!(d.expected.is_finite());
        }
        assert_eq!(
            serde_json::to_string(&detector).expect("serializes"),
            before
        );
        assert_eq!(detector.observations(), 200);
    }

    #[test]
    fn a_spike_after_sixty_samples_is_reported_once() {
        let config = DetectorConfig::default();
        let mut detector = SeriesDetector::new(&config, None);
        let data = series(120);
        let mut reported = Vec::new();
        for (i, &(ts, v)) in data.iter().enumerate() {
            let v = if i == 60 { v + 60.0 } else { v };
            let d = detector.update(ts, v);
            assert!((0.0..=1.0).contains(&d.score));
            assert_eq!(d.warming_up, i < 29, "{i}");
            if d.score >= config.threshold() {
                reported.push(i);
            }
        }
        assert_eq!(reported, vec![60]);
    }

    #[test]
    fn constant_and_extreme_series_never_panic_or_leave_the_unit_interval() {
        let config = DetectorConfig::default();
        for (range, values) in [
            (None, vec![5.0; 500]),
            (Some((5.0, 5.0)), vec![5.0; 500]),
            (
                None,
                (0..500)
                    .map(|i| if i % 2 == 0 { 1e300 } else { -1e300 })
                    .collect(),
            ),
            (None, (0..500).map(|i| f64::from(i) * 1e-300).collect()),
        ] {
            let mut detector = SeriesDetector::new(&config, range);
            for (i, v) in values.into_iter().enumerate() {
                let d = detector.update(i as i64, v);
                assert!((0.0..=1.0).contains(&d.score), "{d:?}");
            }
        }
    }

    /// Live metrics are often exactly constant or exactly periodic (a wait fraction of 0, a
    /// balloon at rest): their first departure must score, although nothing before it did.
    #[test]
    fn the_first_departure_of_an_exactly_regular_series_is_reported() {
        let config = DetectorConfig::default();
        for (name, base) in [
            ("constant", [0.0; 6]),
            ("cycle", [0.2, 0.21, 0.19, 0.22, 0.18, 0.205]),
        ] {
            let mut detector = SeriesDetector::new(&config, None);
            for i in 0..150_usize {
                let d = detector.update(i as i64 * 1_000, base[i % 6]);
                assert!(
                    d.score < config.threshold(),
                    "{name}: record {i} scored {d:?}"
                );
            }
            let jump = detector.update(150_000, 0.95);
            assert!(
                jump.score >= config.threshold(),
                "{name}: the jump scored {jump:?}"
            );
        }
    }

    #[test]
    fn expected_follows_a_repeating_pattern() {
        let mut detector = SeriesDetector::new(&DetectorConfig::default(), None);
        let pattern = [1.0, 3.0, 7.0, 3.0, 1.0, 0.0];
        let mut last = None;
        for i in 0..300 {
            last = Some(detector.update(i * 1000, pattern[i as usize % pattern.len()]));
        }
        let d = last.expect("scored");
        assert_eq!(d.expected, pattern[299 % pattern.len()]);
    }
}
