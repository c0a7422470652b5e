use sha2::{Digest, Sha256};

use super::*;

fn hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn manifest(version: &str, files: &[(&str, &[u8])]) -> String {
    let mut m = format!("name = \"m\"\nkind = \"text-classifier\"\nversion = \"{version}\"\n");
    for (path, data) in files {
        m += &format!("[[files]]\npath = \"{path}\"\nsha256 = \"{}\"\nsize = {}\n", hex(data), data.len());
    }
    m
}

async fn push(a: &Artifacts, manifest: &str, files: &[(&str, &[u8])]) -> Result<Stored, ControllerError> {
    let mut inc = a.incoming()?;
    inc.write(MANIFEST, 0, manifest.as_bytes()).await?;
    for (path, data) in files {
        let (first, second) = data.split_at(data.len() / 2);
        inc.write(path, 0, first).await?;
        inc.write(path, first.len() as u64, second).await?;
    }
    a.publish(inc).await
}

#[tokio::test]
async fn a_pushed_version_is_kept_listed_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = Artifacts::open(dir.path()).unwrap();
    let files: &[(&str, &[u8])] = &[("w.bin", b"weights!"), ("sub/labels.txt", b"a\nb\n")];
    let s = push(&a, &manifest("1.0", files), files).await.unwrap();
    assert_eq!((s.manifest.version.as_str(), s.manifest.total_size()), ("1.0", 12));
    assert!(s.pushed_unix_ms > 0);
    let listed = a.list(None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(a.list(Some("other")).await.unwrap().is_empty());
    assert_eq!(a.read("m", "1.0", "w.bin", 3, 3).await.unwrap(), (b"ght".to_vec(), 8));
    assert_eq!(a.read("m", "1.0", "w.bin", 8, 100).await.unwrap(), (vec![], 8));
    assert!(matches!(a.read("m", "1.0", "w.bin", 9, 1).await, Err(ControllerError::OutOfRange(_))));
    assert!(matches!(a.read("m", "1.0", "other", 0, 1).await, Err(ControllerError::NotFound(_))));
    assert!(matches!(a.read("m", "2.0", "w.bin", 0, 1).await, Err(ControllerError::NotFound(_))));
    assert!(matches!(a.read("m", "..", "w.bin", 0, 1).await, Err(ControllerError::NotFound(_))));
    let again = push(&a, &manifest("1.0", files), files).await.unwrap_err();
    assert!(matches!(again, ControllerError::AlreadyExists(_)), "{again}");
    assert!(std::fs::read_dir(dir.path().join("models/.incoming")).unwrap().next().is_none(), "nothing left staged");
}

#[tokio::test]
async fn bad_pushes_are_refused_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let a = Artifacts::open(dir.path()).unwrap();
    let files: &[(&str, &[u8])] = &[("w.bin", b"weights!")];
    let e = push(&a, &manifest("1", files), &[("w.bin", b"weights?")]).await.unwrap_err().to_string();
    assert!(e.contains("sha256"), "{e}");
    let e = push(&a, &manifest("", files), files).await.unwrap_err().to_string();
    assert!(e.contains("version"), "{e}");
    let no_size = manifest("1", files).replace("size = 8\n", "");
    assert!(push(&a, &no_size, files).await.unwrap_err().to_string().contains("no `size`"));
    let extra: &[(&str, &[u8])] = &[("w.bin", b"weights!"), ("x", b"x")];
    assert!(push(&a, &manifest("1", files), extra).await.unwrap_err().to_string().contains("does not list"));
    let mut inc = a.incoming().unwrap();
    assert!(inc.write("../x", 0, b"x").await.unwrap_err().to_string().contains("inside"));
    inc.write("w.bin", 0, b"ab").await.unwrap();
    assert!(inc.write("w.bin", 5, b"c").await.unwrap_err().to_string().contains("expected 2"));
    assert!(a.list(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_interrupted_push_is_emptied_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let a = Artifacts::open(dir.path()).unwrap();
    let mut inc = a.incoming().unwrap();
    inc.write("w.bin", 0, b"half").await.unwrap();
    std::mem::forget(inc);
    Artifacts::open(dir.path()).unwrap();
    assert!(std::fs::read_dir(dir.path().join("models/.incoming")).unwrap().next().is_none());
}
