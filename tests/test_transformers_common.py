"""transformers' own common tests (`ModelTesterMixin`, `ConfigTester`, and `GenerationTesterMixin` where its file is
available) run on HybridVLM, with a tester modelled on transformers' `LlavaNextForConditionalGenerationModelTest`.

The test files come from the installed transformers release, never from this repository:
`python .ci/transformers_tests.py` unpacks them from the release's sdist and prints the folder, which
`HYBRID_VLM_TRANSFORMERS_TESTS` names (a transformers git checkout's `tests/` works too, and has the generation tests
the sdist lacks). Without it this module is skipped. docs/compatibility.md lists the skips and the results.

One test class per configuration: a Jamba, a Mamba-2 and a Llama LM behind a tiny CLIP + `mlp2x_gelu` (LLaVA's
layout), AnyRes tiles with row newlines (LLaVA-NeXT's layout) on the Jamba LM, and the Vamba decoder on a Qwen2 LM.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import sys
import unittest
import unittest.mock
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

TESTS_DIR = os.environ.get("HYBRID_VLM_TRANSFORMERS_TESTS")
if not TESTS_DIR:
    pytest.skip(
        "transformers' test files are not here: run `export HYBRID_VLM_TRANSFORMERS_TESTS=$(python "
        ".ci/transformers_tests.py)` (it unpacks them from the installed release's sdist)",
        allow_module_level=True,
    )
if not (Path(TESTS_DIR) / "test_modeling_common.py").is_file():
    raise RuntimeError(f"HYBRID_VLM_TRANSFORMERS_TESTS={TESTS_DIR} has no test_modeling_common.py")
pytest.importorskip("parameterized", reason="transformers' test_modeling_common.py imports `parameterized`")

from transformers import CLIPVisionConfig  # noqa: E402
from transformers.models.auto import modeling_auto as _auto  # noqa: E402

from hybrid_vlm import HybridVLMConfig, HybridVLMForConditionalGeneration, HybridVLMModel  # noqa: E402
from hybrid_vlm.anyres import anyres_token_count  # noqa: E402
from hybrid_vlm.token_counts import VisualTokenSpec, count_image_tokens  # noqa: E402


def _import_transformers_tests(folder: str) -> Any:
    """Import the folder as the package `transformers_tests` (its files import each other relatively; the name keeps
    it apart from this repository's own `tests`)."""
    name = "transformers_tests"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(folder) / "__init__.py",
                                                      submodule_search_locations=[folder])
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{name}.test_modeling_common"), importlib.import_module(
        f"{name}.test_configuration_common"), importlib.import_module(f"{name}.generation.test_utils"), \
        importlib.import_module(f"{name}.utils.test_configuration_utils")


_modeling_common, _configuration_common, _generation_utils, _configuration_utils = _import_transformers_tests(
    TESTS_DIR)
ModelTesterMixin = _modeling_common.ModelTesterMixin
GenerationTesterMixin = _generation_utils.GenerationTesterMixin
ConfigTester = _configuration_common.ConfigTester
floats_tensor, ids_tensor = _modeling_common.floats_tensor, _modeling_common.ids_tensor
# The placeholders .ci/transformers_tests.py writes for files the sdist does not ship say SHIPPED = False.
GENERATION_TESTS_SHIPPED = getattr(_generation_utils, "SHIPPED", True)
CONFIG_KWARGS_SHIPPED = getattr(_configuration_utils, "SHIPPED", True)

VOCAB = 99
# Apart from pad (0), bos (1), eos (2), the ids below 5 the attention tests pad a batch with, and the random text ids
# (6 and up); a low id, so that the resize tests' shrunk vocabulary keeps it (transformers' LLaVA testers use the last
# id and so turn their resize tests off).
IMAGE_TOKEN_ID = 5
TINY_CLIP = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=28,
                 patch_size=14, projection_dim=32)
TEXT = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# Two layers (the mixin's limit): a Mamba layer, then an attention layer with the MoE feed-forward. Widths stay
# multiples of 16 bytes: transformers 5's grouped-GEMM experts refuse others on CPU (so would the bare JambaForCausalLM).
JAMBA = dict(model_type="jamba", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
             expert_layer_offset=1, num_experts=4, num_experts_per_tok=2, mamba_d_state=8, mamba_dt_rank=4)
