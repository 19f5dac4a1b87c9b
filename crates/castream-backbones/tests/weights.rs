//! Strict loading of torchvision/timm-named safetensors, the hub path, and checkpoints.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use castream_backbones::{Arch, BackboneConfig, CheckpointMeta, KeyMismatch, Model, Stem, WeightSource};
use castream_data::hub::{put_in_cache, HubAccess, HubRepo, RepoKind};
use castream_data::Normalisation;

fn tiny(arch: Arch) -> BackboneConfig {
    let mut c = BackboneConfig::new(arch, 4);
    c.stem = Stem::Small;
    c.base_width = Some(8);
    if !arch.is_resnet() {
        c.depths = Some([1, 1, 1, 1]);
    }
    c
}

fn input() -> Tensor {
    Tensor::arange(0f32, 3.0 * 64.0 * 64.0, &Device::Cpu)
        .unwrap()
        .affine(1e-3, 0.0)
        .unwrap()
        .cos()
        .unwrap()
        .reshape((1, 3, 64, 64))
        .unwrap()
}

fn logits(model: &Model) -> Vec<f32> {
    model.net.forward(&input(), false).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// A source ResNet whose running statistics are not the initial ones.
fn trained_source() -> Model {
    let model = Model::new(tiny(Arch::Resnet18), 1, &Device::Cpu).unwrap();
    model.net.forward(&input(), true).unwrap();
    model
}

/// The model's tensors as PyTorch would export them: BatchNorm counters included, `dtype`.
fn torch_export(model: &Model, dtype: DType) -> Vec<(String, Tensor)> {
    let mut out = vec![];
    for (name, var) in model.named_vars() {
        if let Some(bn) = name.strip_suffix(".running_mean") {
            out.push((format!("{bn}.num_batches_tracked"), Tensor::new(1i64, &Device::Cpu).unwrap()));
        }
        out.push((name, var.as_tensor().to_dtype(dtype).unwrap()));
    }
    out
}

fn write_safetensors(path: &Path, tensors: Vec<(String, Tensor)>) {
    std::fs::write(path, safetensors::serialize(tensors, None).unwrap()).unwrap();
}

#[test]
fn a_torchvision_named_file_loads_and_reproduces_the_source_logits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r18.safetensors");
    let source = trained_source();
    write_safetensors(&path, torch_export(&source, DType::F32));
    let mut target = Model::new(tiny(Arch::Resnet18), 2, &Device::Cpu).unwrap();
    assert_ne!(logits(&target), logits(&source));
    let report = target.load_weights(&WeightSource::File(path.clone())).unwrap();
    assert_eq!(logits(&target), logits(&source));
    assert_eq!(report.loaded, source.named_vars().len());
    assert_eq!(report.converted, 0);
    assert_eq!(report.ignored.len(), 20, "one counter per BatchNorm");
    assert!(report.ignored.contains(&"layer2.0.downsample.1.num_batches_tracked".to_string()), "{:?}", report.ignored);
}

#[test]
fn half_and_double_precision_files_are_converted_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let source = trained_source();
    for (dtype, exact) in [(DType::F64, true), (DType::BF16, false), (DType::F16, false)] {
        let path = dir.path().join(format!("{dtype:?}.safetensors"));
        write_safetensors(&path, torch_export(&source, dtype));
        let mut target = Model::new(tiny(Arch::Resnet18), 2, &Device::Cpu).unwrap();
        let report = target.load_weights(&WeightSource::File(path)).unwrap();
        assert_eq!(report.converted, source.named_vars().len(), "{dtype:?}");
        assert!(target.named_vars().iter().all(|(_, v)| v.dtype() == DType::F32));
        if exact {
            assert_eq!(logits(&target), logits(&source));
        }
    }
}

#[test]
fn missing_extra_and_misshaped_keys_are_all_listed_and_nothing_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let mut tensors: Vec<(String, Tensor)> =
        torch_export(&trained_source(), DType::F32).into_iter().filter(|(n, _)| n != "fc.bias").collect();
    tensors.retain(|(n, _)| n != "layer3.1.bn2.running_var");
    tensors.push(("fc.extra".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap()));
    tensors.push(("head.num_batches_tracked".into(), Tensor::new(0i64, &Device::Cpu).unwrap()));
    for (name, t) in tensors.iter_mut() {
        if name == "fc.weight" {
            *t = Tensor::zeros((1000, 64), DType::F32, &Device::Cpu).unwrap();
        }
    }
    write_safetensors(&path, tensors);
    let mut target = Model::new(tiny(Arch::Resnet18), 2, &Device::Cpu).unwrap();
    let before = logits(&target);
    let err = target.load_weights(&WeightSource::File(path.clone())).unwrap_err();
    let mismatch = err.downcast_ref::<KeyMismatch>().expect("a KeyMismatch");
    assert_eq!(mismatch.missing, ["fc.bias", "layer3.1.bn2.running_var"]);
    assert_eq!(mismatch.unexpected, ["fc.extra", "head.num_batches_tracked"]);
    assert_eq!(mismatch.mis_shaped, [("fc.weight".to_string(), vec![4, 64], vec![1000, 64])]);
    let msg = err.to_string();
    for needle in [
        path.to_str().unwrap(),
        "fc.bias",
        "fc.extra",
        "fc.weight expected [4, 64] found [1000, 64]",
        "resnet18",
        "Fix:",
    ] {
        assert!(msg.contains(needle), "`{needle}` not in:\n{msg}");
    }
    assert_eq!(logits(&target), before, "a failed load must leave the model untouched");
}

