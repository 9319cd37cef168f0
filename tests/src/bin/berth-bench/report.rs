//! The figures of a run and their table: median, p10 and p90 of each, the ratio to a reference
//! measured in the same run, the target it is held to, and what peers were measured at.

/// What a figure is held to.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The median must not exceed this.
    Max(f64),
    /// The median must be at least this (counts).
    Min(f64),
    /// The median must not exceed this multiple of the reference figure's median.
    Ratio(f64),
    /// Both: an absolute bound and a multiple of the reference.
    MaxAndRatio(f64, f64),
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// Its unit.
    pub unit: &'static str,
    /// Every sample.
    pub samples: Vec<f64>,
    /// What it is held to.
    pub target: Option<Target>,
    /// The figure it is compared with (measured in the same run).
    pub reference: Option<String>,
    /// Peers measured on this kind of machine (from the issue), for orientation.
    pub peers: &'static str,
}

/// The `p` quantile (0..1) of `samples`, nearest rank.
pub fn quantile(samples: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

impl Figure {
    /// The median.
    pub fn median(&self) -> f64 {
        quantile(&self.samples, 0.5)
    }
}

/// All figures of a run, in the order measured.
#[derive(Debug, Default)]
pub struct Report {
    figures: Vec<Figure>,
    notes: Vec<String>,
}

impl Report {
    /// Adds a figure without target or reference.
    pub fn add(&mut self, name: &str, unit: &'static str, samples: Vec<f64>) -> &mut Figure {
        self.figures.push(Figure {
            name: name.into(),
            unit,
            samples,
            target: None,
            reference: None,
            peers: "",
        });
        self.figures.last_mut().expect("just pushed")
    }

    /// Adds a line printed under the table.
    pub fn note(&mut self, line: String) {
        println!("  {line}");
        self.notes.push(line);
    }

    /// The median of the figure called `name`.
    pub fn median(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.name == name)
            .map(Figure::median)
    }

    /// Whether `f` meets its target (None: no target, or its reference is missing).
    pub fn verdict(&self, f: &Figure) -> Option<bool> {
        let m = f.median();
        let r = f.reference.as_deref().and_then(|n| self.median(n));
        Some(match f.target? {
            Target::Max(t) => m <= t,
            Target::Min(t) => m >= t,
            Target::Ratio(k) => m <= k * r?,
            Target::MaxAndRatio(t, k) => m <= t && m <= k * r?,
        })
    }

    /// Prints the table.
    pub fn print(&self) {
        println!(
            "\n{:<52} {:>10} {:>10} {:>10} {:>5} {:>8} {:>13} {:>5}  peers (issue #5)",
            "figure", "median", "p10", "p90", "unit", "÷ref", "target", ""
        );
        for f in &self.figures {
            let ratio = f
                .reference
                .as_deref()
                .and_then(|n| self.median(n))
                .map(|r| format!("{:.2}x", f.median() / r))
                .unwrap_or_default();
            let target = match f.target {
                None => String::new(),
                Some(Target::Max(t)) => format!("≤ {t}"),
                Some(Target::Min(t)) => format!("≥ {t}"),
                Some(Target::Ratio(k)) => format!("≤ {k}x ref"),
                Some(Target::MaxAndRatio(t, k)) => format!("≤ {t}, {k}x"),
            };
            let verdict = match self.verdict(f) {
                None => "",
                Some(true) => "ok",
                Some(false) => "MISS",
            };
            println!(
                "{:<52} {:>10.3} {:>10.3} {:>10.3} {:>5} {:>8} {:>13} {:>5}  {}",
                f.name,
                f.median(),
                quantile(&f.samples, 0.1),
                quantile(&f.samples, 0.9),
                f.unit,
                ratio,
                target,
                verdict,
                f.peers
            );
        }
        for f in &self.figures {
            if let Some(r) = &f.reference
                && self.median(r).is_none()
            {
                println!("  (reference {r:?} of {:?} was not measured)", f.name);
            }
        }
        if !self.notes.is_empty() {
            println!();
            for n in &self.notes {
                println!("  {n}");
            }
        }
        let missed: Vec<&str> = self
            .figures
            .iter()
            .filter(|f| self.verdict(f) == Some(false))
            .map(|f| f.name.as_str())
            .collect();
        let held = self
            .figures
            .iter()
            .filter(|f| self.verdict(f) == Some(true))
            .count();
        println!(
            "\ntargets met: {held}, missed: {}{}",
            missed.len(),
            if missed.is_empty() {
                String::new()
            } else {
                format!(" ({})", missed.join("; "))
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_verdicts() {
        let s: Vec<f64> = (1..=11).map(f64::from).collect();
        assert_eq!(quantile(&s, 0.5), 6.0);
        assert_eq!(quantile(&s, 0.1), 2.0);
        assert_eq!(quantile(&s, 0.9), 10.0);
        assert!(quantile(&[], 0.5).is_nan());
        let mut r = Report::default();
        r.add("floor", "ms", vec![2.0]);
        r.add("start", "ms", vec![9.0]).target = Some(Target::MaxAndRatio(10.0, 5.0));
        r.figures[1].reference = Some("floor".into());
        assert_eq!(r.verdict(&r.figures[1].clone()), Some(true));
        r.add("slow", "ms", vec![11.0]).target = Some(Target::MaxAndRatio(10.0, 5.0));
        r.figures[2].reference = Some("floor".into());
        assert_eq!(r.verdict(&r.figures[2].clone()), Some(false));
        r.add("count", "n", vec![499.0]).target = Some(Target::Min(500.0));
        assert_eq!(r.verdict(&r.figures[3].clone()), Some(false));
        r.add("orphan", "ms", vec![1.0]).target = Some(Target::Ratio(1.2));
        r.figures[4].reference = Some("missing".into());
        assert_eq!(r.verdict(&r.figures[4].clone()), None);
    }
}