MAMBA2 = dict(model_type="mamba2", hidden_size=32, num_hidden_layers=2, num_heads=4, head_dim=16, state_size=8,
              n_groups=1, chunk_size=4)
LLAMA = dict(model_type="llama", hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)
# max_position_embeddings as transformers' own Qwen2 tester sets it: the RoPE-frequency test runs 1.5x this many
# positions, and at Qwen2's default (32768) fp32 angles alone differ by more than its 1e-5 tolerance
QWEN2 = dict(model_type="qwen2", hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)


@dataclass(frozen=True)
class Setting:
    """One configuration the common tests run on."""

    text_config: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    anyres: bool = False  # LLaVA-NeXT inputs: 5-D tiles + image_sizes (+ our image_grids / num_patches)
    flags: dict[str, Any] = field(default_factory=dict)  # mixin switches of this setting (see FLAGS)


SETTINGS = {
    "jamba": Setting(JAMBA),
    "mamba2": Setting(MAMBA2, flags={"has_attentions": False}),
    "llama": Setting(LLAMA),
    "anyres": Setting(JAMBA, options=dict(image_newline=True), anyres=True,
                      flags={"skip_test_image_features_output_shape": True}),
    "vamba": Setting(QWEN2, options=dict(decoder_type="vamba", vamba_options=dict(
        ssm_d_state=8, ssm_head_dim=16, ssm_chunk_size=4))),
}

# ---------------------------------------------------------------------------------------------------------------------
# Every skip, in one place: test name -> (reason, the settings it applies to). Reasons are of the kind transformers
# gives for its own LLaVA-NeXT, Jamba and Mamba2 testers. A name the installed mixin does not have is ignored.
# ---------------------------------------------------------------------------------------------------------------------
ALL = frozenset(SETTINGS)
JAMBA_LM = frozenset({"jamba", "anyres"})
ROPE_LM = frozenset({"llama", "vamba"})
NO_IMAGES_WITH_PLACEHOLDERS = (
    "the test feeds random ids over the whole vocabulary, the image placeholder id among them, and no images; "
    "HybridVLM refuses placeholders without images (a clear ValueError) where LLaVA embeds them as text"
)



def _mamba2_config_reloads_a_list() -> bool:
    """Whether Mamba2Config keeps `time_step_limit` a tuple but reads it back from its JSON as a list (4.57 does)."""
    from transformers import Mamba2Config

    config = Mamba2Config()
    try:
        reloaded = Mamba2Config.from_dict(json.loads(config.to_json_string()))
    except Exception:  # 5.x's strict config refuses the raw JSON outright; it never hands back a list
        return False
    return isinstance(config.time_step_limit, tuple) and not isinstance(reloaded.time_step_limit, tuple)


VAMBA_NO_ATTENTION_MAP = (
    "Vamba's self-attention runs over the text stream only (the visual tokens are updated by Mamba-2 and read "
    "through cross-attention), so there is no (sequence x sequence) attention map to return"
)
# (test name, reason, settings, whether it applies to the installed transformers: a feature probe, never a version)
SKIPS: list[tuple[str, str, frozenset[str], bool]] = [
    ("test_attention_outputs", "the Jamba LM returns attention weights for its attention layers only "
     "(transformers' JambaModelTest overrides this test for the same reason)", JAMBA_LM, True),
    ("test_attention_outputs", VAMBA_NO_ATTENTION_MAP, frozenset({"vamba"}), True),
    ("test_retain_grad_hidden_states_attentions", VAMBA_NO_ATTENTION_MAP, frozenset({"vamba"}), True),
    ("test_tp_plan_matches_params", "Vamba's decoder re-registers the LM's layers inside its own module and adds "
     "cross-attention and Mamba-2 blocks to them; it declares no tensor-parallel plan (its LM's plan does not "
     "cover the added blocks)", frozenset({"vamba"}), True),
    *((f"test_model_rope_scaling_from_config_{i}_{kind}", NO_IMAGES_WITH_PLACEHOLDERS, ROPE_LM, True)
      for i, kind in enumerate(("linear", "dynamic", "yarn"))),
    ("test_config", "Mamba2Config keeps time_step_limit a tuple and reads it back from JSON as a list (the bare "
     "Mamba2Config round-trips the same way); the composite check compares the two", frozenset({"mamba2"}),
     _mamba2_config_reloads_a_list()),
]

