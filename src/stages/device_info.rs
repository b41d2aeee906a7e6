//! `device_info`: which device libtorch gives this run (CUDA available,
//! device count, CPU threads). Runs in the libtorch plugin, so it is also
//! the smallest end-to-end check that the plugin loads; measurement-like,
//! so it is never cached.
use serde::Deserialize;
use serde_json::Value;

use super::{parse_config, Backend, OptionDoc, StageKind};
use crate::pipeline::ConfigIssue;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceInfoConfig {}

pub struct DeviceInfo;

impl StageKind for DeviceInfo {
    fn name(&self) -> &'static str {
        "device_info"
    }

    fn summary(&self) -> &'static str {
        "record the libtorch device this run uses (CUDA availability, device count, CPU threads)"
    }

    fn options(&self) -> &'static [OptionDoc] {
        &[]
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigIssue> {
        parse_config::<DeviceInfoConfig>(config).map(|_| ())
    }

    fn backend(&self) -> Backend {
        Backend::Torch
    }

    fn cache_by_default(&self) -> bool {
        false
    }

    fn uses_device(&self) -> bool {
        true
    }
}
