"""Every row of `hybrid_vlm.model_types` agrees with the installed transformers, and the SSM path report says what
actually runs.

Language models: each row's mixer classes are the recurrent layers a tiny random LM of that type builds, with SSM
parameters exactly where the row names a scan, attention exactly where it says so, and the engine serving exactly
the rows flagged for it; conversely every causal LM type whose config speaks of Mamba has a row. Vision encoders: the
prefix tokens a tiny random encoder emits, position-embedding interpolation, composite configs and the preprocessing
of transformers' own image processors.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch
from test_ssm_engine import LM_CONFIGS
from transformers import AutoConfig, AutoModel, PretrainedConfig, image_utils
from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

import hybrid_vlm
from hybrid_vlm import model_types, path_report, ssm, ssm_engine, token_counts
from hybrid_vlm.model_types import LANGUAGE_MODEL_TYPES, VISION_ENCODER_TYPES, language_model_type
from hybrid_vlm.presets import PRESETS

# Tiny configs for the rows tests/test_ssm_engine.py does not build.
EXTRA_LM_CONFIGS = {
    "falcon_mamba": dict(hidden_size=32, num_hidden_layers=2, state_size=8, intermediate_size=64, time_step_rank=4),
    "zamba": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
        attention_hidden_size=64, attention_head_dim=16, mamba_d_state=8, mamba_dt_rank=4, n_mamba_heads=2,
        attn_layer_period=2, attn_layer_offset=1, use_mamba_kernels=False,
    ),
    "granitemoehybrid": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=8, layer_types=["mamba", "attention"],
        shared_intermediate_size=64, num_local_experts=0,
    ),
    "lfm2": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        layer_types=["conv", "full_attention"],
    ),
}
ON_THIS_LINE = [t for t in LANGUAGE_MODEL_TYPES if t in CONFIG_MAPPING_NAMES]


def test_model_types_imports_neither_torch_nor_transformers():
    # hybrid_vlm/__init__ imports both: load the file on its own, as a tool or a config-only reader would
    code = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('model_types', "
        f"{model_types.__file__!r}); module = importlib.util.module_from_spec(spec); sys.modules['model_types'] = module; "
        "spec.loader.exec_module(module); "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------------ language models


def tiny_lm(model_type: str) -> torch.nn.Module:
    kwargs = LM_CONFIGS.get(model_type) or EXTRA_LM_CONFIGS[model_type]
    torch.manual_seed(0)
    try:
        return AutoModel.from_config(AutoConfig.for_model(model_type, vocab_size=64, **kwargs))
    except ValueError as error:  # transformers 5.x's Zamba refuses a model this small (its tied-weight rule)
        if model_type == "zamba" and "tie" in str(error):
            pytest.skip(f"a tiny Zamba does not build on this transformers: {error}")
        raise


@pytest.mark.parametrize("model_type", ON_THIS_LINE)
def test_language_model_row_matches_the_model_transformers_builds(model_type):
    row = LANGUAGE_MODEL_TYPES[model_type]
    module_name = MODEL_MAPPING_NAMES.get(model_type) or MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    assert hasattr(modeling, module_name), module_name
    for mixer in row.mixers:
        assert isinstance(getattr(modeling, mixer, None), type), f"{model_type}: transformers has no {mixer}"
    lm = tiny_lm(model_type)
    classes = {type(m).__name__ for m in lm.modules()}
    assert set(row.mixers) <= classes, f"{model_type} builds none of {set(row.mixers) - classes}"
    ssm_mixers = {type(m).__name__ for m in lm.modules() if ssm.is_ssm_mixer(m)}
    assert ssm_mixers == (set(row.mixers) if row.scan else set()), "SSM parameters (A_log + conv1d) where a scan is"
    has_attention = any(name.endswith("Attention") for name in classes)
    assert has_attention == row.attention
    for mixer in row.mixers:
        assert model_types.SSM_MIXER_CLASSES.get(mixer) == row.scan
    count = sum(type(m).__name__ in row.mixers for m in lm.modules())
    assert ssm_engine.install_ssm_engine(lm) == (count if row.engine else 0)
    assert ssm_engine.engine_serves_every_ssm_layer(lm, model_type) == row.engine
    assert model_types.has_ssm_layers(lm.config) == row.recurrent


def test_every_mamba_language_model_of_this_transformers_has_a_row():
    """A causal LM type whose config speaks of Mamba (in its name or a field) must be a row with a scan, so that a
    new hybrid LM in transformers is not silently treated as attention-only (cache, padding, fp16 warning)."""
    missing = []
    for model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        try:
            config = CONFIG_MAPPING[model_type]()
        except Exception:  # a config that needs arguments: nothing to read
            continue
        if "mamba" in model_type or any("mamba" in field for field in vars(config)):
            if language_model_type(model_type).scan is None:
                missing.append(model_type)
    assert missing == []


def test_unknown_language_model_is_attention_only():
    row = language_model_type("llama")
    assert (row.recurrent, row.scan, row.attention, row.engine) == (False, None, True, False)
    with pytest.raises(ValueError, match="scan"):
        model_types.LanguageModelType(mixers=("X",), scan="mamba3")
    with pytest.raises(ValueError, match="engine"):
        model_types.LanguageModelType(mixers=("X",), engine=True)


# ------------------------------------------------------------------------------------------------ vision encoders

TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                patch_size=14)
TINY_VISION_CONFIGS = {
    "clip_vision_model": TINY_VIT,
    "siglip_vision_model": TINY_VIT,
    "dinov2": {**TINY_VIT, "mlp_ratio": 2},
    "dinov2_with_registers": {**TINY_VIT, "mlp_ratio": 2, "num_register_tokens": 3},
}


def tiny_encoder(model_type: str) -> tuple[PretrainedConfig, torch.nn.Module]:
    config = AutoConfig.for_model(model_type, **TINY_VISION_CONFIGS[model_type])
    torch.manual_seed(0)
    return config, AutoModel.from_config(config).eval()


@pytest.mark.parametrize("model_type", list(TINY_VISION_CONFIGS))
def test_prefix_tokens_are_what_the_encoder_emits(model_type):
    config, encoder = tiny_encoder(model_type)
    row = VISION_ENCODER_TYPES[model_type]
    with torch.no_grad():
        tokens = encoder(torch.randn(1, 3, 28, 28)).last_hidden_state.shape[1]
    assert tokens - (28 // 14) ** 2 == row.prefix_tokens(config)
    assert token_counts.vision_prefix_token_count(config) == row.prefix_tokens(config)


@pytest.mark.parametrize("model_type", list(TINY_VISION_CONFIGS))
def test_position_embedding_interpolation(model_type):
    """Interpolating encoders take a picture larger than their image_size as is; the others refuse it."""
    _, encoder = tiny_encoder(model_type)
    row = VISION_ENCODER_TYPES[model_type]
    larger = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        if row.interpolates_position_embeddings:
            tokens = encoder(larger).last_hidden_state.shape[1]
            assert tokens == (56 // 14) ** 2 + row.prefix_tokens(encoder.config)
        else:
            with pytest.raises((ValueError, RuntimeError)):
                encoder(larger)


@pytest.mark.parametrize("model_type", [t for t, r in VISION_ENCODER_TYPES.items() if r.composite])
def test_composite_config_holds_this_vision_config(model_type):
    composite = CONFIG_MAPPING[VISION_ENCODER_TYPES[model_type].composite]()
    assert composite.vision_config.model_type == model_type
    assert hybrid_vlm.HybridVLMConfig(vision_config=composite).vision_config.model_type == model_type


def test_qwen2vl_vision_names_on_this_line():
    """This line's Qwen2-VL vision config type is one of the row's names, and the fields the row reads exist."""
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig

    config = Qwen2VLVisionConfig()
    row = VISION_ENCODER_TYPES[config.model_type]
    assert config.model_type in model_types.QWEN2VL_VISION_MODEL_TYPES and row.tower == "qwen2_vl"
    assert row.prefix_tokens(config) == 0
    assert token_counts.vision_token_patch_size(config) == config.patch_size * config.spatial_merge_size
    assert token_counts.vision_temporal_patch(config) == config.temporal_patch_size
    model, _ = hybrid_vlm.from_preset("vamba-qwen2vl-tiny")  # no prefix: the merger's tokens are the whole output
    tower = model.model.vision_tower
    maps = tower.encode_patch_maps(torch.randn(1, 3, 56, 56), [-1])
    assert maps[0].shape[1] == (56 // 28) ** 2


def transformers_image_processor(model_type: str):
    key = VISION_ENCODER_TYPES[model_type].composite or model_type.removesuffix("_with_registers")
    key = "qwen2_vl" if VISION_ENCODER_TYPES[model_type].tower == "qwen2_vl" else key
    names = IMAGE_PROCESSOR_MAPPING_NAMES[key]
    name = names["pil"] if isinstance(names, dict) else names[0]  # the PIL one: no torchvision here
    module = importlib.import_module("transformers")
    return getattr(module, name)()


@pytest.mark.parametrize("model_type", list(VISION_ENCODER_TYPES))
def test_preprocessing_preset_matches_transformers_image_processor(model_type):
    preset = VISION_ENCODER_TYPES[model_type].preprocessing
    theirs = transformers_image_processor(model_type)
    assert int(theirs.resample) == int(image_utils.PILImageResampling[preset.resample.upper()])
    if not model_type.startswith("dinov2"):  # DINOv2's processor class defaults to CLIP's stats; its checkpoints don't
        assert list(theirs.image_mean) == list(preset.image_mean) and list(theirs.image_std) == list(preset.image_std)
    else:
        assert list(preset.image_mean) == image_utils.IMAGENET_DEFAULT_MEAN
        assert list(preset.image_std) == image_utils.IMAGENET_DEFAULT_STD
    if preset.size is None:  # a fixed input size: resize like theirs
        crops = bool(getattr(theirs, "do_center_crop", False))
        assert crops == (preset.resize == "shortest_edge")
        assert ("shortest_edge" in theirs.size) == (preset.resize == "shortest_edge")
    ours = hybrid_vlm.HybridVLMImageProcessor.from_vision_config(
        AutoConfig.for_model(model_type, **TINY_VISION_CONFIGS[model_type])
        if model_type in TINY_VISION_CONFIGS
        else {"model_type": model_type}
    )
    assert ours.image_mean == list(preset.image_mean) and ours.image_std == list(preset.image_std)
    assert ours.do_center_crop == (preset.resize == "shortest_edge")


def test_unknown_vision_encoder_says_where_to_add_it():
    with pytest.raises(ValueError, match="VISION_ENCODER_TYPES"):
        model_types.vision_encoder_type("beit")


# ------------------------------------------------------------------------------------------------ path report


def record_paths(model: torch.nn.Module, monkeypatch) -> dict[str, str]:
    """Qualified name -> the path each SSM layer's forward actually ran (the outermost scan it called)."""
    names = {module: name for name, module in model.named_modules()}
    layers = [m for m in names if isinstance(m, ssm._SSMMixerBase) or ssm.lm_mixer_kind(m) is not None]
    current: list[str] = []
    ran: dict[str, str] = {}

    def enter(module, args):
        current.append(names[module])

    def leave(module, args, output):
        current.pop()

    for layer in layers:
        layer.register_forward_pre_hook(enter)
        layer.register_forward_hook(leave)

    def recording(path, function):
        def run(*args, **kwargs):
            if current:
                ran.setdefault(current[-1], path)
            return function(*args, **kwargs)

        return run

    for name, path in [("ssd_chunked_scan", "torch"), ("selective_scan_blocked", "torch"),
                       ("reference_scan", "reference"), ("reference_selective_scan", "reference")]:
        monkeypatch.setattr(ssm, name, recording(path, getattr(ssm, name)))
    monkeypatch.setattr(ssm, "_kernel", recording("kernels", ssm._kernel))
    for name in ("_mamba1", "_mamba2"):
        monkeypatch.setattr(ssm_engine, name, recording("engine", getattr(ssm_engine, name)))
    for cls in {type(m) for m in layers if ssm.lm_mixer_kind(m) is not None}:
        monkeypatch.setattr(cls, "forward", recording("transformers", cls.forward))
    return ran


@pytest.mark.parametrize("preset", [n for n, p in PRESETS.items() if p.tiny])
def test_reported_path_of_every_ssm_layer_is_the_path_that_runs(preset, monkeypatch):
    model, processor = hybrid_vlm.from_preset(preset)
    inputs = processor(text="<image>hello", images=[torch.zeros(3, 64, 80)], return_tensors="pt")
    ran = record_paths(model, monkeypatch)
    for switch in ("default", "switched"):
        if switch == "switched":  # transformers' own path in the LM, our reference recurrence elsewhere
            hybrid_vlm.set_ssm_engine(model, False)
            for module in model.modules():
                if isinstance(module, ssm._SSMMixerBase):
                    module.compute_path = "reference"
        reported = path_report.ssm_layer_paths(model)
        assert reported or preset == "llava-tiny", "every other tiny preset has SSM layers"
        ran.clear()
        with torch.no_grad():
            model(**inputs)
        assert ran == reported, switch
        rows = path_report.compute_paths(model)  # the rows people read are made of the same decisions
        assert sum(r.modules for r in rows if "SSM" in r.component) == len(reported)