#[test]
fn long_key_lists_are_truncated_with_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r18.safetensors");
    write_safetensors(&path, torch_export(&trained_source(), DType::F32));
    let mut convnext = Model::new(tiny(Arch::ConvnextTiny), 0, &Device::Cpu).unwrap();
    let msg = convnext.load_weights(&WeightSource::File(path)).unwrap_err().to_string();
    assert!(msg.contains("missing from the file (") && msg.contains("more"), "{msg}");
    assert!(msg.lines().all(|l| l.len() < 1200), "{msg}");
}

#[test]
fn a_file_that_is_not_safetensors_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.pth");
    std::fs::write(&path, b"PK\x03\x04 a zip archive, as torch.save writes").unwrap();
    let mut model = Model::new(tiny(Arch::Resnet18), 0, &Device::Cpu).unwrap();
    let msg = model.load_weights(&WeightSource::File(path.clone())).unwrap_err().to_string();
    assert!(msg.contains(path.to_str().unwrap()) && msg.contains("not a safetensors file"), "{msg}");
    let missing = dir.path().join("absent.safetensors");
    let msg = model.load_weights(&WeightSource::File(missing.clone())).unwrap_err().to_string();
    assert!(msg.contains(missing.to_str().unwrap()), "{msg}");
}

#[test]
fn hub_weights_load_from_a_prefilled_cache_without_network() {
    let cache = tempfile::tempdir().unwrap();
    let source = trained_source();
    let bytes = safetensors::serialize(torch_export(&source, DType::F32), None).unwrap();
    put_in_cache(
        cache.path(),
        &HubRepo::new("timm/resnet18.castream-test", RepoKind::Model),
        "model.safetensors",
        &bytes,
    )
    .unwrap();
    let spec = r#"{"hub": {"repo": {"repo": "timm/resnet18.castream-test"}, "file": "model.safetensors"}}"#;
    let weights: WeightSource = serde_json::from_str(spec).unwrap();
    let mut target = Model::new(tiny(Arch::Resnet18), 2, &Device::Cpu).unwrap();
    target.load_weights_with(&weights, HubAccess::CacheOnly, Some(cache.path())).unwrap();
    assert_eq!(logits(&target), logits(&source));
    let absent =
        WeightSource::Hub { repo: HubRepo::new("timm/absent", RepoKind::Model), file: "model.safetensors".into() };
    let msg = target.load_weights_with(&absent, HubAccess::CacheOnly, Some(cache.path())).unwrap_err().to_string();
    assert!(msg.contains("timm/absent"), "{msg}");
}

#[test]
fn save_then_load_gives_bit_identical_logits_and_the_same_meta() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Arch::Resnet50, Arch::ConvnextTiny] {
        let model = Model::new(tiny(arch), 5, &Device::Cpu).unwrap();
        model.net.forward(&input(), true).unwrap();
        let meta = CheckpointMeta {
            config: model.config.clone(),
            classes: ["a", "b", "c", "d"].map(String::from).to_vec(),
            normalisation: Normalisation::IMAGENET,
            extra: serde_json::json!({ "epochs": 3 }),
        };
        let path = dir.path().join(format!("{}.safetensors", arch.name()));
        model.save(&path, &meta).unwrap();
        let (loaded, loaded_meta) = Model::load(&path, &Device::Cpu).unwrap();
        assert_eq!(loaded_meta, meta);
        assert_eq!(logits(&loaded), logits(&model), "{}", arch.name());
    }
    let mut names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "convnext-tiny.safetensors",
            "convnext-tiny.safetensors.json",
            "resnet50.safetensors",
            "resnet50.safetensors.json"
        ]
    );
}

#[test]
fn saving_with_meta_of_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::new(tiny(Arch::Resnet18), 0, &Device::Cpu).unwrap();
    let meta = CheckpointMeta {
        config: tiny(Arch::Resnet50),
        classes: vec![],
        normalisation: Normalisation::IMAGENET,
        extra: serde_json::Value::Null,
    };
    let err = model.save(&dir.path().join("x.safetensors"), &meta).unwrap_err().to_string();
    assert!(err.contains("resnet50") && err.contains("resnet18"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A sidecar edited to `base_width = 100000` is refused, naming the file, the value and the range,
/// before the network (trillions of parameters) is allocated.
#[test]
fn a_sidecar_with_an_impossible_width_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::new(tiny(Arch::Resnet18), 0, &Device::Cpu).unwrap();
    let meta = CheckpointMeta {
        config: model.config.clone(),
        classes: vec![],
        normalisation: Normalisation::IMAGENET,
        extra: serde_json::Value::Null,
    };
    let path = dir.path().join("wide.safetensors");
    model.save(&path, &meta).unwrap();
    let sidecar = dir.path().join("wide.safetensors.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&sidecar).unwrap()).unwrap();
    json["config"]["base_width"] = serde_json::json!(100_000);
    std::fs::write(&sidecar, serde_json::to_string(&json).unwrap()).unwrap();
    let msg = format!("{:#}", Model::load(&path, &Device::Cpu).err().unwrap());
    assert!(msg.contains(&sidecar.display().to_string()), "{msg}");
    assert!(msg.contains("`base_width`: 100000 is out of range; valid: 1 to 256") && msg.contains("Fix:"), "{msg}");
}
