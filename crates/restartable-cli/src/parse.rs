//! Value parsers for the command line's numeric options, so that every
//! out-of-range value (negative ones included) gets the option's range.

/// A whole number in `lo..=hi`.
pub fn count(s: &str, lo: u64, hi: u64) -> Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if (i128::from(lo)..=i128::from(hi)).contains(&n) => Ok(n as u64),
        Ok(_) => Err(format!("{s} is not in {lo}..={hi}")),
        Err(_) => Err(format!(
            "`{s}` is not a whole number (expected {lo}..={hi})"
        )),
    }
}

/// Seconds, from 0.001 to 3600.
pub fn duration(s: &str) -> Result<f64, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if secs.is_finite() && (0.001..=3600.0).contains(&secs) {
        Ok(secs)
    } else {
        Err(format!(
            "duration must be between 0.001 and 3600 seconds, got {s}"
        ))
    }
}
