//! Pretrained backbones (hf-hub repositories and files with torchvision/timm names) and trained
//! stream checkpoints: how specs spell them, offline loading, and the checks that bind a stream
//! to the exact backbone weights it was trained on.

use std::path::Path;

use candle_core::{Device, Tensor};
use castream_backbones::{Arch, BackboneConfig, Model};
use castream_data::hub::{put_in_cache, HubRepo, RepoKind};
use castream_stream::{CaModel, StreamConfig};
use castream_zoo::backbone::{load, BackboneSpec, Shape, HUB_WEIGHTS};
use castream_zoo::stream_checkpoint::{self, StreamCard, StreamSource, CARD_FORMAT};

fn spec(text: &str) -> Result<BackboneSpec, String> {
    #[derive(serde::Deserialize)]
    struct One {
        backbone: BackboneSpec,
    }
    toml::from_str::<One>(&format!("backbone = {text}")).map(|o| o.backbone).map_err(|e| e.to_string())
}

fn tiny(seed: u64) -> Model {
    let config = BackboneConfig { base_width: Some(4), ..BackboneConfig::new(Arch::Resnet18, 3) };
    Model::new(config, seed, &Device::Cpu).unwrap()
}

fn weights(model: &Model) -> Vec<u8> {
    let tensors: Vec<(String, Tensor)> =
        model.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap()
}

const SHAPE: Shape = Shape { num_classes: Some(3), base_width: Some(4), depths: None };

#[test]
fn backbone_tables_parse_into_their_kinds_and_refuse_mixtures() {
    assert_eq!(
        spec(r#"{ arch = "resnet18", file = "w.safetensors", num_classes = 3, base_width = 4 }"#).unwrap(),
        BackboneSpec::File { arch: Arch::Resnet18, file: "w.safetensors".into(), shape: SHAPE }
    );
    assert_eq!(
        spec(r#"{ arch = "resnet50", hub = "timm/resnet50.tv_in1k", revision = "v1" }"#).unwrap(),
        BackboneSpec::Hub {
            arch: Arch::Resnet50,
            hub: "timm/resnet50.tv_in1k".into(),
            revision: Some("v1".into()),
            shape: Shape::default()
        }
    );
    for bad in [
        r#"{ arch = "resnet50", hub = "a/b", file = "w.safetensors" }"#,
        r#"{ arch = "resnet50", checkpoint = "c.safetensors", base_width = 8 }"#,
        r#"{ arch = "resnet50" }"#,
    ] {
        let err = spec(bad).unwrap_err();
        assert!(err.contains("exactly one of"), "{bad}: {err}");
    }
    // Round trip through the serialised form, as run.json and stream cards record it.
    let hub = spec(r#"{ arch = "convnext-tiny", hub = "a/b", depths = [1, 1, 1, 1] }"#).unwrap();
    let json = serde_json::to_value(&hub).unwrap();
    assert_eq!(json, serde_json::json!({ "arch": "convnext-tiny", "hub": "a/b", "depths": [1, 1, 1, 1] }));
    assert_eq!(serde_json::from_value::<BackboneSpec>(json).unwrap(), hub);
    assert_eq!(
        "hub:a/b@v2".parse::<StreamSource>().unwrap(),
        StreamSource::Hub(HubRepo { revision: "v2".into(), ..HubRepo::new("a/b", RepoKind::Model) })
    );
    assert!("hub:nope".parse::<StreamSource>().is_err());
}

/// One test, because the hub's cache location and offline switch are process-wide variables.
#[test]
fn pretrained_weights_load_offline_from_the_hub_cache_or_a_file_and_streams_bind_to_them() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hf-cache");
    std::env::set_var("HF_HUB_CACHE", &cache);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let (a, b) = (tiny(1), tiny(2));
    put_in_cache(&cache, &HubRepo::new("lab/a", RepoKind::Model), HUB_WEIGHTS, &weights(&a)).unwrap();
    std::fs::write(dir.path().join("b.safetensors"), weights(&b)).unwrap();
    let hub_a = BackboneSpec::Hub { arch: Arch::Resnet18, hub: "lab/a".into(), revision: None, shape: SHAPE };
    let file_b = BackboneSpec::File { arch: Arch::Resnet18, file: "b.safetensors".into(), shape: SHAPE };

    let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
    let logits = |m: &Model| m.net.forward(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let loaded_a = load(dir.path(), &hub_a, &Device::Cpu).unwrap();
    assert_eq!(logits(&loaded_a.model), logits(&a), "the hub weights load exactly");
    use sha2::Digest;
    assert_eq!(loaded_a.sha256, castream_data::labelled::hex(&sha2::Sha256::digest(weights(&a))));
    let loaded_b = load(dir.path(), &file_b, &Device::Cpu).unwrap();
    assert_eq!(logits(&loaded_b.model), logits(&b), "a pretrained file loads exactly");

    // A repository missing from the cache: the error says both ways to get it.
    let missing = BackboneSpec::Hub { arch: Arch::Resnet18, hub: "lab/none".into(), revision: None, shape: SHAPE };
    let err = format!("{:#}", load(dir.path(), &missing, &Device::Cpu).err().unwrap());
    assert!(err.contains("hf download lab/none model.safetensors") && err.contains("HF_HUB_OFFLINE=1"), "{err}");

    // A stream saved for A's weights loads on A and is refused on B, naming both hashes.
    let ca = CaModel::new(loaded_a.model, &StreamConfig::default(), 5).unwrap();
    let card = StreamCard {
        format: CARD_FORMAT,
        architecture: "ca-stream".into(),
        backbone: hub_a.clone(),
        backbone_sha256: loaded_a.sha256.clone(),
        stream: StreamConfig::default(),
        recipe: serde_json::Value::Null,
        data: Vec::new(),
        val_top1: 0.5,
        history: Vec::new(),
        commit: "test".into(),
        dirty: false,
        command: Vec::new(),
        weights_sha256: String::new(),
    };
    let path = dir.path().join("streams/a.safetensors");
    stream_checkpoint::save(&path, &ca, card).unwrap();
    let on_a = castream_zoo::ca::trained_models(dir.path(), &hub_a, &path, &Device::Cpu).unwrap();
    let stream_logits = |m: &CaModel| m.forward(&x).unwrap().0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(stream_logits(&on_a.ca), stream_logits(&ca), "the stream round-trips exactly");
    let err =
        format!("{:#}", castream_zoo::ca::trained_models(dir.path(), &file_b, &path, &Device::Cpu).err().unwrap());
    assert!(err.contains(&loaded_a.sha256) && err.contains(&loaded_b.sha256), "{err}");

    // A stream file changed after training is refused by its card's hash.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let err = format!("{:#}", castream_zoo::ca::trained_models(dir.path(), &hub_a, &path, &Device::Cpu).err().unwrap());
    assert!(err.contains("changed after training"), "{err}");
    assert!(Path::new(&format!("{}.json", path.display())).exists());
}
