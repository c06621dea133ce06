//! Downloads of the datasets that have official public URLs: CIFAR-10 and CIFAR-100 (binary
//! tarballs), Fashion-MNIST and MNIST (gzipped IDX files, which the loader reads as they are).
//!
//! A file under its final name is always complete and verified, so that a killed run can never
//! leave something the loader would half-read:
//! - bytes go to `NAME.part`, and only after their MD5 matches the published checksum is the file
//!   renamed to `NAME`; a mismatch deletes the `.part`;
//! - a `.part` left by an interrupted run is resumed with an HTTP `Range` request (a server that
//!   ignores the range answers 200 and the file restarts from zero);
//! - an archive is unpacked into a hidden staging folder under the root, then each file is renamed
//!   into place.
//!
//! When no mirror can be reached (offline, DNS failure, a server error), the error lists every
//! missing file with its URL, the name to save it under and its MD5, so the user can fetch them
//! by hand; a verified archive found under its final name is unpacked without any network access.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::base::Split;
use super::cifar::CifarVariant;
use super::error::{DatasetError, ManualDownload};
use super::mnist::accepted_names;
use super::source::ImageDataset;

/// One official file and its published MD5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// File name, both on the server (after the mirror's base URL) and under the root.
    pub name: String,
    /// Published MD5, lowercase hex.
    pub md5: String,
}

/// What to download for a dataset, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadSpec {
    /// The dataset.
    pub dataset: ImageDataset,
    /// Base URLs ending in `/`, tried in order; a file's URL is a base followed by its name.
    pub mirrors: Vec<String>,
    /// The files; for CIFAR a single `.tar.gz` that is unpacked after download.
    pub files: Vec<RemoteFile>,
}

// Sources of the URLs and checksums:
// - CIFAR: the CIFAR page (https://www.cs.toronto.edu/~kriz/cifar.html) publishes the binary
//   versions' MD5s next to their links; the same values are in many loaders.
// - Fashion-MNIST: the MD5s of the Fashion-MNIST README (github.com/zalandoresearch/fashion-mnist),
//   identical to torchvision's `FashionMNIST.resources`; the GitHub raw URL first, then the S3
//   bucket torchvision uses.
// - MNIST: torchvision's `MNIST.resources` MD5s and its mirror on S3 (the original site at
//   yann.lecun.com has been unreliable), then Google's CVDF mirror.
const CIFAR_MIRRORS: &[&str] = &["https://www.cs.toronto.edu/~kriz/"];
const CIFAR10_ARCHIVE: (&str, &str) =
    ("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530");
const CIFAR100_ARCHIVE: (&str, &str) = (
    "cifar-100-binary.tar.gz",
    "03b5dce01913d631647c71ecec9e9cb8",
);
const FASHION_MNIST_MIRRORS: &[&str] = &[
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
];
const FASHION_MNIST_FILES: &[(&str, &str)] = &[
    (
        "train-images-idx3-ubyte.gz",
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ),
    (
        "train-labels-idx1-ubyte.gz",
        "25c81989df183df01b3e8a0aad5dffbe",
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        "bef4ecab320f06d8554ea6380940ec79",
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        "bb300cfdad3c16e7a12a480ee83cd310",
    ),
];
const MNIST_MIRRORS: &[&str] = &[
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
];
const MNIST_FILES: &[(&str, &str)] = &[
    (
        "train-images-idx3-ubyte.gz",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ),
    (
        "train-labels-idx1-ubyte.gz",
        "d53e105ee54ea40749a09fcbcd1e9432",
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        "9fb629c4189551a2d022fa330f9573f3",
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ),
];

