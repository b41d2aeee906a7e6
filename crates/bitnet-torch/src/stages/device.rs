//! Resolving the `device:` a stage asked for into a libtorch device.
use anyhow::{bail, Result};
use tch::Device;

/// `auto` -> the first CUDA device when libtorch sees one, else CPU;
/// `cuda`/`cuda:N` when CUDA is missing is an error, not a silent CPU run
/// (a benchmark on the wrong device would be a wrong number).
pub fn resolve(requested: Option<&str>) -> Result<Device> {
    let cuda = tch::Cuda::is_available();
    match requested.unwrap_or("auto") {
        "auto" => Ok(if cuda { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        d if d.starts_with("cuda") => {
            let index = match d.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("invalid device `{d}`: use `cuda` or `cuda:N`"))?,
                None => 0,
            };
            if !cuda {
                bail!("device `{d}` requested but libtorch sees no CUDA device; use `device: auto` or `cpu`");
            }
            let count = tch::Cuda::device_count() as usize;
            if index >= count {
                bail!("device `{d}` requested but only {count} CUDA device(s) exist");
            }
            Ok(Device::Cuda(index))
        }
        other => bail!("unknown device `{other}`: use `auto`, `cpu`, `cuda` or `cuda:N`"),
    }
}

/// Stable text form (`cpu`, `cuda:0`) for metadata.
pub fn name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Cpu => "cpu".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_always_resolves_and_junk_is_rejected() {
        assert_eq!(resolve(Some("cpu")).unwrap(), Device::Cpu);
        assert!(resolve(Some("tpu")).is_err());
        if !tch::Cuda::is_available() {
            assert_eq!(resolve(None).unwrap(), Device::Cpu);
            assert!(resolve(Some("cuda")).is_err());
        }
    }
}
