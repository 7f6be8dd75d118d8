//! The local file drop (`deliver.kind: file`): the drop protocol of [`super::drop`] over
//! [`LocalFolder`]. `mode: append` appends records to one (possibly dated) file,
//! `mode: batch` writes one whole file per delivery under a temp name and renames it; how
//! either stays exactly once through crashes, power cuts and a legacy side that moves or
//! empties files is the protocol's business, shared with SFTP.

use std::path::Path;
use std::sync::Arc;

use super::drop::local::LocalFolder;
use super::drop::{DropSpec, DropTarget};
use crate::config::connector::FileDeliver;
use crate::map::Mapping;

pub use super::drop::Mode;
pub use super::drop::local::sync_dir;

/// A file drop for one connector.
pub type FileTarget = DropTarget<LocalFolder>;

impl DropTarget<LocalFolder> {
    /// A file target writing into `spec.dir` (relative to `base_dir`, the map file's folder).
    /// `mapping` supplies batch header/trailer records and the CSV column row.
    pub fn new(
        spec: &FileDeliver,
        base_dir: &Path,
        connector: &str,
        mapping: Option<Arc<Mapping>>,
    ) -> Result<FileTarget, String> {
        let drop =
            DropSpec::parse(&spec.file, spec.mode.as_deref()).map_err(|errs| errs.join("; "))?;
        let dir = crate::config::resolve_path(base_dir, &spec.dir);
        Ok(DropTarget::over(
            LocalFolder::new(dir),
            drop,
            connector,
            mapping,
        ))
    }

    /// The folder files are written to.
    pub fn dir(&self) -> &Path {
        self.folder().dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Target;

    #[test]
    fn batch_mode_without_seq_in_the_name_is_refused() {
        let spec = FileDeliver {
            dir: "out".into(),
            file: "permit.txt".into(),
            mode: Some("batch".into()),
        };
        let err = FileTarget::new(&spec, Path::new("/tmp"), "c", None)
            .err()
            .unwrap();
        assert!(err.contains("{{seq}}"), "{err}");
        let spec = FileDeliver {
            dir: "out".into(),
            file: "p_{{seq}}.txt".into(),
            mode: Some("sideways".into()),
        };
        let err = FileTarget::new(&spec, Path::new("/tmp"), "c", None)
            .err()
            .unwrap();
        assert!(err.contains("sideways"), "{err}");
    }

    #[test]
    fn the_folder_is_relative_to_the_map_and_batch_mode_pins_batches() {
        let spec = FileDeliver {
            dir: "../out".into(),
            file: "p_{{seq}}.txt".into(),
            mode: Some("batch".into()),
        };
        let t = FileTarget::new(&spec, Path::new("/srv/ess/maps"), "c", None).unwrap();
        assert!(t.dir().ends_with("out"));
        assert!(t.pins_batches());
    }
}