# Mixin switches set for every setting, each with its reason (transformers' own switches for this purpose).
FLAGS: dict[str, tuple[Any, str]] = {
    "skip_test_video_features_output_shape": (True, "every frame is one vision-tower pass, as an image is, so the "
                                                    "tower's last_hidden_state has a row per frame, not per video"),
    "test_all_params_have_gradient": (False, "CLIP's post_layernorm (and, with LLaVA's vision_feature_layer=-2, its "
                                             "last layer) is unused by feature selection, so it gets no gradient"),
}
# Per setting (Setting.flags), with the reason:
SETTING_FLAG_REASONS = {
    "skip_test_image_features_output_shape": "AnyRes encodes each image's views (global view + tiles) as separate "
                                             "tower passes, so last_hidden_state has a row per view, not per image",
    "has_attentions": "the Mamba-2 LM has no attention layers (transformers' Mamba2ModelTest: has_attentions = False)",
}


class HybridVLMModelTester:
    """Builds the config and inputs of one setting: one image per row, its placeholders after the first token (as
    LLaVA-NeXT's tester puts its image token), then text. Batch 7: the attention-implementation tests run 7 rows and
    would otherwise add rows of random ids without placeholders to the images they extend too."""

    def __init__(self, parent: unittest.TestCase, setting: Setting, batch_size: int = 7, text_length: int = 7):
        self.parent = parent
        self.setting = setting
        self.batch_size = batch_size
        self.is_training = True
        self.num_channels = 3
        self.image_size = TINY_CLIP["image_size"]
        self.vocab_size = VOCAB
        self.hidden_size = setting.text_config["hidden_size"]
        self.num_hidden_layers = setting.text_config["num_hidden_layers"]
        self.num_attention_heads = setting.text_config.get("num_attention_heads", 4)
        config = self.get_config()
        spec = VisualTokenSpec.from_config(config)
        if setting.anyres:
            self.image_hw = (self.image_size, 2 * self.image_size)  # a 1x2 grid of tiles + the global view
            self.grid = (1, 2)
            self.num_image_tokens = anyres_token_count(
                spec, self.image_hw, self.grid, (self.image_size, self.image_size), newline=config.image_newline,
                unpad=config.anyres_unpad)
        else:
            self.num_image_tokens = count_image_tokens(spec, self.image_size, self.image_size)
        self.seq_length = self.num_image_tokens + text_length
        self.video_model_tester = _VideoInputs(self)

    def get_config(self) -> HybridVLMConfig:
        return HybridVLMConfig(
            vision_config=CLIPVisionConfig(**TINY_CLIP).to_dict(),
            text_config={**self.setting.text_config, **TEXT},
            image_token_id=IMAGE_TOKEN_ID,
            **self.setting.options,
        )

    def prepare_config_and_inputs_for_common(self) -> tuple[HybridVLMConfig, dict[str, torch.Tensor]]:
        config = self.get_config()
        input_ids = ids_tensor([self.batch_size, self.seq_length], VOCAB - 6) + 6
        input_ids[:, 1 : 1 + self.num_image_tokens] = IMAGE_TOKEN_ID
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        size = [self.num_channels, self.image_size, self.image_size]
        if self.setting.anyres:
            tiles = self.grid[0] * self.grid[1] + 1
            inputs["pixel_values"] = floats_tensor([self.batch_size, tiles, *size])
            inputs["image_sizes"] = torch.tensor([list(self.image_hw)] * self.batch_size)
            inputs["image_grids"] = torch.tensor([list(self.grid)] * self.batch_size)
            inputs["num_patches"] = torch.tensor([tiles] * self.batch_size)
        else:
            inputs["pixel_values"] = floats_tensor([self.batch_size, *size])
        return config, inputs

    def prepare_config_and_inputs(self) -> tuple[HybridVLMConfig, dict[str, torch.Tensor]]:
        return self.prepare_config_and_inputs_for_common()


