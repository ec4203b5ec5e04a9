//! Export: an image as a plain tar (for `podman import`) or as an OCI image layout
//! directory (for the Kubernetes backend: `skopeo copy oci:DIR docker://…` or
//! `podman pull oci:DIR`). The single layer is the canonical tar itself, so its
//! `diff_id` is the image digest; exporting re-hashes the tree and refuses an
//! altered image.

use crate::ImageError;
use crate::recipe::ImageKind;
use crate::store::{ImageStore, Manifest};
use crate::tree::write_canonical_tar;
use serde_json::json;
use std::io::Write as _;
use std::path::Path;

const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Writes the image's canonical tar to `file`.
pub fn export_tar(store: &ImageStore, manifest: &Manifest, file: &Path) -> Result<(), ImageError> {
    let name = &manifest.name;
    let out = std::fs::File::create(file).map_err(ImageError::io(name, "export tar", file))?;
    let (out, summary) = write_canonical_tar(
        &store.rootfs(&manifest.digest),
        name,
        std::io::BufWriter::new(out),
    )?;
    out.into_inner()
        .map_err(|e| ImageError::io(name, "export tar", file)(e.into_error()))?
        .sync_all()
        .map_err(ImageError::io(name, "export tar", file))?;
    if summary.digest != manifest.digest {
        let _ = std::fs::remove_file(file);
        return Err(ImageError::Altered {
            image: name.clone(),
            expected: manifest.digest.to_string(),
            actual: summary.digest.to_string(),
        });
    }
    Ok(())
}

/// Writes an OCI image layout to `dir` (created if missing) with `tag` as the
/// reference name. Returns the manifest digest.
pub fn export_oci(
    store: &ImageStore,
    manifest: &Manifest,
    dir: &Path,
    tag: &str,
) -> Result<String, ImageError> {
    let name = &manifest.name;
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(ImageError::io(name, "export oci", &blobs))?;
    let layer_tmp = blobs.join(".layer.tmp");
    export_tar(store, manifest, &layer_tmp)?;
    let layer_path = blobs.join(manifest.digest.hex());
    std::fs::rename(&layer_tmp, &layer_path).map_err(ImageError::io(
        name,
        "export oci",
        &layer_path,
    ))?;

    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut config = json!({
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
        "Labels": {
            "org.glassbox.image.name": name,
            "org.glassbox.image.recipe": manifest.recipe_digest,
            "org.glassbox.image.suite": manifest.suite,
        },
    });
    if manifest.kind == ImageKind::Runtime {
        config["User"] = json!("65534:65534");
        config["WorkingDir"] = json!("/workspace");
    }
    let config = json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [manifest.digest]},
        "history": [{
            "created": "1970-01-01T00:00:00Z",
            "created_by": format!("glassbox images build: debootstrap --variant=minbase {} + {}", manifest.suite, manifest.requested.join(" ")),
        }],
    });
    let (config_digest, config_size) = write_blob(&blobs, &config, name)?;
    let image_manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": manifest.digest, "size": manifest.tar_bytes}],
        "annotations": {"org.opencontainers.image.title": name},
    });
    let (manifest_digest, manifest_size) = write_blob(&blobs, &image_manifest, name)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    write_file(&dir.join("index.json"), index.to_string().as_bytes(), name)?;
    write_file(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        name,
    )?;
    Ok(manifest_digest)
}

fn write_blob(
    blobs: &Path,
    value: &serde_json::Value,
    name: &str,
) -> Result<(String, usize), ImageError> {
    let bytes = value.to_string().into_bytes();
    let hex = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
    write_file(&blobs.join(&hex), &bytes, name)?;
    Ok((format!("sha256:{hex}"), bytes.len()))
}

fn write_file(path: &Path, bytes: &[u8], name: &str) -> Result<(), ImageError> {
    let mut f = std::fs::File::create(path).map_err(ImageError::io(name, "export oci", path))?;
    f.write_all(bytes)
        .map_err(ImageError::io(name, "export oci", path))
}
