//! Where the disk cache lives when the caller names no directory: under the user's cache
//! directory (`$XDG_CACHE_HOME/outcore`, else `~/.cache/outcore`), in a subdirectory per
//! object store, so every process of a node that opens the same store shares one cache and
//! stores do not evict each other's bodies.

use std::path::{Path, PathBuf};

/// The default cache directory of the object store at `url` (`s3://bucket[/prefix]`) reached
/// through `endpoint` (`AWS_ENDPOINT_URL`, if set), or `None` without a usable home.
pub(crate) fn default_cache_dir(url: &str, endpoint: Option<&str>) -> Option<PathBuf> {
    cache_home(
        std::env::var_os("XDG_CACHE_HOME").as_deref().map(Path::new),
        std::env::var_os("HOME").as_deref().map(Path::new),
    )
    .map(|home| home.join("outcore").join(identity(url, endpoint)))
}

/// `$XDG_CACHE_HOME` if absolute (the XDG rules ignore a relative one), else `$HOME/.cache`.
fn cache_home(xdg: Option<&Path>, home: Option<&Path>) -> Option<PathBuf> {
    match (xdg, home) {
        (Some(x), _) if x.is_absolute() => Some(x.to_path_buf()),
        (_, Some(h)) if h.is_absolute() => Some(h.join(".cache")),
        _ => None,
    }
}

/// A directory name for one object store: its bucket (readable, for whoever looks) and a
/// hash of the endpoint and url (the same bucket name on two servers is two stores).
fn identity(url: &str, endpoint: Option<&str>) -> String {
    let bucket: String = url
        .strip_prefix("s3://")
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let hash =
        twox_hash::XxHash3_64::oneshot(format!("{}\n{url}", endpoint.unwrap_or("")).as_bytes());
    format!("{bucket}-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_the_users_cache_directory_one_per_store() {
        let (xdg, home) = (Path::new("/x/cache"), Path::new("/home/u"));
        assert_eq!(cache_home(Some(xdg), Some(home)).unwrap(), xdg);
        assert_eq!(
            cache_home(Some(Path::new("rel")), Some(home)).unwrap(),
            home.join(".cache")
        );
        assert_eq!(cache_home(None, Some(home)).unwrap(), home.join(".cache"));
        assert_eq!(cache_home(None, None), None);
        let a = identity("s3://bucket/p", Some("http://127.0.0.1:1"));
        assert!(a.starts_with("bucket-"), "{a}");
        assert_eq!(a, identity("s3://bucket/p", Some("http://127.0.0.1:1")));
        assert_ne!(a, identity("s3://bucket/q", Some("http://127.0.0.1:1")));
        assert_ne!(a, identity("s3://bucket/p", Some("http://127.0.0.1:2")));
        assert_ne!(a, identity("s3://bucket/p", None));
        assert!(!identity("s3://../x", None).contains(".."));
    }
}