impl DownloadSpec {
    /// The official files and mirrors of `dataset`.
    pub fn official(dataset: ImageDataset) -> Self {
        let (mirrors, files): (&[&str], &[(&str, &str)]) = match dataset {
            ImageDataset::Cifar10 => (CIFAR_MIRRORS, std::slice::from_ref(&CIFAR10_ARCHIVE)),
            ImageDataset::Cifar100 => (CIFAR_MIRRORS, std::slice::from_ref(&CIFAR100_ARCHIVE)),
            ImageDataset::FashionMnist => (FASHION_MNIST_MIRRORS, FASHION_MNIST_FILES),
            ImageDataset::Mnist => (MNIST_MIRRORS, MNIST_FILES),
        };
        Self {
            dataset,
            mirrors: mirrors.iter().map(|m| (*m).to_owned()).collect(),
            files: files
                .iter()
                .map(|(name, md5)| RemoteFile {
                    name: (*name).to_owned(),
                    md5: (*md5).to_owned(),
                })
                .collect(),
        }
    }

    /// The same files from other base URLs (a local mirror, or a test server).
    pub fn with_mirrors(mut self, mirrors: Vec<String>) -> Self {
        self.mirrors = mirrors;
        self
    }

    fn urls(&self, file: &RemoteFile) -> Vec<String> {
        self.mirrors
            .iter()
            .map(|base| format!("{base}{}", file.name))
            .collect()
    }
}

fn cifar_variant(dataset: ImageDataset) -> Option<CifarVariant> {
    match dataset {
        ImageDataset::Cifar10 => Some(CifarVariant::Cifar10),
        ImageDataset::Cifar100 => Some(CifarVariant::Cifar100),
        ImageDataset::Mnist | ImageDataset::FashionMnist => None,
    }
}

/// How far the download of one file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadProgress<'a> {
    /// The file name.
    pub file: &'a str,
    /// Bytes on disk, a resumed part included.
    pub done: u64,
    /// The file's size, when the server says.
    pub total: Option<u64>,
}

/// Called while downloading; returning `false` stops the download (the `.part` is kept).
pub type ProgressFn<'a> = dyn FnMut(&DownloadProgress<'_>) -> bool + 'a;

/// Whether every file the loader needs for both splits of `dataset` is under `root`.
pub fn dataset_present(dataset: ImageDataset, root: &Path) -> bool {
    let any_exists = |names: &[String]| names.iter().any(|n| root.join(n).is_file());
    let splits = [Split::Train, Split::Test];
    match cifar_variant(dataset) {
        // The two places `load_cifar` looks.
        Some(variant) => splits.iter().all(|&split| {
            variant.file_names(split).iter().all(|name| {
                any_exists(&[
                    name.clone(),
                    format!("{}/{name}", variant.official_folder()),
                ])
            })
        }),
        None => splits.iter().all(|&split| {
            any_exists(&accepted_names(split, "images"))
                && any_exists(&accepted_names(split, "labels"))
        }),
    }
}

