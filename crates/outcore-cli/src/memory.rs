//! The process's memory use from `/proc/self/status`, formatted as the seed demo prints it.

/// The value of `field` (for example `VmRSS`) in `/proc/self/status`, `?` if unknown.
pub fn status_field(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key == field).then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// `VIRT ...  RSS ... (anonymous ..., file ..., peak ...)`, as `python -m outcore.demo` prints.
pub fn memory_line() -> String {
    format!(
        "VIRT {}  RSS {} (anonymous {}, file {}, peak {})",
        status_field("VmSize"),
        status_field("VmRSS"),
        status_field("RssAnon"),
        status_field("RssFile"),
        status_field("VmHWM")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc() {
        let line = memory_line();
        assert!(line.starts_with("VIRT "), "{line}");
        assert!(status_field("VmRSS").ends_with("kB"));
        assert_eq!(status_field("NoSuchField"), "?");
    }
}
