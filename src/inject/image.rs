//! Which image the injected init step runs. The runtime image (`--image`) is distroless:
//! no shell and no iptables, so `spoke redirect` runs from a second image built from the
//! same Dockerfile (`--target spoke-init`). Unless `--init-image` names it, its reference
//! is the runtime image's with `-init` added to the repository name, keeping the registry
//! (and its port) and the tag.

/// Why no init image can be derived from `--image`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("--image {0:?} has no repository name")]
    NoName(String),
    /// A digest names the content of one image: the init image's can never be the same.
    #[error(
        "--image {0} is pinned by digest, from which no init image can be derived: give --init-image (the spoke-init image's own digest)"
    )]
    Digest(String),
}

/// The init image, `explicit` if given, else derived from `image`.
pub fn init_image(image: &str, explicit: Option<&str>) -> Result<String, ImageError> {
    match explicit {
        Some(given) if !given.is_empty() => Ok(given.to_string()),
        _ => derive_init(image),
    }
}

/// `image` with `-init` added to its repository name: `spoke:latest` gives
/// `spoke-init:latest`, `reg.example:5000/mesh/spoke` gives `reg.example:5000/mesh/spoke-init`.
pub fn derive_init(image: &str) -> Result<String, ImageError> {
    if image.contains('@') {
        return Err(ImageError::Digest(image.to_string()));
    }
    // A tag's `:` comes after the last `/`; a `:` before it is the registry's port.
    let last_part = image.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match image[last_part..].find(':') {
        Some(i) => image.split_at(last_part + i),
        None => (image, ""),
    };
    if name.is_empty() || name.ends_with('/') {
        return Err(ImageError::NoName(image.to_string()));
    }
    Ok(format!("{name}-init{tag}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_name_gets_the_suffix_and_the_rest_is_kept() {
        for (image, want) in [
            ("spoke:latest", "spoke-init:latest"),
            ("spoke", "spoke-init"),
            (
                "reg.example/mesh/spoke:1.2",
                "reg.example/mesh/spoke-init:1.2",
            ),
            ("reg.example/spoke", "reg.example/spoke-init"),
            ("reg.example:5000/spoke", "reg.example:5000/spoke-init"),
            (
                "reg.example:5000/mesh/spoke:1.2-rc.1",
                "reg.example:5000/mesh/spoke-init:1.2-rc.1",
            ),
            ("localhost:5000/spoke:dev", "localhost:5000/spoke-init:dev"),
            ("[::1]:5000/spoke:dev", "[::1]:5000/spoke-init:dev"),
        ] {
            assert_eq!(derive_init(image).as_deref(), Ok(want), "{image}");
        }
    }

    #[test]
    fn a_digest_or_an_empty_name_is_refused() {
        for image in [
            "spoke@sha256:0123abcd",
            "reg.example:5000/spoke@sha256:0123abcd",
            "reg.example/spoke:1.2@sha256:0123abcd",
        ] {
            assert_eq!(
                derive_init(image),
                Err(ImageError::Digest(image.to_string())),
                "{image}"
            );
        }
        for image in ["", ":latest", "reg.example/:1.2"] {
            assert_eq!(
                derive_init(image),
                Err(ImageError::NoName(image.to_string())),
                "{image}"
            );
        }
    }

    #[test]
    fn an_explicit_init_image_wins_even_over_a_digest() {
        let pinned = "reg.example/spoke@sha256:0123abcd";
        let init = "reg.example/spoke-init@sha256:4567ef01";
        assert_eq!(init_image(pinned, Some(init)).as_deref(), Ok(init));
        assert_eq!(
            init_image("spoke:1", Some("")).as_deref(),
            Ok("spoke-init:1")
        );
        assert_eq!(init_image("spoke:1", None).as_deref(), Ok("spoke-init:1"));
    }
}