/// Downloads (and for CIFAR unpacks) whatever of `spec.dataset` is missing under `root`, which is
/// created if needed. Returns whether anything was downloaded or unpacked.
///
/// Nothing is fetched when the loader would already find every file. A file already under its
/// final name with the right MD5 is reused, so a run that was stopped after the download but
/// before unpacking needs no network.
pub fn ensure_downloaded(
    spec: &DownloadSpec,
    root: &Path,
    progress: &mut ProgressFn<'_>,
) -> Result<bool, DatasetError> {
    if dataset_present(spec.dataset, root) {
        return Ok(false);
    }
    fs::create_dir_all(root).map_err(|source| DatasetError::Io {
        path: root.to_owned(),
        source,
    })?;
    let agent = agent();
    for (i, file) in spec.files.iter().enumerate() {
        let dest = root.join(&file.name);
        if already_there(spec.dataset, root, file) {
            tracing::debug!(path = %dest.display(), "already there");
            continue;
        }
        let urls = spec.urls(file);
        match fetch(&agent, &urls, &dest, &file.md5, progress) {
            Ok(()) => {}
            // List every file still to fetch, not just this one, so that a user who is offline
            // can get them all at once.
            Err(DatasetError::Download { attempts, .. }) => {
                return Err(DatasetError::Download {
                    what: format!("{} file `{}`", spec.dataset, file.name),
                    attempts,
                    files: spec.files[i..]
                        .iter()
                        .filter(|f| !already_there(spec.dataset, root, f))
                        .map(|f| ManualDownload {
                            url: spec.urls(f).into_iter().next().unwrap_or_default(),
                            dest: root.join(&f.name),
                            md5: f.md5.clone(),
                        })
                        .collect(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(variant) = cifar_variant(spec.dataset) {
        let archive = root.join(&spec.files[0].name);
        unpack_tar_gz(&archive, root, variant.official_folder())?;
    }
    Ok(true)
}

/// Whether `file` need not be fetched: an IDX file present under any spelling the loader accepts
/// (a copy recompressed by someone else has another MD5 but the same content, which the loader
/// checks), or an archive under its own name with the published MD5.
fn already_there(dataset: ImageDataset, root: &Path, file: &RemoteFile) -> bool {
    if cifar_variant(dataset).is_some() {
        return md5_of(&root.join(&file.name)).is_ok_and(|sum| sum == file.md5);
    }
    let split = if file.name.starts_with("train") {
        Split::Train
    } else {
        Split::Test
    };
    let kind = if file.name.contains("images") {
        "images"
    } else {
        "labels"
    };
    accepted_names(split, kind)
        .iter()
        .any(|n| root.join(n).is_file())
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        // Per read, not for the whole body: a slow but live connection keeps going.
        .timeout_read(Duration::from_secs(60))
        .user_agent(concat!("lortflow/", env!("CARGO_PKG_VERSION")))
        // Honour `HTTPS_PROXY`/`ALL_PROXY`, as curl and pip do, for networks that need a proxy.
        .try_proxy_from_env(true)
        .build()
}

/// Downloads `dest` from the first of `urls` that works, resuming `dest.part` if one exists,
/// verifies its MD5 and renames it to `dest`.
///
/// Errors: [`DatasetError::Download`] when no URL worked (the `.part` is kept for resuming),
/// [`DatasetError::Checksum`] when the bytes do not match `md5` (the `.part` is deleted),
/// [`DatasetError::DownloadStopped`] when `progress` returned `false`.
pub fn download_file(
    urls: &[String],
    dest: &Path,
    md5: &str,
    progress: &mut ProgressFn<'_>,
) -> Result<(), DatasetError> {
    fetch(&agent(), urls, dest, md5, progress)
}

fn fetch(
    agent: &ureq::Agent,
    urls: &[String],
    dest: &Path,
    md5: &str,
    progress: &mut ProgressFn<'_>,
) -> Result<(), DatasetError> {
    let partial = part_path(dest);
    let mut attempts = Vec::new();
    for url in urls {
        match fetch_one(agent, url, dest, &partial, progress) {
            Ok(()) => return verify_and_commit(url, &partial, dest, md5),
            Err(Attempt::Failed(reason)) => {
                tracing::warn!(%url, %reason, "download failed");
                attempts.push(format!("{url}: {reason}"));
            }
            Err(Attempt::Fatal(e)) => return Err(e),
        }
    }
    let name = dest.file_name().map_or_else(
        || dest.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    Err(DatasetError::Download {
        what: format!("`{name}`"),
        attempts,
        files: vec![ManualDownload {
            url: urls.first().cloned().unwrap_or_default(),
            dest: dest.to_owned(),
            md5: md5.to_owned(),
        }],
    })
}

/// Why one URL did not give the file: worth trying the next mirror, or not.
enum Attempt {
    Failed(String),
    Fatal(DatasetError),
}

fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Appends the rest of the file at `url` to `partial` (or rewrites it when the server ignores the
/// range). `Ok` means the server sent everything it announced.
fn fetch_one(
    agent: &ureq::Agent,
    url: &str,
    dest: &Path,
    partial: &Path,
    progress: &mut ProgressFn<'_>,
) -> Result<(), Attempt> {
    let io_fatal = |path: &Path, source: io::Error| {
        Attempt::Fatal(DatasetError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let offset = fs::metadata(partial).map_or(0, |m| m.len());
    let mut request = agent.get(url);
    if offset > 0 {
        request = request.set("Range", &format!("bytes={offset}-"));
    }
    let response = match request.call() {
        Ok(response) => response,
        // 416: the range starts at or past the end, i.e. the part is already whole (or longer
        // than the file, which the checksum will catch).
        Err(ureq::Error::Status(416, _)) if offset > 0 => return Ok(()),
        Err(ureq::Error::Status(code, response)) => {
            return Err(Attempt::Failed(format!(
                "HTTP {code} {}",
                response.status_text()
            )));
        }
        Err(ureq::Error::Transport(t)) => return Err(Attempt::Failed(transport_reason(&t))),
    };
    let resumed = response.status() == 206;
    let start = if resumed { offset } else { 0 };
    let total = if resumed {
        let range = response.header("Content-Range").unwrap_or_default();
        // Appending bytes that do not start where the part ends would only fail the checksum.
        if !range.starts_with(&format!("bytes {offset}-")) {
            return Err(Attempt::Failed(format!(
                "asked for bytes {offset}- but the server sent `Content-Range: {range}`"
            )));
        }
        content_range_total(Some(range))
    } else {
        response
            .header("Content-Length")
            .and_then(|v| v.trim().parse().ok())
    };
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(partial)
        .map_err(|e| io_fatal(partial, e))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut done = start;
    let mut reported = 0u64;
    let mut reader = response.into_reader();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Attempt::Failed(format!(
                    "connection lost after {done} bytes ({e}); the partial download `{}` is kept and resumed next time",
                    partial.display()
                )));
            }
        };
        file.write_all(&buffer[..n])
            .map_err(|e| io_fatal(partial, e))?;
        done += n as u64;
        // Report every MiB, not every read: the callback may draw a progress bar.
        if done - reported >= 1 << 20 || Some(done) == total {
            reported = done;
            let keep_going = progress(&DownloadProgress {
                file: &name,
                done,
                total,
            });
            if !keep_going {
                return Err(Attempt::Fatal(DatasetError::DownloadStopped {
                    dest: dest.to_owned(),
                    partial: partial.to_owned(),
                    bytes: done,
                }));
            }
        }
    }
    file.sync_all().map_err(|e| io_fatal(partial, e))?;
    match total {
        Some(total) if done < total => Err(Attempt::Failed(format!(
            "connection closed after {done} of {total} bytes; the partial download `{}` is kept and resumed next time",
            partial.display()
        ))),
        _ => Ok(()),
    }
}

/// The total size in `Content-Range: bytes 100-199/200`.
fn content_range_total(header: Option<&str>) -> Option<u64> {
    header?.rsplit('/').next()?.trim().parse().ok()
}

/// The reason of a transport error without its URL, which the caller already shows.
fn transport_reason(error: &ureq::Transport) -> String {
    let mut detail = error.message().unwrap_or_default().to_owned();
    if let Some(source) = std::error::Error::source(error) {
        if !detail.is_empty() {
            detail.push_str(": ");
        }
        detail.push_str(&source.to_string());
    }
    let summary = match error.kind() {
        ureq::ErrorKind::Dns => "host not found, are you offline?".to_owned(),
        ureq::ErrorKind::ConnectionFailed => "cannot connect, are you offline?".to_owned(),
        kind => kind.to_string(),
    };
    if detail.is_empty() {
        summary
    } else {
        format!("{summary} ({detail})")
    }
}

fn verify_and_commit(
    url: &str,
    partial: &Path,
    dest: &Path,
    md5: &str,
) -> Result<(), DatasetError> {
    let actual = md5_of(partial).map_err(|source| DatasetError::Io {
        path: partial.to_owned(),
        source,
    })?;
    if actual != md5 {
        // A part that does not verify cannot be resumed into a good file either.
        let _ = fs::remove_file(partial);
        return Err(DatasetError::Checksum {
            url: url.to_owned(),
            dest: dest.to_owned(),
            expected: md5.to_owned(),
            actual,
        });
    }
    fs::rename(partial, dest).map_err(|source| DatasetError::Io {
        path: dest.to_owned(),
        source,
    })?;
    tracing::info!(path = %dest.display(), "downloaded and verified");
    Ok(())
}

/// The MD5 of a file, lowercase hex.
pub fn md5_of(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut context = md5::Context::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        context.consume(&buffer[..n]);
    }
    Ok(format!("{:x}", context.finalize()))
}

/// Unpacks the `folder/` of a `.tar.gz` into `root/folder/`, or straight into `root` when the root
/// is itself named `folder` (the default roots are), since the loader looks in both places.
/// Files go first into a hidden staging folder, then one by one into place, so that an
/// interrupted unpack never leaves a truncated file where the loader looks.
fn unpack_tar_gz(archive: &Path, root: &Path, folder: &str) -> Result<(), DatasetError> {
    let target = if root.file_name().is_some_and(|n| n == folder) {
        root.to_owned()
    } else {
        root.join(folder)
    };
    let staging = root.join(format!(".{folder}.unpacking"));
    let unpack_err = |source: io::Error| DatasetError::Unpack {
        archive: archive.to_owned(),
        dest: target.clone(),
        source,
    };
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(unpack_err)?;
    }
    let file = File::open(archive).map_err(|source| DatasetError::Io {
        path: archive.to_owned(),
        source,
    })?;
    // `unpack` refuses entries that would land outside `staging` (`..`, absolute paths).
    tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)))
        .unpack(&staging)
        .map_err(unpack_err)?;
    let unpacked = staging.join(folder);
    if !unpacked.is_dir() {
        return Err(unpack_err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("the archive has no `{folder}/` folder"),
        )));
    }
    fs::create_dir_all(&target).map_err(unpack_err)?;
    for entry in fs::read_dir(&unpacked).map_err(unpack_err)? {
        let entry = entry.map_err(unpack_err)?;
        fs::rename(entry.path(), target.join(entry.file_name())).map_err(unpack_err)?;
    }
    fs::remove_dir_all(&staging).map_err(unpack_err)?;
    tracing::info!(archive = %archive.display(), dest = %target.display(), "unpacked");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::dataset::load_cifar;
    use crate::dataset::test_support::{Resource, cifar10_archive_of, md5_hex, resource, server};

    /// 300 KiB of non-repeating bytes, so that a misplaced resume shows in the checksum.
    fn payload() -> Vec<u8> {
        (0..300 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    fn no_progress() -> impl FnMut(&DownloadProgress<'_>) -> bool {
        |_| true
    }

    /// A base URL on which nothing listens: the port of a listener that was just closed.
    fn unreachable_base() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        base
    }

    #[test]
    fn full_download_is_verified_and_renamed() {
        let data = payload();
        let srv = server(&[("f.bin", resource(&data))]);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        let mut last = None;
        let mut record = |p: &DownloadProgress<'_>| {
            last = Some((p.file.to_owned(), p.done, p.total));
            true
        };
        download_file(
            &[format!("{}f.bin", srv.base)],
            &dest,
            &md5_hex(&data),
            &mut record,
        )
        .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), data);
        assert!(!part_path(&dest).exists());
        let n = data.len() as u64;
        assert_eq!(last, Some(("f.bin".to_owned(), n, Some(n))));
        assert_eq!(srv.requests(), ["GET /f.bin"]);
    }

    #[test]
    fn a_partial_file_is_resumed_with_a_range_request() {
        let data = payload();
        let srv = server(&[("f.bin", resource(&data))]);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        fs::write(part_path(&dest), &data[..100_000]).unwrap();
        download_file(
            &[format!("{}f.bin", srv.base)],
            &dest,
            &md5_hex(&data),
            &mut no_progress(),
        )
        .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), data);
        assert_eq!(srv.requests(), ["GET /f.bin bytes=100000-"]);
    }

    #[test]
    fn a_server_that_ignores_ranges_restarts_the_file() {
        let data = payload();
        let srv = server(&[(
            "f.bin",
            Resource {
                ranges: false,
                ..resource(&data)
            },
        )]);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        fs::write(part_path(&dest), b"stale bytes from another file").unwrap();
        download_file(
            &[format!("{}f.bin", srv.base)],
            &dest,
            &md5_hex(&data),
            &mut no_progress(),
        )
        .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), data);
    }

    #[test]
    fn a_complete_part_is_committed_after_a_416() {
        let data = payload();
        let srv = server(&[("f.bin", resource(&data))]);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        fs::write(part_path(&dest), &data).unwrap();
        download_file(
            &[format!("{}f.bin", srv.base)],
            &dest,
            &md5_hex(&data),
            &mut no_progress(),
        )
        .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), data);
    }

    #[test]
    fn a_cut_connection_keeps_the_part_and_the_next_run_resumes_it() {
        let data = payload();
        let md5 = md5_hex(&data);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        {
            let srv = server(&[(
                "f.bin",
                Resource {
                    cut_after: Some(70_000),
                    ..resource(&data)
                },
            )]);
            let err = download_file(
                &[format!("{}f.bin", srv.base)],
                &dest,
                &md5,
                &mut no_progress(),
            )
            .unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, DatasetError::Download { .. }), "{message}");
            assert!(message.contains("kept and resumed next time"), "{message}");
            assert!(!dest.exists(), "no half file under the final name");
            assert_eq!(fs::metadata(part_path(&dest)).unwrap().len(), 70_000);
        }
        let srv = server(&[("f.bin", resource(&data))]);
        download_file(
            &[format!("{}f.bin", srv.base)],
            &dest,
            &md5,
            &mut no_progress(),
        )
        .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), data);
        assert_eq!(srv.requests(), ["GET /f.bin bytes=70000-"]);
    }

    #[test]
    fn checksum_mismatch_deletes_the_download() {
        let data = payload();
        let srv = server(&[("f.bin", resource(&data))]);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        let url = format!("{}f.bin", srv.base);
        let wrong = "0123456789abcdef0123456789abcdef";
        let err = download_file(std::slice::from_ref(&url), &dest, wrong, &mut no_progress())
            .unwrap_err();
        assert!(!dest.exists() && !part_path(&dest).exists());
        assert_eq!(
            err.to_string(),
            format!(
                "the file downloaded from {url} has MD5 {}, but the published checksum is {wrong}; the download was deleted, run again to fetch it from scratch, or download it by hand and save it as `{}`",
                md5_hex(&data),
                dest.display()
            )
        );
    }

    #[test]
    fn a_missing_file_falls_back_to_the_next_mirror() {
        let data = payload();
        let empty = server(&[]);
        let full = server(&[("f.bin", resource(&data))]);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        download_file(
            &[
                format!("{}f.bin", empty.base),
                format!("{}f.bin", full.base),
            ],
            &dest,
            &md5_hex(&data),
            &mut no_progress(),
        )
        .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), data);
        assert_eq!(empty.requests(), ["GET /f.bin"]);
    }

    #[test]
    fn stopping_keeps_the_part() {
        let data = payload();
        let srv = server(&[("f.bin", resource(&data))]);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        let err = download_file(
            &[format!("{}f.bin", srv.base)],
            &dest,
            &md5_hex(&data),
            &mut |_| false,
        )
        .unwrap_err();
        assert!(matches!(err, DatasetError::DownloadStopped { .. }), "{err}");
        assert!(part_path(&dest).exists() && !dest.exists());
    }

    #[test]
    fn offline_error_says_what_to_download_from_where_to_where() {
        let base = unreachable_base();
        let dir = tempfile::tempdir().unwrap();
        let spec = DownloadSpec::official(ImageDataset::Mnist).with_mirrors(vec![base.clone()]);
        let err = ensure_downloaded(&spec, dir.path(), &mut no_progress()).unwrap_err();
        let message = err
            .to_string()
            .replace(&dir.path().display().to_string(), "<root>");
        let first = message.lines().next().unwrap();
        assert!(
            first.starts_with(&format!(
                "cannot download mnist file `train-images-idx3-ubyte.gz`: {base}train-images-idx3-ubyte.gz: cannot connect, are you offline?"
            )),
            "{message}"
        );
        for (name, md5) in MNIST_FILES {
            assert!(
                message.contains(&format!("\n  {base}{name} -> `<root>/{name}` (MD5 {md5})")),
                "{message}"
            );
        }
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing left behind"
        );
    }

    #[test]
    fn the_official_error_names_the_official_urls() {
        let files = DownloadSpec::official(ImageDataset::Cifar100);
        let manual = DatasetError::Download {
            what: "cifar100 file `cifar-100-binary.tar.gz`".into(),
            attempts: vec!["offline".into()],
            files: vec![ManualDownload {
                url: files.urls(&files.files[0]).swap_remove(0),
                dest: PathBuf::from("data/cifar-100-binary.tar.gz"),
                md5: files.files[0].md5.clone(),
            }],
        };
        assert_eq!(
            manual.to_string(),
            "cannot download cifar100 file `cifar-100-binary.tar.gz`: offline\n\
             To download by hand, fetch each file below and save it under the given name (lortflow checks the MD5 and unpacks archives on the next run):\n  \
             https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz -> `data/cifar-100-binary.tar.gz` (MD5 03b5dce01913d631647c71ecec9e9cb8)"
        );
    }

    /// A CIFAR-10-shaped `.tar.gz`: one record per batch file, label = batch number.
    fn cifar10_archive() -> Vec<u8> {
        cifar10_archive_of(|file| vec![file as u8])
    }

    #[test]
    fn cifar_archive_is_downloaded_verified_and_unpacked() {
        let archive = cifar10_archive();
        let srv = server(&[("cifar-10-binary.tar.gz", resource(&archive))]);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cifar");
        let spec = DownloadSpec {
            dataset: ImageDataset::Cifar10,
            mirrors: vec![srv.base.clone()],
            files: vec![RemoteFile {
                name: "cifar-10-binary.tar.gz".into(),
                md5: md5_hex(&archive),
            }],
        };
        assert!(!dataset_present(ImageDataset::Cifar10, &root));
        assert!(ensure_downloaded(&spec, &root, &mut no_progress()).unwrap());
        assert!(dataset_present(ImageDataset::Cifar10, &root));
        let train = load_cifar(&root, CifarVariant::Cifar10, Split::Train).unwrap();
        assert_eq!(train.labels(), [0, 1, 2, 3, 4]);
        assert!(!root.join(".cifar-10-batches-bin.unpacking").exists());
        // Everything is there: no request at all.
        assert!(!ensure_downloaded(&spec, &root, &mut no_progress()).unwrap());
        assert_eq!(srv.requests().len(), 1);

        // A verified archive whose unpacked files were lost is unpacked again, offline.
        fs::remove_dir_all(root.join("cifar-10-batches-bin")).unwrap();
        let offline = spec.clone().with_mirrors(vec![unreachable_base()]);
        assert!(ensure_downloaded(&offline, &root, &mut no_progress()).unwrap());
        assert!(dataset_present(ImageDataset::Cifar10, &root));

        // A root named like the archive's folder (the default root) gets the files directly.
        let named = dir.path().join("cifar-10-batches-bin");
        assert!(ensure_downloaded(&spec, &named, &mut no_progress()).unwrap());
        assert!(named.join("test_batch.bin").is_file());
        let mut left: Vec<_> = fs::read_dir(&named)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left[0], "cifar-10-binary.tar.gz",
            "no staging or .part left: {left:?}"
        );
        assert_eq!(left.len(), 7);
    }

    #[test]
    fn idx_files_present_under_another_spelling_are_not_fetched() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "train-images-idx3-ubyte",
            "train-labels.idx1-ubyte",
            "test-images-idx3-ubyte.gz",
        ] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert!(!dataset_present(ImageDataset::FashionMnist, dir.path()));
        let labels = b"test labels".to_vec();
        let srv = server(&[("t10k-labels-idx1-ubyte.gz", resource(&labels))]);
        let mut spec =
            DownloadSpec::official(ImageDataset::FashionMnist).with_mirrors(vec![srv.base.clone()]);
        spec.files[3].md5 = md5_hex(&labels);
        assert!(ensure_downloaded(&spec, dir.path(), &mut no_progress()).unwrap());
        assert_eq!(srv.requests(), ["GET /t10k-labels-idx1-ubyte.gz"]);
        assert!(dataset_present(ImageDataset::FashionMnist, dir.path()));
    }

    #[test]
    fn the_vendored_fashion_mnist_counts_as_present() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist");
        assert!(dataset_present(ImageDataset::FashionMnist, &root));
    }
}
