//! What a benchmark records: series of samples with their unit, ratios
//! between series, notes, and how each is summarized (nearest-rank
//! percentiles).

/// The unit of a series: how its samples are named in the JSON and shown.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Unit {
    Micros,
    Count,
    NsPerCall,
    BitsPerSecond,
    BitsPerCpuSecond,
    PerSecond,
}

impl Unit {
    pub(super) fn name(self) -> &'static str {
        match self {
            Unit::Micros => "us",
            Unit::Count => "count",
            Unit::NsPerCall => "ns_per_call",
            Unit::BitsPerSecond => "bits_per_second",
            Unit::BitsPerCpuSecond => "bits_per_cpu_second",
            Unit::PerSecond => "per_second",
        }
    }

    pub(super) fn fmt(self, v: f64) -> String {
        match self {
            Unit::Micros => fmt_us(v),
            Unit::Count => format!("{v:.0}"),
            Unit::NsPerCall => format!("{v:.1} ns"),
            Unit::BitsPerSecond => format!("{:.2} Gbit/s", v / 1e9),
            Unit::BitsPerCpuSecond => format!("{:.2} Gbit/CPU-s", v / 1e9),
            Unit::PerSecond => format!("{v:.1}/s"),
        }
    }
}

pub(super) fn fmt_us(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{:.0} ms", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0} µs")
    } else {
        format!("{v:.2} µs")
    }
}

/// One measured quantity: its samples, or why it could not be measured.
pub(super) struct Series {
    pub(super) id: String,
    pub(super) label: String,
    pub(super) unit: Unit,
    pub(super) samples: Vec<f64>,
    pub(super) error: Option<String>,
}

#[derive(Clone, Copy)]
pub(super) struct Summary {
    pub(super) n: usize,
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

/// Nearest-rank percentile of sorted samples.
pub(super) fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

impl Series {
    pub(super) fn sorted(&self) -> Vec<f64> {
        let mut v = self.samples.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    pub(super) fn summary(&self) -> Option<Summary> {
        let v = self.sorted();
        Some(Summary {
            n: v.len(),
            p50: percentile(&v, 0.5)?,
            p99: percentile(&v, 0.99)?,
            min: *v.first()?,
            max: *v.last()?,
        })
    }
}

/// A ratio of two series' percentiles, with the design goal it is held to.
pub(super) struct Ratio {
    pub(super) id: &'static str,
    pub(super) label: &'static str,
    pub(super) value: Option<f64>,
    pub(super) goal: Option<&'static str>,
    pub(super) why_missing: Option<String>,
}

/// One benchmark's results.
pub(super) struct Section {
    pub(super) id: &'static str,
    pub(super) title: String,
    pub(super) description: String,
    pub(super) series: Vec<Series>,
    pub(super) ratios: Vec<Ratio>,
    pub(super) notes: Vec<String>,
    pub(super) error: Option<String>,
}

impl Section {
    pub(super) fn new(id: &'static str, title: &str) -> Self {
        Self {
            id,
            title: title.into(),
            description: String::new(),
            series: Vec::new(),
            ratios: Vec::new(),
            notes: Vec::new(),
            error: None,
        }
    }

    pub(super) fn series_mut(&mut self, id: &str, label: &str, unit: Unit) -> &mut Series {
        let i = match self.series.iter().position(|s| s.id == id) {
            Some(i) => i,
            None => {
                self.series.push(Series {
                    id: id.into(),
                    label: label.into(),
                    unit,
                    samples: Vec::new(),
                    error: None,
                });
                self.series.len() - 1
            }
        };
        &mut self.series[i]
    }

    pub(super) fn push(&mut self, id: &str, label: &str, unit: Unit, v: f64) {
        self.series_mut(id, label, unit).samples.push(v);
    }

    pub(super) fn series_error(&mut self, id: &str, label: &str, unit: Unit, e: String) {
        self.series_mut(id, label, unit).error = Some(e);
    }

    pub(super) fn stat(&self, id: &str, q: f64) -> Option<f64> {
        self.series
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| percentile(&s.sorted(), q))
    }

    pub(super) fn ratio(
        &mut self,
        id: &'static str,
        label: &'static str,
        num: &str,
        den: &str,
        q: f64,
        goal: Option<&'static str>,
    ) {
        let (a, b) = (self.stat(num, q), self.stat(den, q));
        let (value, why_missing) = match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => (Some(a / b), None),
            _ => {
                let missing: Vec<&str> = [(num, a), (den, b)]
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(n, _)| *n)
                    .collect();
                let why = self
                    .series
                    .iter()
                    .filter(|s| missing.contains(&s.id.as_str()))
                    .find_map(|s| s.error.clone())
                    .unwrap_or_else(|| format!("no samples for {}", missing.join(", ")));
                (None, Some(why))
            }
        };
        self.ratios.push(Ratio {
            id,
            label,
            value,
            goal,
            why_missing,
        });
    }
}