class _VideoInputs:
    """What `get_video_features` takes: a batch of 2-frame clips, (videos, frames, 3, H, W) (the mixin would otherwise
    rename the images' 4-D `pixel_values` to `pixel_values_videos`)."""

    def __init__(self, tester: HybridVLMModelTester, frames: int = 2):
        self.tester = tester
        self.frames = frames
        self.num_hidden_layers = TINY_CLIP["num_hidden_layers"]  # the frames' encoder: hidden states / attentions

    def prepare_config_and_inputs_for_common(self) -> tuple[HybridVLMConfig, dict[str, torch.Tensor]]:
        tester = self.tester
        videos = floats_tensor([tester.batch_size, self.frames, tester.num_channels, tester.image_size,
                                tester.image_size])
        return tester.get_config(), {"pixel_values_videos": videos}


class _HybridVLMCommonTests(ModelTesterMixin, GenerationTesterMixin):
    """The body every setting's `unittest.TestCase` shares; `setting` is set per subclass."""

    setting_name: str = ""
    all_model_classes = (HybridVLMModel, HybridVLMForConditionalGeneration)
    pipeline_model_mapping: dict[str, Any] = {}
    test_pruning = False
    test_head_masking = False
    test_torchscript = False
    _is_composite = True
    is_multimodal = True
    # Inputs the attention-implementation tests pass besides input_ids (images belong with their placeholders).
    additional_model_inputs = ["pixel_values", "image_sizes", "image_grids", "num_patches"]

    def setUp(self) -> None:
        setting = SETTINGS[self.setting_name]
        self.model_tester = HybridVLMModelTester(self, setting)
        # As for transformers' VLMs: default sub-configs, the setting's own options on top.
        # Vamba's options need a transformer text config, which the ConfigTester compares with its whole serialised
        # form; the config class is the same, so the Vamba setting checks it with the other settings' defaults.
        options = {} if "decoder_type" in setting.options else setting.options
        self.config_tester = ConfigTester(self, config_class=HybridVLMConfig, has_text_modality=False, **options)

    @classmethod
    def setUpClass(cls) -> None:
        # The mixin decides what a class is (a bare base model: no loss, no training test; an image-text-to-text
        # model: causal-LM labels) from transformers' own model-name tables. HybridVLM is registered with the Auto
        # classes, which those tables do not see, so list it there for the duration, as a native model would be.
        super().setUpClass()
        cls._listed = []
        for table, class_name in ((_auto.MODEL_MAPPING_NAMES, "HybridVLMModel"),
                                  (_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
                                   "HybridVLMForConditionalGeneration")):
            if HybridVLMConfig.model_type not in table:
                table[HybridVLMConfig.model_type] = class_name
                cls._listed.append(table)

    @classmethod
    def tearDownClass(cls) -> None:
        for table in cls._listed:
            del table[HybridVLMConfig.model_type]
        super().tearDownClass()

    def test_config(self) -> None:
        checks = contextlib.nullcontext()
        if not CONFIG_KWARGS_SHIPPED:  # that one check reads a table the sdist lacks: test_config_arguments_init
            checks = unittest.mock.patch.object(self.config_tester, "check_config_arguments_init", lambda: None)
        with checks:
            self.config_tester.run_common_tests()

    def test_config_arguments_init(self) -> None:
        if not CONFIG_KWARGS_SHIPPED:
            self.skipTest("tests/utils/test_configuration_utils.py (config_common_kwargs) is not in the sdist")
        self.config_tester.check_config_arguments_init()


def _skipped(reason: str):
    @unittest.skip(reason)
    def test(self) -> None:  # pragma: no cover - never runs
        pass

    return test


def _test_case(name: str) -> type:
    body = {"setting_name": name, "__module__": __name__, "__qualname__": f"HybridVLM_{name}_CommonTest"}
    body.update({flag: value for flag, (value, _reason) in FLAGS.items()})
    body.update(SETTINGS[name].flags)
    for test, reason, settings, applies in SKIPS:
        if applies and name in settings and hasattr(_HybridVLMCommonTests, test):
            body[test] = _skipped(reason)
    return type(f"HybridVLM_{name}_CommonTest", (_HybridVLMCommonTests, unittest.TestCase), body)


for _name in SETTINGS:
    globals()[f"HybridVLM_{_name}_CommonTest"] = _test_case(_name)
