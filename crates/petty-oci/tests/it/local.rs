//! Local sources: `oci:`, `oci-archive:`, `docker-archive:`.

use petty_oci::{pull, ImageSource, OciError, PullOptions, Store};

use crate::fixture::{check_image, fixture, Lines};

async fn pull_source(source: &str, store: &Store) -> Result<petty_oci::Image, OciError> {
    let source: ImageSource = source.parse()?;
    let lines = Lines::default();
    let say = |l: &str| lines.say(l);
    let image = pull(&source, store, &PullOptions::default(), &say).await?;
    assert!(!lines.all().is_empty());
    Ok(image)
}

#[tokio::test]
async fn pulls_an_oci_layout() {
    let Some(f) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let image = pull_source(&format!("oci:{}", f.layout().display()), &store)
        .await
        .unwrap();
    check_image(&image, &store);
    // By name after a second colon, too; and a name that is not there is refused.
    let named = pull_source(&format!("oci:{}:t", f.layout().display()), &store)
        .await
        .unwrap();
    assert_eq!(named, image);
    let err = pull_source(&format!("oci:{}:nope", f.layout().display()), &store)
        .await
        .unwrap_err();
    assert!(
        matches!(err, OciError::NotFound { .. }) && err.to_string().contains("t"),
        "{err}"
    );
}

#[tokio::test]
async fn pulls_an_oci_archive() {
    let Some(f) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let image = pull_source(
        &format!("oci-archive:{}", f.oci_archive().display()),
        &store,
    )
    .await
    .unwrap();
    check_image(&image, &store);
}

#[tokio::test]
async fn pulls_a_docker_archive() {
    let Some(f) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let image = pull_source(
        &format!("docker-archive:{}", f.docker_archive().display()),
        &store,
    )
    .await
    .unwrap();
    check_image(&image, &store);
    for l in &image.layers {
        assert_eq!(l.media_type, petty_oci::manifest::OCI_LAYER_TAR);
    }
}

#[tokio::test]
async fn refuses_a_tampered_layout() {
    let Some(f) = fixture() else { return };
    let copy = tempfile::tempdir().unwrap();
    let layout = copy.path().join("layout");
    crate::fixture::run(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(f.layout())
            .arg(&layout),
    );
    // Flip a byte of the biggest blob (the busybox layer).
    let blobs = layout.join("blobs/sha256");
    let biggest = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&biggest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&biggest, bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let err = pull_source(&format!("oci:{}", layout.display()), &store)
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
    assert!(!store.has(
        &format!("sha256:{}", biggest.file_name().unwrap().to_string_lossy())
            .parse()
            .unwrap()
    ));
}

#[tokio::test]
async fn limits_refuse_before_importing() {
    let Some(f) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let mut opts = PullOptions::default();
    opts.limits.max_layers = 1;
    let source: ImageSource = format!("oci:{}", f.layout().display()).parse().unwrap();
    let err = pull(&source, &store, &opts, &|_| {}).await.unwrap_err();
    assert!(
        matches!(
            err,
            OciError::TooLarge {
                key: "image.max_layers",
                ..
            }
        ),
        "{err}"
    );
    opts.limits.max_layers = 10;
    opts.limits.max_image_bytes = 1000;
    let err = pull(&source, &store, &opts, &|_| {}).await.unwrap_err();
    assert!(
        matches!(
            err,
            OciError::TooLarge {
                key: "image.max_image_mib",
                ..
            }
        ),
        "{err}"
    );
}
